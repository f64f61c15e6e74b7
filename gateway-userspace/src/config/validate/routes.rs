//! Binding VirtualServices to the servers of each listener: which `tcp[]`, `tls[]` and
//! `http[]` routes a port serves, delegates merged into their roots, and destinations
//! (and mirrors) resolved into clusters.

use std::collections::{HashMap, HashSet};

use super::virtual_service::weights;
use crate::config::delegate::{self, Delegates};
use crate::config::hosts;
use crate::config::istio::{self, VirtualService};
use crate::config::parse::Entry;
use crate::config::resolve::Resolver;
use crate::config::snapshot::{
    HttpRouteEntry, HttpVirtualHost, Listener, ListenerProtocol, MirrorCluster, Origin, ServerKind,
    ServerRef, TcpRoute, TlsRoute, WeightedCluster, WrittenRoute,
};
use crate::config::source_match::{self, source_ok};
use crate::config::warnings::Warning;
use crate::config::{ConfigError, GatewayIdentity};

/// Keys of the Gateways a VS is attached to. `mesh` means sidecars, which we
/// are not; a VS without `gateways` is attached to `mesh` only.
pub(super) fn vs_gateways(
    vs: &Entry<VirtualService>,
    known: &HashSet<String>,
    missing: &mut Vec<Warning>,
) -> Vec<String> {
    let ns = vs.res.metadata.namespace();
    let mut out = Vec::new();
    for (j, g) in vs.res.spec.gateways.iter().flatten().enumerate() {
        if g == "mesh" {
            continue;
        }
        let key = gateway_key(g, ns);
        if known.contains(&key) {
            out.push(key);
        } else {
            missing.push(Warning::missing(
                &vs.src,
                &format!("spec.gateways[{j}]"),
                "GW2002",
                &format!("virtual service references gateway \"{key}\" which does not exist"),
            ));
        }
    }
    out
}

/// `name` is relative to the referring resource's namespace; `ns/name` is not.
fn gateway_key(reference: &str, ns: &str) -> String {
    if reference.contains('/') {
        reference.to_string()
    } else {
        format!("{ns}/{reference}")
    }
}

pub(super) struct VsBinding<'a> {
    pub(super) vs: &'a Entry<VirtualService>,
    /// Selected gateways it names.
    pub(super) gateways: Vec<String>,
}

impl VsBinding<'_> {
    fn ns(&self) -> &str {
        self.vs.res.metadata.namespace()
    }

    /// Its `spec.http[i]` as written, and where.
    fn written(&self, i: usize) -> WrittenRoute {
        WrittenRoute {
            at: Origin::new(&self.vs.src, &format!("spec.http[{i}]")),
            route: std::sync::Arc::clone(&self.vs.res.spec.http[i]),
        }
    }

    /// Istio binds a VS to a server when the VS names the server's Gateway,
    /// the server host's namespace part admits the VS's namespace, and some
    /// VS host intersects the server host.
    fn binds(&self, server: &ServerRef) -> bool {
        if !self.gateways.contains(&server.gateway) {
            return false;
        }
        let gw_ns = server.gateway.split('/').next().unwrap_or_default();
        server.hosts.iter().any(|h| {
            let (ns, host) = hosts::split_server_host(h, gw_ns);
            (ns == "*" || ns == self.ns())
                && self
                    .vs
                    .res
                    .spec
                    .hosts
                    .iter()
                    .any(|v| hosts::intersects(v, host))
        })
    }

    /// A match's own `gateways` (if any) further restrict where it applies.
    fn match_allows(&self, match_gateways: &[String], server: &ServerRef) -> bool {
        match_gateways.is_empty()
            || match_gateways
                .iter()
                .any(|g| gateway_key(g, self.ns()) == server.gateway)
    }
}

fn port_ok(match_port: Option<u32>, port: u16) -> bool {
    match_port.is_none_or(|p| p == u32::from(port))
}

pub(super) struct RouteBuilder<'a> {
    /// The gateway itself: `sourceLabels`/`sourceNamespace` are compared with it.
    pub(super) id: &'a GatewayIdentity,
    pub(super) resolver: Resolver<'a>,
    /// Resolved destination lists by `vs-key#path`, so a route bound to
    /// several listeners is resolved (and its errors reported) once.
    pub(super) cache: HashMap<String, Vec<WeightedCluster>>,
    /// Fields read and not acted on that only resolution reveals (GW1009).
    pub(super) warnings: Vec<Warning>,
    /// Delegate VirtualServices (no hosts) by key.
    pub(super) delegates: Delegates<'a>,
    /// A root `http[]` entry's delegate routes merged with it, by `root-key#i`: built
    /// (and their problems reported) once however many listeners the root binds to.
    pub(super) merged: HashMap<String, Vec<Delegated<'a>>>,
    /// Delegates not found (GW2005).
    pub(super) missing: Vec<Warning>,
}

/// One delegate route merged with its root entry.
#[derive(Clone)]
pub(super) struct Delegated<'a> {
    route: std::sync::Arc<istio::HttpRoute>,
    /// The delegate VirtualService and its `http[]` index: its destinations are
    /// resolved in its namespace and reported at its positions.
    vs: &'a Entry<VirtualService>,
    index: usize,
}

impl<'a> RouteBuilder<'a> {
    pub(super) fn listener(
        &mut self,
        port: u16,
        servers: Vec<ServerRef>,
        vss: &[VsBinding],
        errors: &mut Vec<ConfigError>,
    ) -> Listener {
        let all = |k: ServerKind| servers.iter().all(|s| s.kind == k);
        let protocol = if all(ServerKind::Http) {
            ListenerProtocol::Http
        } else if all(ServerKind::Tcp) {
            ListenerProtocol::Tcp
        } else if all(ServerKind::HttpsTerminate) {
            ListenerProtocol::Https
        } else {
            ListenerProtocol::Tls
        };

        let mut tcp = None;
        let mut tls = Vec::new();
        let mut terminated_tcp: Vec<(usize, TcpRoute)> = Vec::new();
        let mut http = Vec::new();
        for b in vss {
            let bound: Vec<usize> = (0..servers.len())
                .filter(|&i| b.binds(&servers[i]))
                .collect();
            let of_kind = |kinds: &[ServerKind]| -> Vec<&ServerRef> {
                bound
                    .iter()
                    .map(|&i| &servers[i])
                    .filter(|s| kinds.contains(&s.kind))
                    .collect()
            };
            let spec = &b.vs.res.spec;
            let id = self.id;

            // TCP: the first (VS namespace/name order, then tcp[] order)
            // matching route wins; Envoy has a single TCP proxy per chain.
            let tcp_servers = of_kind(&[ServerKind::Tcp]);
            if tcp.is_none() && !tcp_servers.is_empty() {
                let found = spec.tcp.iter().enumerate().find(|(_, r)| {
                    r.matches.is_empty()
                        || r.matches.iter().any(|m| {
                            port_ok(m.port, port)
                                && source_ok(&m.source_labels, m.source_namespace.as_deref(), id)
                                && tcp_servers.iter().any(|s| b.match_allows(&m.gateways, s))
                        })
                });
                if let Some((i, r)) = found {
                    let dests: Vec<_> =
                        r.route.iter().map(|d| (&d.destination, d.weight)).collect();
                    let destinations =
                        self.resolve(b, &format!("spec.tcp[{i}].route"), &dests, errors);
                    tcp = Some(TcpRoute {
                        name: b.vs.res.key(),
                        destinations,
                    });
                }
            }

            // TLS termination: per server, the first tcp route bound to it
            // (Istio's buildGatewayNetworkFiltersFromTCPRoutes for that server).
            for &idx in &bound {
                let s = &servers[idx];
                if s.kind != ServerKind::TlsTerminate
                    || terminated_tcp.iter().any(|(i, _)| *i == idx)
                {
                    continue;
                }
                let found = spec.tcp.iter().enumerate().find(|(_, r)| {
                    r.matches.is_empty()
                        || r.matches
                            .iter()
                            .any(|m| port_ok(m.port, port) && b.match_allows(&m.gateways, s))
                });
                if let Some((i, r)) = found {
                    let dests: Vec<_> =
                        r.route.iter().map(|d| (&d.destination, d.weight)).collect();
                    let destinations =
                        self.resolve(b, &format!("spec.tcp[{i}].route"), &dests, errors);
                    terminated_tcp.push((
                        idx,
                        TcpRoute {
                            name: b.vs.res.key(),
                            destinations,
                        },
                    ));
                }
            }

            let tls_servers = of_kind(&[ServerKind::TlsPassthrough]);
            if !tls_servers.is_empty() {
                for (i, r) in spec.tls.iter().enumerate() {
                    let mut sni_hosts: Vec<String> = Vec::new();
                    for m in &r.matches {
                        let allowed: Vec<&&ServerRef> = tls_servers
                            .iter()
                            .filter(|s| b.match_allows(&m.gateways, s))
                            .collect();
                        if !port_ok(m.port, port)
                            || !source_ok(&m.source_labels, m.source_namespace.as_deref(), id)
                            || allowed.is_empty()
                        {
                            continue;
                        }
                        for sni in &m.sni_hosts {
                            let sni = sni.to_ascii_lowercase();
                            // Only names the bound servers actually accept.
                            let accepted = allowed.iter().any(|s| {
                                let gw_ns = s.gateway.split('/').next().unwrap_or_default();
                                s.hosts.iter().any(|h| {
                                    hosts::intersects(hosts::split_server_host(h, gw_ns).1, &sni)
                                })
                            });
                            if accepted && !sni_hosts.contains(&sni) {
                                sni_hosts.push(sni);
                            }
                        }
                    }
                    if sni_hosts.is_empty() {
                        continue;
                    }
                    let dests: Vec<_> =
                        r.route.iter().map(|d| (&d.destination, d.weight)).collect();
                    let destinations =
                        self.resolve(b, &format!("spec.tls[{i}].route"), &dests, errors);
                    tls.push(TlsRoute {
                        name: b.vs.res.key(),
                        sni_hosts,
                        destinations,
                    });
                }
            }

            let http_idx: Vec<usize> = bound
                .iter()
                .copied()
                .filter(|&i| {
                    matches!(
                        servers[i].kind,
                        ServerKind::Http | ServerKind::HttpsTerminate
                    )
                })
                .collect();
            if !http_idx.is_empty() {
                let mut routes = Vec::with_capacity(spec.http.len());
                let applies = |r: &istio::HttpRoute| {
                    r.matches.is_empty()
                        || r.matches.iter().any(|m| {
                            port_ok(m.port, port)
                                && http_idx
                                    .iter()
                                    .any(|&s| b.match_allows(&m.gateways, &servers[s]))
                        })
                };
                for (i, r) in spec.http.iter().enumerate() {
                    if let Some(d) = &r.delegate {
                        // Merged before the gateway/port/source filter, as Istio merges
                        // the VirtualService before building routes from it.
                        for mut dr in self.delegated(b, i, r, d) {
                            let Some(route) = source_match::http_route_for(&dr.route, id) else {
                                continue;
                            };
                            dr.route = route;
                            if applies(&dr.route) {
                                routes.push(self.delegated_entry(b, i, dr, errors));
                            }
                        }
                        continue;
                    }
                    // Blocks whose source is not this gateway are gone before anything
                    // else looks at the route.
                    let Some(r) = source_match::http_route_for(r, id) else {
                        continue;
                    };
                    let r = &r;
                    if !applies(r) {
                        continue;
                    }
                    let dests: Vec<_> =
                        r.route.iter().map(|d| (&d.destination, d.weight)).collect();
                    let destinations =
                        self.resolve(b, &format!("spec.http[{i}].route"), &dests, errors);
                    let mirrors = self.resolve_mirrors(b, i, r, errors);
                    routes.push(HttpRouteEntry {
                        route: std::sync::Arc::clone(r),
                        destinations,
                        mirrors,
                        written: vec![b.written(i)],
                    });
                }
                if !routes.is_empty() {
                    routes.shrink_to_fit();
                    http.push(HttpVirtualHost {
                        name: b.vs.res.key(),
                        servers: http_idx,
                        hosts: spec.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                        routes,
                    });
                }
            }
        }
        Listener {
            port,
            protocol,
            servers,
            tcp,
            tls,
            terminated_tcp,
            http,
        }
    }

    /// Root entry `spec.http[i]` of `b` (with `delegate`) merged with each route of its
    /// delegate ([`delegate`]); a missing delegate is GW2005, a delegate route whose
    /// match is not within the root's is left out with GW1009.
    fn delegated(
        &mut self,
        b: &VsBinding,
        i: usize,
        root: &istio::HttpRoute,
        d: &istio::Delegate,
    ) -> Vec<Delegated<'a>> {
        let key = format!("{}#spec.http[{i}]", b.vs.res.key());
        if let Some(hit) = self.merged.get(&key) {
            return hit.clone();
        }
        let mut out = Vec::new();
        match self
            .delegates
            .find(&b.vs.res, &d.name, d.namespace.as_deref())
        {
            Err(problem) => self.missing.push(Warning::missing(
                &b.vs.src,
                &format!("spec.http[{i}].delegate"),
                "GW2005",
                &problem,
            )),
            Ok(dvs) => {
                for (k, leaf) in dvs.res.spec.http.iter().enumerate() {
                    // A delegate of a delegate is refused by validation.
                    if leaf.delegate.is_some() {
                        continue;
                    }
                    match delegate::merge_route(root, leaf) {
                        Some(m) => out.push(Delegated {
                            route: std::sync::Arc::new(m),
                            vs: dvs,
                            index: k,
                        }),
                        None => self.warnings.push(Warning::at(
                            &dvs.src,
                            &format!("spec.http[{k}].match"),
                            "GW1009",
                            &format!(
                                "not within the match of the root route delegating to it ({} spec.http[{i}] at {})",
                                b.vs.src.subject,
                                b.vs.src.loc(&format!("spec.http[{i}].match"))
                            ),
                        )),
                    }
                }
            }
        }
        self.merged.insert(key, out.clone());
        out
    }

    /// The route entry of a merged delegate route: its destinations are the delegate's
    /// (resolved in its namespace); its mirrors the delegate's own or else the root's.
    fn delegated_entry(
        &mut self,
        root: &VsBinding,
        i: usize,
        dr: Delegated<'a>,
        errors: &mut Vec<ConfigError>,
    ) -> HttpRouteEntry {
        let db = VsBinding {
            vs: dr.vs,
            gateways: Vec::new(),
        };
        let dests: Vec<_> = dr
            .route
            .route
            .iter()
            .map(|d| (&d.destination, d.weight))
            .collect();
        let at = format!("spec.http[{}].route", dr.index);
        let destinations = self.resolve(&db, &at, &dests, errors);
        let mirrors = if delegate::own_mirror(&dr.vs.res.spec.http[dr.index]) {
            self.resolve_mirrors(&db, dr.index, &dr.route, errors)
        } else {
            self.resolve_mirrors(root, i, &dr.route, errors)
        };
        HttpRouteEntry {
            route: dr.route,
            destinations,
            mirrors,
            written: vec![db.written(dr.index), root.written(i)],
        }
    }

    /// Resolves `spec.http[i]`'s mirror destinations (`crate::config::mirror::policies`).
    fn resolve_mirrors(
        &mut self,
        b: &VsBinding,
        i: usize,
        r: &istio::HttpRoute,
        errors: &mut Vec<ConfigError>,
    ) -> Vec<MirrorCluster> {
        let mut out = Vec::new();
        for (path, dest, per_million) in crate::config::mirror::policies(r) {
            let at = format!("spec.http[{i}].{path}");
            let key = format!("{}#{at}", b.vs.res.key());
            let cluster = match self.cache.get(&key) {
                Some(hit) => hit.first().map(|w| w.cluster.clone()),
                None => {
                    let c = self
                        .resolver
                        .destination(dest, b.ns(), &b.vs.src, &at, errors);
                    let cached = c.iter().map(|c| WeightedCluster {
                        cluster: c.clone(),
                        weight: 100,
                    });
                    self.cache.insert(key, cached.collect());
                    c
                }
            };
            if let Some(cluster) = cluster {
                out.push(MirrorCluster {
                    cluster,
                    per_million,
                });
            }
        }
        out
    }

    /// Resolves a route's destination list (at `path`, e.g. `spec.tcp[0].route`)
    /// into weighted clusters; unresolvable destinations are reported and dropped.
    fn resolve(
        &mut self,
        b: &VsBinding,
        path: &str,
        dests: &[(&istio::Destination, Option<u32>)],
        errors: &mut Vec<ConfigError>,
    ) -> Vec<WeightedCluster> {
        let key = format!("{}#{path}", b.vs.res.key());
        if let Some(hit) = self.cache.get(&key) {
            return hit.clone();
        }
        let ws: Vec<_> = dests.iter().map(|(_, w)| *w).collect();
        // Bad sums were reported by validation; fall back to raw weights.
        let weights = weights(&ws).unwrap_or_else(|_| ws.iter().map(|w| w.unwrap_or(0)).collect());
        let mut out = Vec::new();
        for (j, ((dest, _), weight)) in dests.iter().zip(weights).enumerate() {
            let at = format!("{path}[{j}].destination");
            if let Some(cluster) = self
                .resolver
                .destination(dest, b.ns(), &b.vs.src, &at, errors)
            {
                out.push(WeightedCluster { cluster, weight });
            }
        }
        self.cache.insert(key, out.clone());
        out
    }
}

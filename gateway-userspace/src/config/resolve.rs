//! Destination -> cluster resolution against ServiceEntries, falling back to
//! the system resolver (so `localhost` / `127.0.0.1` work without an SE).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use super::ConfigError;
use super::dest_rules;
use super::hosts;
use super::istio::{Destination, Resolution, ServiceEntry, ServicePort};
use super::parse::Entry;
use super::snapshot::{Cluster, DnsRefresh, DnsTarget};
use super::source::Source;
use super::upstream_policy;
use super::warnings::Warning;

/// Istio's cluster naming: `outbound|<port>|<subset>|<fqdn>`.
pub(crate) fn cluster_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

pub(crate) struct Resolver<'a> {
    /// Ordered by namespace/name so that the choice among several
    /// ServiceEntries naming the same host is deterministic.
    service_entries: Vec<&'a Entry<ServiceEntry>>,
    rules: dest_rules::Index<'a>,
    pub clusters: BTreeMap<String, Cluster>,
    dns: HashMap<(String, u16), Result<Vec<SocketAddr>, String>>,
    /// Names the resolver could not find (GW2003), subsets no DestinationRule defines
    /// (GW2004): their clusters have no endpoints or do not exist.
    pub missing: Vec<Warning>,
    /// Some DestinationRule did not deserialize (its error is reported): a subset it
    /// may have defined is not reported missing as well.
    pub broken_rules: bool,
}

impl<'a> Resolver<'a> {
    pub fn new(service_entries: &'a [Entry<ServiceEntry>], rules: dest_rules::Index<'a>) -> Self {
        let mut service_entries: Vec<_> = service_entries.iter().collect();
        service_entries.sort_by_key(|e| {
            (
                e.res.metadata.namespace().to_string(),
                e.res.metadata.name.clone(),
            )
        });
        Resolver {
            service_entries,
            rules,
            clusters: BTreeMap::new(),
            dns: HashMap::new(),
            missing: Vec::new(),
            broken_rules: false,
        }
    }

    /// Reports a subset the host's DestinationRule does not define (or a subset of a
    /// host without one): its cluster is never built, as with Istio, whose route then
    /// names a cluster Envoy does not have (503 `NC`).
    fn subset_defined(
        &mut self,
        rule: Option<&dest_rules::Rule<'_>>,
        subset: &str,
        host: &str,
        src: &Source,
        path: &str,
    ) -> bool {
        if subset.is_empty() || rule.is_some_and(|r| r.subset(subset).is_some()) {
            return true;
        }
        if self.broken_rules {
            return false;
        }
        let why = match rule {
            Some(r) => format!(
                "DestinationRule {} for \"{host}\" has no subset \"{subset}\"",
                r.key
            ),
            None => format!(
                "subset \"{subset}\" of \"{host}\": no DestinationRule for this host applies to the gateway"
            ),
        };
        self.missing.push(Warning::missing(
            src,
            &format!("{path}.subset"),
            "GW2004",
            &why,
        ));
        false
    }

    /// The cluster of the whole service and one per subset of its DestinationRule
    /// (Istio builds them all for a service the gateway routes to).
    fn add_clusters(
        &mut self,
        host: &str,
        port: u16,
        rule: Option<&dest_rules::Rule<'_>>,
        http2: bool,
        mut endpoints: impl FnMut(&mut Self, Option<&BTreeMap<String, String>>) -> Vec<DnsTarget>,
    ) {
        let mut subsets: Vec<Option<&crate::config::destination_rule::Subset>> = vec![None];
        if let Some(r) = rule {
            subsets.extend(r.subsets.iter().copied().map(Some));
        }
        for subset in subsets {
            let sname = subset.map_or("", |s| s.name.as_str());
            let name = cluster_name(port, sname, host);
            if self.clusters.contains_key(&name) {
                continue;
            }
            let targets = endpoints(self, subset.map(|s| &s.labels));
            let refresh = DnsRefresh { targets };
            let (eps, weights) = refresh.endpoints();
            // Only names are looked up again; fixed addresses never change.
            let dns = refresh
                .targets
                .iter()
                .any(|t| t.name.is_some())
                .then_some(refresh);
            let conn: upstream_policy::ConnSettings = rule
                .and_then(|r| r.connection_pool(port, subset))
                .map(upstream_policy::conn_settings)
                .unwrap_or_default();
            self.clusters.insert(
                name.clone(),
                Cluster {
                    name,
                    host: host.to_string(),
                    port,
                    subset: sname.to_string(),
                    endpoints: eps,
                    weights,
                    dns,
                    lb: rule.map(|r| r.lb(port, subset)).unwrap_or_default(),
                    circuit_breakers: rule
                        .and_then(|r| r.connection_pool(port, subset))
                        .map(upstream_policy::circuit_breakers),
                    conn,
                    tcp_idle_timeout: rule
                        .and_then(|r| r.policy)
                        .and_then(|p| p.connection_pool.as_ref())
                        .and_then(upstream_policy::tcp_idle_timeout),
                    tcp_max_duration: rule
                        .and_then(|r| r.policy)
                        .and_then(|p| p.connection_pool.as_ref())
                        .and_then(upstream_policy::max_connection_duration),
                    outlier: rule
                        .and_then(|r| r.outlier_detection(port, subset))
                        .map(upstream_policy::outlier_policy),
                    tls: rule.and_then(|r| r.tls(port, subset)),
                    tls_at: rule.map(|r| r.tls_at(port, subset)).unwrap_or_default(),
                    // Istio's `shouldH2Upgrade`: UPGRADE makes the cluster HTTP/2 (the
                    // user vouches the port speaks HTTP); a TCP route never uses it.
                    http2: http2 || conn.h2_upgrade,
                    destination_rule: rule.map(|r| r.key.clone()),
                },
            );
        }
    }

    /// Resolves the destination at `path` (the `destination` node) of a
    /// resource in namespace `ns`; returns the cluster name, or `None` after
    /// reporting why not.
    pub fn destination(
        &mut self,
        dest: &Destination,
        ns: &str,
        src: &Source,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<String> {
        let written = dest.host.trim();
        let host = written.to_ascii_lowercase();
        let fqdn = hosts::expand(&host, ns);
        let subset = dest.subset.as_deref().unwrap_or("");
        let host_path = format!("{path}.host");
        let port_path = format!("{path}.port.number");
        let to_u16 = |n: u32, errors: &mut Vec<ConfigError>| {
            let p = u16::try_from(n).ok().filter(|p| *p != 0);
            if p.is_none() {
                errors.push(src.error(&port_path, format!("port {n} is out of range 1-65535")));
            }
            p
        };

        if let Some((se, se_host)) = self.find_service_entry(&host, &fqdn) {
            let ports = &se.res.spec.ports;
            let number = match (dest.port, ports.as_slice()) {
                (Some(p), _) => p.number,
                // Istio allows omitting the port when the service has one.
                (None, [only]) => only.number,
                (None, _) => {
                    errors.push(src.error(
                        &host_path,
                        format!(
                            "destination host \"{written}\" has no port and service entry {} declares {} ports; set port.number",
                            se.res.key(),
                            ports.len()
                        ),
                    ));
                    return None;
                }
            };
            let Some(sp) = ports.iter().find(|p| p.number == number) else {
                errors.push(src.error(
                    &port_path,
                    format!(
                        "service entry {} has no port {number} for host \"{written}\"",
                        se.res.key()
                    ),
                ));
                return None;
            };
            let port = to_u16(number, errors)?;
            let name = cluster_name(port, subset, &se_host);
            let rule = self.rules.find(&se_host, Some(se.res.metadata.namespace()));
            if !self.clusters.contains_key(&name) {
                self.add_clusters(
                    &se_host,
                    port,
                    rule.as_ref(),
                    speaks_h2(sp),
                    |me, selector| me.service_entry_endpoints(se, &se_host, sp, selector),
                );
            }
            self.subset_defined(rule.as_ref(), subset, &se_host, src, path);
            Some(name)
        } else {
            let Some(number) = dest.port.map(|p| p.number) else {
                errors.push(src.error(
                    &host_path,
                    format!("destination host \"{written}\" has no port and no ServiceEntry names it; set port.number"),
                ));
                return None;
            };
            let port = to_u16(number, errors)?;
            let name = cluster_name(port, subset, &host);
            // A name nobody can find is a missing reference (GW2003), reported where
            // each route names it; the cluster is kept with no endpoints (Envoy's DNS
            // cluster that resolves to nothing). Lookups are memoized.
            let resolved = self.lookup(written, port, false);
            if let Err(e) = &resolved {
                self.missing.push(Warning::missing(
                    src,
                    &host_path,
                    "GW2003",
                    &format!(
                        "destination host \"{written}\" port {port} cannot be resolved: no ServiceEntry names it and the system resolver said: {e}"
                    ),
                ));
            }
            let rule = self.rules.find(&fqdn, dest_rules::namespace_of_fqdn(&fqdn));
            if !self.clusters.contains_key(&name) {
                // A name (not an IP literal) is looked up again every refresh, so a
                // name that failed here serves once it resolves.
                let target = DnsTarget {
                    name: written
                        .parse::<IpAddr>()
                        .is_err()
                        .then(|| written.to_string()),
                    port,
                    weight: 1,
                    first_only: false,
                    addrs: resolved.unwrap_or_default(),
                };
                // The system resolver's addresses carry no labels: a subset selecting
                // labels has no endpoints.
                self.add_clusters(&host, port, rule.as_ref(), false, |_, selector| {
                    if selector.is_none_or(BTreeMap::is_empty) {
                        vec![target.clone()]
                    } else {
                        Vec::new()
                    }
                });
            }
            self.subset_defined(rule.as_ref(), subset, &host, src, path);
            Some(name)
        }
    }

    /// A ServiceEntry host names the destination if it equals the host as
    /// written or its expanded FQDN, or if it is a short name expanding (in
    /// the SE's namespace) to the same FQDN. Returns the SE's FQDN.
    fn find_service_entry(
        &self,
        host: &str,
        fqdn: &str,
    ) -> Option<(&'a Entry<ServiceEntry>, String)> {
        self.service_entries.iter().find_map(|se| {
            se.res.spec.hosts.iter().find_map(|h| {
                let h = h.to_ascii_lowercase();
                let expanded = hosts::expand(&h, se.res.metadata.namespace());
                (h == host || h == fqdn || expanded == fqdn).then_some((*se, expanded))
            })
        })
    }

    fn service_entry_endpoints(
        &mut self,
        se: &Entry<ServiceEntry>,
        se_host: &str,
        sp: &ServicePort,
        selector: Option<&BTreeMap<String, String>>,
    ) -> Vec<DnsTarget> {
        let spec = &se.res.spec;
        // A subset selecting labels: only the `endpoints` carrying them.
        let labelled = selector.is_some_and(|s| !s.is_empty());
        let default_port = sp.target_port.unwrap_or(sp.number);
        let mut out = Vec::new();
        if spec.endpoints.is_empty() && !labelled {
            match spec.resolution {
                // STATIC without endpoints is legal in Istio: an empty cluster.
                Resolution::Static => {}
                // DNS: the SE host itself is the name to resolve. NONE would
                // be original-destination passthrough, which an ingress
                // gateway cannot do; resolving the host is the useful reading.
                Resolution::Dns | Resolution::DnsRoundRobin | Resolution::None => {
                    let port = u16::try_from(default_port).unwrap_or(0);
                    let first_only = spec.resolution == Resolution::DnsRoundRobin;
                    let mut target = DnsTarget {
                        name: Some(se_host.to_string()),
                        port,
                        weight: 1,
                        first_only,
                        addrs: Vec::new(),
                    };
                    match self.lookup(se_host, port, first_only) {
                        Ok(addrs) => target.addrs = addrs,
                        Err(e) => {
                            let i = spec
                                .hosts
                                .iter()
                                .position(|h| h.eq_ignore_ascii_case(se_host))
                                .unwrap_or(0);
                            self.missing.push(Warning::missing(
                                &se.src,
                                &format!("spec.hosts[{i}]"),
                                "GW2003",
                                &format!("service entry host \"{se_host}\" cannot be resolved by the system resolver: {e}"),
                            ));
                        }
                    }
                    out.push(target);
                }
            }
        }
        for (k, ep) in spec.endpoints.iter().enumerate() {
            if selector.is_some_and(|s| !dest_rules::labels_match(s, &ep.labels)) {
                continue;
            }
            // Missing / non-IP STATIC addresses are reported by validation.
            let Some(address) = ep.address.as_deref() else {
                continue;
            };
            let number = sp
                .name
                .as_ref()
                .and_then(|n| ep.ports.get(n))
                .copied()
                .unwrap_or(default_port);
            let Ok(port) = u16::try_from(number) else {
                continue;
            };
            // Istio's `IstioEndpoint.GetLoadBalancingWeight` (pilot/pkg/model/service.go):
            // an unset or 0 weight is 1.
            let weight = ep.weight.filter(|w| *w > 0).unwrap_or(1);
            let mut target = DnsTarget {
                name: None,
                port,
                weight,
                first_only: spec.resolution == Resolution::DnsRoundRobin,
                addrs: Vec::new(),
            };
            if let Ok(ip) = address.parse::<IpAddr>() {
                target.addrs.push(SocketAddr::new(ip, port));
                out.push(target);
            } else if spec.resolution != Resolution::Static && !address.starts_with("unix://") {
                target.name = Some(address.to_string());
                let first_only = target.first_only;
                match self.lookup(address, port, first_only) {
                    Ok(addrs) => target.addrs = addrs,
                    Err(e) => self.missing.push(Warning::missing(
                        &se.src,
                        &format!("spec.endpoints[{k}].address"),
                        "GW2003",
                        &format!("endpoint address \"{address}\" cannot be resolved by the system resolver: {e}"),
                    )),
                }
                out.push(target);
            }
        }
        out
    }

    /// System resolver, memoized per load so a name is looked up once.
    fn lookup(
        &mut self,
        host: &str,
        port: u16,
        first_only: bool,
    ) -> Result<Vec<SocketAddr>, String> {
        self.dns
            .entry((host.to_ascii_lowercase(), port))
            .or_insert_with(|| system_lookup(host, port))
            .clone()
            .map(|addrs| take(addrs, first_only))
    }
}

/// The system resolver (getaddrinfo, so /etc/hosts and resolv.conf as configured):
/// the addresses in its order, duplicates dropped; an empty answer is an error.
pub(crate) fn system_lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    match (host, port).to_socket_addrs() {
        Ok(found) => {
            let mut addrs: Vec<SocketAddr> = Vec::new();
            for a in found {
                if !addrs.contains(&a) {
                    addrs.push(a);
                }
            }
            if addrs.is_empty() {
                Err("no addresses".to_string())
            } else {
                Ok(addrs)
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

/// What a cluster takes of an answer: Envoy's LOGICAL_DNS (`DNS_ROUND_ROBIN`) only the
/// first address; STRICT_DNS (`DNS`) every address, here sorted so the list (and the
/// hash tables built over it) does not change with the resolver's order.
pub(crate) fn take(mut addrs: Vec<SocketAddr>, first_only: bool) -> Vec<SocketAddr> {
    if first_only {
        addrs.truncate(1);
    } else {
        addrs.sort();
    }
    addrs
}

/// The service port speaks HTTP/2 (Istio's protocol `HTTP2`, `GRPC`, `GRPC-WEB`; with
/// no `protocol`, a name `http2`, `grpc`, `grpc-web` or one of them followed by `-...`,
/// as Istio's port-name convention): the gateway sends HTTP/2 to it (h2c prior
/// knowledge on plain TCP, ALPN `h2` over TLS origination), as Envoy's cluster gets
/// `http2_protocol_options` for such a port.
pub(crate) fn speaks_h2(sp: &ServicePort) -> bool {
    let h2 = |p: &str| {
        matches!(
            p.to_ascii_uppercase().as_str(),
            "HTTP2" | "GRPC" | "GRPC-WEB"
        )
    };
    match sp.protocol.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => h2(p),
        None => sp
            .name
            .as_deref()
            .is_some_and(|n| h2(n.split('-').next().unwrap_or_default())),
    }
}

//! `gateway proxy-config` and the admin `/config_dump` behind it.
//!
//! As with Istio, the gateway serves an Envoy-shaped config dump ([`config_dump`]:
//! listeners with their filter chains, route configurations, clusters with their
//! endpoints, secrets) and the CLI renders it client-side into the tables
//! `istioctl proxy-config` prints ([`render`]), or prints its JSON with `-o json`.
//! Secrets show certificate facts (subject, SANs, serial, validity), never key material.
//!
//! [`render`] holds istioctl's writers, [`tabwriter`] Go's text/tabwriter they print
//! through; [`cli`] the `proxy-config` command line, shaped as istioctl's.
pub mod cli;
pub mod cluster_policy;
pub mod render;
pub mod tabwriter;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use serde_json::{Value, json};

use crate::config::{
    HttpRouteEntry, Listener, ServerKind, ServerRef, Snapshot, WeightedCluster,
    istio::{Resolution, StringMatch},
};

const T_LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const T_ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const T_CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const T_SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

// === the dump ===

/// Istio's route-configuration name for an HTTPS-terminating server:
/// `https.<port>.<port name>.<gateway name>.<gateway namespace>`.
pub fn https_route_name(snap: &Snapshot, port: u16, s: &ServerRef) -> String {
    let (ns, name) = s.gateway.split_once('/').unwrap_or(("default", &s.gateway));
    let port_name = snap
        .resources
        .gateways
        .iter()
        .find(|g| g.key() == s.gateway)
        .and_then(|g| g.spec.servers.get(s.index))
        .and_then(|srv| srv.port.name.clone())
        .unwrap_or_else(|| "https".into());
    format!("https.{port}.{port_name}.{name}.{ns}")
}

fn cluster_action(dests: &[WeightedCluster]) -> Value {
    match dests {
        [one] => json!({ "cluster": one.cluster }),
        many => {
            json!({ "weighted_clusters": { "clusters": many.iter().map(|d| json!({"name": d.cluster, "weight": d.weight})).collect::<Vec<_>>() } })
        }
    }
}

fn tcp_proxy(snap: &Snapshot, dests: &[WeightedCluster], stat: &str) -> Value {
    let mut cfg = cluster_action(dests);
    cfg["@type"] =
        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy".into();
    cfg["stat_prefix"] = stat.into();
    // The first destination's DestinationRule's `tcp.idleTimeout` and
    // `tcp.maxConnectionDuration`, as Istio sets them (networkfilter.go); only when a
    // rule sets them.
    let first = dests.first().and_then(|d| snap.clusters.get(&d.cluster));
    if let Some(t) = first.and_then(|c| c.tcp_idle_timeout) {
        cfg["idle_timeout"] = cluster_policy::duration(t).into();
    }
    if let Some(t) = first.and_then(|c| c.tcp_max_duration) {
        cfg["max_downstream_connection_duration"] = cluster_policy::duration(t).into();
    }
    json!({ "name": "envoy.filters.network.tcp_proxy", "typed_config": cfg })
}

fn hcm(route: &str, stat: &str) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat,
            "rds": { "route_config_name": route },
        }
    })
}

/// Envoy's listener for one port, as Istio builds it for a gateway: named
/// `<address>_<port>` after the first bind address; a dual-stack listener lists the
/// other one in `additional_addresses` (how istioctl shows `0.0.0.0,::`).
fn listener_json(snap: &Snapshot, l: &Listener, addrs: &[IpAddr]) -> Value {
    let bind = addrs.first().copied().unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let name = format!("{bind}_{}", l.port);
    let stat = format!("outbound_{name}");
    // toFilterChainMatch (pilot/pkg/networking/core/listener.go): server names sorted,
    // none at all when one is "*"; passthrough chains set no transport protocol.
    let server_names = |hosts: &[String]| -> Value {
        let mut h = hosts.to_vec();
        if h.iter().any(|h| h == "*") {
            return json!({});
        }
        h.sort();
        json!({ "server_names": h })
    };
    let mut chains = Vec::new();
    for t in &l.tls {
        chains.push(json!({
            "filter_chain_match": server_names(&t.sni_hosts),
            "filters": [tcp_proxy(snap, &t.destinations, &stat)],
            "metadata": vs_metadata(&t.name),
        }));
    }
    for (i, s) in l.servers.iter().enumerate() {
        // A TLS-terminating TLS server: its chain is the tcp_proxy of its `tcp` route
        // (none without one, as Istio builds none).
        let tcp_route = l
            .terminated_tcp
            .iter()
            .find(|(j, _)| *j == i)
            .map(|(_, r)| r);
        let terminates_tcp = s.kind == ServerKind::TlsTerminate && tcp_route.is_some();
        if s.kind != ServerKind::HttpsTerminate && !terminates_tcp {
            continue;
        }
        let secret = s
            .tls
            .as_ref()
            .and_then(|t| t.credential_name.clone())
            .map(|c| format!("kubernetes://{c}"));
        chains.push(json!({
            "filter_chain_match": server_names(&crate::plan::routing::server_hosts(s)),
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "common_tls_context": { "tls_certificate_sds_secret_configs": [{ "name": secret }] },
                    "require_client_certificate": matches!(s.tls_mode, crate::config::TlsMode::Mutual),
                }
            },
            // Istio (gateway.go): an HTTPS server's `name` is its HCM's stat prefix.
            "filters": match tcp_route {
                Some(r) if terminates_tcp => json!([tcp_proxy(snap, &r.destinations, &stat)]),
                _ => json!([hcm(&https_route_name(snap, l.port, s), s.name.as_deref().filter(|n| !n.is_empty()).unwrap_or(&stat))]),
            },
        }));
    }
    if l.servers.iter().any(|s| s.kind == ServerKind::Http) {
        chains.push(json!({ "filters": [hcm(&format!("http.{}", l.port), &stat)] }));
    }
    if let Some(t) = &l.tcp {
        chains.push(json!({
            "filters": [tcp_proxy(snap, &t.destinations, &stat)],
            "metadata": vs_metadata(&t.name),
        }));
    }
    let mut listener = json!({
        "@type": T_LISTENER,
        "name": name,
        "address": { "socket_address": { "address": bind.to_string(), "port_value": l.port } },
        "filter_chains": chains,
    });
    if addrs.len() > 1 {
        listener["additional_addresses"] = addrs[1..]
            .iter()
            .map(|a| json!({ "address": { "socket_address": { "address": a.to_string(), "port_value": l.port } } }))
            .collect::<Vec<_>>()
            .into();
    }
    json!({ "name": name, "active_state": { "listener": listener } })
}

fn vs_metadata(vs: &str) -> Value {
    let (ns, name) = vs.split_once('/').unwrap_or(("default", vs));
    json!({ "filter_metadata": { "istio": {
        "config": format!("/apis/networking.istio.io/v1alpha3/namespaces/{ns}/virtual-service/{name}")
    }}})
}

fn string_match(m: &StringMatch) -> Value {
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), _, _) => json!({ "exact": e }),
        (_, Some(p), _) => json!({ "prefix": p }),
        (_, _, Some(r)) => json!({ "safe_regex": { "regex": r } }),
        _ => json!({}),
    }
}

/// Istio's translateCORSPolicy (route.go): the route's CORS filter config.
fn cors_json(c: &crate::config::istio::CorsPolicy) -> Value {
    let origins: Vec<Value> = match c.allow_origins.as_deref().filter(|l| !l.is_empty()) {
        Some(list) => list.iter().map(string_match).collect(),
        None => c
            .allow_origin
            .iter()
            .map(|o| json!({ "exact": o }))
            .collect(),
    };
    let mut v = json!({
        "@type": "type.googleapis.com/envoy.config.route.v3.CorsPolicy",
        "allow_origin_string_match": origins,
        "filter_enabled": { "default_value": { "numerator": 100 } },
        "forward_not_matching_preflights": c.unmatched_preflights != Some(crate::config::istio::UnmatchedPreflights::Ignore),
    });
    for (k, list) in [
        ("allow_methods", &c.allow_methods),
        ("allow_headers", &c.allow_headers),
        ("expose_headers", &c.expose_headers),
    ] {
        if !list.is_empty() {
            v[k] = list.join(",").into();
        }
    }
    if let Some(m) = &c.max_age {
        v["max_age"] = m.duration.as_secs().to_string().into();
    }
    if let Some(b) = c.allow_credentials {
        v["allow_credentials"] = b.into();
    }
    v
}

/// Envoy routes of one VirtualService `http[]` entry: one per `match` block, named as
/// Istio's `TranslateRoute` names them (pilot/pkg/networking/core/route/route.go):
/// `http[].name`, plus `.<match name>` for a named block; no `name` at all when that is
/// empty (protojson omits an empty string). The data plane logs the same name as
/// `%ROUTE_NAME%` (`plan::routing::Route::envoy_name`).
fn routes_json(vs: &str, e: &HttpRouteEntry) -> Vec<Value> {
    let r = &e.route;
    let action = |m: Value, match_name: Option<&str>| {
        let mut name = r.name.clone().unwrap_or_default();
        if let Some(n) = match_name.filter(|n| !n.is_empty()) {
            name = format!("{name}.{n}");
        }
        let mut route = json!({ "match": m, "metadata": vs_metadata(vs) });
        if !name.is_empty() {
            route["name"] = name.into();
        }
        if let Some(d) = &r.direct_response {
            route["direct_response"] = json!({ "status": d.status });
        } else if let Some(red) = &r.redirect {
            route["redirect"] = serde_json::to_value(red).unwrap_or_default();
        } else {
            route["route"] = cluster_action(&e.destinations);
            if !e.mirrors.is_empty() {
                route["route"]["request_mirror_policies"] = e
                    .mirrors
                    .iter()
                    .map(|m| json!({ "cluster": m.cluster, "runtime_fraction": { "default_value": { "numerator": m.per_million, "denominator": "MILLION" } } }))
                    .collect::<Vec<_>>()
                    .into();
            }
        }
        if let Some(c) = &r.cors_policy {
            route["typed_per_filter_config"] = json!({ "envoy.filters.http.cors": cors_json(c) });
        }
        route
    };
    if r.matches.is_empty() {
        return vec![action(json!({ "prefix": "/" }), None)];
    }
    r.matches
        .iter()
        .map(|m| {
            let mut mj = match m.uri.as_ref().map(string_match) {
                Some(Value::Object(o)) if o.contains_key("exact") => json!({ "path": o["exact"] }),
                Some(Value::Object(o)) if !o.is_empty() => Value::Object(o),
                _ => json!({ "prefix": "/" }),
            };
            if m.ignore_uri_case {
                mj["case_sensitive"] = false.into();
            }
            let mut headers: Vec<Value> = m
                .headers
                .iter()
                .map(|(k, v)| json!({ "name": k, "string_match": string_match(v) }))
                .collect();
            if let Some(meth) = &m.method {
                headers.push(json!({ "name": ":method", "string_match": string_match(meth) }));
            }
            if let Some(a) = &m.authority {
                headers.push(json!({ "name": ":authority", "string_match": string_match(a) }));
            }
            if !headers.is_empty() {
                mj["headers"] = headers.into();
            }
            if !m.query_params.is_empty() {
                mj["query_parameters"] = m
                    .query_params
                    .iter()
                    .map(|(k, v)| json!({ "name": k, "string_match": string_match(v) }))
                    .collect::<Vec<_>>()
                    .into();
            }
            action(mj, m.name.as_deref())
        })
        .collect()
}

/// Istio's `host.Name.SubsetOf`: every host `a` matches is matched by `b`.
fn host_subset_of(a: &str, b: &str) -> bool {
    if b == "*" {
        return true;
    }
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(_), None) => false,
        (_, Some(suffix)) => a.ends_with(suffix) && a.len() > suffix.len() || a == b,
        (None, None) => a == b,
    }
}

/// Istio's `host.Names.Intersection` (pkg/config/host/names.go): for each pair, the
/// more specific host when one covers the other, without duplicates.
fn host_intersection(server: &[String], vs: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for h in server {
        for o in vs {
            let pick = if host_subset_of(h, o) {
                h
            } else if host_subset_of(o, h) {
                o
            } else {
                continue;
            };
            if !out.contains(pick) {
                out.push(pick.clone());
            }
        }
    }
    out
}

/// One route configuration, as Istio's `buildGatewayHTTPRouteConfig`
/// (pilot/pkg/networking/core/gateway.go) builds it: for each VirtualService bound to
/// `servers`, a virtual host `<host>:<port>` per host in the intersection of the
/// server's hosts (those visible to the VirtualService's namespace) and the
/// VirtualService's hosts, domains just that host (`ignore_port_in_host_matching`);
/// routes of several VirtualServices for one host are appended; none at all gives
/// the `blackhole:<port>` virtual host for `*` with no route (404 NR).
fn route_config_json(l: &Listener, name: &str, servers: &[usize]) -> Value {
    let mut vhosts: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for vh in &l.http {
        let vs_ns = vh.name.split_once('/').map_or("default", |(ns, _)| ns);
        let mut hosts: Vec<String> = Vec::new();
        for &i in vh.servers.iter().filter(|i| servers.contains(i)) {
            let Some(server) = l.servers.get(i) else {
                continue;
            };
            let gw_ns = server
                .gateway
                .split_once('/')
                .map_or("default", |(ns, _)| ns);
            let visible: Vec<String> = server
                .hosts
                .iter()
                .filter_map(|h| match h.split_once('/') {
                    Some((ns, h)) if ns == "*" || ns == vs_ns || (ns == "." && gw_ns == vs_ns) => {
                        Some(h.to_ascii_lowercase())
                    }
                    Some(_) => None,
                    None => Some(h.to_ascii_lowercase()),
                })
                .collect();
            for h in host_intersection(&visible, &vh.hosts) {
                if !hosts.contains(&h) {
                    hosts.push(h);
                }
            }
        }
        for host in hosts {
            let routes = vhosts.entry(host).or_default();
            for e in &vh.routes {
                routes.extend(routes_json(&vh.name, e));
            }
        }
    }
    let port = servers
        .first()
        .and_then(|&i| l.servers.get(i))
        .map_or(l.port, |_| l.port);
    let mut virtual_hosts: Vec<Value> = vhosts
        .into_iter()
        .map(|(host, routes)| {
            json!({
                "name": format!("{host}:{port}"),
                "domains": [host],
                "routes": routes,
                "include_request_attempt_count": true,
            })
        })
        .collect();
    if virtual_hosts.is_empty() {
        virtual_hosts.push(json!({ "name": format!("blackhole:{port}"), "domains": ["*"] }));
    }
    json!({
        "@type": T_ROUTE,
        "name": name,
        "virtual_hosts": virtual_hosts,
        "validate_clusters": false,
        "ignore_port_in_host_matching": true,
    })
}

fn cert_info(pem: &[u8]) -> Value {
    use x509_parser::prelude::*;
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(pem) else {
        return json!({ "error": "not a PEM certificate" });
    };
    let Ok((_, cert)) = X509Certificate::from_der(&pem.contents) else {
        return json!({ "error": "not an X.509 certificate" });
    };
    let v = cert.validity();
    let rfc = |t: &ASN1Time| {
        std::time::UNIX_EPOCH
            .checked_add(Duration::from_secs(t.timestamp().max(0) as u64))
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_default()
    };
    json!({
        "subject": cert.subject().to_string(),
        "issuer": cert.issuer().to_string(),
        "subject_alt_names": crate::plan::tls::subject_alt_names(&pem.contents),
        // secretMetaFromCert (istioctl/pkg/writer/compare/sds/util.go): the serial as
        // fmt.Sprintf("%032x", cert.SerialNumber), CA or not, the SPIFFE trust domain.
        "serial_number": format!("{:0>32}", cert.tbs_certificate.serial.to_str_radix(16)),
        "is_ca": cert.is_ca(),
        "trust_domain": crate::plan::tls::subject_alt_names(&pem.contents)
            .iter()
            .filter_map(|u| u.strip_prefix("spiffe://"))
            .map(|u| u.split('/').next().unwrap_or_default().to_string())
            .next_back()
            .unwrap_or_default(),
        "not_before": rfc(&v.not_before),
        "not_after": rfc(&v.not_after),
        "valid": v.is_valid(),
    })
}

fn secrets_json(snap: &Snapshot) -> Vec<Value> {
    let mut names: Vec<String> = snap
        .listeners
        .iter()
        .flat_map(|l| &l.servers)
        .filter(|s| s.kind == ServerKind::HttpsTerminate)
        .filter_map(|s| s.tls.as_ref()?.credential_name.clone())
        .collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for n in names {
        let Some(sec) = snap.secrets.get(&format!("{}/{n}", snap.namespace)) else {
            continue;
        };
        let get = |keys: &[&str]| keys.iter().find_map(|k| sec.data.get(*k));
        if let Some(crt) = get(&["tls.crt", "cert"]) {
            let name = format!("kubernetes://{n}");
            out.push(json!({
                "name": name,
                "secret": {
                    "@type": T_SECRET,
                    "name": name,
                    "tls_certificate": {
                        "certificate_chain": cert_info(crt),
                        "private_key": { "inline_string": "[redacted]" },
                    }
                }
            }));
        }
        let ca = get(&["ca.crt", "cacert"]).or_else(|| {
            snap.secrets
                .get(&format!("{}/{n}-cacert", snap.namespace))
                .and_then(|s| s.data.get("ca.crt").or_else(|| s.data.get("cacert")))
        });
        if let Some(ca) = ca {
            let name = format!("kubernetes://{n}-cacert");
            out.push(json!({
                "name": name,
                "secret": {
                    "@type": T_SECRET,
                    "name": name,
                    "validation_context": { "trusted_ca": cert_info(ca) },
                }
            }));
        }
    }
    out
}

/// The credentials of inactive servers (their Secret does not exist), as Envoy lists an
/// SDS secret that never arrived: warming, uninitialized, no certificate (istioctl's
/// secret table shows them `WARMING`, VALID CERT false, the rest blank).
fn warming_secrets_json(snap: &Snapshot) -> Vec<Value> {
    let mut names: Vec<&str> = snap
        .inactive
        .iter()
        .map(|s| s.credential_name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|n| {
            let name = format!("kubernetes://{n}");
            json!({
                "name": name,
                "secret": { "@type": T_SECRET, "name": name },
            })
        })
        .collect()
}

/// Envoy's bootstrap, as far as this gateway has one: the node (Istio's router id
/// `router~<ip>~<name>.<namespace>~<namespace>.svc.cluster.local`) and, in Envoy's
/// `user_agent_build_version`, the gateway's own version (what istioctl prints as
/// "Envoy Version").
fn bootstrap_json(snap: &Snapshot, addrs: &[IpAddr]) -> Value {
    let ns = &snap.namespace;
    let ip = addrs.first().map_or("0.0.0.0".into(), |a| a.to_string());
    let v: Vec<u64> = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    json!({ "node": {
        "id": format!("router~{ip}~gateway.{ns}~{ns}.svc.cluster.local"),
        "cluster": format!("gateway.{ns}"),
        "metadata": { "NAMESPACE": ns },
        "user_agent_name": "gateway",
        "user_agent_build_version": { "version": {
            "major_number": v.first().copied().unwrap_or(0),
            "minor_number": v.get(1).copied().unwrap_or(0),
            "patch": v.get(2).copied().unwrap_or(0),
        }},
    }})
}

/// Envoy's bootstrap listeners of Istio's proxy for the status and Prometheus ports,
/// as `tools/packaging/common/envoy_bootstrap.json` (istio/istio 86c9f01) writes them:
/// `<wildcard>_<port>` with the other wildcard in `additionalAddresses` when dual
/// stack, `ignore_global_conn_limit` and `bypass_overload_manager`, one chain with an
/// HTTP connection manager (`stat_prefix` `agent` / `stats`) whose inline route
/// configuration has one virtual host `backend` for `*` with one prefix route to the
/// `agent` (pilot-agent) or `prometheus_stats` (the admin port) cluster. Here the
/// gateway answers both itself (`admin::serve_istio_port`); the clusters are named as
/// Istio names them but not listed (this gateway has no pilot-agent and no such
/// clusters). Each listener's inline route configuration, and the static route
/// configurations of the dump (Envoy lists inline route configurations there; istioctl
/// prints them as the unnamed `backend` rows).
fn istio_port_listeners(
    addrs: &[IpAddr],
    ports: &crate::server::IstioPorts,
) -> (Vec<Value>, Vec<Value>) {
    let mut listeners = Vec::new();
    let mut routes = Vec::new();
    // The bootstrap's order: the Prometheus listener, then the status one.
    for (port, stat, prefix, cluster) in [
        (
            ports.prometheus,
            "stats",
            "/stats/prometheus",
            "prometheus_stats",
        ),
        (ports.status, "agent", "/healthz/ready", "agent"),
    ] {
        let Some(port) = port else { continue };
        let bind = addrs.first().copied().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let route_config = json!({
            "virtual_hosts": [{
                "name": "backend",
                "domains": ["*"],
                "routes": [{ "match": { "prefix": prefix }, "route": { "cluster": cluster } }],
            }],
        });
        let mut listener = json!({
            "@type": T_LISTENER,
            "name": format!("{bind}_{port}"),
            "address": { "socket_address": { "address": bind.to_string(), "port_value": port } },
            "filter_chains": [{ "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "codec_type": "AUTO",
                    "stat_prefix": stat,
                    "route_config": route_config,
                    "http_filters": [{
                        "name": "envoy.filters.http.router",
                        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
                    }],
                },
            }] }],
            "ignore_global_conn_limit": true,
            "bypass_overload_manager": true,
        });
        if addrs.len() > 1 {
            listener["additional_addresses"] = addrs[1..]
                .iter()
                .map(|a| json!({ "address": { "socket_address": { "address": a.to_string(), "port_value": port } } }))
                .collect::<Vec<_>>()
                .into();
        }
        listeners.push(json!({ "listener": listener }));
        let mut rc = route_config;
        rc["@type"] = T_ROUTE.into();
        routes.push(json!({ "route_config": rc }));
    }
    // Envoy keeps static route configurations in a hash set, so their dump order is
    // its own; Istio in Action's `proxy-config routes` of an ingress gateway lists
    // /healthz/ready before /stats/prometheus, and so do we.
    routes.reverse();
    (listeners, routes)
}

/// The Envoy-shaped dump `/config_dump` serves (plus the resources as loaded). `addrs`:
/// the addresses every Gateway port listens on (`0.0.0.0` and `::` when dual-stack);
/// `ports`: Istio's status and Prometheus ports, shown as Envoy's static listeners.
pub fn config_dump(snap: &Snapshot, addrs: &[IpAddr], ports: &crate::server::IstioPorts) -> Value {
    let (static_listeners, static_routes) = istio_port_listeners(addrs, ports);
    let listeners: Vec<Value> = snap
        .listeners
        .iter()
        .map(|l| listener_json(snap, l, addrs))
        .collect();
    let mut routes = Vec::new();
    for l in &snap.listeners {
        let http: Vec<usize> = (0..l.servers.len())
            .filter(|i| l.servers[*i].kind == ServerKind::Http)
            .collect();
        if !http.is_empty() {
            routes.push(
                json!({ "route_config": route_config_json(l, &format!("http.{}", l.port), &http) }),
            );
        }
        for (i, s) in l.servers.iter().enumerate() {
            if s.kind == ServerKind::HttpsTerminate {
                let name = https_route_name(snap, l.port, s);
                routes.push(json!({ "route_config": route_config_json(l, &name, &[i]) }));
            }
        }
    }
    let clusters: Vec<Value> = snap
        .clusters
        .values()
        .map(|c| {
            let se = snap.resources.service_entries.iter().find(|se| se.spec.hosts.contains(&c.host));
            // convertResolution (pilot/pkg/networking/core/cluster.go) for a gateway
            // (model.Router): DNS is STRICT_DNS, DNS_ROUND_ROBIN LOGICAL_DNS, STATIC and
            // NONE EDS ("Gateways cannot use passthrough clusters"). A host no
            // ServiceEntry names is looked up by the system resolver: LOGICAL_DNS.
            let kind = match se.map(|se| se.spec.resolution) {
                Some(Resolution::Dns) => "STRICT_DNS",
                Some(Resolution::DnsRoundRobin) | None => "LOGICAL_DNS",
                Some(Resolution::Static | Resolution::None) => "EDS",
            };
            let lb: Vec<Value> = c
                .endpoints
                .iter()
                .zip(&c.weights)
                .map(|(e, w)| {
                    let mut ep = json!({
                        "endpoint": { "address": { "socket_address": { "address": e.ip().to_string(), "port_value": e.port() } } },
                        "health_status": "HEALTHY",
                    });
                    if *w != 1 {
                        ep["load_balancing_weight"] = (*w).into();
                    }
                    ep
                })
                .collect();
            let mut istio = json!({ "services": [{ "host": c.host, "namespace": c.host.split('.').nth(1).unwrap_or("default") }], "port": c.port });
            // Istio's cluster metadata (pilot/pkg/networking/util AddConfigInfoMetadata,
            // AddSubsetToMetadata): the DestinationRule's path and the subset.
            if let Some((ns, name)) = c.destination_rule.as_deref().and_then(|k| k.split_once('/')) {
                istio["config"] = format!("/apis/networking.istio.io/v1/namespaces/{ns}/destination-rule/{name}").into();
            }
            if !c.subset.is_empty() {
                istio["subset"] = c.subset.clone().into();
            }
            let mut cluster = json!({
                "@type": T_CLUSTER,
                "name": c.name,
                "type": kind,
                "metadata": { "filter_metadata": { "istio": istio } },
                "load_assignment": { "cluster_name": c.name, "endpoints": [{ "lb_endpoints": lb }] },
            });
            lb_policy_json(&c.lb, &mut cluster);
            cluster_policy::add(c, &mut cluster);
            json!({ "cluster": cluster })
        })
        .collect();
    let mut secrets_dump = json!({ "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump", "dynamic_active_secrets": secrets_json(snap) });
    let warming = warming_secrets_json(snap);
    if !warming.is_empty() {
        secrets_dump["dynamic_warming_secrets"] = warming.into();
    }
    let mut configs = json!([
            { "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": bootstrap_json(snap, addrs) },
            { "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "static_listeners": static_listeners, "dynamic_listeners": listeners },
            { "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "static_route_configs": static_routes, "dynamic_route_configs": routes },
            { "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamic_active_clusters": clusters },
            secrets_dump,
    ]);
    // Envoy's messages in protojson's field order (the resources as loaded keep theirs).
    protojson_order(&mut configs);
    json!({
        "configs": configs,
        "resources": snap.resources,
        "inactive_servers": snap.inactive,
        "warnings": snap.warnings.iter().map(|w| json!({
            "code": w.code,
            "location": w.loc.to_string(),
            "resource": w.subject,
            "path": w.path,
            "message": w.message,
        })).collect::<Vec<_>>(),
    })
}

/// The keys of the Envoy messages this dump writes, in the order protojson prints them:
/// each message's fields in declaration order (google.golang.org/protobuf
/// encoding/protojson encode.go `order.RangeFields(fields, order.IndexNameFieldOrder,
/// ...)`, internal/order/order.go: "Non-extensions are sorted according to their
/// declaration index"), which is how `istioctl proxy-config ... -o json` prints them
/// (its MessageSlice marshals each message with protojson). One list serves every
/// message because the messages we write agree on the relative order of the keys
/// they share (declarations from envoyproxy/data-plane-api 84e8436):
/// - Listener: name, address, additional_addresses, filter_chains, ...,
///   ignore_global_conn_limit, bypass_overload_manager; SocketAddress: protocol,
///   address, port_value; FilterChain: filter_chain_match, filters, metadata,
///   transport_socket; Filter, HttpFilter, TransportSocket: name, typed_config;
///   DownstreamTlsContext: common_tls_context, require_client_certificate;
/// - HttpConnectionManager: codec_type, stat_prefix, rds, route_config,
///   http_filters; TcpProxy: stat_prefix, cluster, weighted_clusters;
/// - RouteConfiguration: name, virtual_hosts, validate_clusters,
///   ignore_port_in_host_matching; VirtualHost: name, domains, routes,
///   include_request_attempt_count; Route: name, match, route | redirect |
///   direct_response, metadata; RouteMatch: prefix | path | safe_regex,
///   case_sensitive, headers, query_parameters; HeaderMatcher: name, string_match;
///   RouteAction: cluster, weighted_clusters; ClusterWeight: name, weight;
/// - Cluster: name, type, load_assignment, metadata; ClusterLoadAssignment:
///   cluster_name, endpoints; LbEndpoint: endpoint, health_status;
/// - the admin dumps: version_info, static_*, dynamic_*; DynamicListener: name,
///   active_state; DynamicSecret: name, secret; Secret: name, tls_certificate,
///   validation_context; TlsCertificate: certificate_chain, private_key;
/// - Node: id, cluster, metadata, user_agent_name, user_agent_build_version;
///   SemanticVersion: major_number, minor_number, patch.
///
/// `@type` comes first (protojson writes an Any's type URL first). Keys not listed
/// (the certificate facts this dump adds, the resources as loaded) follow in
/// alphabetical order, and a `filter_metadata` value is a map of `Struct`s, whose keys
/// protojson sorts (order.GenericKeyOrder): sorted all the way down.
const PROTOJSON_ORDER: &[&str] = &[
    "@type",
    "name",
    "id",
    "cluster_name",
    "bootstrap",
    "node",
    "version_info",
    "static_listeners",
    "static_route_configs",
    "static_clusters",
    "static_secrets",
    "dynamic_listeners",
    "dynamic_route_configs",
    "dynamic_active_clusters",
    "dynamic_active_secrets",
    "active_state",
    "listener",
    "protocol",
    "address",
    "port_value",
    "socket_address",
    "additional_addresses",
    "filter_chains",
    "filter_chain_match",
    "server_names",
    "filters",
    "typed_config",
    "common_tls_context",
    "tls_certificate_sds_secret_configs",
    "require_client_certificate",
    "codec_type",
    "stat_prefix",
    "rds",
    "route_config_name",
    "route_config",
    "http_filters",
    "virtual_hosts",
    "domains",
    "routes",
    "match",
    "prefix",
    "path",
    "safe_regex",
    "exact",
    "regex",
    "case_sensitive",
    "headers",
    "string_match",
    "query_parameters",
    "route",
    "redirect",
    "direct_response",
    "status",
    "cluster",
    "weighted_clusters",
    "clusters",
    "weight",
    "type",
    "lb_policy",
    "load_assignment",
    "ring_hash_lb_config",
    "minimum_ring_size",
    "maglev_lb_config",
    "table_size",
    "endpoints",
    "lb_endpoints",
    "endpoint",
    "health_status",
    "metadata",
    "filter_metadata",
    "transport_socket",
    "validate_clusters",
    "include_request_attempt_count",
    "ignore_port_in_host_matching",
    "ignore_global_conn_limit",
    "bypass_overload_manager",
    "user_agent_name",
    "user_agent_build_version",
    "version",
    "major_number",
    "minor_number",
    "patch",
    "secret",
    "tls_certificate",
    "certificate_chain",
    "private_key",
    "validation_context",
    "trusted_ca",
];

/// Envoy's `lb_policy` and its config, as Istio sets them (cluster.go `applyLoadBalancer`):
/// ROUND_ROBIN is the enum's zero value, so protojson leaves it out, as Envoy's dump does.
fn lb_policy_json(lb: &crate::config::dest_rules::LbPolicy, cluster: &mut Value) {
    use crate::config::dest_rules::LbPolicy;
    match lb {
        LbPolicy::RoundRobin => {}
        LbPolicy::LeastRequest | LbPolicy::Random => {
            cluster["lb_policy"] = lb.envoy_name().into();
        }
        LbPolicy::RingHash {
            minimum_ring_size, ..
        } => {
            cluster["lb_policy"] = lb.envoy_name().into();
            cluster["ring_hash_lb_config"] =
                json!({ "minimum_ring_size": minimum_ring_size.to_string() });
        }
        LbPolicy::Maglev { table_size, .. } => {
            cluster["lb_policy"] = lb.envoy_name().into();
            cluster["maglev_lb_config"] = json!({ "table_size": table_size.to_string() });
        }
    }
}

/// Puts every object's keys in [`PROTOJSON_ORDER`] (the rest after, sorted).
pub fn protojson_order(v: &mut Value) {
    reorder(v, |k| {
        PROTOJSON_ORDER
            .iter()
            .position(|o| *o == k)
            .unwrap_or(usize::MAX)
    });
}

/// Sorts every object's keys (sigs.k8s.io/yaml `JSONToYAML`, which istioctl's `-o yaml`
/// goes through, decodes into Go maps and so writes keys sorted).
pub fn sorted_keys(v: &mut Value) {
    reorder(v, |_| 0);
}

fn reorder(v: &mut Value, rank: fn(&str) -> usize) {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = std::mem::take(m).into_iter().collect();
            entries.sort_by(|a, b| (rank(&a.0), &a.0).cmp(&(rank(&b.0), &b.0)));
            for (k, v) in &mut entries {
                if k == "filter_metadata" {
                    reorder(v, |_| 0);
                } else {
                    reorder(v, rank);
                }
            }
            *m = entries.into_iter().collect();
        }
        Value::Array(a) => a.iter_mut().for_each(|v| reorder(v, rank)),
        _ => {}
    }
}

// === the tables ===

/// `gateway proxy-config xdp`: the compiled (port, source prefix) verdicts, then the
/// kernel's counters per rule and port.
/// `proxy-config splice`: the admin `/debug/splice` view as tables.
pub fn render_splice(v: &Value, json: bool) -> String {
    if json {
        return format!("{v:#}\n");
    }
    let s = |x: &Value| match x {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut out = format!("MODE: {}", s(&v["mode"]));
    if let Some(b) = v["budget"].as_u64() {
        out += &format!("   BUDGET: {} KiB per direction", b / 1024);
    }
    if v["offload"].is_object() {
        out += &format!(
            "   OFFLOAD: after {} bytes at >= {} bytes per read",
            s(&v["offload"]["min_bytes"]),
            s(&v["offload"]["min_chunk"])
        );
    }
    out += "\n\n";
    let rows = ["kernel", "splice", "uring", "copy"]
        .iter()
        .map(|p| {
            let c = &v["paths"][p];
            vec![
                p.to_string(),
                s(&c["active"]),
                s(&c["flows"]),
                s(&c["bytes"]),
            ]
        })
        .collect();
    out += &table(&["PATH", "ACTIVE", "FLOWS", "BYTES"], rows);
    out += "\n";
    let mut rows = vec![
        vec!["offloads".to_string(), s(&v["offloads"])],
        vec!["pauses".to_string(), s(&v["pauses"])],
        vec!["paused now".to_string(), s(&v["paused_now"])],
    ];
    if let Some(f) = v["fallbacks"].as_object() {
        rows.extend(f.iter().map(|(k, n)| vec![format!("fallback {k}"), s(n)]));
    }
    if let Some(k) = v["kernel"].as_object() {
        rows.extend(k.iter().map(|(k, n)| vec![format!("kernel {k}"), s(n)]));
    }
    if let Some(m) = v["maps"].as_object() {
        rows.extend(
            m.iter()
                .map(|(k, n)| vec![format!("map {k} entries"), s(n)]),
        );
    }
    out += &table(&["COUNTER", "VALUE"], rows);
    out
}

pub fn render_xdp(v: &Value, json: bool) -> String {
    if json {
        return format!("{v:#}\n");
    }
    let s = |x: &Value| match x {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let list = |x: &Value| x.as_array().cloned().unwrap_or_default();
    let ifaces: Vec<String> = list(&v["interfaces"])
        .iter()
        .map(|i| format!("{} ({})", s(&i["name"]), s(&i["mode"])))
        .collect();
    let mut out = format!(
        "MODE: {}{}\n\n",
        s(&v["mode"]),
        if ifaces.is_empty() {
            String::new()
        } else {
            format!(" on {}", ifaces.join(", "))
        }
    );
    let rows = list(&v["entries"])
        .iter()
        .map(|e| {
            vec![
                s(&e["port"]),
                s(&e["prefix"]),
                s(&e["action"]),
                s(&e["rule"]),
            ]
        })
        .collect();
    out += &table(&["PORT", "SOURCE PREFIX", "ACTION", "RULE"], rows);
    let counters = list(&v["counters"]["rules"]);
    if !counters.is_empty() {
        let rows = counters
            .iter()
            .map(|c| {
                vec![
                    s(&c["rule"]),
                    s(&c["port"]),
                    s(&c["action"]),
                    s(&c["pass_packets"]),
                    s(&c["drop_packets"]),
                    s(&c["drop_bytes"]),
                ]
            })
            .collect();
        out += "\n";
        out += &table(
            &[
                "RULE",
                "PORT",
                "ACTION",
                "PASSED PKTS",
                "DROPPED PKTS",
                "DROPPED BYTES",
            ],
            rows,
        );
    }
    out
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// GETs `path` from the admin API (HTTP/1.0: the server closes when done).
pub fn fetch(admin: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(5))
        .map_err(|e| format!("cannot reach the gateway's admin API at {admin}: {e} (is `gateway run` up? see --admin-addr)"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {admin}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("reading from {admin}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{admin}: not an HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!(
            "{admin}{path}: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests;

/// Envoy's `/logging` answer for this process: `active loggers:` then one
/// `  <logger>: <level>` line per RUST_LOG directive (`default` for the bare level;
/// Envoy's level names, `warn` is `warning`). As main.rs reads it: unset or invalid
/// RUST_LOG is `info`.
pub fn active_loggers() -> String {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| tracing_subscriber::EnvFilter::try_new(v).is_ok() && !v.trim().is_empty())
        .unwrap_or_else(|| "info".into());
    let mut out = String::from("active loggers:\n");
    for d in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (logger, level) = d.rsplit_once('=').unwrap_or(("default", d));
        let level = match level.to_ascii_lowercase().as_str() {
            "warn" => "warning".to_string(),
            l => l.to_string(),
        };
        out += &format!("  {logger}: {level}\n");
    }
    out
}

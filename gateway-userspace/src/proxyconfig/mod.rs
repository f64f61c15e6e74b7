//! `gateway proxy-config` and the admin `/config_dump` behind it.
//!
//! As with Istio, the gateway serves an Envoy-shaped config dump ([`config_dump`]:
//! listeners with their filter chains, route configurations, clusters with their
//! endpoints, secrets) and the CLI renders it client-side into the tables
//! `istioctl proxy-config` prints ([`render`]), or prints its JSON with `-o json`.
//! Secrets show certificate facts (subject, SANs, serial, validity), never key material.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Listener,
    Route,
    Cluster,
    Endpoint,
    Secret,
    /// The AuthorizationPolicy rules compiled for the XDP guard, and their counters
    /// (admin `/xdp`).
    Xdp,
    /// How L4 flows are moved: per path (kernel, splice, uring, copy) the flows and
    /// bytes, offloads, pauses, fallbacks and the kernel program's counters (admin
    /// `/debug/splice`).
    Splice,
    /// Everything, as /config_dump returns it.
    All,
}

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

fn tcp_proxy(dests: &[WeightedCluster], stat: &str) -> Value {
    let mut cfg = cluster_action(dests);
    cfg["@type"] =
        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy".into();
    cfg["stat_prefix"] = stat.into();
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

fn listener_json(snap: &Snapshot, l: &Listener, bind: IpAddr) -> Value {
    let name = format!("{bind}_{}", l.port);
    let stat = format!("outbound_{name}");
    let mut chains = Vec::new();
    for t in &l.tls {
        chains.push(json!({
            "filter_chain_match": { "server_names": t.sni_hosts, "transport_protocol": "tls" },
            "filters": [tcp_proxy(&t.destinations, &stat)],
            "metadata": vs_metadata(&t.name),
        }));
    }
    for s in &l.servers {
        if s.kind != ServerKind::HttpsTerminate {
            continue;
        }
        let secret = s
            .tls
            .as_ref()
            .and_then(|t| t.credential_name.clone())
            .map(|c| format!("kubernetes://{c}"));
        chains.push(json!({
            "filter_chain_match": { "server_names": crate::http::routing::server_hosts(s) },
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "common_tls_context": { "tls_certificate_sds_secret_configs": [{ "name": secret }] },
                    "require_client_certificate": matches!(s.tls_mode, crate::config::TlsMode::Mutual),
                }
            },
            "filters": [hcm(&https_route_name(snap, l.port, s), &stat)],
        }));
    }
    if l.servers.iter().any(|s| s.kind == ServerKind::Http) {
        chains.push(json!({ "filters": [hcm(&format!("http.{}", l.port), &stat)] }));
    }
    if let Some(t) = &l.tcp {
        chains.push(json!({
            "filters": [tcp_proxy(&t.destinations, &stat)],
            "metadata": vs_metadata(&t.name),
        }));
    }
    json!({
        "name": name,
        "active_state": { "listener": {
            "@type": T_LISTENER,
            "name": name,
            "address": { "socket_address": { "address": bind.to_string(), "port_value": l.port } },
            "filter_chains": chains,
        }}
    })
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

/// Envoy routes of one VirtualService `http[]` entry: one per `match` block.
fn routes_json(vs: &str, index: usize, e: &HttpRouteEntry) -> Vec<Value> {
    let vs_name = vs.split('/').nth(1).unwrap_or(vs);
    let r = &e.route;
    let name = r
        .name
        .clone()
        .unwrap_or_else(|| format!("{vs_name}.{index}"));
    let action = |m: Value| {
        let mut route = json!({ "name": name, "match": m, "metadata": vs_metadata(vs) });
        if let Some(d) = &r.direct_response {
            route["direct_response"] = json!({ "status": d.status });
        } else if let Some(red) = &r.redirect {
            route["redirect"] = serde_json::to_value(red).unwrap_or_default();
        } else {
            route["route"] = cluster_action(&e.destinations);
        }
        route
    };
    if r.matches.is_empty() {
        return vec![action(json!({ "prefix": "/" }))];
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
            action(mj)
        })
        .collect()
}

/// One route configuration: the VirtualServices bound to `servers` of the listener,
/// grouped by host into virtual hosts `<host>:<port>` (domains: host, `host:*`).
fn route_config_json(l: &Listener, name: &str, servers: &[usize]) -> Value {
    let mut vhosts: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for vh in &l.http {
        if !vh.servers.iter().any(|s| servers.contains(s)) {
            continue;
        }
        for host in &vh.hosts {
            let routes = vhosts.entry(host.clone()).or_default();
            for (i, e) in vh.routes.iter().enumerate() {
                routes.extend(routes_json(&vh.name, i, e));
            }
        }
    }
    let virtual_hosts: Vec<Value> = vhosts
        .into_iter()
        .map(|(host, routes)| {
            json!({
                "name": format!("{host}:{}", l.port),
                "domains": [host.clone(), format!("{host}:*")],
                "routes": routes,
                "include_request_attempt_count": true,
            })
        })
        .collect();
    json!({
        "@type": T_ROUTE,
        "name": name,
        "virtual_hosts": virtual_hosts,
        "validate_clusters": false,
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
        "subject_alt_names": crate::http::tls::subject_alt_names(&pem.contents),
        "serial_number": cert.raw_serial_as_string().replace(':', ""),
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

/// The Envoy-shaped dump `/config_dump` serves (plus the resources as loaded).
pub fn config_dump(snap: &Snapshot, bind: IpAddr) -> Value {
    let listeners: Vec<Value> = snap
        .listeners
        .iter()
        .map(|l| listener_json(snap, l, bind))
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
            let kind = match se.map(|se| se.spec.resolution) {
                Some(Resolution::Dns) => "STRICT_DNS",
                Some(_) => "EDS",
                None => "LOGICAL_DNS",
            };
            let lb: Vec<Value> = c
                .endpoints
                .iter()
                .map(|e| json!({
                    "endpoint": { "address": { "socket_address": { "address": e.ip().to_string(), "port_value": e.port() } } },
                    "health_status": "HEALTHY",
                }))
                .collect();
            json!({ "cluster": {
                "@type": T_CLUSTER,
                "name": c.name,
                "type": kind,
                "metadata": { "filter_metadata": { "istio": { "services": [{ "host": c.host, "namespace": c.host.split('.').nth(1).unwrap_or("default") }], "port": c.port } } },
                "load_assignment": { "cluster_name": c.name, "endpoints": [{ "lb_endpoints": lb }] },
            }})
        })
        .collect();
    json!({
        "configs": [
            { "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamic_listeners": listeners },
            { "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "dynamic_route_configs": routes },
            { "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamic_active_clusters": clusters },
            { "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump", "dynamic_active_secrets": secrets_json(snap) },
        ],
        "resources": snap.resources,
    })
}

// === the tables ===

fn section<'a>(dump: &'a Value, kind: &str, key: &str) -> &'a [Value] {
    dump["configs"]
        .as_array()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(kind)))
        })
        .and_then(|c| c[key].as_array())
        .map(Vec::as_slice)
        .unwrap_or_default()
}

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

fn str_of(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

fn destination(filters: &Value) -> String {
    let f = &filters[0];
    let cfg = &f["typed_config"];
    if let Some(r) = cfg["rds"]["route_config_name"].as_str() {
        return format!("Route: {r}");
    }
    if let Some(c) = cfg["cluster"].as_str() {
        return format!("Cluster: {c}");
    }
    if let Some(ws) = cfg["weighted_clusters"]["clusters"].as_array() {
        let parts: Vec<String> = ws
            .iter()
            .map(|w| format!("{}({})", str_of(&w["name"]), w["weight"]))
            .collect();
        return format!("Cluster: {}", parts.join(","));
    }
    "-".into()
}

fn vs_of(metadata: &Value) -> String {
    metadata["filter_metadata"]["istio"]["config"]
        .as_str()
        .and_then(|c| {
            let parts: Vec<&str> = c.split('/').collect();
            // /apis/networking.istio.io/v1alpha3/namespaces/<ns>/virtual-service/<name>
            Some(format!("{}.{}", parts.get(7)?, parts.get(5)?))
        })
        .unwrap_or_else(|| "-".into())
}

fn route_match(m: &Value) -> String {
    let path = if let Some(p) = m["prefix"].as_str() {
        format!("{p}*")
    } else if let Some(p) = m["path"].as_str() {
        p.to_string()
    } else if let Some(r) = m["safe_regex"]["regex"].as_str() {
        r.to_string()
    } else {
        "/*".into()
    };
    let extra = m["headers"].as_array().map(|h| h.len()).unwrap_or(0)
        + m["query_parameters"]
            .as_array()
            .map(|q| q.len())
            .unwrap_or(0);
    if extra > 0 {
        format!("{path} (+{extra} more)")
    } else {
        path
    }
}

/// Renders one kind of the dump as `istioctl proxy-config` does (`json`: the objects).
pub fn render(kind: Kind, dump: &Value, name: Option<&str>, json: bool) -> String {
    let keep = |n: &str| name.is_none_or(|want| want == n);
    let pretty = |v: Vec<Value>| format!("{:#}\n", Value::Array(v));
    match kind {
        Kind::All => format!("{dump:#}\n"),
        // Not part of the dump: `gateway proxy-config xdp` reads /xdp (render_xdp).
        Kind::Xdp => "the XDP view is served by /xdp: use render_xdp\n".into(),
        Kind::Splice => "the splice view is served by /debug/splice: use render_splice\n".into(),
        Kind::Listener => {
            let ls: Vec<&Value> = section(dump, "ListenersConfigDump", "dynamic_listeners")
                .iter()
                .map(|l| &l["active_state"]["listener"])
                .filter(|l| keep(l["name"].as_str().unwrap_or_default()))
                .collect();
            if json {
                return pretty(ls.into_iter().cloned().collect());
            }
            let mut rows = Vec::new();
            for l in ls {
                let addr = str_of(&l["address"]["socket_address"]["address"]);
                let port = l["address"]["socket_address"]["port_value"].to_string();
                for c in l["filter_chains"].as_array().into_iter().flatten() {
                    let m = match c["filter_chain_match"]["server_names"].as_array() {
                        Some(names) if !names.is_empty() => format!(
                            "SNI: {}",
                            names.iter().map(str_of).collect::<Vec<_>>().join(",")
                        ),
                        _ => "ALL".into(),
                    };
                    rows.push(vec![
                        addr.clone(),
                        port.clone(),
                        m,
                        destination(&c["filters"]),
                    ]);
                }
            }
            table(&["ADDRESSES", "PORT", "MATCH", "DESTINATION"], rows)
        }
        Kind::Route => {
            let rs: Vec<&Value> = section(dump, "RoutesConfigDump", "dynamic_route_configs")
                .iter()
                .map(|r| &r["route_config"])
                .filter(|r| keep(r["name"].as_str().unwrap_or_default()))
                .collect();
            if json {
                return pretty(rs.into_iter().cloned().collect());
            }
            let mut rows = Vec::new();
            for r in rs {
                let rn = str_of(&r["name"]);
                for vh in r["virtual_hosts"].as_array().into_iter().flatten() {
                    let domains = vh["domains"]
                        .as_array()
                        .and_then(|d| d.first())
                        .map(str_of)
                        .unwrap_or_default();
                    for route in vh["routes"].as_array().into_iter().flatten() {
                        rows.push(vec![
                            rn.clone(),
                            str_of(&vh["name"]),
                            domains.clone(),
                            route_match(&route["match"]),
                            vs_of(&route["metadata"]),
                        ]);
                    }
                }
            }
            table(
                &["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"],
                rows,
            )
        }
        Kind::Cluster => {
            let cs: Vec<&Value> = section(dump, "ClustersConfigDump", "dynamic_active_clusters")
                .iter()
                .map(|c| &c["cluster"])
                .filter(|c| keep(c["name"].as_str().unwrap_or_default()))
                .collect();
            if json {
                return pretty(cs.into_iter().cloned().collect());
            }
            let rows = cs
                .iter()
                .map(|c| {
                    let n = str_of(&c["name"]);
                    let parts: Vec<&str> = n.split('|').collect();
                    vec![
                        parts.get(3).unwrap_or(&"-").to_string(),
                        parts.get(1).unwrap_or(&"-").to_string(),
                        parts
                            .get(2)
                            .filter(|s| !s.is_empty())
                            .unwrap_or(&"-")
                            .to_string(),
                        parts.first().unwrap_or(&"-").to_string(),
                        str_of(&c["type"]),
                        "-".to_string(),
                    ]
                })
                .collect();
            table(
                &[
                    "SERVICE FQDN",
                    "PORT",
                    "SUBSET",
                    "DIRECTION",
                    "TYPE",
                    "DESTINATION RULE",
                ],
                rows,
            )
        }
        Kind::Endpoint => {
            let mut objs = Vec::new();
            let mut rows = Vec::new();
            for c in section(dump, "ClustersConfigDump", "dynamic_active_clusters") {
                let c = &c["cluster"];
                let cname = str_of(&c["name"]);
                if !keep(&cname) {
                    continue;
                }
                let mut hosts = Vec::new();
                for group in c["load_assignment"]["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    for e in group["lb_endpoints"].as_array().into_iter().flatten() {
                        let a = &e["endpoint"]["address"]["socket_address"];
                        let addr = format!("{}:{}", str_of(&a["address"]), a["port_value"]);
                        rows.push(vec![
                            addr.clone(),
                            str_of(&e["health_status"]),
                            "OK".into(),
                            cname.clone(),
                        ]);
                        hosts.push(json!({ "address": a, "health_status": { "eds_health_status": e["health_status"] } }));
                    }
                }
                objs.push(json!({ "name": cname, "host_statuses": hosts }));
            }
            if json {
                return pretty(objs);
            }
            table(&["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"], rows)
        }
        Kind::Secret => {
            let ss: Vec<&Value> = section(dump, "SecretsConfigDump", "dynamic_active_secrets")
                .iter()
                .filter(|s| keep(s["name"].as_str().unwrap_or_default()))
                .collect();
            if json {
                return pretty(ss.into_iter().cloned().collect());
            }
            let rows = ss
                .iter()
                .map(|s| {
                    let sec = &s["secret"];
                    let (kind, c) = if sec["tls_certificate"].is_object() {
                        ("Cert Chain", &sec["tls_certificate"]["certificate_chain"])
                    } else {
                        ("CA", &sec["validation_context"]["trusted_ca"])
                    };
                    vec![
                        str_of(&s["name"]),
                        kind.into(),
                        "ACTIVE".into(),
                        str_of(&c["valid"]),
                        str_of(&c["serial_number"]),
                        str_of(&c["not_after"]),
                        str_of(&c["not_before"]),
                    ]
                })
                .collect();
            table(
                &[
                    "RESOURCE NAME",
                    "TYPE",
                    "STATUS",
                    "VALID CERT",
                    "SERIAL NUMBER",
                    "NOT AFTER",
                    "NOT BEFORE",
                ],
                rows,
            )
        }
    }
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

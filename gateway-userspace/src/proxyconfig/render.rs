//! istioctl's writers, read from the Envoy-shaped dump: what `istioctl proxy-config`
//! prints for the same config dump, byte for byte.
//!
//! Each function names the Go it mirrors (istio/istio at 86c9f01, 2026-08):
//! `istioctl/pkg/writer/envoy/configdump/{listener,route,cluster,endpoint,configdump}.go`,
//! `istioctl/pkg/writer/envoy/clusters/clusters.go` (`proxy-config endpoint`) and
//! `istioctl/pkg/writer/compare/sds/{writer,util}.go` (`proxy-config secret`).
use serde_json::{Value, json};

use super::tabwriter;

// === reading the dump ===

fn section<'a>(dump: &'a Value, kind: &str) -> Option<&'a Value> {
    dump["configs"]
        .as_array()?
        .iter()
        .find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(kind)))
}

fn list(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// `retrieveSortedListenerSlice`: dynamic (active) listeners, then static ones.
pub fn listeners(dump: &Value) -> Vec<&Value> {
    let Some(sec) = section(dump, "ListenersConfigDump") else {
        return Vec::new();
    };
    list(&sec["dynamic_listeners"])
        .map(|l| &l["active_state"]["listener"])
        .filter(|l| l.is_object())
        .chain(list(&sec["static_listeners"]).map(|l| &l["listener"]))
        .collect()
}

/// `retrieveSortedRouteSlice`: dynamic route configurations, then static ones.
pub fn routes(dump: &Value) -> Vec<&Value> {
    let Some(sec) = section(dump, "RoutesConfigDump") else {
        return Vec::new();
    };
    list(&sec["dynamic_route_configs"])
        .chain(list(&sec["static_route_configs"]))
        .map(|r| &r["route_config"])
        .filter(|r| r.is_object())
        .collect()
}

/// `retrieveSortedClusterSlice` (before sorting): dynamic active clusters, then static.
pub fn clusters(dump: &Value) -> Vec<&Value> {
    let Some(sec) = section(dump, "ClustersConfigDump") else {
        return Vec::new();
    };
    list(&sec["dynamic_active_clusters"])
        .chain(list(&sec["static_clusters"]))
        .map(|c| &c["cluster"])
        .filter(|c| c.is_object())
        .collect()
}

// === listeners (listener.go) ===

/// `ListenerFilter`: `--address`, `--port`, `--type`, `--verbose`.
#[derive(Debug, Clone, Default)]
pub struct ListenerFilter {
    pub address: String,
    pub port: u32,
    pub r#type: String,
    pub verbose: bool,
}

fn listener_address(l: &Value) -> String {
    s(&l["address"]["socket_address"]["address"]).to_string()
}

fn listener_additional_addresses(l: &Value) -> Vec<String> {
    list(&l["additional_addresses"])
        .map(|a| s(&a["address"]["socket_address"]["address"]).to_string())
        .collect()
}

fn listener_port(l: &Value) -> u32 {
    l["address"]["socket_address"]["port_value"]
        .as_u64()
        .unwrap_or(0) as u32
}

/// `getFilterChains`: the chains, then the default chain.
fn filter_chains(l: &Value) -> Vec<&Value> {
    let mut out: Vec<&Value> = list(&l["filter_chains"]).collect();
    if l["default_filter_chain"].is_object() {
        out.push(&l["default_filter_chain"]);
    }
    out
}

const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

/// `retrieveListenerType`: HTTP | TCP | HTTP+TCP | UNKNOWN (TCP proxies to the
/// BlackHoleCluster don't count).
fn listener_type(l: &Value) -> &'static str {
    let (mut http, mut tcp) = (0, 0);
    for fc in filter_chains(l) {
        for f in list(&fc["filters"]) {
            match s(&f["name"]) {
                HCM => http += 1,
                TCP_PROXY if !f["typed_config"].to_string().contains("BlackHoleCluster") => {
                    tcp += 1
                }
                _ => {}
            }
        }
    }
    match (http > 0, tcp > 0) {
        (true, false) => "HTTP",
        (true, true) => "HTTP+TCP",
        (false, true) => "TCP",
        (false, false) => "UNKNOWN",
    }
}

impl ListenerFilter {
    /// `ListenerFilter.Verify`.
    pub fn verify(&self, l: &Value) -> bool {
        if !self.address.is_empty() {
            let mut addrs = listener_additional_addresses(l);
            addrs.push(listener_address(l));
            if !addrs.iter().any(|a| a.eq_ignore_ascii_case(&self.address)) {
                return false;
            }
        }
        if self.port != 0 && listener_port(l) != self.port {
            return false;
        }
        if !self.r#type.is_empty() && !listener_type(l).eq_ignore_ascii_case(&self.r#type) {
            return false;
        }
        true
    }
}

/// `getMatches`: "SNI: a,b; Trans: tls; App: ...; Addr: ..." or "ALL".
fn chain_match(m: &Value) -> String {
    let mut d = Vec::new();
    let names: Vec<&str> = list(&m["server_names"]).map(s).collect();
    if !names.is_empty() {
        d.push(format!("SNI: {}", names.join(",")));
    }
    if !s(&m["transport_protocol"]).is_empty() {
        d.push(format!("Trans: {}", s(&m["transport_protocol"])));
    }
    let apps: Vec<&str> = list(&m["application_protocols"]).map(s).collect();
    if !apps.is_empty() {
        let known: [(&str, &[&str]); 4] = [
            (
                "App: HTTP TLS",
                &[
                    "http/1.0",
                    "http/1.1",
                    "h2c",
                    "istio-http/1.0",
                    "istio-http/1.1",
                    "istio-h2",
                ],
            ),
            (
                "App: Istio HTTP Plain",
                &["istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"],
            ),
            ("App: TCP TLS", &["istio-peer-exchange", "istio"]),
            ("App: HTTP", &["http/1.0", "http/1.1", "h2c"]),
        ];
        match known.iter().find(|(_, p)| *p == apps.as_slice()) {
            Some((name, _)) => d.push(name.to_string()),
            None => d.push(format!("App: {}", apps.join(","))),
        }
    }
    let port = m["destination_port"]
        .as_u64()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let ranges: Vec<String> = list(&m["prefix_ranges"])
        .map(|p| {
            format!(
                "{}/{}",
                s(&p["address_prefix"]),
                p["prefix_len"].as_u64().unwrap_or(0)
            )
        })
        .collect();
    if !ranges.is_empty() {
        d.push(format!("Addr: {}{port}", ranges.join(",")));
    } else if !port.is_empty() {
        d.push(format!("Addr: *{port}"));
    }
    if d.is_empty() {
        return "ALL".into();
    }
    d.join("; ")
}

/// `getFilterType`: "Route: <rds>", "Inline Route: ...", "Cluster: <name>", "HTTP" or
/// "Non-HTTP/Non-TCP".
fn filter_type(fc: &Value) -> String {
    for f in list(&fc["filters"]) {
        let cfg = &f["typed_config"];
        match s(&f["name"]) {
            HCM => {
                if cfg["route_config"].is_object() {
                    return describe_route_config(&cfg["route_config"]);
                }
                let rds = s(&cfg["rds"]["route_config_name"]);
                if !rds.is_empty() {
                    return format!("Route: {rds}");
                }
                return "HTTP".into();
            }
            TCP_PROXY if !cfg.to_string().contains("BlackHoleCluster") => {
                // tcpProxy.GetCluster(): "" for weighted_clusters.
                let c = s(&cfg["cluster"]);
                if c.contains("Cluster") {
                    return c.to_string();
                }
                return format!("Cluster: {c}");
            }
            _ => {}
        }
    }
    "Non-HTTP/Non-TCP".into()
}

/// `describeRouteConfig`, for route configurations inlined in a listener.
fn describe_route_config(rc: &Value) -> String {
    let vhs: Vec<&Value> = list(&rc["virtual_hosts"]).collect();
    // getMatchAllCluster
    if let [vh] = vhs.as_slice() {
        let routes: Vec<&Value> = list(&vh["routes"]).collect();
        if list(&vh["domains"]).map(s).eq(["*"])
            && let [r] = routes.as_slice()
            && s(&r["match"]["prefix"]) == "/"
            && let Some(c) = r["route"]["cluster"].as_str()
        {
            return if c.contains("Cluster") {
                c.to_string()
            } else {
                format!("Cluster: {c}")
            };
        }
    }
    let described: Vec<String> = vhs
        .iter()
        .map(|vh| {
            let domains: Vec<&str> = list(&vh["domains"]).map(s).collect();
            let routes: Vec<String> = list(&vh["routes"])
                .map(|r| describe_match(&r["match"]))
                .collect();
            let routes = routes.join(", ");
            if domains == ["*"] {
                routes
            } else {
                format!("{} {routes}", domains.join("/"))
            }
        })
        .collect();
    format!("Inline Route: {}", described.join("; "))
}

/// `describeMatch`: prefix as `<p>*`, `PathPrefix:<p>`, the path, `regex <re>`;
/// headers are not shown ("// Ignore headers").
fn describe_match(m: &Value) -> String {
    let mut conds = Vec::new();
    if !s(&m["prefix"]).is_empty() {
        conds.push(format!("{}*", s(&m["prefix"])));
    }
    if !s(&m["path_separated_prefix"]).is_empty() {
        conds.push(format!("PathPrefix:{}", s(&m["path_separated_prefix"])));
    }
    if !s(&m["path"]).is_empty() {
        conds.push(s(&m["path"]).to_string());
    }
    if m["safe_regex"].is_object() {
        conds.push(format!("regex {}", s(&m["safe_regex"]["regex"])));
    }
    conds.join(" ")
}

/// Go's `sort.Slice` runs an insertion sort (stable) below 13 elements; beyond that
/// its order among equal keys is unspecified, and we keep it stable.
fn sort_like_go<T>(v: &mut [T], less: impl Fn(&T, &T) -> bool) {
    v.sort_by(|a, b| {
        if less(a, b) {
            std::cmp::Ordering::Less
        } else if less(b, a) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
}

fn sort_listeners(ls: &mut [&Value]) {
    // "Sort by port, addr, type" (PrintListenerSummary).
    sort_like_go(ls, |a, b| {
        let (pa, pb) = (listener_port(a), listener_port(b));
        if pa != pb {
            return pa < pb;
        }
        let (aa, ab) = (listener_address(a), listener_address(b));
        if aa != ab {
            return aa < ab;
        }
        listener_type(a) < listener_type(b)
    });
}

/// The listeners `filter` keeps, sorted as the summary sorts them.
pub fn filtered_listeners<'a>(dump: &'a Value, filter: &ListenerFilter) -> Vec<&'a Value> {
    let mut ls: Vec<&Value> = listeners(dump)
        .into_iter()
        .filter(|l| filter.verify(l))
        .collect();
    sort_listeners(&mut ls);
    ls
}

/// `PrintListenerSummary` (tabwriter 0, 8, 1).
pub fn listener_summary(
    dump: &Value,
    filter: &ListenerFilter,
    include_type: bool,
) -> Result<String, String> {
    if listeners(dump).is_empty() {
        return Err("no listeners found".into());
    }
    let ls = filtered_listeners(dump, filter);
    let mut t = String::from(if include_type {
        "NAME\tADDRESSES\tPORT"
    } else {
        "ADDRESSES\tPORT"
    });
    t += if filter.verbose {
        "\tMATCH\tDESTINATION\n"
    } else {
        "\tTYPE\n"
    };
    for l in ls {
        let mut addrs = vec![listener_address(l)];
        addrs.extend(listener_additional_addresses(l));
        let addrs = addrs.join(",");
        let port = listener_port(l);
        let name = format!("listener/{}", s(&l["name"]));
        let lead = if include_type {
            format!("{name}\t{addrs}\t{port}")
        } else {
            format!("{addrs}\t{port}")
        };
        if filter.verbose {
            let mut matches: Vec<(String, String)> = filter_chains(l)
                .iter()
                .map(|fc| (chain_match(&fc["filter_chain_match"]), filter_type(fc)))
                .collect();
            // sort.Slice(matches, destination >): descending by destination.
            sort_like_go(&mut matches, |a, b| a.1 > b.1);
            for (m, d) in matches {
                t += &format!("{lead}\t{m}\t{d}\n");
            }
        } else {
            t += &format!("{lead}\t{}\n", listener_type(l));
        }
    }
    Ok(tabwriter::format(&t, 0, 1))
}

// === routes (route.go) ===

/// `RouteFilter`: `--name`, `--verbose`.
#[derive(Debug, Clone, Default)]
pub struct RouteFilter {
    pub name: String,
    pub verbose: bool,
}

/// The route configurations `--name` keeps, in istioctl's order (`retrieveSortedRouteSlice`
/// sorts by name only where both names are numbers, as Envoy's sidecar port routes are).
pub fn filtered_routes<'a>(dump: &'a Value, filter: &RouteFilter) -> Vec<&'a Value> {
    let mut rs = routes(dump);
    sort_like_go(&mut rs, |a, b| {
        match (s(&a["name"]).parse::<i64>(), s(&b["name"]).parse::<i64>()) {
            (Ok(x), Ok(y)) => x < y,
            _ => false,
        }
    });
    rs.into_iter()
        .filter(|r| filter.name.is_empty() || s(&r["name"]) == filter.name)
        .collect()
}

/// `describeRouteDomains`: one domain as is; else the shortest forms without a port,
/// at most two, "+ N more...".
fn describe_route_domains(domains: &[&str]) -> String {
    match domains {
        [] => return String::new(),
        [one] => return one.to_string(),
        _ => {}
    }
    let without_port: Vec<&str> = domains
        .iter()
        .copied()
        .filter(|d| !d.contains(':') || (d.matches(':').count() > 2 && d.ends_with(']')))
        .collect();
    // unexpandDomains: drop x.svc.cluster.local / x.svc when x is there too.
    let shown: Vec<&str> = without_port
        .iter()
        .copied()
        .filter(|h| {
            let full = h.strip_suffix(".svc.cluster.local");
            let partial = h.strip_suffix(".svc");
            !(full.is_some_and(|f| without_port.contains(&f))
                || partial.is_some_and(|p| without_port.contains(&p)))
        })
        .collect();
    if shown.len() > 2 {
        return format!("{} + {} more...", shown[..2].join(", "), shown.len() - 2);
    }
    shown.join(", ")
}

/// `renderConfig` of a route's `metadata.filter_metadata.istio.config`:
/// `/apis/networking.istio.io/v1alpha3/namespaces/<ns>/virtual-service/<name>` is
/// `<name>.<ns>`.
fn describe_management(metadata: &Value) -> String {
    let Some(config) = metadata["filter_metadata"]["istio"]["config"].as_str() else {
        return String::new();
    };
    if !config.starts_with("/apis/networking.istio.io/") {
        return "<unknown>".into();
    }
    let pieces: Vec<&str> = config.split('/').collect();
    if pieces.len() != 8 {
        return String::new();
    }
    format!("{}.{}", pieces[7], pieces[5])
}

/// `PrintRouteSummary` (tabwriter 0, 8, 5).
pub fn route_summary(
    dump: &Value,
    filter: &RouteFilter,
    include_type: bool,
) -> Result<String, String> {
    if routes(dump).is_empty() {
        return Err("no routes found".into());
    }
    let mut t = String::from(if filter.verbose {
        "NAME\tVHOST NAME\tDOMAINS\tMATCH\tVIRTUAL SERVICE\n"
    } else {
        "NAME\tVIRTUAL HOSTS\n"
    });
    for r in filtered_routes(dump, filter) {
        let name = if include_type {
            format!("route/{}", s(&r["name"]))
        } else {
            s(&r["name"]).to_string()
        };
        if !filter.verbose {
            t += &format!("{name}\t{}\n", list(&r["virtual_hosts"]).count());
            continue;
        }
        for vh in list(&r["virtual_hosts"]) {
            let domains: Vec<&str> = list(&vh["domains"]).map(s).collect();
            let domains = describe_route_domains(&domains);
            let vname = s(&vh["name"]);
            let mut n = 0;
            for route in list(&vh["routes"]) {
                n += 1;
                // isPassthrough: routes to the PassthroughCluster are not listed.
                if s(&route["route"]["cluster"]) == "PassthroughCluster" {
                    continue;
                }
                t += &format!(
                    "{name}\t{vname}\t{domains}\t{}\t{}\n",
                    describe_match(&route["match"]),
                    describe_management(&route["metadata"])
                );
            }
            if n == 0 {
                t += &format!("{name}\t{vname}\t{domains}\t/*\t404\n");
            }
        }
    }
    Ok(tabwriter::format(&t, 0, 5))
}

// === clusters (cluster.go) ===

/// `ClusterFilter`: `--fqdn`, `--port`, `--subset`, `--direction` (substrings of the
/// cluster name, as istioctl compares them).
#[derive(Debug, Clone, Default)]
pub struct ClusterFilter {
    pub fqdn: String,
    pub port: u32,
    pub subset: String,
    pub direction: String,
}

impl ClusterFilter {
    /// `ClusterFilter.Verify`.
    pub fn verify(&self, name: &str) -> bool {
        (self.fqdn.is_empty() || name.contains(&self.fqdn))
            && (self.direction.is_empty() || name.contains(&self.direction))
            && (self.subset.is_empty() || name.contains(&self.subset))
            && (self.port == 0 || name.contains(&format!("|{}|", self.port)))
    }
}

/// `safelyParseSubsetKey`: `direction|port|subset|fqdn`, or the whole name.
fn subset_key(name: &str) -> (&str, &str, &str, i64) {
    let p: Vec<&str> = name.split('|').collect();
    if p.len() > 3 {
        return (p[0], p[2], p[3], p[1].parse().unwrap_or(0));
    }
    ("", "", name, 0)
}

/// Sorted by FQDN, subset, port, direction (`retrieveSortedClusterSlice`).
fn sort_by_subset_key<T>(v: &mut [T], name: impl Fn(&T) -> &str) {
    sort_like_go(v, |a, b| {
        let (ad, asub, an, ap) = subset_key(name(a));
        let (bd, bsub, bn, bp) = subset_key(name(b));
        if an != bn {
            return an < bn;
        }
        if asub != bsub {
            return asub < bsub;
        }
        if ap != bp {
            return ap < bp;
        }
        ad < bd
    });
}

/// The clusters `filter` keeps, in istioctl's order.
pub fn filtered_clusters<'a>(dump: &'a Value, filter: &ClusterFilter) -> Vec<&'a Value> {
    let mut cs = clusters(dump);
    sort_by_subset_key(&mut cs, |c| s(&c["name"]));
    cs.into_iter()
        .filter(|c| filter.verify(s(&c["name"])))
        .collect()
}

/// `cluster.GetType()` as Go prints the enum: STATIC when unset.
fn cluster_type(c: &Value) -> &str {
    c["type"].as_str().unwrap_or("STATIC")
}

/// `PrintClusterSummary` (tabwriter 0, 8, 5).
pub fn cluster_summary(
    dump: &Value,
    filter: &ClusterFilter,
    include_type: bool,
) -> Result<String, String> {
    if clusters(dump).is_empty() {
        return Err("no clusters found".into());
    }
    let mut t = String::from(if include_type {
        "NAME\tSERVICE FQDN\tPORT\tSUBSET\tDIRECTION\tTYPE\tDESTINATION RULE\n"
    } else {
        "SERVICE FQDN\tPORT\tSUBSET\tDIRECTION\tTYPE\tDESTINATION RULE\n"
    });
    for c in filtered_clusters(dump, filter) {
        let name = s(&c["name"]);
        let dr = describe_management(&c["metadata"]);
        let ty = cluster_type(c);
        let lead = if include_type && !name.is_empty() {
            format!("cluster/{name}\t")
        } else {
            String::new()
        };
        let p: Vec<&str> = name.split('|').collect();
        if p.len() > 3 {
            let subset = if p[2].is_empty() { "-" } else { p[2] };
            let port: i64 = p[1].parse().unwrap_or(0);
            t += &format!("{lead}{}\t{port}\t{subset}\t{}\t{ty}\t{dr}\n", p[3], p[0]);
        } else {
            let shown = if lead.is_empty() {
                name.to_string()
            } else {
                format!("cluster/{name}\t{name}")
            };
            t += &format!("{shown}\t-\t-\t-\t{ty}\t{dr}\n");
        }
    }
    Ok(tabwriter::format(&t, 0, 5))
}

// === endpoints (clusters/clusters.go for `endpoint`, configdump/endpoint.go for `all`) ===

/// `EndpointFilter`: `--address`, `--port`, `--cluster`, `--status`.
#[derive(Debug, Clone, Default)]
pub struct EndpointFilter {
    pub address: String,
    pub port: u32,
    pub cluster: String,
    pub status: String,
}

/// One host of a cluster: (address, port, cluster, health status, locality).
struct Host<'a> {
    address: &'a str,
    port: u32,
    cluster: &'a str,
    status: &'a str,
    /// Ejected by outlier detection (`/clusters` `failed_outlier_check`).
    failed_outlier: bool,
    locality: String,
}

/// The endpoints of every cluster, as Envoy's `/clusters?format=json` host statuses
/// and `config_dump?include_eds` list them (here both come from the clusters'
/// `load_assignment`).
fn hosts(dump: &Value) -> Vec<Host<'_>> {
    let mut out = Vec::new();
    for c in clusters(dump) {
        let cluster = s(&c["name"]);
        for group in list(&c["load_assignment"]["endpoints"]) {
            let l = &group["locality"];
            // util.LocalityToString
            let mut locality = s(&l["region"]).to_string();
            if !s(&l["zone"]).is_empty() {
                locality += &format!("/{}", s(&l["zone"]));
                if !s(&l["sub_zone"]).is_empty() {
                    locality += &format!("/{}", s(&l["sub_zone"]));
                }
            }
            for e in list(&group["lb_endpoints"]) {
                let a = &e["endpoint"]["address"]["socket_address"];
                out.push(Host {
                    address: s(&a["address"]),
                    port: a["port_value"].as_u64().unwrap_or(0) as u32,
                    cluster,
                    // core.HealthStatus_name; UNKNOWN when unset.
                    status: e["health_status"].as_str().unwrap_or("UNKNOWN"),
                    failed_outlier: e["failed_outlier_check"].as_bool() == Some(true),
                    locality: locality.clone(),
                });
            }
        }
    }
    out
}

impl EndpointFilter {
    fn verify(&self, h: &Host, address: &str) -> bool {
        (self.address.is_empty() || address.eq_ignore_ascii_case(&self.address))
            && (self.port == 0 || h.port == self.port)
            && (self.cluster.is_empty() || h.cluster.eq_ignore_ascii_case(&self.cluster))
            && (self.status.is_empty() || h.status.eq_ignore_ascii_case(&self.status))
    }
}

/// `clusters.ConfigWriter.PrintEndpointsSummary` (tabwriter 0, 8, 5): sorted by
/// address, port, cluster; `--address` is the IP alone.
pub fn endpoint_summary(dump: &Value, filter: &EndpointFilter) -> String {
    let mut hs: Vec<Host> = hosts(dump)
        .into_iter()
        .filter(|h| filter.verify(h, h.address))
        .collect();
    sort_like_go(&mut hs, |a, b| {
        (a.address, a.port, a.cluster) < (b.address, b.port, b.cluster)
    });
    let mut t = String::from("ENDPOINT\tSTATUS\tOUTLIER CHECK\tCLUSTER\n");
    for h in hs {
        let ep = if h.port != 0 {
            format!("{}:{}", h.address, h.port)
        } else {
            h.address.to_string()
        };
        // clusters.go retrieveFailedOutlierCheck: FAILED or OK; STATUS stays the EDS
        // health status.
        let outlier = if h.failed_outlier { "FAILED" } else { "OK" };
        t += &format!("{ep}\t{}\t{outlier}\t{}\n", h.status, h.cluster);
    }
    tabwriter::format(&t, 0, 5)
}

/// `endpoint -o json`: the `/clusters?format=json` cluster statuses that have a host
/// the filter keeps.
pub fn endpoint_statuses(dump: &Value, filter: &EndpointFilter) -> Vec<Value> {
    let all = hosts(dump);
    let mut out = Vec::new();
    for c in clusters(dump) {
        let name = s(&c["name"]);
        let hs: Vec<&Host> = all.iter().filter(|h| h.cluster == name).collect();
        if !hs.iter().any(|h| filter.verify(h, h.address)) {
            continue;
        }
        let statuses: Vec<Value> = hs
            .iter()
            .map(|h| {
                let mut health = json!({ "eds_health_status": h.status });
                if h.failed_outlier {
                    health["failed_outlier_check"] = true.into();
                }
                json!({
                    "address": { "socket_address": { "address": h.address, "port_value": h.port } },
                    "health_status": health,
                    "weight": 1,
                })
            })
            .collect();
        out.push(json!({ "name": name, "added_via_api": true, "host_statuses": statuses }));
    }
    out
}

/// `configdump.ConfigWriter.PrintEndpointsSummary` (tabwriter 0, 8, 5), as
/// `proxy-config all` prints it; `--address` is `ip:port` here (retrieveEndpointAddresses).
pub fn eds_summary(dump: &Value, filter: &EndpointFilter, include_type: bool) -> String {
    let mut t = String::from("NAME\tSTATUS\tLOCALITY\tCLUSTER\n");
    let mut hs: Vec<Host> = hosts(dump)
        .into_iter()
        .filter(|h| filter.verify(h, &format!("{}:{}", h.address, h.port)))
        .collect();
    sort_by_subset_key(&mut hs, |h| h.cluster);
    for h in hs {
        let addr = format!("{}:{}", h.address, h.port);
        let addr = if include_type {
            format!("endpoint/{addr}")
        } else {
            addr
        };
        t += &format!("{addr}\t{}\t{}\t{}\n", h.status, h.locality, h.cluster);
    }
    tabwriter::format(&t, 0, 5)
}

// === secrets (compare/sds) ===

/// `PrintSecretSummary` + `printSecretItemsTabular` (tabwriter 0, 5, 5). The dump's
/// certificate facts stand in for the PEM istioctl parses (`secretMetaFromCert`): TYPE
/// "CA" when the certificate is a CA, else "Cert Chain"; serial as `%032x`; times RFC
/// 3339 in UTC.
pub fn secret_summary(dump: &Value, include_type: bool) -> String {
    let Some(sec) = section(dump, "SecretsConfigDump") else {
        return "No active or warming secrets found.\n".into();
    };
    let warming: Vec<&Value> = list(&sec["dynamic_warming_secrets"]).collect();
    let active: Vec<&Value> = list(&sec["dynamic_active_secrets"]).collect();
    if warming.is_empty() && active.is_empty() {
        return "No active or warming secrets found.\n".into();
    }
    let items: Vec<(&Value, &str)> = warming
        .iter()
        .map(|w| (*w, "WARMING"))
        .chain(active.iter().map(|a| (*a, "ACTIVE")))
        .collect();
    let facts = |secret: &Value| -> Value {
        let t = &secret["secret"];
        let chain = &t["tls_certificate"]["certificate_chain"];
        if chain.is_object() {
            chain.clone()
        } else {
            t["validation_context"]["trusted_ca"].clone()
        }
    };
    let all_have_trust_domain = items
        .iter()
        .all(|(i, _)| !s(&facts(i)["trust_domain"]).is_empty());
    let mut cols = vec![
        "RESOURCE NAME",
        "TYPE",
        "STATUS",
        "VALID CERT",
        "SERIAL NUMBER",
        "NOT AFTER",
        "NOT BEFORE",
    ];
    if all_have_trust_domain {
        cols.push("TRUST DOMAIN");
    }
    let mut t = cols.join("\t") + "\n";
    for (item, state) in items {
        let f = facts(item);
        let name = if include_type {
            format!("secret/{}", s(&item["name"]))
        } else {
            s(&item["name"]).to_string()
        };
        let parsed = f["serial_number"].is_string();
        // A secret whose certificate does not parse: Valid false, the rest empty.
        let ty = if !parsed {
            ""
        } else if f["is_ca"].as_bool() == Some(true) {
            "CA"
        } else {
            "Cert Chain"
        };
        let state = if s(&item["version_info"]) == "uninitialized" {
            "UNINITIALIZED"
        } else {
            state
        };
        t += &format!(
            "{name}\t{ty}\t{state}\t{}\t{}\t{}\t{}",
            f["valid"].as_bool() == Some(true),
            s(&f["serial_number"]),
            s(&f["not_after"]),
            s(&f["not_before"]),
        );
        if all_have_trust_domain {
            t += &format!("\t{}", s(&f["trust_domain"]));
        }
        t += "\n";
    }
    tabwriter::format(&t, 0, 5)
}

// === bootstrap and all (configdump.go) ===

/// `PrintBootstrapSummary` (tabwriter 0, 8, 1): Istio Version, Istio Proxy Version
/// (when the node metadata has them), and "Envoy Version" from the node's
/// `user_agent_build_version` — here the gateway's own version.
pub fn bootstrap_summary(dump: &Value) -> Result<String, String> {
    let Some(b) = section(dump, "BootstrapConfigDump") else {
        return Err("bootstrap dump not found".into());
    };
    let node = &b["bootstrap"]["node"];
    let md = &node["metadata"];
    let mut t = String::new();
    if !s(&md["ISTIO_VERSION"]).is_empty() {
        t += &format!("Istio Version:\t{}\n", s(&md["ISTIO_VERSION"]));
    }
    let sha = s(&md["ISTIO_PROXY_SHA"]);
    if !sha.is_empty() {
        t += &format!(
            "Istio Proxy Version:\t{}\n",
            sha.split_once(':').map_or(sha, |(_, b)| b)
        );
    }
    let bv = &node["user_agent_build_version"];
    let v = &bv["version"];
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let mut ev = format!("{}.{}.{}", n("major_number"), n("minor_number"), n("patch"));
    for (key, sep) in [
        ("build.label", "-"),
        ("revision.status", "/"),
        ("build.type", "/"),
        ("ssl.version", "/"),
    ] {
        if let Some(x) = bv["metadata"][key].as_str() {
            ev += &format!("{sep}{x}");
        }
    }
    t += &format!("Envoy Version:\t{ev}\n");
    Ok(tabwriter::format(&t, 0, 1))
}

/// Filters of `proxy-config all`.
#[derive(Debug, Clone, Default)]
pub struct AllFilters {
    pub cluster: ClusterFilter,
    pub listener: ListenerFilter,
    pub route: RouteFilter,
    pub endpoint: EndpointFilter,
    pub with_headers: bool,
}

/// `PrintFullSummary`, with the config type in front of each name
/// (`SetPrintConfigTypeInSummary(true)`).
pub fn full_summary(dump: &Value, f: &AllFilters) -> Result<String, String> {
    let header = |name: &str| {
        if f.with_headers {
            format!("------ {name} ------\n\n")
        } else {
            String::new()
        }
    };
    let mut out = header("BOOTSTRAP INFO");
    out += &bootstrap_summary(dump)?;
    out += "\n";
    out += &header("CLUSTER INFO");
    out += &cluster_summary(dump, &f.cluster, true)?;
    out += "\n";
    out += &header("LISTENER INFO");
    out += &listener_summary(dump, &f.listener, true)?;
    out += "\n";
    out += &header("ROUTE INFO");
    out += &route_summary(dump, &f.route, true)?;
    out += "\n";
    out += &header("SECRET INFO");
    out += &secret_summary(dump, true);
    out += "\n";
    out += &header("ENDPOINTS INFO");
    out += &eds_summary(dump, &f.endpoint, true);
    Ok(out)
}

// === -o json / yaml ===

/// A listener, route configuration or cluster of the dump as istioctl's `-o json`
/// prints it: the message unpacked from its `Any` (`UnmarshalTo` into the typed
/// message, then protojson), so without the `@type` the dump carries.
pub fn unpacked(v: &Value) -> Value {
    let mut v = v.clone();
    if let Value::Object(m) = &mut v {
        m.shift_remove("@type");
    }
    v
}

/// protojson's field names: `virtual_hosts` is `virtualHosts` (keys without `_`, and
/// `@type`, are unchanged; the keys of `filter_metadata` structs have none).
pub fn camel_case(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let mut key = String::with_capacity(k.len());
                    let mut up = false;
                    for c in k.chars() {
                        if c == '_' && !key.is_empty() {
                            up = true;
                        } else if up {
                            key.extend(c.to_uppercase());
                            up = false;
                        } else {
                            key.push(c);
                        }
                    }
                    (key, camel_case(v))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(camel_case).collect()),
        other => other.clone(),
    }
}

/// `json.MarshalIndent(x, "", "    ")` + newline (`fmt.Fprintln`), or YAML.
/// Keys keep the dump's order (protojson's, `super::protojson_order`) in JSON; YAML
/// has them sorted, as sigs.k8s.io/yaml's JSONToYAML writes them.
pub fn marshal(v: &Value, yaml: bool) -> String {
    let mut v = camel_case(v);
    if yaml {
        super::sorted_keys(&mut v);
        return serde_yaml::to_string(&v).unwrap_or_default();
    }
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(&v, &mut ser).expect("JSON values serialize");
    String::from_utf8(buf).expect("serde_json writes UTF-8") + "\n"
}

//! `proxy-config listener` (istioctl/pkg/writer/envoy/configdump/listener.go).
use serde_json::Value;

use super::*;

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
pub(super) fn describe_match(m: &Value) -> String {
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

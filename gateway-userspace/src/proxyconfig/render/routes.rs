//! `proxy-config route` (istioctl/pkg/writer/envoy/configdump/route.go).
use serde_json::Value;

use super::*;

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
pub(super) fn describe_management(metadata: &Value) -> String {
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

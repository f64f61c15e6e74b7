//! `proxy-config bootstrap` and `all` (istioctl/pkg/writer/envoy/configdump/configdump.go).
use serde_json::Value;

use super::*;

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

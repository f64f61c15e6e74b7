//! `proxy-config endpoint` (istioctl/pkg/writer/envoy/clusters/clusters.go) and the
//! endpoints of `all` (configdump/endpoint.go).
use serde_json::{Value, json};

use super::*;

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

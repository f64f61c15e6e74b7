//! `proxy-config cluster` (istioctl/pkg/writer/envoy/configdump/cluster.go).
use serde_json::Value;

use super::*;

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
pub(super) fn sort_by_subset_key<T>(v: &mut [T], name: impl Fn(&T) -> &str) {
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

//! The dump's clusters: each cluster of the Plan with its endpoints as its load balancer
//! holds them now (`Plan::balancers`: DNS-refreshed addresses, weights, outlier
//! ejections) and its policy (`lb_policy`, `cluster_policy`).
use serde_json::{Value, json};

use super::{cluster_policy, envoy::T_CLUSTER};
use crate::{
    config::{dest_rules::LbPolicy, istio::Resolution, snapshot::Cluster},
    plan::Plan,
};

pub(super) fn clusters(plan: &Plan) -> Vec<Value> {
    plan.snapshot
        .clusters
        .values()
        .map(|c| json!({ "cluster": cluster_json(plan, c) }))
        .collect()
}

fn cluster_json(plan: &Plan, c: &Cluster) -> Value {
    // The ServiceEntry's `resolution` as written: the compiled cluster keeps only
    // what resolving it gave (addresses, the names to look up again).
    let se = plan
        .snapshot
        .resources
        .service_entries
        .iter()
        .find(|se| se.spec.hosts.contains(&c.host));
    // convertResolution (pilot/pkg/networking/core/cluster.go) for a gateway
    // (model.Router): DNS is STRICT_DNS, DNS_ROUND_ROBIN LOGICAL_DNS, STATIC and
    // NONE EDS ("Gateways cannot use passthrough clusters"). A host no
    // ServiceEntry names is looked up by the system resolver: LOGICAL_DNS.
    let kind = match se.map(|se| se.spec.resolution) {
        Some(Resolution::Dns) => "STRICT_DNS",
        Some(Resolution::DnsRoundRobin) | None => "LOGICAL_DNS",
        Some(Resolution::Static | Resolution::None) => "EDS",
    };
    let mut istio = json!({ "services": [{ "host": c.host, "namespace": c.host.split('.').nth(1).unwrap_or("default") }], "port": c.port });
    // Istio's cluster metadata (pilot/pkg/networking/util AddConfigInfoMetadata,
    // AddSubsetToMetadata): the DestinationRule's path and the subset.
    if let Some((ns, name)) = c
        .destination_rule
        .as_deref()
        .and_then(|k| k.split_once('/'))
    {
        istio["config"] =
            format!("/apis/networking.istio.io/v1/namespaces/{ns}/destination-rule/{name}").into();
    }
    if !c.subset.is_empty() {
        istio["subset"] = c.subset.clone().into();
    }
    let mut cluster = json!({
        "@type": T_CLUSTER,
        "name": c.name,
        "type": kind,
        "metadata": { "filter_metadata": { "istio": istio } },
        "load_assignment": { "cluster_name": c.name, "endpoints": [{ "lb_endpoints": lb_endpoints(plan, c) }] },
    });
    let policy = plan.balancers.get(&c.name).map_or(&c.lb, |b| &b.policy);
    lb_policy_json(policy, &mut cluster);
    cluster_policy::add(c, &mut cluster);
    cluster
}

/// The endpoints the cluster's balancer picks from now, with their weights and whether
/// outlier detection has ejected them (Envoy's `/clusters` `failed_outlier_check`); as
/// resolved at load for a cluster without one.
fn lb_endpoints(plan: &Plan, c: &Cluster) -> Vec<Value> {
    let eps = plan.balancers.live(&c.name).unwrap_or_else(|| {
        c.endpoints
            .iter()
            .zip(&c.weights)
            .map(|(a, w)| (*a, *w, false))
            .collect()
    });
    eps.iter()
        .map(|(a, w, ejected)| {
            let mut e = json!({
                "endpoint": { "address": { "socket_address": { "address": a.ip().to_string(), "port_value": a.port() } } },
                "health_status": "HEALTHY",
            });
            if *w != 1 {
                e["load_balancing_weight"] = (*w).into();
            }
            if *ejected {
                e["failed_outlier_check"] = true.into();
            }
            e
        })
        .collect()
}

/// Envoy's `lb_policy` and its config, as Istio sets them (cluster.go `applyLoadBalancer`):
/// ROUND_ROBIN is the enum's zero value, so protojson leaves it out, as Envoy's dump does.
fn lb_policy_json(lb: &LbPolicy, cluster: &mut Value) {
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

//! The dump's bootstrap: the node and version, and the static listeners of Istio's
//! status and Prometheus ports (with their inline route configurations).
use std::net::IpAddr;

use serde_json::{Value, json};

use super::envoy::{T_LISTENER, T_ROUTE};
use crate::config::Snapshot;

/// Envoy's bootstrap, as far as this gateway has one: the node (Istio's router id
/// `router~<ip>~<name>.<namespace>~<namespace>.svc.cluster.local`) and, in Envoy's
/// `user_agent_build_version`, the gateway's own version (what istioctl prints as
/// "Envoy Version").
pub(super) fn bootstrap_json(snap: &Snapshot, addrs: &[IpAddr]) -> Value {
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
pub(super) fn istio_port_listeners(
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

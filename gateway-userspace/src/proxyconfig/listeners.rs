//! The dump's listeners: one per Gateway port of the Plan (`Plan::listeners`, what the
//! accept loops serve), with the filter chains Istio builds for its servers and routes.
//! The chains show the same tables the data plane picks with: TLS passthrough chains
//! are the port's `tls` routes (`Plan::sni_routes` indexes exactly these), the
//! terminating chains its servers by their hosts (`routing::server_hosts`, what
//! `routing::TlsServers` indexes), the routes of an HCM are `super::routes`.
use std::net::IpAddr;

use serde_json::{Value, json};

use super::{
    envoy::{T_LISTENER, hcm, tcp_proxy, vs_metadata},
    routes::https_route_name,
};
use crate::{
    config::{Listener, ServerKind, TlsMode},
    plan::Plan,
    plan::routing::server_hosts,
};

/// Every Gateway port's listener, by port.
pub(super) fn listeners(plan: &Plan, addrs: &[IpAddr]) -> Vec<Value> {
    plan.listeners
        .values()
        .map(|l| listener_json(plan, l, addrs))
        .collect()
}

/// Envoy's listener for one port, as Istio builds it for a gateway: named
/// `<address>_<port>` after the first bind address; a dual-stack listener lists the
/// other one in `additional_addresses` (how istioctl shows `0.0.0.0,::`).
fn listener_json(plan: &Plan, l: &Listener, addrs: &[IpAddr]) -> Value {
    let clusters = &plan.snapshot.clusters;
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
            "filters": [tcp_proxy(clusters, &t.destinations, &stat)],
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
            "filter_chain_match": server_names(&server_hosts(s)),
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "common_tls_context": { "tls_certificate_sds_secret_configs": [{ "name": secret }] },
                    "require_client_certificate": matches!(s.tls_mode, TlsMode::Mutual),
                }
            },
            // Istio (gateway.go): an HTTPS server's `name` is its HCM's stat prefix.
            "filters": match tcp_route {
                Some(r) if terminates_tcp => json!([tcp_proxy(clusters, &r.destinations, &stat)]),
                _ => json!([hcm(&https_route_name(&plan.snapshot, l.port, s), s.name.as_deref().filter(|n| !n.is_empty()).unwrap_or(&stat))]),
            },
        }));
    }
    if l.servers.iter().any(|s| s.kind == ServerKind::Http) {
        chains.push(json!({ "filters": [hcm(&format!("http.{}", l.port), &stat)] }));
    }
    if let Some(t) = &l.tcp {
        chains.push(json!({
            "filters": [tcp_proxy(clusters, &t.destinations, &stat)],
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

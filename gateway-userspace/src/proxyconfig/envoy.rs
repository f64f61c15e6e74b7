//! The Envoy JSON shapes every section of the dump shares: type URLs, the network
//! filters (tcp_proxy, HTTP connection manager), Istio's config metadata, string
//! matchers, protojson durations, and protojson's key order.
use std::time::Duration;

use serde_json::{Value, json};

use crate::{config::WeightedCluster, plan::routing::StrMatch};

pub(super) const T_LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub(super) const T_ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub(super) const T_CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub(super) const T_SECRET: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// A route's or a tcp_proxy's destination: one `cluster`, or `weighted_clusters`.
pub(super) fn cluster_action(dests: &[(&str, u32)]) -> Value {
    match dests {
        [(cluster, _)] => json!({ "cluster": cluster }),
        many => {
            json!({ "weighted_clusters": { "clusters": many.iter().map(|(name, weight)| json!({"name": name, "weight": weight})).collect::<Vec<_>>() } })
        }
    }
}

/// The tcp_proxy of a TCP or TLS route (Istio's networkfilter.go).
pub(super) fn tcp_proxy(
    clusters: &std::collections::BTreeMap<String, crate::config::snapshot::Cluster>,
    dests: &[WeightedCluster],
    stat: &str,
) -> Value {
    let pairs: Vec<(&str, u32)> = dests
        .iter()
        .map(|d| (d.cluster.as_str(), d.weight))
        .collect();
    let mut cfg = cluster_action(&pairs);
    cfg["@type"] =
        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy".into();
    cfg["stat_prefix"] = stat.into();
    // The first destination's DestinationRule's `tcp.idleTimeout` and
    // `tcp.maxConnectionDuration`, as Istio sets them (networkfilter.go); only when a
    // rule sets them.
    let first = dests.first().and_then(|d| clusters.get(&d.cluster));
    if let Some(t) = first.and_then(|c| c.tcp_idle_timeout) {
        cfg["idle_timeout"] = duration(t).into();
    }
    if let Some(t) = first.and_then(|c| c.tcp_max_duration) {
        cfg["max_downstream_connection_duration"] = duration(t).into();
    }
    json!({ "name": "envoy.filters.network.tcp_proxy", "typed_config": cfg })
}

/// An HTTP connection manager taking its routes from the route configuration `route`.
pub(super) fn hcm(route: &str, stat: &str) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat,
            "rds": { "route_config_name": route },
        }
    })
}

/// Istio's config metadata of a filter chain or route: the VirtualService it came from.
pub(super) fn vs_metadata(vs: &str) -> Value {
    let (ns, name) = vs.split_once('/').unwrap_or(("default", vs));
    json!({ "filter_metadata": { "istio": {
        "config": format!("/apis/networking.istio.io/v1alpha3/namespaces/{ns}/virtual-service/{name}")
    }}})
}

/// Envoy's StringMatcher of a compiled match (`{}` for a presence-only one).
pub(super) fn string_match(m: Option<&StrMatch>) -> Value {
    match m {
        Some(StrMatch::Exact(e)) => json!({ "exact": e }),
        Some(StrMatch::Prefix(p)) => json!({ "prefix": p }),
        Some(re @ StrMatch::Regex(_)) => json!({ "safe_regex": { "regex": re.written() } }),
        None => json!({}),
    }
}

/// protojson's Duration: seconds with 0, 3, 6 or 9 fractional digits.
pub(super) fn duration(d: Duration) -> String {
    let (s, n) = (d.as_secs(), d.subsec_nanos());
    if n == 0 {
        format!("{s}s")
    } else if n % 1_000_000 == 0 {
        format!("{s}.{:03}s", n / 1_000_000)
    } else if n % 1_000 == 0 {
        format!("{s}.{:06}s", n / 1_000)
    } else {
        format!("{s}.{n:09}s")
    }
}

/// The keys of the Envoy messages this dump writes, in the order protojson prints them:
/// each message's fields in declaration order (google.golang.org/protobuf
/// encoding/protojson encode.go `order.RangeFields(fields, order.IndexNameFieldOrder,
/// ...)`, internal/order/order.go: "Non-extensions are sorted according to their
/// declaration index"), which is how `istioctl proxy-config ... -o json` prints them
/// (its MessageSlice marshals each message with protojson). One list serves every
/// message because the messages we write agree on the relative order of the keys
/// they share (declarations from envoyproxy/data-plane-api 84e8436):
/// - Listener: name, address, additional_addresses, filter_chains, ...,
///   ignore_global_conn_limit, bypass_overload_manager; SocketAddress: protocol,
///   address, port_value; FilterChain: filter_chain_match, filters, metadata,
///   transport_socket; Filter, HttpFilter, TransportSocket: name, typed_config;
///   DownstreamTlsContext: common_tls_context, require_client_certificate;
/// - HttpConnectionManager: codec_type, stat_prefix, rds, route_config,
///   http_filters; TcpProxy: stat_prefix, cluster, weighted_clusters;
/// - RouteConfiguration: name, virtual_hosts, validate_clusters,
///   ignore_port_in_host_matching; VirtualHost: name, domains, routes, require_tls,
///   include_request_attempt_count; Route: name, match, route | redirect |
///   direct_response, metadata; RouteMatch: prefix | path | safe_regex,
///   case_sensitive, headers, query_parameters; HeaderMatcher: name, string_match;
///   RouteAction: cluster, weighted_clusters; ClusterWeight: name, weight;
/// - Cluster: name, type, load_assignment, metadata; ClusterLoadAssignment:
///   cluster_name, endpoints; LbEndpoint: endpoint, health_status;
/// - the admin dumps: version_info, static_*, dynamic_*; DynamicListener: name,
///   active_state; DynamicSecret: name, secret; Secret: name, tls_certificate,
///   validation_context; TlsCertificate: certificate_chain, private_key;
/// - Node: id, cluster, metadata, user_agent_name, user_agent_build_version;
///   SemanticVersion: major_number, minor_number, patch.
///
/// `@type` comes first (protojson writes an Any's type URL first). Keys not listed
/// (the certificate facts this dump adds, the resources as loaded) follow in
/// alphabetical order, and a `filter_metadata` value is a map of `Struct`s, whose keys
/// protojson sorts (order.GenericKeyOrder): sorted all the way down.
const PROTOJSON_ORDER: &[&str] = &[
    "@type",
    "name",
    "id",
    "cluster_name",
    "bootstrap",
    "node",
    "version_info",
    "static_listeners",
    "static_route_configs",
    "static_clusters",
    "static_secrets",
    "dynamic_listeners",
    "dynamic_route_configs",
    "dynamic_active_clusters",
    "dynamic_active_secrets",
    "active_state",
    "listener",
    "protocol",
    "address",
    "port_value",
    "socket_address",
    "additional_addresses",
    "filter_chains",
    "filter_chain_match",
    "server_names",
    "filters",
    "typed_config",
    "common_tls_context",
    "tls_certificate_sds_secret_configs",
    "require_client_certificate",
    "codec_type",
    "stat_prefix",
    "rds",
    "route_config_name",
    "route_config",
    "http_filters",
    "virtual_hosts",
    "domains",
    "routes",
    "match",
    "prefix",
    "path",
    "safe_regex",
    "exact",
    "regex",
    "case_sensitive",
    "headers",
    "string_match",
    "query_parameters",
    "route",
    "redirect",
    "direct_response",
    "status",
    "cluster",
    "weighted_clusters",
    "clusters",
    "weight",
    "type",
    "lb_policy",
    "load_assignment",
    "ring_hash_lb_config",
    "minimum_ring_size",
    "maglev_lb_config",
    "table_size",
    "endpoints",
    "lb_endpoints",
    "endpoint",
    "health_status",
    "metadata",
    "filter_metadata",
    "transport_socket",
    "validate_clusters",
    "require_tls",
    "include_request_attempt_count",
    "ignore_port_in_host_matching",
    "ignore_global_conn_limit",
    "bypass_overload_manager",
    "user_agent_name",
    "user_agent_build_version",
    "version",
    "major_number",
    "minor_number",
    "patch",
    "secret",
    "tls_certificate",
    "certificate_chain",
    "private_key",
    "validation_context",
    "trusted_ca",
];

/// Puts every object's keys in [`PROTOJSON_ORDER`] (the rest after, sorted).
pub fn protojson_order(v: &mut Value) {
    reorder(v, |k| {
        PROTOJSON_ORDER
            .iter()
            .position(|o| *o == k)
            .unwrap_or(usize::MAX)
    });
}

/// Sorts every object's keys (sigs.k8s.io/yaml `JSONToYAML`, which istioctl's `-o yaml`
/// goes through, decodes into Go maps and so writes keys sorted).
pub fn sorted_keys(v: &mut Value) {
    reorder(v, |_| 0);
}

fn reorder(v: &mut Value, rank: fn(&str) -> usize) {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = std::mem::take(m).into_iter().collect();
            entries.sort_by(|a, b| (rank(&a.0), &a.0).cmp(&(rank(&b.0), &b.0)));
            for (k, v) in &mut entries {
                if k == "filter_metadata" {
                    reorder(v, |_| 0);
                } else {
                    reorder(v, rank);
                }
            }
            *m = entries.into_iter().collect();
        }
        Value::Array(a) => a.iter_mut().for_each(|v| reorder(v, rank)),
        _ => {}
    }
}

//! A cluster's `circuit_breakers`, `outlier_detection` and `common_lb_config` in the
//! config dump, as Istio writes them for a DestinationRule's `connectionPool` and
//! `outlierDetection` (cluster_traffic_policy.go).

use serde_json::{Value, json};

use super::envoy::duration;
use crate::config::snapshot::Cluster;

pub(super) fn add(c: &Cluster, cluster: &mut Value) {
    if let Some(t) = &c.circuit_breakers {
        // getDefaultCircuitBreakerThresholds: u32::MAX is "no limit".
        cluster["circuit_breakers"] = json!({ "thresholds": [{
            "max_connections": t.max_connections,
            "max_pending_requests": t.max_pending_requests,
            "max_requests": t.max_requests,
            "max_retries": t.max_retries,
            "track_remaining": true,
        }] });
    }
    conn_settings(c, cluster);
    if let Some(o) = &c.outlier {
        let enforcing = |n: u32| if n > 0 { 100 } else { 0 };
        cluster["outlier_detection"] = json!({
            "consecutive_5xx": o.consecutive_5xx,
            "interval": duration(o.interval),
            "base_ejection_time": duration(o.base_ejection_time),
            "max_ejection_percent": o.max_ejection_percent,
            "enforcing_consecutive_5xx": enforcing(o.consecutive_5xx),
            "consecutive_gateway_failure": if o.consecutive_gateway > 0 { o.consecutive_gateway } else { 5 },
            "enforcing_consecutive_gateway_failure": enforcing(o.consecutive_gateway),
        });
        if o.split_local_origin {
            cluster["outlier_detection"]["split_external_local_origin_errors"] = true.into();
            cluster["outlier_detection"]["consecutive_local_origin_failure"] =
                o.consecutive_local_origin.into();
            cluster["outlier_detection"]["enforcing_local_origin_success_rate"] = 0.into();
        }
        cluster["common_lb_config"] =
            json!({ "healthy_panic_threshold": { "value": o.min_health_percent } });
    }
}

/// The cluster's connection settings as Istio's `applyConnectionPool` writes them:
/// `connect_timeout`, `upstream_connection_options.tcp_keepalive` (whole seconds) and
/// the `HttpProtocolOptions` extension (`idle_timeout`, `max_requests_per_connection`,
/// `max_connection_duration`, HTTP/2 for an upgraded cluster with
/// `max_concurrent_streams`, the downstream protocol for `useClientProtocol`). Only
/// what a DestinationRule set.
fn conn_settings(c: &Cluster, cluster: &mut Value) {
    let s = &c.conn;
    if let Some(t) = s.connect_timeout {
        cluster["connect_timeout"] = duration(t).into();
    }
    if let Some(k) = &s.keepalive {
        let mut ka = json!({});
        if let Some(n) = k.probes {
            ka["keepalive_probes"] = n.into();
        }
        if let Some(t) = k.time {
            ka["keepalive_time"] = t.as_secs().into();
        }
        if let Some(i) = k.interval {
            ka["keepalive_interval"] = i.as_secs().into();
        }
        cluster["upstream_connection_options"] = json!({ "tcp_keepalive": ka });
    }
    let mut common = json!({});
    if let Some(t) = s.idle_timeout {
        common["idle_timeout"] = duration(t).into();
    }
    if let Some(n) = s.max_requests_per_connection {
        common["max_requests_per_connection"] = n.into();
    }
    if let Some(t) = s.max_connection_duration {
        common["max_connection_duration"] = duration(t).into();
    }
    // `maxConcurrentStreams` reaches only a cluster that speaks HTTP/2 (Istio sets it
    // on the explicit HTTP/2 options, which `useClientProtocol` replaces).
    let streams = s
        .max_concurrent_streams
        .filter(|_| c.http2 && !s.use_client_protocol);
    if common.as_object().is_some_and(|o| !o.is_empty())
        || s.h2_upgrade
        || streams.is_some()
        || s.use_client_protocol
    {
        let mut opts = json!({
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": common,
        });
        if s.use_client_protocol {
            opts["use_downstream_protocol_config"] =
                json!({ "http_protocol_options": {}, "http2_protocol_options": {} });
        } else if s.h2_upgrade || streams.is_some() {
            let mut h2 = json!({});
            if let Some(n) = streams {
                h2["max_concurrent_streams"] = n.into();
            }
            opts["explicit_http_config"] = json!({ "http2_protocol_options": h2 });
        }
        cluster["typed_extension_protocol_options"] =
            json!({ "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": opts });
    }
}

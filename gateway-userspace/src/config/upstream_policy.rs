//! A DestinationRule's `connectionPool` and `outlierDetection` as Istio translates
//! them for Envoy (pilot/pkg/networking/core/cluster_traffic_policy.go,
//! `applyConnectionPool` and `applyOutlierDetection`), and Istio's validation of them
//! (pilot/pkg/config/validation: `validateConnectionPool`, `validateOutlierDetection`).
//!
//! The runtime side is `lb::pool` (circuit breakers) and `lb::outlier` (ejection).

use std::time::Duration;

use serde::Serialize;

use super::ConfigError;
use super::destination_rule::{
    ConnectionPoolSettings, DestinationRule, H2UpgradePolicy, OutlierDetection,
};
use super::parse::Entry;

/// Envoy's cluster circuit breakers (`circuit_breakers.thresholds[0]`). Istio starts
/// from "no limit" (`getDefaultCircuitBreakerThresholds`: every threshold
/// `math.MaxUint32`) and sets a threshold only for a field above 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CircuitBreakers {
    /// `tcp.maxConnections`: connections to all the cluster's endpoints.
    pub max_connections: u32,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection.
    pub max_pending_requests: u32,
    /// `http.http2MaxRequests`: requests in flight to the cluster.
    pub max_requests: u32,
    /// `http.maxRetries`: retries waiting out their back-off at once.
    pub max_retries: u32,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        CircuitBreakers {
            max_connections: u32::MAX,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX,
            max_retries: u32::MAX,
        }
    }
}

/// How the cluster's upstream connections are made and kept (`http::upstream_tls`
/// builds one client per distinct value; `proxy::tcp` uses the TCP fields). Default:
/// the gateway's own (`--connect-timeout`, no keepalive, no request limit, 60 s idle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct ConnSettings {
    /// `tcp.connectTimeout` (Envoy's cluster `connect_timeout`).
    pub connect_timeout: Option<Duration>,
    /// `tcp.tcpKeepalive` (Envoy's `upstream_connection_options.tcp_keepalive`).
    pub keepalive: Option<Keepalive>,
    /// `http.maxRequestsPerConnection` above 0 (Envoy's `max_requests_per_connection`).
    pub max_requests_per_connection: Option<u32>,
    /// `http.idleTimeout`, else `tcp.idleTimeout` (Envoy's
    /// `common_http_protocol_options.idle_timeout`); `Some(ZERO)`: never (a
    /// `tcp.idleTimeout: 0s`, which Envoy reads as "disabled").
    pub idle_timeout: Option<Duration>,
    /// `http.h2UpgradePolicy: UPGRADE`: HTTP/2 to an HTTP port's endpoints.
    pub h2_upgrade: bool,
    /// `http.maxConcurrentStreams` above 0: streams at once on one HTTP/2 connection
    /// (Envoy's `http2_protocol_options.max_concurrent_streams`, which Istio sets only
    /// on a cluster that speaks HTTP/2 — and not with `useClientProtocol`).
    pub max_concurrent_streams: Option<u32>,
    /// `http.useClientProtocol`: requests go upstream over the protocol the client
    /// spoke, HTTP/2 or HTTP/1.1 (Envoy's `use_downstream_protocol_config`).
    pub use_client_protocol: bool,
    /// `tcp.maxConnectionDuration` (Envoy's
    /// `common_http_protocol_options.max_connection_duration`): an upstream HTTP
    /// connection older than this takes no new request and closes once its requests
    /// are done.
    pub max_connection_duration: Option<Duration>,
}

/// TCP keepalive; `None` fields are the system's defaults, as Envoy leaves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Keepalive {
    /// TCP_KEEPIDLE.
    pub time: Option<Duration>,
    /// TCP_KEEPINTVL.
    pub interval: Option<Duration>,
    /// TCP_KEEPCNT.
    pub probes: Option<u32>,
}

impl Keepalive {
    /// SO_KEEPALIVE and the fields set, on an upstream socket.
    pub fn apply(&self, sock: socket2::SockRef<'_>) -> std::io::Result<()> {
        let mut k = socket2::TcpKeepalive::new();
        if let Some(t) = self.time {
            k = k.with_time(t);
        }
        if let Some(i) = self.interval {
            k = k.with_interval(i);
        }
        if let Some(n) = self.probes {
            k = k.with_retries(n);
        }
        sock.set_tcp_keepalive(&k)
    }
}

/// Istio's `applyConnectionPool` for the connection settings
/// (pilot/pkg/networking/core/cluster_traffic_policy.go): each field only when set,
/// `maxRequestsPerConnection` only above 0, `tcpKeepalive` fields in whole seconds
/// (Envoy's `TcpKeepalive` takes seconds; Istio rounds down, at least 1 s).
pub fn conn_settings(cp: &ConnectionPoolSettings) -> ConnSettings {
    let mut c = ConnSettings::default();
    if let Some(t) = &cp.tcp {
        c.connect_timeout = t.connect_timeout.as_ref().map(|d| d.duration);
        c.keepalive = t.tcp_keepalive.as_ref().map(|k| {
            let secs =
                |d: &super::istio::IstioDuration| Duration::from_secs(d.duration.as_secs().max(1));
            Keepalive {
                time: k.time.as_ref().map(secs),
                interval: k.interval.as_ref().map(secs),
                probes: k.probes.filter(|n| *n > 0),
            }
        });
        c.max_connection_duration = max_connection_duration(cp);
    }
    if let Some(h) = &cp.http {
        c.max_requests_per_connection = positive(h.max_requests_per_connection);
        c.idle_timeout = h.idle_timeout.as_ref().map(|d| d.duration);
        // Istio's `shouldH2Upgrade` (pilot/pkg/networking/core/cluster_builder.go):
        // `useClientProtocol` prevents the upgrade; UPGRADE makes it,
        // the user vouching the port speaks HTTP; DEFAULT is the mesh's
        // `h2UpgradePolicy`, DO_NOT_UPGRADE by default.
        c.h2_upgrade = h.use_client_protocol != Some(true)
            && h.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade);
        c.max_concurrent_streams = positive(h.max_concurrent_streams);
        // `setUseDownstreamProtocol`, applied last: it replaces the cluster's explicit
        // protocol, an HTTP2/GRPC port's included.
        c.use_client_protocol = h.use_client_protocol == Some(true);
    }
    // `applyConnectionPool`: "if idleTimeout == nil { idleTimeout = settings.Tcp.IdleTimeout }"
    // — the TCP idle timeout also closes the cluster's idle HTTP connections.
    if c.idle_timeout.is_none() {
        c.idle_timeout = tcp_idle_timeout(cp);
    }
    c
}

/// `tcp.maxConnectionDuration`. Istio's `applyConnectionPool`
/// (cluster_traffic_policy.go) copies it to the cluster's
/// `common_http_protocol_options.max_connection_duration` as given; a TCP route's
/// tcp_proxy takes the top-level rule's (`max_downstream_connection_duration`).
pub fn max_connection_duration(cp: &ConnectionPoolSettings) -> Option<Duration> {
    cp.tcp
        .as_ref()
        .and_then(|t| t.max_connection_duration.as_ref())
        .map(|d| d.duration)
}

/// `tcp.idleTimeout` (`Some(ZERO)`: disabled, as Envoy reads a zero).
pub fn tcp_idle_timeout(cp: &ConnectionPoolSettings) -> Option<Duration> {
    cp.tcp
        .as_ref()
        .and_then(|t| t.idle_timeout.as_ref())
        .map(|d| d.duration)
}

/// Envoy's `OutlierDetection` as Istio fills it; a threshold of 0 is not enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutlierPolicy {
    /// `consecutive_5xx` with `enforcing_consecutive_5xx: 100` (0: not enforced).
    pub consecutive_5xx: u32,
    /// `consecutive_gateway_failure` (502, 503, 504, connect failures) enforced at 100
    /// (0: not enforced, Envoy's default `enforcing_consecutive_gateway_failure: 0`).
    pub consecutive_gateway: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    /// Envoy's `max_ejection_time` (not in Istio's API): 300 s.
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    /// Envoy's `healthy_panic_threshold`; Istio sets it to `minHealthPercent` (0 when
    /// unset: panic mode off).
    pub min_health_percent: u32,
    /// `splitExternalLocalOriginErrors`: connect failures and timeouts count apart
    /// from the answers, against `consecutive_local_origin`.
    pub split_local_origin: bool,
    /// `consecutiveLocalOriginFailures` (Envoy's default 5, enforced at 100).
    pub consecutive_local_origin: u32,
}

/// Envoy's defaults (api/envoy/config/cluster/v3/outlier_detection.proto).
const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
const DEFAULT_CONSECUTIVE_LOCAL_ORIGIN: u32 = 5;

fn positive(v: Option<i64>) -> Option<u32> {
    v.filter(|n| *n > 0)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// `applyConnectionPool`: a threshold above 0 replaces "no limit".
pub fn circuit_breakers(cp: &ConnectionPoolSettings) -> CircuitBreakers {
    let mut t = CircuitBreakers::default();
    if let Some(h) = &cp.http {
        if let Some(n) = positive(h.http2_max_requests) {
            t.max_requests = n;
        }
        if let Some(n) = positive(h.http1_max_pending_requests) {
            t.max_pending_requests = n;
        }
        if let Some(n) = positive(h.max_retries) {
            t.max_retries = n;
        }
    }
    if let Some(n) = cp.tcp.as_ref().and_then(|t| positive(t.max_connections)) {
        t.max_connections = n;
    }
    t
}

/// `applyOutlierDetection`.
pub fn outlier_policy(o: &OutlierDetection) -> OutlierPolicy {
    let mut p = OutlierPolicy {
        consecutive_5xx: DEFAULT_CONSECUTIVE_5XX,
        consecutive_gateway: 0,
        interval: DEFAULT_INTERVAL,
        base_ejection_time: DEFAULT_BASE_EJECTION,
        max_ejection_time: DEFAULT_MAX_EJECTION_TIME,
        max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
        min_health_percent: 0,
        split_local_origin: false,
        consecutive_local_origin: DEFAULT_CONSECUTIVE_LOCAL_ORIGIN,
    };
    if let Some(t) = &o.base_ejection_time {
        p.base_ejection_time = t.duration;
    }
    // The deprecated `consecutiveErrors` counts gateway errors only (istio/api#617):
    // Istio enforces the gateway failure check with it and turns the 5xx one off.
    if let Some(n) = positive(o.consecutive_errors) {
        p.consecutive_gateway = n;
        p.consecutive_5xx = 0;
    }
    if let Some(n) = o.consecutive_5xx_errors {
        p.consecutive_5xx = u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    }
    if let Some(n) = o.consecutive_gateway_errors {
        p.consecutive_gateway = u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    }
    if let Some(t) = &o.interval {
        p.interval = t.duration;
    }
    if let Some(n) = positive(o.max_ejection_percent) {
        p.max_ejection_percent = n.min(100);
    }
    if let Some(n) = o.min_health_percent.filter(|n| *n >= 0) {
        p.min_health_percent = u32::try_from(n.min(100)).unwrap_or(100);
    }
    // Istio sets the local-origin threshold only when splitting, and only above 0.
    if o.split_external_local_origin_errors == Some(true) {
        p.split_local_origin = true;
        if let Some(n) = positive(o.consecutive_local_origin_failures) {
            p.consecutive_local_origin = n;
        }
    }
    p
}

/// Istio's validation of both sections at `at` (a traffic policy or a
/// `portLevelSettings` entry).
pub(crate) fn check(
    cp: Option<&ConnectionPoolSettings>,
    od: Option<&OutlierDetection>,
    at: &str,
    e: &Entry<DestinationRule>,
    errors: &mut Vec<ConfigError>,
) {
    let mut err = |path: String, msg: String| errors.push(e.src.error(&path, msg));
    if let Some(cp) = cp {
        let at = format!("{at}.connectionPool");
        if cp.http.is_none() && cp.tcp.is_none() {
            err(at.clone(), "must set at least one of http or tcp".into());
        }
        if let Some(h) = &cp.http
            && h.use_client_protocol == Some(true)
            && h.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade)
        {
            err(
                format!("{at}.http.useClientProtocol"),
                "use client protocol must not be true when H2UpgradePolicy is UPGRADE".into(),
            );
        }
        let mut non_negative = |field: &str, v: Option<i64>, what: &str| {
            if v.is_some_and(|n| n < 0) {
                err(
                    format!("{at}.{field}"),
                    format!("{what} must be non-negative"),
                );
            }
        };
        if let Some(h) = &cp.http {
            non_negative(
                "http.http1MaxPendingRequests",
                h.http1_max_pending_requests,
                "http1 max pending requests",
            );
            non_negative(
                "http.http2MaxRequests",
                h.http2_max_requests,
                "http2 max requests",
            );
            non_negative(
                "http.maxRequestsPerConnection",
                h.max_requests_per_connection,
                "max requests per connection",
            );
            non_negative("http.maxRetries", h.max_retries, "max retries");
            non_negative(
                "http.maxConcurrentStreams",
                h.max_concurrent_streams,
                "max concurrent streams",
            );
        }
        if let Some(t) = &cp.tcp {
            non_negative("tcp.maxConnections", t.max_connections, "max connections");
        }
        // ValidateDuration: at least 1 ms.
        let durations = [
            (
                "tcp.connectTimeout",
                cp.tcp.as_ref().and_then(|t| t.connect_timeout.as_ref()),
            ),
            (
                "http.idleTimeout",
                cp.http.as_ref().and_then(|h| h.idle_timeout.as_ref()),
            ),
            (
                "tcp.maxConnectionDuration",
                cp.tcp
                    .as_ref()
                    .and_then(|t| t.max_connection_duration.as_ref()),
            ),
            // 0s is allowed: it disables the timeout (Istio skips the check for it).
            (
                "tcp.idleTimeout",
                cp.tcp
                    .as_ref()
                    .and_then(|t| t.idle_timeout.as_ref())
                    .filter(|d| !d.duration.is_zero()),
            ),
        ];
        for (field, d) in durations {
            if d.is_some_and(|d| d.duration < Duration::from_millis(1)) {
                err(
                    format!("{at}.{field}"),
                    "duration must be greater than 1ms".into(),
                );
            }
        }
    }
    if let Some(o) = od {
        let at = format!("{at}.outlierDetection");
        let mut non_negative = |field: &str, v: Option<i64>, what: &str| {
            if v.is_some_and(|n| n < 0) {
                err(
                    format!("{at}.{field}"),
                    format!("outlier detection {what} cannot be negative"),
                );
            }
        };
        non_negative(
            "consecutiveErrors",
            o.consecutive_errors,
            "consecutive errors",
        );
        non_negative(
            "consecutive5xxErrors",
            o.consecutive_5xx_errors,
            "consecutive 5xx errors",
        );
        non_negative(
            "consecutiveGatewayErrors",
            o.consecutive_gateway_errors,
            "consecutive gateway errors",
        );
        non_negative(
            "consecutiveLocalOriginFailures",
            o.consecutive_local_origin_failures,
            "consecutive local origin failures",
        );
        for (field, v) in [
            ("maxEjectionPercent", o.max_ejection_percent),
            ("minHealthPercent", o.min_health_percent),
        ] {
            if let Some(n) = v.filter(|n| !(0..=100).contains(n)) {
                errors.push(e.src.error(
                    &format!("{at}.{field}"),
                    format!("percentage {n} is not in range 0..100"),
                ));
            }
        }
        // ValidateDuration: at least 1 ms.
        for (field, d) in [
            ("interval", &o.interval),
            ("baseEjectionTime", &o.base_ejection_time),
        ] {
            if d.as_ref()
                .is_some_and(|d| d.duration < Duration::from_millis(1))
            {
                errors.push(e.src.error(
                    &format!("{at}.{field}"),
                    "duration must be greater than 1ms",
                ));
            }
        }
    }
}

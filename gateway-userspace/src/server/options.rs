//! What the command line sets for the life of the process: addresses, timeouts,
//! connection caps, Istio's extra ports and the HTTP connection manager's settings.
use std::{net::IpAddr, time::Duration};

/// Runtime knobs from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address every Gateway port is bound on (Istio's ingress listens on 0.0.0.0).
    pub bind: IpAddr,
    /// Also listen on `[::]` (IPv6-only socket beside the IPv4 one): `--bind` not given.
    pub dual_stack: bool,
    /// How long a TLS listener waits for a complete ClientHello (Envoy: 15 s; we: 10 s).
    pub client_hello_timeout: Duration,
    /// Upstream connect timeout (Istio's default connectTimeout: 10 s).
    pub connect_timeout: Duration,
    /// Downstream connections open at once, all listeners together; past it new ones
    /// are refused at accept (None: no cap).
    pub max_connections: Option<u64>,
    /// The same per listener.
    pub listener_max_connections: Option<u64>,
    /// Upgrade types, the tunnel idle timeout and internal addresses.
    pub http: HttpOptions,
    /// Istio's status port (`/healthz/ready`, 15021) and Prometheus port
    /// (`/stats/prometheus`, 15090); None: not served.
    pub istio_ports: IstioPorts,
}

/// The ports Istio's proxy serves besides the Gateway's (Envoy's bootstrap listeners
/// `0.0.0.0_15021` and `0.0.0.0_15090`, tools/packaging/common/envoy_bootstrap.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IstioPorts {
    /// `/healthz/ready` (`--status-port`, Istio's `envoy_status_port`).
    pub status: Option<u16>,
    /// `/stats/prometheus` (`--prometheus-port`, Istio's `envoy_prometheus_port`).
    pub prometheus: Option<u16>,
}

impl Default for IstioPorts {
    fn default() -> Self {
        IstioPorts {
            status: Some(15021),
            prometheus: Some(15090),
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_connections: None,
            listener_max_connections: None,
            bind: IpAddr::from([0, 0, 0, 0]),
            dual_stack: false,
            client_hello_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            http: HttpOptions::default(),
            istio_ports: IstioPorts::default(),
        }
    }
}

/// Envoy's default `stream_idle_timeout`, which Istio's gateway keeps: an upgraded
/// connection in which no byte moved for this long is closed.
pub const DEFAULT_UPGRADE_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The upgrade type Istio configures on every gateway route.
pub const WEBSOCKET: &str = "websocket";

/// HTTP settings from the command line that Istio keeps in the listener's
/// HttpConnectionManager: upgrade types, the tunnel idle timeout, internal addresses.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Lowercase upgrade types that are tunnelled (always `websocket`, plus
    /// `--upgrade-type`).
    pub upgrade_types: Vec<String>,
    /// Close an upgraded connection idle this long (None: never).
    pub upgrade_idle_timeout: Option<Duration>,
    /// `internal_address_config`: a request from one of these addresses that carries no
    /// `x-forwarded-for` is internal (keeps its `x-request-id`). Empty by default, as in
    /// Envoy since 1.33.
    pub internal_addresses: Vec<crate::config::authz::Cidr>,
    /// Envoy's `stream_idle_timeout` (5 min by default) while the request body is read:
    /// a client that stops sending it gets 408 `SI`. None: off.
    pub stream_idle_timeout: Option<Duration>,
    /// Envoy's `common_http_protocol_options.idle_timeout` (1 h by default): an
    /// HTTP/2 connection without an open stream this long gets GOAWAY and is closed; an
    /// HTTP/1.1 keep-alive connection idle this long since its last response is closed.
    pub idle_timeout: Option<Duration>,
    /// HTTP/2 PING every this often (Envoy's `connection_keepalive.interval`; unset by
    /// default, as in Istio); a PING unanswered after `http2_keepalive_timeout` closes
    /// the connection.
    pub http2_keepalive_interval: Option<Duration>,
    pub http2_keepalive_timeout: Duration,
}

/// Envoy's default `stream_idle_timeout`.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Envoy's default HTTP connection `idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// hyper's (and a common) PING acknowledgement timeout.
pub const DEFAULT_HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            upgrade_types: vec![WEBSOCKET.to_string()],
            upgrade_idle_timeout: Some(DEFAULT_UPGRADE_IDLE_TIMEOUT),
            internal_addresses: Vec::new(),
            stream_idle_timeout: Some(DEFAULT_STREAM_IDLE_TIMEOUT),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            http2_keepalive_interval: None,
            http2_keepalive_timeout: DEFAULT_HTTP2_KEEPALIVE_TIMEOUT,
        }
    }
}

impl HttpOptions {
    /// Envoy's internal request: the connection's peer is an internal address and no
    /// proxy in front said otherwise (no `x-forwarded-for`, as `single_xff_address` with
    /// `use_remote_address` and no trusted hops; conn_manager_utility.cc).
    pub fn is_internal(&self, peer: std::net::IpAddr, had_xff: bool) -> bool {
        !had_xff
            && self
                .internal_addresses
                .iter()
                .any(|c| c.contains(&crate::config::authz::Cidr::host(peer)))
    }
}

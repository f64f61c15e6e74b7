//! The record of one HTTP request or L4 flow: filled in by the data path while it
//! serves it, reported when it ends. The access-log line ([`super::format`]), the
//! log filters ([`super::filter`]) and Istio's metrics ([`super::istio_metrics`]) all
//! read it as it is.
use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use crate::kernel::splice::Termination;

use super::{ResponseFlags, Telemetry};

/// One finished HTTP request or L4 flow as the access log and Istio's metrics see it:
/// what Envoy's `%START_TIME%`, `%REQ(:METHOD)%`, `%RESPONSE_FLAGS%`... would show.
/// The HTTP fields of an L4 flow are empty (`protocol` is `None`).
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub start: SystemTime,
    pub method: String,
    /// Path and query as received (before any rewrite).
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2`; `None` for an L4 flow.
    pub protocol: Option<&'static str>,
    /// 0 for an L4 flow (as Envoy logs one) and a request the client gave up on.
    pub status: u16,
    pub response_flags: ResponseFlags,
    /// Envoy's `%RESPONSE_CODE_DETAILS%`-like reason for local replies (empty:
    /// `via_upstream`).
    pub details: &'static str,
    /// Bytes from the client, bytes to it.
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: Duration,
    /// Upstream time to response headers (`x-envoy-upstream-service-time`).
    pub upstream_service_time: Option<Duration>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<String>,
    pub route_name: Option<String>,
    pub authority: String,
    pub request_id: String,
    pub downstream_remote: SocketAddr,
    pub downstream_local_port: u16,
    /// The address the client connected to (`%DOWNSTREAM_LOCAL_ADDRESS%`).
    pub downstream_local: Option<SocketAddr>,
    /// The gateway's end of the upstream connection (`%UPSTREAM_LOCAL_ADDRESS%`).
    pub upstream_local: Option<SocketAddr>,
    /// `grpc-status` of the response: its trailers, or its headers (trailers-only).
    pub grpc_status: Option<u32>,
    pub sni: Option<String>,
    pub user_agent: Option<String>,
    pub x_forwarded_for: Option<String>,
    /// How an L4 flow ended (`%CONNECTION_TERMINATION_DETAILS%`).
    pub termination: Option<Termination>,
    /// Why the upstream connection failed (`%UPSTREAM_TRANSPORT_FAILURE_REASON%`).
    pub failure: Option<String>,
}

/// A request field as the log shows it: empty or `-` is absent.
pub fn logged(s: &str) -> Option<&str> {
    (!s.is_empty() && s != "-").then_some(s)
}

impl AccessRecord {
    /// A request or flow from `downstream_remote` that started at `start`, nothing
    /// else known yet (an L4 flow until `protocol` is set): a base for struct-update
    /// syntax.
    pub fn new(start: SystemTime, downstream_remote: SocketAddr) -> AccessRecord {
        AccessRecord {
            start,
            method: String::new(),
            path: String::new(),
            protocol: None,
            status: 0,
            response_flags: ResponseFlags::default(),
            details: "",
            bytes_received: 0,
            bytes_sent: 0,
            duration: Duration::ZERO,
            upstream_service_time: None,
            upstream_host: None,
            upstream_cluster: None,
            route_name: None,
            authority: String::new(),
            request_id: String::new(),
            downstream_remote,
            downstream_local_port: 0,
            downstream_local: None,
            upstream_local: None,
            grpc_status: None,
            sni: None,
            user_agent: None,
            x_forwarded_for: None,
            termination: None,
            failure: None,
        }
    }

    pub fn is_http(&self) -> bool {
        self.protocol.is_some()
    }

    /// `%RESPONSE_CODE_DETAILS%`: a request's (`via_upstream` unless a local reply said
    /// otherwise); none for an L4 flow.
    pub fn response_code_details(&self) -> Option<&'static str> {
        match (self.is_http(), self.details) {
            (false, _) => None,
            (true, "") => Some("via_upstream"),
            (true, d) => Some(d),
        }
    }

    /// `%CONNECTION_TERMINATION_DETAILS%` of an L4 flow, Envoy's words for it.
    pub fn connection_termination_details(&self) -> Option<&'static str> {
        match self.termination.as_ref()? {
            Termination::DownstreamReset => Some("downstream_reset"),
            Termination::UpstreamReset => Some("upstream_reset"),
            Termination::IdleTimeout => Some("idle_timeout"),
            Termination::DrainTimeout => Some("drain_timeout"),
            // Envoy's LocalCloseReasons::MaxConnectionDurationReached.
            Termination::MaxDuration => Some("max_connection_duration_reached"),
            Termination::Closed | Termination::Error(_) => None,
        }
    }

    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`: why the upstream connection failed, or the
    /// local error that ended the flow.
    pub fn upstream_transport_failure_reason(&self) -> Option<&str> {
        match (&self.failure, &self.termination) {
            (Some(f), _) => Some(f),
            (None, Some(Termination::Error(e))) => Some(e),
            _ => None,
        }
    }

    pub fn duration_ms(&self) -> u64 {
        self.duration.as_millis() as u64
    }

    pub fn upstream_service_time_ms(&self) -> Option<u64> {
        self.upstream_service_time.map(|d| d.as_millis() as u64)
    }

    /// Reports the request to `telemetry` (metrics, access logs) and writes the
    /// gateway's own `request` log line.
    pub fn emit(&self, telemetry: &Telemetry) {
        telemetry.report(self);
        let dash = |o: Option<String>| o.unwrap_or_else(|| "-".into());
        tracing::info!(
            target: "gateway::http",
            method = %self.method,
            path = %self.path,
            protocol = self.protocol.unwrap_or_default(),
            status = self.status,
            response_flags = %self.response_flags,
            details = if self.details.is_empty() { "via_upstream" } else { self.details },
            bytes_received = self.bytes_received,
            bytes_sent = self.bytes_sent,
            duration_ms = self.duration_ms(),
            upstream_service_time_ms = self.upstream_service_time_ms(),
            upstream_host = %dash(self.upstream_host.map(|h| h.to_string())),
            upstream_cluster = %dash(self.upstream_cluster.clone()),
            route_name = %dash(self.route_name.clone()),
            authority = %self.authority,
            request_id = %self.request_id,
            downstream_remote = %self.downstream_remote,
            downstream_local_port = self.downstream_local_port,
            sni = %dash(self.sni.clone()),
            user_agent = %dash(self.user_agent.clone()),
            x_forwarded_for = %dash(self.x_forwarded_for.clone()),
            "request"
        );
    }
}

//! The record of one HTTP request: filled in by the HTTP proxy while it serves the
//! request, reported when its response ends (or the client goes away).
use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use super::Telemetry;

/// One finished HTTP request as the access log and Istio's metrics see it: what Envoy's
/// `%START_TIME%`, `%REQ(:METHOD)%`, `%RESPONSE_FLAGS%`... would show. Built by the
/// HTTP proxy while it serves the request; reported ([`RequestLog::emit`]) to the
/// telemetry of the gateway that served it.
#[derive(Debug, Clone)]
pub struct RequestLog {
    pub start: SystemTime,
    pub method: String,
    /// Path and query as received (before any rewrite).
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    pub status: u16,
    /// Envoy's short flags: NR, UH, UF, UT, URX, UC, DI, FI, DC, DPE, UPE...
    pub response_flags: Vec<&'static str>,
    /// Envoy's `%RESPONSE_CODE_DETAILS%`-like reason for local replies.
    pub details: &'static str,
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
}

impl RequestLog {
    /// `NR`, `UF,URX` or `-` as Envoy prints `%RESPONSE_FLAGS%`.
    pub fn flags(&self) -> String {
        if self.response_flags.is_empty() {
            "-".into()
        } else {
            self.response_flags.join(",")
        }
    }

    /// Reports the request to `telemetry` (metrics, access logs) and writes the
    /// gateway's own `request` log line.
    pub fn emit(&self, telemetry: &Telemetry) {
        telemetry.http(self);
        let dash = |o: Option<String>| o.unwrap_or_else(|| "-".into());
        tracing::info!(
            target: "gateway::http",
            method = %self.method,
            path = %self.path,
            protocol = self.protocol,
            status = self.status,
            response_flags = %self.flags(),
            details = if self.details.is_empty() { "via_upstream" } else { self.details },
            bytes_received = self.bytes_received,
            bytes_sent = self.bytes_sent,
            duration_ms = self.duration.as_millis() as u64,
            upstream_service_time_ms = self.upstream_service_time.map(|d| d.as_millis() as u64),
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

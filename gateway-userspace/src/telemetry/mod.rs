//! What the gateway counts and logs: Envoy-format access logs ([`access_log`], formats
//! in [`format`], Telemetry filters in [`filter`]), Istio's standard metrics
//! ([`istio_metrics`]) and the gateway's own counters ([`metrics`]).
pub mod access_log;
pub mod filter;
pub mod format;
pub mod grpc_status;
pub mod istio_metrics;
pub mod metrics;
pub mod record;
pub mod stderr_log;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;

use crate::{
    config::{ConfigError, GatewayIdentity, Snapshot},
    kernel::splice::Termination,
};

use access_log::{AccessLogConfig, AccessLogs, LogRecord};
use istio_metrics::{HttpObservation, IstioMetrics};
pub use record::RequestLog;

/// Access logs and Istio metrics of one gateway. The metrics live as long as the
/// process; the access-log setup is compiled from each config ([`Telemetry::compile`])
/// and swapped whole by [`Telemetry::apply`] (at start, and on every applied reload).
pub struct Telemetry {
    /// The access logs on now, with their writers.
    access: ArcSwap<AccessLogs>,
    pub istio: IstioMetrics,
    /// The gateway's namespace and labels (which Telemetry resources apply).
    id: GatewayIdentity,
    /// Lines each access-log file may have queued (`--access-log-buffer`).
    buffer: usize,
    /// Set by the first [`Telemetry::apply`] (which always says which logs are on).
    applied: std::sync::atomic::AtomicBool,
}

impl Telemetry {
    /// Access logs off until [`Telemetry::apply`]; metrics on.
    pub fn new(id: &GatewayIdentity, buffer: usize) -> Telemetry {
        Telemetry {
            access: ArcSwap::from_pointee(AccessLogs::off()),
            istio: IstioMetrics::new(id),
            id: id.clone(),
            buffer,
            applied: Default::default(),
        }
    }

    /// Access logs off, metrics on (Istio's default profile).
    pub fn off(id: &GatewayIdentity) -> Telemetry {
        Telemetry::new(id, access_log::DEFAULT_BUFFER_LINES)
    }

    /// Compiles the access-log setup of `snap` (its MeshConfig and Telemetry
    /// resources) for this gateway: every bad format or filter is an error with its
    /// position. Nothing changes until [`Telemetry::apply`].
    pub fn compile(&self, snap: &Snapshot) -> Result<AccessLogConfig, Vec<ConfigError>> {
        access_log::compile(snap, &self.id)
    }

    /// Makes `config` the access-log setup of the next request and flow, in one step,
    /// and the endpoint labels of `snap` those of the metrics. A file written before
    /// keeps its writer (its queued lines and counters); a file no longer written has
    /// its queue written out by its writer, which then ends.
    pub fn apply(&self, config: AccessLogConfig, snap: &Snapshot) {
        let old = self.access.load_full();
        if !self
            .applied
            .swap(true, std::sync::atomic::Ordering::Relaxed)
            || !old.is(&config)
        {
            config.log_summary();
        }
        self.access
            .store(Arc::new(AccessLogs::start(config, self.buffer, &old)));
        self.istio
            .set_endpoint_labels(istio_metrics::endpoint_labels(snap));
    }

    /// The access logs on now.
    pub fn access(&self) -> Arc<AccessLogs> {
        self.access.load_full()
    }

    /// Waits (at most `within` per file) for every queued access-log line to be written.
    pub fn flush(&self, within: std::time::Duration) {
        for s in self.access.load().sinks() {
            s.flush(within);
        }
    }

    /// One finished HTTP request: metrics always, a log line when logs are on.
    pub fn http(&self, log: &RequestLog) {
        let flags = log.response_flags.join(",");
        self.istio.http(&HttpObservation {
            cluster: log.upstream_cluster.as_deref(),
            upstream_host: log.upstream_host,
            protocol: "http",
            response_code: log.status,
            response_flags: &flags,
            duration_us: log.duration.as_micros() as u64,
            request_bytes: log.bytes_received,
            response_bytes: log.bytes_sent,
        });
        let access = self.access.load();
        if !access.enabled() {
            return;
        }
        fn some(s: &str) -> Option<&str> {
            (!s.is_empty() && s != "-").then_some(s)
        }
        let details = if log.details.is_empty() {
            "via_upstream"
        } else {
            log.details
        };
        let record = LogRecord {
            start: log.start,
            method: some(&log.method),
            path: some(&log.path),
            protocol: Some(log.protocol),
            response_code: log.status,
            response_flags: &flags,
            response_code_details: Some(details),
            bytes_received: log.bytes_received,
            bytes_sent: log.bytes_sent,
            duration_ms: log.duration.as_millis() as u64,
            upstream_service_time_ms: log.upstream_service_time.map(|d| d.as_millis() as u64),
            x_forwarded_for: log.x_forwarded_for.as_deref(),
            user_agent: log.user_agent.as_deref(),
            request_id: some(&log.request_id),
            authority: some(&log.authority),
            upstream_host: log.upstream_host,
            upstream_cluster: log.upstream_cluster.as_deref(),
            upstream_local: log.upstream_local,
            downstream_local: log.downstream_local,
            grpc_status: log.grpc_status,
            sni: log.sni.as_deref(),
            route_name: log.route_name.as_deref(),
            ..LogRecord::empty(log.downstream_remote)
        };
        access.log(&record);
    }

    /// An L4 flow that reached an upstream is open (Istio counts it at connect).
    pub fn tcp_opened(&self, cluster: &str, endpoint: SocketAddr) {
        self.istio.tcp_opened(cluster, Some(endpoint));
    }

    /// An L4 flow ended (or was refused: `flags` NR/UH/UF, no cluster). Byte counts are
    /// the splice's: for the kernel splice, its per-flow counters. A flow closed at its
    /// `maxConnectionDuration` (DT) was opened, so its close counts too.
    pub fn tcp_closed(&self, flow: &TcpFlow<'_>) {
        if let Some(c) = flow.cluster
            && matches!(flow.flags, "" | "DT")
        {
            self.istio
                .tcp_closed(c, flow.upstream, flow.received, flow.sent);
        }
        let access = self.access.load();
        if !access.enabled() {
            return;
        }
        let termination = match flow.termination {
            Some(Termination::DownstreamReset) => Some("downstream_reset"),
            Some(Termination::UpstreamReset) => Some("upstream_reset"),
            Some(Termination::IdleTimeout) => Some("idle_timeout"),
            Some(Termination::DrainTimeout) => Some("drain_timeout"),
            // Envoy's LocalCloseReasons::MaxConnectionDurationReached.
            Some(Termination::MaxDuration) => Some("max_connection_duration_reached"),
            _ => None,
        };
        let record = LogRecord {
            start: flow.start,
            response_flags: flow.flags,
            connection_termination_details: termination,
            upstream_transport_failure_reason: flow.failure,
            bytes_received: flow.received,
            bytes_sent: flow.sent,
            duration_ms: flow.duration.as_millis() as u64,
            upstream_host: flow.upstream,
            upstream_cluster: flow.cluster,
            upstream_local: flow.upstream_local,
            downstream_local: flow.downstream_local,
            sni: flow.sni,
            ..LogRecord::empty(flow.peer)
        };
        access.log(&record);
    }
}

impl Telemetry {
    /// Istio's metrics, then the access-log writers' counters.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        self.istio.render(out);
        let sinks = self.access.load().sinks();
        type Pick = fn(&access_log::Sink) -> u64;
        let rows: [(&str, &str, Pick); 2] = [
            (
                "gateway_access_log_written_total",
                "Access-log lines written, per file.",
                |s| s.written.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "gateway_access_log_dropped_total",
                "Access-log lines dropped because the file could not keep up (or failed), per file.",
                |s| s.dropped.load(std::sync::atomic::Ordering::Relaxed),
            ),
        ];
        let _ = writeln!(
            out,
            "# HELP gateway_log_lines_dropped_total Gateway log lines (stderr) dropped because stderr could not keep up.\n# TYPE gateway_log_lines_dropped_total counter\ngateway_log_lines_dropped_total {}",
            stderr_log::dropped_lines()
        );
        for (name, help, pick) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for s in &sinks {
                let path = s
                    .path
                    .display()
                    .to_string()
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"");
                let _ = writeln!(out, "{name}{{file=\"{path}\"}} {}", pick(s));
            }
        }
    }
}

/// An L4 flow as its access-log line reports it.
pub struct TcpFlow<'a> {
    pub start: SystemTime,
    pub duration: Duration,
    pub peer: SocketAddr,
    pub downstream_local: Option<SocketAddr>,
    pub upstream: Option<SocketAddr>,
    pub upstream_local: Option<SocketAddr>,
    pub cluster: Option<&'a str>,
    pub sni: Option<&'a str>,
    pub received: u64,
    pub sent: u64,
    /// Envoy response flags: empty, or NR (no route), UH (no endpoint), UF (connect
    /// failed), DT (closed at the cluster's `maxConnectionDuration`).
    pub flags: &'a str,
    pub failure: Option<&'a str>,
    pub termination: Option<&'a Termination>,
}

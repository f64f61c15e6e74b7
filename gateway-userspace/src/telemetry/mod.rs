//! What the gateway counts and logs. Every request and L4 flow yields one
//! [`AccessRecord`] (with its [`ResponseFlags`]), from which come its Envoy-format
//! access-log lines ([`access_log`], formats in [`format`], Telemetry filters in
//! [`filter`]) and Istio's standard metrics ([`istio_metrics`]); the gateway's own
//! counters are in [`metrics`].
pub mod access_log;
pub mod filter;
pub mod format;
pub mod grpc_status;
pub mod istio_metrics;
pub mod metrics;
pub mod record;
pub mod response_flags;
pub mod stderr_log;

use std::{net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;

use crate::{
    config::{ConfigError, GatewayIdentity, Snapshot},
    sys::prom::{Kind, Prom},
};

use access_log::{AccessLogConfig, AccessLogs};
use istio_metrics::IstioMetrics;
pub use record::AccessRecord;
pub use response_flags::{ResponseFlag, ResponseFlags};

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

    /// One finished request or L4 flow: metrics always, a log line when logs are on.
    pub fn report(&self, r: &AccessRecord) {
        self.istio.record(r);
        self.access.load().log(r);
    }

    /// An L4 flow that reached an upstream is open (Istio counts it at connect).
    pub fn tcp_opened(&self, cluster: &str, endpoint: SocketAddr) {
        self.istio.tcp_opened(cluster, Some(endpoint));
    }
}

impl Telemetry {
    /// Istio's metrics, then the access-log writers' counters.
    pub fn render_prometheus(&self, out: &mut String) {
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
        let mut p = Prom::new(out);
        p.family(
            "gateway_log_lines_dropped_total",
            Kind::Counter,
            "Gateway log lines (stderr) dropped because stderr could not keep up.",
        )
        .sample(
            "gateway_log_lines_dropped_total",
            &[],
            stderr_log::dropped_lines(),
        );
        for (name, help, pick) in rows {
            p.family(name, Kind::Counter, help);
            for s in &sinks {
                p.sample(name, &[("file", &s.path.display())], pick(s));
            }
        }
    }
}

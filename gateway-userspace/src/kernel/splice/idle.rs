//! The L4 idle timeout (Istio's `idleTimeout` for TCP, 1 h by default;
//! `--tcp-idle-timeout`): a flow in which no byte moved either way for that long is
//! closed. The userspace paths touch an [`Activity`] whenever they move bytes and race
//! [`expired`] against their work; the kernel path's driver compares the kernel's per-flow
//! counters between sweeps instead.
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// When a flow last moved a byte, and how many it holds read but not yet written.
pub(crate) struct Activity {
    base: Instant,
    /// Milliseconds after `base`.
    last: AtomicU64,
    read: AtomicU64,
    /// Written per direction: downstream→upstream, upstream→downstream.
    written: [AtomicU64; 2],
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            base: Instant::now(),
            last: AtomicU64::new(0),
            read: AtomicU64::new(0),
            written: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    pub(crate) fn touch(&self) {
        self.last
            .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// `n` bytes read into userspace (counts as activity).
    pub(crate) fn read(&self, n: usize) {
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
    }

    /// `n` bytes of direction `d2u` (true: downstream→upstream) written out.
    pub(crate) fn written(&self, d2u: bool, n: usize) {
        self.written[usize::from(!d2u)].fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
    }

    /// Bytes written so far per direction (downstream→upstream, upstream→downstream).
    pub(crate) fn moved(&self) -> (u64, u64) {
        (
            self.written[0].load(Ordering::Relaxed),
            self.written[1].load(Ordering::Relaxed),
        )
    }

    /// Bytes read but not written: closing now would drop them, so the flow must be
    /// reset rather than closed with a FIN.
    pub(crate) fn pending(&self) -> bool {
        let (a, b) = self.moved();
        self.read.load(Ordering::Relaxed) > a + b
    }

    fn idle_for(&self) -> Duration {
        self.base
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}

/// Completes once `a` has seen no byte for `idle` (never when `idle` is None).
pub(crate) async fn expired(a: &Activity, idle: Option<Duration>) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    loop {
        let since = a.idle_for();
        if since >= idle {
            return;
        }
        tokio::time::sleep(idle - since).await;
    }
}

/// A flow's own limits: its idle timeout and the instant its
/// `connectionPool.tcp.maxConnectionDuration` runs out (Envoy's tcp_proxy
/// `idle_timeout` and `max_downstream_connection_duration`). Every splice path races
/// [`FlowLimits::reached`] against its work; the kernel path's driver checks the
/// deadline at its sweep.
#[derive(Debug, Clone, Default)]
pub struct FlowLimits {
    /// Close after this long without a byte (None: never).
    pub idle: Option<Duration>,
    /// Close at this instant whatever moves (None: never).
    pub deadline: Option<Instant>,
    /// Close once this is cancelled, as at the process drain's deadline (termination
    /// `drain_timeout`): the deadline of the flow's listener when a reload removed it
    /// (`runtime::ports`). None: only the process drain closes it.
    pub closing: Option<tokio_util::sync::CancellationToken>,
}

impl From<Option<Duration>> for FlowLimits {
    fn from(idle: Option<Duration>) -> FlowLimits {
        FlowLimits {
            idle,
            ..FlowLimits::default()
        }
    }
}

/// Completes once the flow's own closing token is cancelled (never without one).
pub(crate) async fn closing(token: Option<&tokio_util::sync::CancellationToken>) {
    match token {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Completes once the flow's deadline has passed (never when it has none).
pub(crate) async fn deadline(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

//! Moving the bytes of a routed L4 flow between the downstream (client) and upstream
//! sockets, once userspace has decided where the flow goes.
//!
//! Three implementations behind one interface, with identical behaviour (FIN passed on
//! as a half-close each way, RST passed on as a reset, byte counts reported at close):
//! - [`ebpf::EbpfSplicer`]: both sockets enter a SOCKHASH and the kernel's sk_skb
//!   verdict program redirects every skb to the peer socket; userspace only watches for
//!   FIN/RST.
//! - [`pipe::PipeSplicer`]: nonblocking splice(2) through a pooled pipe per direction,
//!   on the gateway's own tokio threads: zero-copy, driven from userspace
//!   (`--splice splice`, and what `auto` falls back to when eBPF can't load). It can also
//!   run a flow until it proves bulk and hand it over losslessly
//!   ([`pipe::PipeSplicer::splice_until_bulk`]).
//! - [`uring::UringSplicer`]: read/write copies on io_uring (tokio-uring) threads
//!   (`--splice uring`).
mod copy;
mod driver;
pub mod ebpf;
mod epoll;
mod idle;
pub mod pipe;
pub(crate) mod sockopt;
pub mod uring;

pub use idle::FlowLimits;
/// A flow's `maxConnectionDuration` deadline, for the copies outside the splices.
pub(crate) use idle::{closing as flow_closing, deadline as flow_deadline};

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// `--splice`: how L4 flows are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SpliceMode {
    /// Every flow starts on splice(2) through pipes; a flow that proves bulk is handed
    /// to the eBPF splice (when it loads; else the reason is logged).
    Auto,
    /// eBPF sockhash splice; fail at start if it can't load.
    Ebpf,
    /// splice(2) through pooled pipes, zero-copy, on the gateway's threads.
    #[value(alias = "userspace")]
    Splice,
    /// io_uring copies in userspace, on io_uring threads.
    Uring,
}

/// Options of the splices (`gateway run --splice-*`, `--offload-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpliceOptions {
    pub pipe: pipe::PipeConfig,
    /// Per-direction budget of the kernel splice (bytes a peer socket may hold).
    pub budget: u64,
    /// When `auto` hands a flow to the kernel.
    pub offload: pipe::OffloadPolicy,
    /// Close a flow in which no byte moved for this long (None: never).
    pub idle_timeout: Option<std::time::Duration>,
}

impl Default for SpliceOptions {
    fn default() -> Self {
        SpliceOptions {
            pipe: pipe::PipeConfig::default(),
            budget: ebpf::DEFAULT_BUDGET,
            offload: pipe::OffloadPolicy::default(),
            // Istio's default idleTimeout for TCP.
            idle_timeout: Some(std::time::Duration::from_secs(3600)),
        }
    }
}

/// How a flow ended, as the access log and metrics report it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Termination {
    /// Both sides closed their write side (FIN both ways).
    #[default]
    Closed,
    /// The client reset; the upstream was reset in turn.
    DownstreamReset,
    /// The upstream reset; the client was reset in turn.
    UpstreamReset,
    /// A local failure (map insert, socket error) ended the flow.
    Error(String),
    /// No byte moved either way for `--tcp-idle-timeout`: both sides were closed (FIN
    /// when nothing was left to forward, else reset).
    IdleTimeout,
    /// The gateway's drain deadline (`--drain-duration` after SIGTERM) passed with the
    /// flow still open: closed as the idle timeout closes a flow.
    DrainTimeout,
    /// The flow's cluster's `connectionPool.tcp.maxConnectionDuration` passed (Envoy's
    /// tcp_proxy `max_downstream_connection_duration`: flag DT, close reason
    /// `max_connection_duration_reached`): closed as the idle timeout closes a flow.
    MaxDuration,
}

impl fmt::Display for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Termination::Closed => f.write_str("closed"),
            Termination::DownstreamReset => f.write_str("downstream_reset"),
            Termination::UpstreamReset => f.write_str("upstream_reset"),
            Termination::Error(e) => write!(f, "error: {e}"),
            Termination::IdleTimeout => f.write_str("idle_timeout"),
            Termination::DrainTimeout => f.write_str("drain_timeout"),
            Termination::MaxDuration => f.write_str("max_connection_duration_reached"),
        }
    }
}

/// Which mechanism carried a flow's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// The eBPF sockhash splice (payload never left the kernel).
    Kernel,
    /// splice(2) through a pipe: zero-copy, driven from userspace.
    Splice,
    /// read/write copies on io_uring.
    Uring,
    /// A plain copy through a userspace buffer (tokio), for flows no other path takes.
    #[default]
    Copy,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Kernel => "kernel",
            Path::Splice => "splice",
            Path::Uring => "uring",
            Path::Copy => "copy",
        }
    }
}

/// What a finished flow moved. Byte counts exclude the prelude the caller wrote itself.
#[derive(Debug, Clone, Default)]
pub struct FlowReport {
    /// Bytes received from the client and forwarded upstream by the splice.
    pub downstream_to_upstream: u64,
    /// Bytes received from the upstream and forwarded to the client by the splice.
    pub upstream_to_downstream: u64,
    /// Payload bytes that passed through userspace (copied, or moved through a pipe by
    /// splice(2)); 0 when the kernel splice carried the whole flow.
    pub userspace_bytes: u64,
    /// The path that carried the flow when it ended.
    pub path: Path,
    /// The flow started in userspace and was handed to the kernel while live.
    pub offloaded: bool,
    /// Times a direction of a kernel-spliced flow was paused (its peer over budget).
    pub pauses: u32,
    /// Redirects the kernel refused (each one resets the flow both ways).
    pub redirect_failures: u64,
    /// Bytes the kernel redirected, downstream→upstream and upstream→downstream (the
    /// rest of each direction went through userspace).
    pub kernel_bytes: [u64; 2],
    /// Of those, bytes a failing peer never took (its psock backlog was dropped): only
    /// in a flow that ended in a reset or an error.
    pub undelivered: u64,
    pub termination: Termination,
}

impl FlowReport {
    /// True when the kernel splice carried the flow at its end.
    pub fn in_kernel(&self) -> bool {
        self.path == Path::Kernel
    }
}

/// Flows and bytes of one path.
#[derive(Debug, Default)]
pub struct PathCounters {
    /// Flows that ended on this path.
    pub flows: AtomicU64,
    /// Payload bytes (both directions) of the flows that ended on this path.
    pub bytes: AtomicU64,
    /// Flows on this path right now.
    pub active: AtomicU64,
}

impl PathCounters {
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a flow as active on this path until the guard is dropped.
    pub(crate) fn enter(&self) -> ActiveGuard<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(&self.active)
    }
}

/// Decrements an active-flows gauge when dropped (also on a panic).
pub(crate) struct ActiveGuard<'a>(&'a AtomicU64);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counters per path, for /debug/splice, proxy-config and Prometheus.
#[derive(Debug, Default)]
pub struct PathStats {
    pub kernel: PathCounters,
    pub splice: PathCounters,
    pub uring: PathCounters,
    pub copy: PathCounters,
    /// Live flows handed from userspace to the kernel.
    pub offloads: AtomicU64,
    /// Pauses of kernel-spliced directions (peer over budget), and how many now.
    pub pauses: AtomicU64,
    pub paused_now: AtomicU64,
    /// Flows (or directions) the kernel could not take, by [`ebpf::Fallback`] reason.
    pub fallbacks: [AtomicU64; 3],
    /// Bytes redirected to a peer that failed before taking them (reset flows only).
    pub undelivered: AtomicU64,
    /// Flows reset because the kernel forwarded bytes twice (the verdict saw more bytes
    /// than TCP received).
    pub integrity: AtomicU64,
}

impl PathStats {
    pub fn path(&self, p: Path) -> &PathCounters {
        match p {
            Path::Kernel => &self.kernel,
            Path::Splice => &self.splice,
            Path::Uring => &self.uring,
            Path::Copy => &self.copy,
        }
    }

    pub(crate) fn fallback(&self, reason: ebpf::Fallback) {
        self.fallbacks[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// (reason, count) for every fallback reason, zeros included.
    pub fn fallbacks(&self) -> [(&'static str, u64); 3] {
        use ebpf::Fallback::*;
        [NotEstablished, MapInsert, SocketState].map(|r| {
            (
                r.as_str(),
                self.fallbacks[r as usize].load(Ordering::Relaxed),
            )
        })
    }

    fn ended(&self, r: &FlowReport) {
        let p = self.path(r.path);
        p.flows.fetch_add(1, Ordering::Relaxed);
        p.bytes.fetch_add(
            r.downstream_to_upstream + r.upstream_to_downstream,
            Ordering::Relaxed,
        );
    }
}

/// The splice in use for this process.
#[derive(Clone)]
pub struct Splicer(Arc<Inner>);

struct Inner {
    mode: SpliceMode,
    kernel: Option<ebpf::EbpfSplicer>,
    pipe: Option<pipe::PipeSplicer>,
    uring: Option<uring::UringSplicer>,
    offload: pipe::OffloadPolicy,
    idle: Option<std::time::Duration>,
    paths: Arc<PathStats>,
    /// Cancelled by [`Splicer::close_all`].
    closing: CancellationToken,
}

impl Splicer {
    /// Picks the implementation for `mode`, with default options.
    pub fn new(mode: SpliceMode) -> Result<Self, ebpf::SpliceError> {
        Self::with_options(mode, SpliceOptions::default())
    }

    /// Starts what `mode` needs. `Auto` runs every flow on the pipe path first and hands
    /// the bulk ones to the kernel; when eBPF can't load it says why in the log and keeps
    /// every flow on the pipes.
    pub fn with_options(mode: SpliceMode, opts: SpliceOptions) -> Result<Self, ebpf::SpliceError> {
        let paths = Arc::new(PathStats::default());
        let closing = CancellationToken::new();
        let load = || {
            ebpf::EbpfSplicer::load(
                opts.budget,
                opts.idle_timeout,
                paths.clone(),
                closing.clone(),
            )
        };
        let pipes = || {
            let cfg = pipe::PipeConfig {
                idle_timeout: opts.idle_timeout,
                ..opts.pipe
            };
            pipe::PipeSplicer::new(cfg)
                .map(|p| p.closed_by(closing.clone()))
                .map_err(std::io::Error::other)
        };
        let (kernel, pipe, uring) = match mode {
            SpliceMode::Splice => (None, Some(pipes()?), None),
            SpliceMode::Uring => (
                None,
                None,
                Some(uring::UringSplicer::start(
                    opts.idle_timeout,
                    closing.clone(),
                )?),
            ),
            SpliceMode::Ebpf => (Some(load()?), None, None),
            SpliceMode::Auto => {
                let kernel = load()
                    .inspect_err(|e| {
                        tracing::warn!(
                            "eBPF splice unavailable ({e}); every flow stays on the userspace splice(2) through pipes"
                        )
                    })
                    .ok();
                (kernel, Some(pipes()?), None)
            }
        };
        Ok(Splicer(Arc::new(Inner {
            mode,
            kernel,
            pipe,
            uring,
            offload: opts.offload,
            idle: opts.idle_timeout,
            paths,
            closing,
        })))
    }

    /// Closes every flow now, on every path, as the idle timeout does (a FIN each way,
    /// or a reset when bytes were still waiting), with [`Termination::DrainTimeout`];
    /// flows spliced after this are closed as soon as they start. The drain's deadline.
    pub fn close_all(&self) {
        self.0.closing.cancel();
    }

    /// The mode's name, as `--splice` spells it.
    pub fn name(&self) -> &'static str {
        match self.0.mode {
            SpliceMode::Auto => "auto",
            SpliceMode::Ebpf => "ebpf",
            SpliceMode::Splice => "splice",
            SpliceMode::Uring => "uring",
        }
    }

    /// The kernel splice, when this process uses it.
    pub fn kernel(&self) -> Option<&ebpf::EbpfSplicer> {
        self.0.kernel.as_ref()
    }

    /// The splice(2) path, when this process uses it.
    pub fn pipe(&self) -> Option<&pipe::PipeSplicer> {
        self.0.pipe.as_ref()
    }

    /// `auto`'s rule for handing a flow to the kernel (None in the other modes).
    pub fn offload(&self) -> Option<&pipe::OffloadPolicy> {
        (self.0.mode == SpliceMode::Auto && self.0.kernel.is_some()).then_some(&self.0.offload)
    }

    pub fn paths(&self) -> &PathStats {
        &self.0.paths
    }

    /// `--tcp-idle-timeout` (None: never), for flows without a rule's own.
    pub fn idle_timeout(&self) -> Option<std::time::Duration> {
        self.0.idle
    }

    /// Cancelled when the drain deadline passes ([`Splicer::close_all`]): copies made
    /// outside the splices end their flows on it as the splices do.
    pub fn closing(&self) -> &CancellationToken {
        &self.0.closing
    }

    /// Moves bytes both ways until both sides are done, then closes both sockets.
    pub async fn splice(&self, down: TcpStream, up: TcpStream) -> FlowReport {
        self.splice_idle(down, up, self.0.idle).await
    }

    /// As [`splice`](Self::splice), with this flow's own limits (a DestinationRule's
    /// `connectionPool.tcp.idleTimeout` and `maxConnectionDuration`), on every path.
    pub async fn splice_idle(
        &self,
        down: TcpStream,
        up: TcpStream,
        limits: impl Into<FlowLimits>,
    ) -> FlowReport {
        let limits = limits.into();
        let inner = &*self.0;
        let r = match (inner.mode, &inner.kernel, &inner.pipe, &inner.uring) {
            (SpliceMode::Ebpf, Some(k), _, _) => {
                k.splice_from_idle(down, up, ebpf::Prior::default(), limits)
                    .await
            }
            (SpliceMode::Auto, Some(k), Some(p), _) => {
                let outcome = {
                    let _active = inner.paths.splice.enter();
                    p.splice_until_bulk_idle(down, up, &inner.offload, limits.clone())
                        .await
                };
                match outcome {
                    pipe::PipeOutcome::Done(r) => r,
                    pipe::PipeOutcome::Handover {
                        down,
                        up,
                        down_to_upstream,
                        upstream_to_downstream,
                    } => {
                        tracing::debug!(
                            down_to_upstream,
                            upstream_to_downstream,
                            "splice: bulk flow handed to the kernel"
                        );
                        let prior = ebpf::Prior {
                            downstream_to_upstream: down_to_upstream,
                            upstream_to_downstream,
                        };
                        k.splice_from_idle(down, up, prior, limits).await
                    }
                }
            }
            (_, _, Some(p), _) => {
                let _active = inner.paths.splice.enter();
                p.splice_idle(down, up, limits).await
            }
            (_, _, _, Some(u)) => {
                let _active = inner.paths.uring.enter();
                u.splice_idle(down, up, limits).await
            }
            _ => {
                let _active = inner.paths.copy.enter();
                copy::copy(down, up, limits, &inner.closing).await
            }
        };
        inner.paths.ended(&r);
        r
    }
}

// === shared by the userspace splices (pipes, io_uring, and the tokio fallback) ===

/// How one direction of a userspace copy ended.
pub(crate) enum DirEnd {
    /// EOF from the reader; the writer's write side was shut (the half-close).
    Fin(u64),
    /// The reader's socket reset (or failed); the other socket must be reset.
    ReaderReset(u64),
    /// Writing failed (the peer reset); this flow is over.
    WriterFailed(u64),
}

impl DirEnd {
    pub(crate) fn bytes(&self) -> u64 {
        match *self {
            DirEnd::Fin(n) | DirEnd::ReaderReset(n) | DirEnd::WriterFailed(n) => n,
        }
    }
}

/// Which socket a userspace copy must reset after a direction ended badly.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Victim {
    Down,
    Up,
}

/// What a finished direction means for the flow: `down_to_up` says which direction it
/// was. A reset on one side is passed on as a reset of the other.
pub(crate) fn ending(down_to_up: bool, end: &DirEnd) -> Option<(Victim, Termination)> {
    match (down_to_up, end) {
        (_, DirEnd::Fin(_)) => None,
        (true, DirEnd::ReaderReset(_)) | (false, DirEnd::WriterFailed(_)) => {
            Some((Victim::Up, Termination::DownstreamReset))
        }
        (true, DirEnd::WriterFailed(_)) | (false, DirEnd::ReaderReset(_)) => {
            Some((Victim::Down, Termination::UpstreamReset))
        }
    }
}

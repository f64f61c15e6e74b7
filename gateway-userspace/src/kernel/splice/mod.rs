//! Moving the bytes of a routed L4 flow between the downstream (client) and upstream
//! sockets, once userspace has decided where the flow goes.
//!
//! Two implementations behind one interface, with identical behaviour (FIN passed on as
//! a half-close each way, RST passed on as a reset, byte counts reported at close):
//! - [`ebpf::EbpfSplicer`]: both sockets enter a SOCKHASH and the kernel's sk_skb
//!   verdict program redirects every skb to the peer socket; userspace only watches for
//!   FIN/RST.
//! - [`uring::UringSplicer`]: read/write copies on io_uring (tokio-uring) threads, for
//!   hosts where eBPF can't load or when `--splice userspace` is asked for.
mod copy;
mod driver;
pub mod ebpf;
mod epoll;
pub(crate) mod sockopt;
pub mod uring;

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::net::TcpStream;

/// `--splice`: how L4 flows are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SpliceMode {
    /// eBPF when it loads, else userspace (the reason is logged).
    Auto,
    /// eBPF sockhash splice; fail at start if it can't load.
    Ebpf,
    /// io_uring copies in userspace.
    Userspace,
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
}

impl fmt::Display for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Termination::Closed => f.write_str("closed"),
            Termination::DownstreamReset => f.write_str("downstream_reset"),
            Termination::UpstreamReset => f.write_str("upstream_reset"),
            Termination::Error(e) => write!(f, "error: {e}"),
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
    uring: Option<uring::UringSplicer>,
    paths: Arc<PathStats>,
}

impl Splicer {
    /// Picks the implementation for `mode`; for `Auto`, says in the log why eBPF was not
    /// used when it wasn't.
    pub fn new(mode: SpliceMode) -> Result<Self, ebpf::SpliceError> {
        let paths = Arc::new(PathStats::default());
        let load = || ebpf::EbpfSplicer::load(ebpf::DEFAULT_BUDGET, paths.clone());
        let (mode, kernel, uring) = match mode {
            SpliceMode::Userspace => (mode, None, Some(uring::UringSplicer::start()?)),
            SpliceMode::Ebpf => (mode, Some(load()?), None),
            SpliceMode::Auto => match load() {
                Ok(s) => (SpliceMode::Ebpf, Some(s), None),
                Err(e) => {
                    tracing::warn!(
                        "eBPF splice unavailable ({e}); falling back to the userspace (io_uring) splice"
                    );
                    (
                        SpliceMode::Userspace,
                        None,
                        Some(uring::UringSplicer::start()?),
                    )
                }
            },
        };
        Ok(Splicer(Arc::new(Inner {
            mode,
            kernel,
            uring,
            paths,
        })))
    }

    pub fn name(&self) -> &'static str {
        match self.0.mode {
            SpliceMode::Ebpf | SpliceMode::Auto => "ebpf",
            SpliceMode::Userspace => "userspace",
        }
    }

    /// The kernel splice, when this process uses it.
    pub fn kernel(&self) -> Option<&ebpf::EbpfSplicer> {
        self.0.kernel.as_ref()
    }

    pub fn paths(&self) -> &PathStats {
        &self.0.paths
    }

    /// Moves bytes both ways until both sides are done, then closes both sockets.
    pub async fn splice(&self, down: TcpStream, up: TcpStream) -> FlowReport {
        let r = match (&self.0.kernel, &self.0.uring) {
            (Some(k), _) => k.splice(down, up).await,
            (None, Some(u)) => {
                let _active = self.0.paths.uring.enter();
                u.splice(down, up).await
            }
            (None, None) => {
                let _active = self.0.paths.copy.enter();
                copy::copy(down, up).await
            }
        };
        self.0.paths.ended(&r);
        r
    }
}

// === shared by the two userspace copies (io_uring, and the tokio fallback) ===

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

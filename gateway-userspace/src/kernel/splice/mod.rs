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
pub mod ebpf;
pub mod pipe;
pub(crate) mod sockopt;
pub mod uring;

use std::{fmt, sync::Arc};

use tokio::net::TcpStream;

/// `--splice`: how L4 flows are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SpliceMode {
    /// eBPF when it loads, else splice(2) through pipes (the reason is logged).
    Auto,
    /// eBPF sockhash splice; fail at start if it can't load.
    Ebpf,
    /// splice(2) through pooled pipes, zero-copy, on the gateway's threads.
    #[value(alias = "userspace")]
    Splice,
    /// io_uring copies in userspace, on io_uring threads.
    Uring,
}

/// Options of the userspace splices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpliceOptions {
    pub pipe: pipe::PipeConfig,
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
    pub termination: Termination,
}

impl FlowReport {
    /// True when the kernel splice carried the flow at its end.
    pub fn in_kernel(&self) -> bool {
        self.path == Path::Kernel
    }
}

/// The splice in use for this process.
#[derive(Clone)]
pub enum Splicer {
    Ebpf(Arc<ebpf::EbpfSplicer>),
    Pipe(pipe::PipeSplicer),
    Uring(uring::UringSplicer),
}

impl Splicer {
    /// Picks the implementation for `mode`, with default options.
    pub fn new(mode: SpliceMode) -> Result<Self, ebpf::SpliceError> {
        Self::with_options(mode, SpliceOptions::default())
    }

    /// Picks the implementation for `mode`; for `Auto`, says in the log why eBPF was not
    /// used when it wasn't.
    pub fn with_options(mode: SpliceMode, opts: SpliceOptions) -> Result<Self, ebpf::SpliceError> {
        let pipes = || -> Result<Self, ebpf::SpliceError> {
            let p = pipe::PipeSplicer::new(opts.pipe).map_err(std::io::Error::other)?;
            Ok(Splicer::Pipe(p))
        };
        match mode {
            SpliceMode::Splice => pipes(),
            SpliceMode::Uring => Ok(Splicer::Uring(uring::UringSplicer::start()?)),
            SpliceMode::Ebpf => Ok(Splicer::Ebpf(Arc::new(ebpf::EbpfSplicer::load()?))),
            SpliceMode::Auto => match ebpf::EbpfSplicer::load() {
                Ok(s) => Ok(Splicer::Ebpf(Arc::new(s))),
                Err(e) => {
                    tracing::warn!(
                        "eBPF splice unavailable ({e}); falling back to the userspace splice(2) through pipes"
                    );
                    pipes()
                }
            },
        }
    }

    /// The mode's name, as `--splice` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Splicer::Ebpf(_) => "ebpf",
            Splicer::Pipe(_) => "splice",
            Splicer::Uring(_) => "uring",
        }
    }

    /// Moves bytes both ways until both sides are done, then closes both sockets.
    pub async fn splice(&self, down: TcpStream, up: TcpStream) -> FlowReport {
        match self {
            Splicer::Ebpf(s) => s.splice(down, up).await,
            Splicer::Pipe(s) => s.splice(down, up).await,
            Splicer::Uring(s) => s.splice(down, up).await,
        }
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

//! The zero-copy userspace splice (`--splice splice`): nonblocking splice(2) from a
//! socket into a pipe and from the pipe into the other socket, one pipe per direction,
//! driven on the gateway's own tokio threads (HAProxy's raw_sock_to_pipe /
//! raw_sock_from_pipe loop). Payload pages move by reference: `tcp_splice_read` puts the
//! skb's pages into the pipe and `splice_to_socket` hands them to `tcp_sendmsg` with
//! MSG_SPLICE_PAGES; userspace never maps them.
//!
//! Pipes come from a bounded per-splicer pool. A direction takes one only when its
//! socket reports data, and gives it back once it is empty and the socket has nothing
//! more to read, so an idle flow holds no pipe. A pipe that still holds bytes is never
//! pooled (it is closed). Memory per flow is bounded by one pipe per direction: when the
//! writer stalls the pipe fills, the socket is no longer read, and TCP closes its window
//! toward the sender.
//!
//! Same contract as the other splices: EOF on one side is passed on as a half-close once
//! its pipe is flushed, a reset or read error resets the other side, a write failure
//! resets the reader's side.
mod direction;
mod drive;
mod offload;
mod pool;

pub use offload::OffloadPolicy;

use std::{
    io,
    net::Shutdown,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use tokio::net::TcpStream;

use self::{
    direction::Dir,
    drive::{Drive, drive},
    pool::{Pipe, Pool},
};
use super::{FlowReport, Path, Termination, Victim, sockopt};

/// Default pipe capacity. Measured with one iperf3 stream on loopback through the
/// gateway: 64 KiB, 256 KiB and 1 MiB pipes gave the same throughput and gateway CPU per
/// GB within the noise (0.25-0.34 CPU-s/GB each), with ~32, ~110 and ~280 KiB moved per
/// splice(2) call; 256 KiB takes 3x fewer syscalls than 64 KiB, and 1 MiB would only pin
/// 4x more memory per stalled flow direction.
pub const DEFAULT_PIPE_SIZE: usize = 256 * 1024;
/// Default number of empty pipes kept for reuse.
pub const DEFAULT_POOL_MAX: usize = 1024;

/// Sizing of the pipes and of their pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipeConfig {
    /// Capacity asked of each pipe (F_SETPIPE_SZ); capped by /proc/sys/fs/pipe-max-size,
    /// rounded up by the kernel to a power of two pages.
    pub pipe_size: usize,
    /// Empty pipes kept for reuse; a pipe given back beyond that is closed.
    pub pool_max: usize,
    /// Close a flow in which no byte moved for this long (None: never).
    pub idle_timeout: Option<std::time::Duration>,
}

impl Default for PipeConfig {
    fn default() -> Self {
        PipeConfig {
            pipe_size: DEFAULT_PIPE_SIZE,
            pool_max: DEFAULT_POOL_MAX,
            idle_timeout: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipeError {
    #[error("pipe2: {0}")]
    Create(#[source] io::Error),
    #[error("F_GETPIPE_SZ: {0}")]
    Size(#[source] io::Error),
}

/// What the pool holds and has done, for /debug/splice and metrics.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PipeStats {
    /// Capacity of the pipes, in bytes (what the kernel granted).
    pub pipe_size: usize,
    pub pool_max: usize,
    /// Empty pipes waiting in the pool.
    pub pooled: usize,
    /// Pipes held by flows right now (each holds at most one per direction).
    pub in_use: usize,
    /// Pipes created, and closed (pool full, or closed holding bytes of a dead flow).
    pub created: u64,
    pub closed: u64,
}

/// How [`PipeSplicer::splice_until_bulk`] ended.
///
/// `Handover` is returned only when all of these held at the moment it returned:
/// - the last splice(2) read on each socket returned EAGAIN into an empty pipe (or the
///   socket was never read): its receive queue held no skb, so none is partially
///   consumed. This matters because once a socket enters a sockmap, `tcp_read_skb` hands
///   the verdict program whole skbs, including any part userspace already read. Bytes
///   that arrive after that read are in whole, unread skbs.
/// - every byte read from each socket has been written into the other one (both pipes
///   empty; the pipes went back to the pool);
/// - neither socket has received a FIN or an error: both are TCP_ESTABLISHED;
/// - the counts are the bytes moved so far in each direction.
///
/// The sockets are still registered with the tokio reactor and untouched otherwise
/// (no shutdown, no socket option changed). A FIN or RST may of course arrive the moment
/// after the check: the caller's own insert into the sockmap must cope with that.
pub enum PipeOutcome {
    /// The flow ended on the pipe path (FIN both ways, or a reset); both sockets closed.
    Done(FlowReport),
    /// The flow is bulk and was quiesced for a lossless handover.
    Handover {
        down: TcpStream,
        up: TcpStream,
        down_to_upstream: u64,
        upstream_to_downstream: u64,
    },
}

impl std::fmt::Debug for PipeOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PipeOutcome::Done(r) => f.debug_tuple("Done").field(r).finish(),
            PipeOutcome::Handover {
                down_to_upstream,
                upstream_to_downstream,
                ..
            } => f
                .debug_struct("Handover")
                .field("down_to_upstream", down_to_upstream)
                .field("upstream_to_downstream", upstream_to_downstream)
                .finish(),
        }
    }
}

// === impl PipeSplicer ===

/// The splice(2) splicer. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct PipeSplicer {
    pool: Arc<Pool>,
    idle: Option<std::time::Duration>,
    /// Closes every flow (the drain deadline, [`super::Splicer::close_all`]).
    closing: tokio_util::sync::CancellationToken,
}

impl PipeSplicer {
    /// Creates the pool and one pipe, to learn the capacity the kernel grants (and to
    /// fail at start rather than per flow).
    pub fn new(cfg: PipeConfig) -> Result<Self, PipeError> {
        let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(1 << 20);
        let want = cfg.pipe_size.clamp(4096, max);
        let first = Pipe::new(want)?;
        if first.cap < want {
            tracing::warn!(
                asked = want,
                got = first.cap,
                "pipes for --splice splice are smaller than asked (per-user pipe limits?)"
            );
        }
        let pool = Pool {
            size: want,
            cap: AtomicUsize::new(first.cap),
            max: cfg.pool_max,
            pipes: Mutex::new(Vec::new()),
            in_use: AtomicUsize::new(1),
            created: AtomicU64::new(1),
            closed: AtomicU64::new(0),
        };
        pool.give(first, true);
        Ok(PipeSplicer {
            pool: Arc::new(pool),
            idle: cfg.idle_timeout,
            closing: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// Flows end (as an idle one does, [`Termination::DrainTimeout`]) once `closing` is
    /// cancelled.
    pub fn closed_by(mut self, closing: tokio_util::sync::CancellationToken) -> Self {
        self.closing = closing;
        self
    }

    pub fn stats(&self) -> PipeStats {
        let p = &self.pool;
        PipeStats {
            pipe_size: p.cap.load(Ordering::Relaxed),
            pool_max: p.max,
            pooled: p.lock().len(),
            in_use: p.in_use.load(Ordering::Relaxed),
            created: p.created.load(Ordering::Relaxed),
            closed: p.closed.load(Ordering::Relaxed),
        }
    }

    /// Moves bytes both ways until both sides are done, then closes both sockets.
    pub async fn splice(&self, down: TcpStream, up: TcpStream) -> FlowReport {
        self.splice_idle(down, up, self.idle.into()).await
    }

    /// As [`splice`](Self::splice), with this flow's own limits: closed after its idle
    /// timeout without a byte, or at its `maxConnectionDuration` deadline.
    pub(crate) async fn splice_idle(
        &self,
        down: TcpStream,
        up: TcpStream,
        limits: super::FlowLimits,
    ) -> FlowReport {
        match self.run(down, up, None, limits).await {
            PipeOutcome::Done(r) => r,
            // run() hands over only when given a policy; never reached.
            PipeOutcome::Handover { down, up, .. } => {
                reset_both(&down, &up);
                FlowReport {
                    path: Path::Splice,
                    termination: Termination::Error("handover without a policy".into()),
                    ..Default::default()
                }
            }
        }
    }

    /// Like [`splice`](Self::splice) until `policy` says the flow is bulk; then returns
    /// the sockets at the first moment a lossless handover is possible (see
    /// [`PipeOutcome`]). A flow that ends first is reported as `Done`.
    pub async fn splice_until_bulk(
        &self,
        down: TcpStream,
        up: TcpStream,
        policy: &OffloadPolicy,
    ) -> PipeOutcome {
        self.run(down, up, Some(policy), self.idle.into()).await
    }

    /// As [`splice_until_bulk`](Self::splice_until_bulk) with this flow's own idle
    /// timeout.
    pub(crate) async fn splice_until_bulk_idle(
        &self,
        down: TcpStream,
        up: TcpStream,
        policy: &OffloadPolicy,
        limits: super::FlowLimits,
    ) -> PipeOutcome {
        self.run(down, up, Some(policy), limits).await
    }

    async fn run(
        &self,
        down: TcpStream,
        up: TcpStream,
        policy: Option<&OffloadPolicy>,
        limits: super::FlowLimits,
    ) -> PipeOutcome {
        let mut d2u = Dir::new(&self.pool, &up);
        let mut u2d = Dir::new(&self.pool, &down);
        let ended = tokio::select! {
            biased;
            e = drive(&down, &up, &mut d2u, &mut u2d, policy, limits.idle) => e,
            () = self.closing.cancelled() => Drive::Idle {
                pending: d2u.in_pipe + u2d.in_pipe > 0,
                why: Termination::DrainTimeout,
            },
            () = super::idle::deadline(limits.deadline) => Drive::Idle {
                pending: d2u.in_pipe + u2d.in_pipe > 0,
                why: Termination::MaxDuration,
            },
            () = super::idle::closing(limits.closing.as_ref()) => Drive::Idle {
                pending: d2u.in_pipe + u2d.in_pipe > 0,
                why: Termination::DrainTimeout,
            },
        };
        let (d, u) = (d2u.moved, u2d.moved);
        // Pipes back to the pool (or closed, holding bytes of a reset flow) before the
        // sockets close.
        drop((d2u, u2d));
        let termination = match ended {
            Drive::Handover => {
                return PipeOutcome::Handover {
                    down,
                    up,
                    down_to_upstream: d,
                    upstream_to_downstream: u,
                };
            }
            Drive::Closed => Termination::Closed,
            Drive::Reset(victim, t) => {
                let s = if victim == Victim::Down { &down } else { &up };
                let _ = sockopt::linger_zero(s);
                t
            }
            Drive::Failed(msg) => {
                reset_both(&down, &up);
                Termination::Error(msg)
            }
            Drive::Idle { pending, why } => {
                // A FIN each way when nothing is left in a pipe or a receive queue, else a
                // reset each way (a FIN would hand the reader a clean but truncated
                // stream).
                if pending || sockopt::unread(&down, &up) {
                    reset_both(&down, &up);
                } else {
                    let _ = socket2::SockRef::from(&down).shutdown(Shutdown::Write);
                    let _ = socket2::SockRef::from(&up).shutdown(Shutdown::Write);
                }
                why
            }
        };
        PipeOutcome::Done(FlowReport {
            downstream_to_upstream: d,
            upstream_to_downstream: u,
            userspace_bytes: d + u,
            path: Path::Splice,
            termination,
            ..Default::default()
        })
    }
}

fn reset_both(down: &TcpStream, up: &TcpStream) {
    let _ = sockopt::linger_zero(down);
    let _ = sockopt::linger_zero(up);
}

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
use std::{
    future::Future,
    io,
    net::Shutdown,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::Poll,
};

use tokio::{
    io::{Interest, Ready},
    net::TcpStream,
};

use super::{DirEnd, FlowReport, Path, Termination, Victim, ending, sockopt};

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

// === offload to the kernel splice ===

/// When a flow on the pipe path counts as bulk, worth handing to the kernel splice.
///
/// A direction is bulk once it has moved at least `min_bytes` and its reads averaged at
/// least `min_chunk` bytes per read wake-up (a wake-up lasts until a read finds the
/// socket empty): a bulk sender refills the socket while we drain it, so a wake-up finds
/// a large chunk; a request/response flow finds one small message per wake-up, however
/// long it lives. Measured through the pipe splice on loopback (bytes per wake-up):
/// iperf3 at full speed 1.8-4.7 MiB, iperf3 -b 100M 128 KiB, iperf3 -b 10M -l 1K 2.3 KiB,
/// lock-step 1 KiB / 4 KiB requests and responses 1 and 4 KiB. The 16 KiB default sits
/// an order of magnitude from both; 1 MiB is under a millisecond of a fast stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffloadPolicy {
    pub min_bytes: u64,
    pub min_chunk: u64,
    /// Offload only flows whose packets arrive on CPUs this process may run on (see
    /// [`OffloadPolicy::cpus_allow`]); `false` lifts that condition.
    pub own_cpus_only: bool,
    /// After a handover attempt that found a socket no longer ESTABLISHED, how many more
    /// bytes to move before trying again.
    pub retry_bytes: u64,
}

impl Default for OffloadPolicy {
    fn default() -> Self {
        OffloadPolicy {
            min_bytes: 1 << 20,
            min_chunk: 16 * 1024,
            own_cpus_only: true,
            retry_bytes: (1 << 20) / 4,
        }
    }
}

impl OffloadPolicy {
    /// The kernel splice's work for bytes arriving on a socket runs on the CPU that
    /// receives them (the verdict in its softirq, the psock backlog on its workqueue).
    /// When that CPU is not one this process may use (an operator pinned the gateway,
    /// or NIC interrupts land elsewhere), an offload would move the gateway's work onto
    /// cores it was not given — on loopback, onto the very cores of the client and the
    /// upstream. Such a flow stays on the pipe path, whose work runs on the gateway's
    /// own threads.
    pub fn cpus_allow(&self, down: &TcpStream, up: &TcpStream) -> bool {
        if !self.own_cpus_only {
            return true;
        }
        let Some(own) = sockopt::own_cpus() else {
            return true;
        };
        let cpus = [sockopt::incoming_cpu(down), sockopt::incoming_cpu(up)];
        let allow = cpus.iter().flatten().all(|cpu| own.contains(cpu));
        if !allow {
            tracing::debug!(
                ?cpus,
                ?own,
                "splice: not offloaded: packets arrive on a CPU this process may not use"
            );
        }
        allow
    }

    /// The bulk rule for one direction: `bytes` moved over `read_wakeups` wake-ups that
    /// found data.
    pub fn is_bulk(&self, bytes: u64, read_wakeups: u64) -> bool {
        bytes >= self.min_bytes && bytes >= self.min_chunk.saturating_mul(read_wakeups.max(1))
    }
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

// === the flow ===

enum Drive {
    /// FIN both ways.
    Closed,
    /// One side reset (or failed); the other must be reset.
    Reset(Victim, Termination),
    /// A local failure (no pipe could be made): both sides are reset.
    Failed(String),
    Handover,
    /// No byte moved for the idle timeout (or the drain deadline passed: `why`);
    /// `pending`: a pipe still held bytes.
    Idle {
        pending: bool,
        why: Termination,
    },
}

/// How one direction stopped.
enum Stop {
    /// EOF read and everything before it written; the writer's write side is shut.
    Fin,
    Reader,
    Writer,
    Local(String),
}

type ErrWatch<'a> = Pin<Box<dyn Future<Output = io::Result<Ready>> + Send + 'a>>;

/// Runs both directions in one task: every pass tries each direction (read into its
/// pipe, write out of it) until neither moves, then waits for the readiness that one
/// of them lacks. One loop for both directions is what lets a handover stop both at a
/// point where both are quiet.
async fn drive(
    down: &TcpStream,
    up: &TcpStream,
    d2u: &mut Dir<'_>,
    u2d: &mut Dir<'_>,
    policy: Option<&OffloadPolicy>,
    idle: Option<std::time::Duration>,
) -> Drive {
    let mut last_progress = tokio::time::Instant::now();
    let mut next_try = 0u64;
    let mut confirm = false;
    let mut foreign = false;
    // Once a socket's read side is done (EOF), nothing reads it any more: a reset it gets
    // then shows only as EPOLLERR, watched here (the other direction may be idle).
    let mut down_err: Option<ErrWatch<'_>> = None;
    let mut up_err: Option<ErrWatch<'_>> = None;
    loop {
        let mut progress = false;
        if !d2u.done {
            match d2u.step(down, up) {
                Ok(p) => progress |= p,
                Err(stop) => {
                    if let Some(end) = stopped(true, stop) {
                        return end;
                    }
                }
            }
        }
        if !u2d.done {
            match u2d.step(up, down) {
                Ok(p) => progress |= p,
                Err(stop) => {
                    if let Some(end) = stopped(false, stop) {
                        return end;
                    }
                }
            }
        }
        if d2u.done && u2d.done {
            return Drive::Closed;
        }
        if d2u.eof && down_err.is_none() {
            down_err = Some(Box::pin(down.ready(Interest::ERROR)));
        }
        if u2d.eof && up_err.is_none() {
            up_err = Some(Box::pin(up.ready(Interest::ERROR)));
        }

        if progress {
            last_progress = tokio::time::Instant::now();
            confirm = false;
            // Readiness of the other direction is collected without blocking, so a busy
            // direction does not starve it; a flow that always has bytes to move yields
            // its worker thread once its coop budget is spent.
            if let Err(end) = readiness(false, down, up, d2u, u2d, &mut down_err, &mut up_err).await
            {
                return end;
            }
            tokio::task::coop::consume_budget().await;
            continue;
        }
        // Nothing moved. Readiness the reactor already knows of first, then (a bulk flow
        // with both sides quiet) the handover, else wait.
        match readiness(false, down, up, d2u, u2d, &mut down_err, &mut up_err).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(end) => return end,
        }
        if let Some(p) = policy {
            let bulk = p.is_bulk(d2u.moved, d2u.wakeups) || p.is_bulk(u2d.moved, u2d.wakeups);
            let total = d2u.moved + u2d.moved;
            if bulk && !foreign && d2u.quiet() && u2d.quiet() && total >= next_try {
                if !confirm {
                    // Once more after the reactor has run (yield_now defers the task past
                    // the I/O driver's next poll): data that arrived meanwhile is read on
                    // the pipe path first, not left for the kernel while we thought the
                    // socket idle.
                    confirm = true;
                    tokio::task::yield_now().await;
                    continue;
                }
                // Where the flow's packets are received moves (the backlog of a socket
                // the gateway held is processed on the gateway's CPU): once a foreign
                // CPU was seen, the flow stays on the pipe path.
                foreign |= !p.cpus_allow(down, up);
                if !foreign && sockopt::is_established(down) && sockopt::is_established(up) {
                    return Drive::Handover;
                }
                confirm = false;
                next_try = total + p.retry_bytes;
            }
        }
        let wait = readiness(true, down, up, d2u, u2d, &mut down_err, &mut up_err);
        let waited = match idle {
            Some(idle) => match tokio::time::timeout_at(last_progress + idle, wait).await {
                Ok(r) => r,
                Err(_) => {
                    return Drive::Idle {
                        pending: d2u.in_pipe + u2d.in_pipe > 0,
                        why: Termination::IdleTimeout,
                    };
                }
            },
            None => wait.await,
        };
        if let Err(end) = waited {
            return end;
        }
    }
}

/// Collects readiness into the directions' flags: Ok(true) when something became
/// ready. With `block`, waits until something does.
async fn readiness<'a>(
    block: bool,
    down: &'a TcpStream,
    up: &'a TcpStream,
    d2u: &mut Dir<'_>,
    u2d: &mut Dir<'_>,
    down_err: &mut Option<ErrWatch<'a>>,
    up_err: &mut Option<ErrWatch<'a>>,
) -> Result<bool, Drive> {
    std::future::poll_fn(
        |cx| match poll_readiness(cx, down, up, d2u, u2d, down_err, up_err) {
            Poll::Ready(r) => Poll::Ready(r.map(|()| true)),
            Poll::Pending if block => Poll::Pending,
            Poll::Pending => Poll::Ready(Ok(false)),
        },
    )
    .await
}

/// Polls the readiness each direction waits for (and the error watches); sets the
/// directions' flags. Ready when something became ready (or failed), else Pending with
/// the wakers registered.
fn poll_readiness<'a>(
    cx: &mut std::task::Context<'_>,
    down: &'a TcpStream,
    up: &'a TcpStream,
    d2u: &mut Dir<'_>,
    u2d: &mut Dir<'_>,
    down_err: &mut Option<ErrWatch<'a>>,
    up_err: &mut Option<ErrWatch<'a>>,
) -> Poll<Result<(), Drive>> {
    let mut woke = false;
    let mut failed = None;
    let mut poll = |ready: Poll<io::Result<()>>, flag: &mut bool| match ready {
        Poll::Ready(Ok(())) => {
            *flag = true;
            woke = true;
        }
        Poll::Ready(Err(e)) => failed = Some(Drive::Failed(format!("reactor: {e}"))),
        Poll::Pending => {}
    };
    if d2u.wants_read() {
        poll(down.poll_read_ready(cx), &mut d2u.can_read);
    }
    if d2u.wants_write() {
        poll(up.poll_write_ready(cx), &mut d2u.can_write);
    }
    if u2d.wants_read() {
        poll(up.poll_read_ready(cx), &mut u2d.can_read);
    }
    if u2d.wants_write() {
        poll(down.poll_write_ready(cx), &mut u2d.can_write);
    }
    for (watch, sock, victim, t) in [
        (down_err, down, Victim::Up, Termination::DownstreamReset),
        (up_err, up, Victim::Down, Termination::UpstreamReset),
    ] {
        let Some(f) = watch else { continue };
        let Poll::Ready(r) = f.as_mut().poll(cx) else {
            continue;
        };
        *watch = None;
        woke = true;
        match r {
            Ok(r) if r.is_error() => match sock.take_error() {
                Ok(Some(_)) => failed = Some(Drive::Reset(victim, t)),
                // Not (or no longer) an error: clear the readiness; watched again.
                _ => {
                    let _ = sock.try_io(Interest::ERROR, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                }
            },
            Ok(_) => {}
            Err(e) => failed = Some(Drive::Failed(format!("reactor: {e}"))),
        }
    }
    match failed {
        Some(d) => Poll::Ready(Err(d)),
        None if woke => Poll::Ready(Ok(())),
        None => Poll::Pending,
    }
}

/// What a stopped direction means for the flow; `None`: the flow goes on.
fn stopped(d2u: bool, stop: Stop) -> Option<Drive> {
    let end = match stop {
        Stop::Fin => return None,
        Stop::Reader => DirEnd::ReaderReset(0),
        Stop::Writer => DirEnd::WriterFailed(0),
        Stop::Local(msg) => return Some(Drive::Failed(msg)),
    };
    ending(d2u, &end).map(|(v, t)| Drive::Reset(v, t))
}

/// One direction: src -> pipe -> dst.
struct Dir<'a> {
    pool: &'a Pool,
    /// Only for Drop: a dst whose bytes are dropped with the pipe must not see a clean
    /// close.
    dst: &'a TcpStream,
    pipe: Option<Pipe>,
    /// Bytes in the pipe.
    in_pipe: usize,
    /// Bytes written to dst.
    moved: u64,
    /// Read wake-ups that found data (a wake-up ends at EAGAIN).
    wakeups: u64,
    in_wakeup: bool,
    /// src may have data: readiness seen and no EAGAIN since.
    can_read: bool,
    /// dst may take data.
    can_write: bool,
    /// Don't read until the pipe has been written from (full, or maybe full).
    pipe_full: bool,
    /// No partially read skb can be at the head of src's receive queue: src was never
    /// read, or its last read returned EAGAIN into an empty pipe.
    clean: bool,
    /// src returned EOF.
    eof: bool,
    /// EOF passed on (dst's write side shut), or the direction failed.
    done: bool,
}

impl<'a> Dir<'a> {
    fn new(pool: &'a Pool, dst: &'a TcpStream) -> Self {
        Dir {
            pool,
            dst,
            pipe: None,
            in_pipe: 0,
            moved: 0,
            wakeups: 0,
            in_wakeup: false,
            can_read: false,
            can_write: true,
            pipe_full: false,
            clean: true,
            eof: false,
            done: false,
        }
    }

    fn wants_read(&self) -> bool {
        !self.done && !self.eof && !self.can_read && !self.pipe_full
    }

    fn wants_write(&self) -> bool {
        !self.done && self.in_pipe > 0 && !self.can_write
    }

    fn quiet(&self) -> bool {
        !self.done && !self.eof && self.in_pipe == 0 && self.clean
    }

    /// One read and one write, each if possible. Ok(true) when bytes moved or EOF came.
    fn step(&mut self, src: &TcpStream, dst: &TcpStream) -> Result<bool, Stop> {
        let mut progress = false;
        if !self.eof && self.can_read && !self.pipe_full {
            if self.pipe.is_none() {
                let p = self.pool.take().map_err(|e| Stop::Local(e.to_string()))?;
                self.pipe = Some(p);
            }
            let Some(pipe) = &self.pipe else {
                return Ok(progress);
            };
            let had = self.in_pipe;
            let room = pipe.cap - had;
            let mut drained = false;
            let r = src.try_io(Interest::READABLE, || {
                match splice(src.as_fd(), pipe.w.as_fd(), room) {
                    // Into a pipe that holds bytes, EAGAIN may mean the pipe ran out of
                    // slots (splice_to_pipe) while the socket still has data: not a
                    // readiness change, so keep tokio's readiness; the write side drains.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && had > 0 => Ok(None),
                    // Into an empty pipe, EAGAIN comes from tcp_splice_read finding no skb
                    // left in the receive queue.
                    Err(e) => {
                        drained = e.kind() == io::ErrorKind::WouldBlock;
                        Err(e)
                    }
                    Ok(n) => Ok(Some(n)),
                }
            });
            match r {
                Ok(Some(0)) => {
                    self.eof = true;
                    progress = true;
                }
                Ok(Some(n)) => {
                    self.in_pipe += n;
                    self.clean = false;
                    if !self.in_wakeup {
                        self.in_wakeup = true;
                        self.wakeups += 1;
                    }
                    self.pipe_full = self.in_pipe >= pipe.cap;
                    progress = true;
                }
                Ok(None) => self.pipe_full = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.can_read = false;
                    self.in_wakeup = false;
                    if drained {
                        self.clean = true;
                    }
                }
                Err(_) => {
                    self.done = true;
                    return Err(Stop::Reader);
                }
            }
        }
        if self.in_pipe > 0
            && self.can_write
            && let Some(pipe) = &self.pipe
        {
            let n = self.in_pipe;
            match dst.try_io(Interest::WRITABLE, || {
                splice(pipe.r.as_fd(), dst.as_fd(), n)
            }) {
                Ok(k) if k > 0 => {
                    self.in_pipe -= k.min(n);
                    self.moved += k.min(n) as u64;
                    self.pipe_full = false;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.can_write = false,
                // Ok(0) can't happen with bytes in the pipe; treat it as the failure it
                // would be rather than spin.
                _ => {
                    self.done = true;
                    return Err(Stop::Writer);
                }
            }
        }
        if self.in_pipe == 0 {
            if self.eof {
                self.release();
                self.done = true;
                let _ = socket2::SockRef::from(dst).shutdown(Shutdown::Write);
                return Err(Stop::Fin);
            }
            if !self.can_read {
                // Empty and waiting for the socket: an idle flow holds no pipe.
                self.release();
            }
        }
        Ok(progress)
    }

    fn release(&mut self) {
        if let Some(p) = self.pipe.take() {
            self.pool.give(p, self.in_pipe == 0);
        }
    }
}

impl Drop for Dir<'_> {
    /// Also runs when the flow's future is dropped midway: the sockets close after the
    /// directions (they outlive them), so bytes lost with a pipe turn dst's close into
    /// a reset.
    fn drop(&mut self) {
        if self.in_pipe > 0 {
            let _ = sockopt::linger_zero(self.dst);
        }
        self.release();
    }
}

// === pipes and their pool ===

struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// Capacity in bytes (slots × page size).
    cap: usize,
}

impl Pipe {
    fn new(size: usize) -> Result<Pipe, PipeError> {
        let mut fds: [RawFd; 2] = [-1, -1];
        // SAFETY: pipe2 writes two fds into the two-element array we pass.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(PipeError::Create(io::Error::last_os_error()));
        }
        // SAFETY: pipe2 succeeded, so both are open fds that nothing else owns.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // F_SETPIPE_SZ fails over the per-user pipe limits (pipe-user-pages-soft) or
        // pipe-max-size for unprivileged users: keep the size the pipe has then.
        // SAFETY: fcntl on an fd we own, with an integer argument.
        let set = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
        let cap = if set > 0 {
            set
        } else {
            // SAFETY: as above; F_GETPIPE_SZ takes no argument.
            unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ) }
        };
        if cap <= 0 {
            return Err(PipeError::Size(io::Error::last_os_error()));
        }
        Ok(Pipe {
            r,
            w,
            cap: cap as usize,
        })
    }
}

/// splice(2), retried on EINTR. Into a socket whose peer is gone this fails with EPIPE
/// and raises SIGPIPE (`splice_to_socket` does not pass MSG_NOSIGNAL); Rust binaries
/// ignore SIGPIPE from the start, so only the error remains.
fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: both fds are borrowed from live owners for the call; null offsets are
        // required for pipes and sockets (they have no file position).
        let n = unsafe {
            libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                to.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

struct Pool {
    /// Size asked of new pipes, and the capacity the last one got.
    size: usize,
    cap: AtomicUsize,
    max: usize,
    pipes: Mutex<Vec<Pipe>>,
    in_use: AtomicUsize,
    created: AtomicU64,
    closed: AtomicU64,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pipe>> {
        // A panic while holding the lock can't leave the Vec inconsistent.
        self.pipes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Result<Pipe, PipeError> {
        let pooled = self.lock().pop();
        let p = match pooled {
            Some(p) => p,
            None => {
                let p = Pipe::new(self.size)?;
                self.cap.store(p.cap, Ordering::Relaxed);
                self.created.fetch_add(1, Ordering::Relaxed);
                p
            }
        };
        self.in_use.fetch_add(1, Ordering::Relaxed);
        Ok(p)
    }

    /// Takes a pipe back: pooled if `empty` and there is room, else closed.
    fn give(&self, p: Pipe, empty: bool) {
        self.in_use.fetch_sub(1, Ordering::Relaxed);
        if empty {
            let mut pipes = self.lock();
            if pipes.len() < self.max {
                pipes.push(p);
                return;
            }
        }
        self.closed.fetch_add(1, Ordering::Relaxed);
        drop(p);
    }
}

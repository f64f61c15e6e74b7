//! The io_uring copy (`--splice uring`): read/write copies on io_uring (tokio-uring).
//! Same contract as the kernel splice: FIN passed on as a half-close, RST as a reset,
//! counts at close. No duplicate fds: socket options and shutdown go to the ring's own
//! fd.
//!
//! tokio-uring runs its own single-threaded runtime, so flows are handed over a channel
//! to a small pool of io_uring threads (one per core), round-robin.
use std::{
    collections::VecDeque,
    future::Future,
    io,
    net::Shutdown,
    os::fd::{AsRawFd, RawFd},
    pin::Pin,
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{Interest, unix::AsyncFd},
    net::TcpStream,
    sync::{mpsc, oneshot},
};

use super::{
    DirEnd, FlowReport, Termination, Victim,
    ebpf::SpliceError,
    ending,
    idle::{Activity, expired},
    sockopt,
};

struct Job {
    down: std::net::TcpStream,
    up: std::net::TcpStream,
    limits: super::FlowLimits,
    closing: tokio_util::sync::CancellationToken,
    done: oneshot::Sender<FlowReport>,
}

#[derive(Clone)]
pub struct UringSplicer {
    workers: Arc<Vec<mpsc::UnboundedSender<Job>>>,
    next: Arc<AtomicUsize>,
    idle: Option<Duration>,
    closing: tokio_util::sync::CancellationToken,
}

impl UringSplicer {
    /// Starts the io_uring threads; flows in which no byte moves for `idle` are closed,
    /// and every flow once `closing` is cancelled.
    pub fn start(
        idle: Option<Duration>,
        closing: tokio_util::sync::CancellationToken,
    ) -> Result<Self, SpliceError> {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = mpsc::unbounded_channel::<Job>();
            let (ok_tx, ok_rx) = std::sync::mpsc::channel::<io::Result<()>>();
            std::thread::Builder::new()
                .name(format!("uring-{i}"))
                .spawn(move || worker(rx, ok_tx))?;
            // Surface "io_uring not permitted" at start rather than per flow.
            ok_rx
                .recv()
                .map_err(|_| io::Error::other("io_uring thread died at start"))??;
            workers.push(tx);
        }
        Ok(UringSplicer {
            workers: Arc::new(workers),
            next: Arc::new(AtomicUsize::new(0)),
            idle,
            closing,
        })
    }

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
        // io_uring honours O_NONBLOCK: a read on a non-blocking socket completes with
        // EAGAIN instead of waiting, so the sockets tokio made non-blocking go back to
        // blocking mode for the ring.
        let handoff = |s: TcpStream| -> io::Result<std::net::TcpStream> {
            let s = s.into_std()?;
            s.set_nonblocking(false)?;
            Ok(s)
        };
        let (down, up) = match (handoff(down), handoff(up)) {
            (Ok(d), Ok(u)) => (d, u),
            (Err(e), _) | (_, Err(e)) => return error_report(format!("socket handoff: {e}")),
        };
        let (done, rx) = oneshot::channel();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        let job = Job {
            down,
            up,
            limits,
            closing: self.closing.clone(),
            done,
        };
        if self.workers[i].send(job).is_err() {
            return error_report("io_uring worker gone".into());
        }
        rx.await
            .unwrap_or_else(|_| error_report("io_uring worker dropped the flow".into()))
    }
}

fn error_report(msg: String) -> FlowReport {
    FlowReport {
        termination: Termination::Error(msg),
        ..Default::default()
    }
}

fn worker(mut rx: mpsc::UnboundedReceiver<Job>, ok: std::sync::mpsc::Sender<io::Result<()>>) {
    let rt = match tokio_uring::Runtime::new(&tokio_uring::builder()) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ok.send(Err(e));
            return;
        }
    };
    let _ = ok.send(Ok(()));
    rt.block_on(async move {
        while let Some(job) = rx.recv().await {
            tokio_uring::spawn(run(job));
        }
    });
}

/// One socket of a flow on the ring. `ready` (epoll readiness, through the tokio
/// reactor that tokio-uring runs on) lets an idle direction wait for data without
/// lending the kernel a buffer; it is declared first so it is deregistered before the
/// socket closes.
struct Side {
    ready: AsyncFd<Fd>,
    io: tokio_uring::net::TcpStream,
    /// Our FIN was sent on it (the other direction ended).
    write_shut: std::cell::Cell<bool>,
}

/// The socket's fd as seen by `AsyncFd`, which does not own it.
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Side {
    fn new(s: std::net::TcpStream) -> io::Result<Side> {
        let fd = s.as_raw_fd();
        let io = tokio_uring::net::TcpStream::from_std(s);
        // SAFETY: `fd` is the open socket that `io` owns; `ready` is declared before `io`
        // in `Side`, so it is dropped (deregistered) while the fd is still open, and `Fd`
        // always returns this same fd.
        let ready = unsafe { AsyncFd::register_with_interest(Fd(fd), Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Side {
            ready,
            io,
            write_shut: std::cell::Cell::new(false),
        })
    }

    /// Waits until the socket has data or EOF to read, holding no buffer. The 1-byte
    /// MSG_PEEK is what tells a stale readiness from data: on EAGAIN tokio clears the
    /// readiness and the wait is real. An error is returned as is: the peek consumed
    /// sk_err (sock_error), so a read after it would see a clean EOF instead.
    async fn readable(&self) -> io::Result<()> {
        loop {
            let mut guard = self.ready.readable().await?;
            let mut b = [0u8; 1];
            if let Ok(r) = guard.try_io(|fd| sockopt::peek(fd, &mut b)) {
                return r.map(drop);
            }
        }
    }
}

async fn run(job: Job) {
    let Job {
        down,
        up,
        limits,
        closing,
        done,
    } = job;
    let (down, up) = match (Side::new(down), Side::new(up)) {
        (Ok(d), Ok(u)) => (Rc::new(d), Rc::new(u)),
        (Err(e), _) | (_, Err(e)) => {
            let _ = done.send(error_report(format!("epoll registration: {e}")));
            return;
        }
    };
    let activity = Rc::new(Activity::new());
    let mut d2u = tokio_uring::spawn(copy(down.clone(), up.clone(), activity.clone(), true));
    let mut u2d = tokio_uring::spawn(copy(up.clone(), down.clone(), activity.clone(), false));
    let failed = |r: Result<DirEnd, _>| r.unwrap_or(DirEnd::WriterFailed(0));
    // Whichever direction ends first decides whether the other must be cut short, and
    // names the termination: the reset of the victim makes the other direction fail
    // too, and that second failure is our own doing.
    let (a, b, d2u_first) = tokio::select! {
        r = &mut d2u => {
            let a = failed(r);
            if let Some((v, _)) = ending(true, &a) { reset(v, &down, &up) }
            (a, failed(u2d.await), true)
        }
        r = &mut u2d => {
            let b = failed(r);
            if let Some((v, _)) = ending(false, &b) { reset(v, &down, &up) }
            (failed(d2u.await), b, false)
        }
        why = async {
            tokio::select! {
                () = expired(&activity, limits.idle) => Termination::IdleTimeout,
                () = super::idle::deadline(limits.deadline) => Termination::MaxDuration,
                () = closing.cancelled() => Termination::DrainTimeout,
                () = super::idle::closing(limits.closing.as_ref()) => Termination::DrainTimeout,
            }
        } => {
            // The idle timeout (or the drain deadline): a FIN each way when nothing read
            // is left unwritten (the reads in flight then complete with EOF), else a
            // reset each way; either way the direction tasks end.
            let pending =
                activity.pending() || sockopt::unread(down.ready.get_ref(), up.ready.get_ref());
            if pending {
                reset(Victim::Down, &down, &up);
                reset(Victim::Up, &down, &up);
            } else {
                let _ = down.io.shutdown(Shutdown::Both);
                let _ = up.io.shutdown(Shutdown::Both);
            }
            let _ = (d2u.await, u2d.await);
            let (d, u) = activity.moved();
            drop((down, up));
            tracing::debug!(pending, "splice: {why}");
            let _ = done.send(FlowReport {
                downstream_to_upstream: d,
                upstream_to_downstream: u,
                userspace_bytes: d + u,
                path: super::Path::Uring,
                termination: why,
                ..Default::default()
            });
            return;
        }
    };
    let first = if d2u_first {
        ending(true, &a).or_else(|| ending(false, &b))
    } else {
        ending(false, &b).or_else(|| ending(true, &a))
    };
    let termination = match first {
        Some((v, t)) => {
            reset(v, &down, &up);
            t
        }
        None => Termination::Closed,
    };
    let (d2u, u2d) = (a.bytes(), b.bytes());
    drop((down, up));
    let _ = done.send(FlowReport {
        downstream_to_upstream: d2u,
        upstream_to_downstream: u2d,
        userspace_bytes: d2u + u2d,
        path: super::Path::Uring,
        termination,
        ..Default::default()
    });
}

/// Resets the victim now: RST on the wire, and every op in flight on it (a read or a
/// write of the other direction) completes with an error, so the flow's tasks end and
/// release the fd. SO_LINGER 0 too, for the close that follows.
fn reset(victim: Victim, down: &Side, up: &Side) {
    let s = if victim == Victim::Down { down } else { up };
    let _ = sockopt::linger_zero(&s.io);
    let _ = sockopt::disconnect(&s.io);
}

/// First read buffer of a direction that wakes up; doubled after every read that fills
/// it, up to `MAX_BUF`.
const START_BUF: usize = 16 * 1024;
const MAX_BUF: usize = 64 * 1024;
/// Buffers read but not yet written, besides the one being written: one read is in
/// flight while up to this many wait, so a direction holds at most 2 + QUEUED buffers.
const QUEUED: usize = 1;

type Op<T> = Pin<Box<dyn Future<Output = T>>>;

async fn opt<T>(op: &mut Option<Op<T>>) -> T {
    match op {
        Some(f) => f.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Copies `from` -> `to` until EOF, then shuts `to`'s write side (the half-close).
///
/// A read is in flight while the previous buffer is written (order kept by one write at
/// a time, from a FIFO). A direction starts idle: it waits for readability holding no
/// buffer, reads back to back while reads fill their buffer, and after a short read (the
/// receive queue was drained) goes idle again, freeing the buffers it does not need.
async fn copy(from: Rc<Side>, to: Rc<Side>, activity: Rc<Activity>, d2u: bool) -> DirEnd {
    let mut size = START_BUF;
    let mut total = 0u64;
    let mut free: Vec<Vec<u8>> = Vec::new();
    let mut queued: VecDeque<Vec<u8>> = VecDeque::new();
    let mut reading: Option<Op<(io::Result<usize>, Vec<u8>)>> = None;
    let mut writing: Option<Op<(io::Result<()>, Vec<u8>)>> = None;
    let mut waiting: Option<Op<io::Result<()>>> = None;
    let mut active = false;
    let mut eof = false;
    loop {
        if !eof && reading.is_none() && waiting.is_none() && queued.len() <= QUEUED {
            let f = from.clone();
            if active {
                let mut buf = free
                    .pop()
                    .filter(|b| b.capacity() >= size)
                    .unwrap_or_else(|| Vec::with_capacity(size));
                buf.clear();
                reading = Some(Box::pin(async move { f.io.read(buf).await }));
            } else {
                free.clear();
                waiting = Some(Box::pin(async move { f.readable().await }));
            }
        }
        if writing.is_none()
            && let Some(buf) = queued.pop_front()
        {
            let t = to.clone();
            writing = Some(Box::pin(async move { t.io.write_all(buf).await }));
        }
        if eof && writing.is_none() {
            to.write_shut.set(true);
            let _ = to.io.shutdown(Shutdown::Write);
            return DirEnd::Fin(total);
        }
        tokio::select! {
            r = opt(&mut waiting) => {
                waiting = None;
                if r.is_err() {
                    return DirEnd::ReaderReset(total);
                }
                active = true;
            }
            (res, buf) = opt(&mut reading) => {
                reading = None;
                match res {
                    // A reset whose error the other direction's write already took
                    // (sock_error clears sk_err) reads as a clean EOF here. A peer's
                    // FIN leaves the socket in CLOSE_WAIT; TCP_CLOSE while our own FIN
                    // was not sent on it is the reset, and must not be passed on as a
                    // FIN (net/ipv4/tcp_input.c: tcp_reset -> tcp_done).
                    Ok(0) if !from.write_shut.get() && sockopt::is_closed(&from.io) => {
                        return DirEnd::ReaderReset(total);
                    }
                    Ok(0) => eof = true,
                    Ok(n) => {
                        activity.read(n);
                        if n == buf.capacity() {
                            size = (size * 2).min(MAX_BUF);
                        } else {
                            active = false;
                        }
                        queued.push_back(buf);
                    }
                    Err(_) => return DirEnd::ReaderReset(total),
                }
            }
            (res, mut buf) = opt(&mut writing) => {
                writing = None;
                if res.is_err() {
                    return DirEnd::WriterFailed(total);
                }
                total += buf.len() as u64;
                activity.written(d2u, buf.len());
                if active {
                    buf.clear();
                    free.push(buf);
                }
            }
        }
    }
}

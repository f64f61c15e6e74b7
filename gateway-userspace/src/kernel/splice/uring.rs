//! The io_uring copy (`--splice uring`): read/write copies on io_uring (tokio-uring). Same contract
//! as the kernel splice: FIN passed on as a half-close, RST as a reset, counts at close.
//!
//! tokio-uring runs its own single-threaded runtime, so flows are handed over a channel
//! to a small pool of io_uring threads (one per core), round-robin.
use std::{
    io,
    net::Shutdown,
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    net::TcpStream,
    sync::{mpsc, oneshot},
};

use tokio_uring::buf::BoundedBuf;

use super::{DirEnd, FlowReport, Termination, Victim, ebpf::SpliceError, ending};

const BUF_SIZE: usize = 64 * 1024;

struct Job {
    down: std::net::TcpStream,
    up: std::net::TcpStream,
    done: oneshot::Sender<FlowReport>,
}

#[derive(Clone)]
pub struct UringSplicer {
    workers: Arc<Vec<mpsc::UnboundedSender<Job>>>,
    next: Arc<AtomicUsize>,
}

impl UringSplicer {
    /// Starts the io_uring threads.
    pub fn start() -> Result<Self, SpliceError> {
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
        })
    }

    pub async fn splice(&self, down: TcpStream, up: TcpStream) -> FlowReport {
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
        if self.workers[i].send(Job { down, up, done }).is_err() {
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

async fn run(job: Job) {
    let Job { down, up, done } = job;
    // Duplicates kept for the socket options io_uring has no op for (linger, shutdown).
    let (down_ctl, up_ctl) = match (down.try_clone(), up.try_clone()) {
        (Ok(d), Ok(u)) => (d, u),
        (Err(e), _) | (_, Err(e)) => {
            let _ = done.send(error_report(format!("dup: {e}")));
            return;
        }
    };
    let down = Rc::new(tokio_uring::net::TcpStream::from_std(down));
    let up = Rc::new(tokio_uring::net::TcpStream::from_std(up));
    let mut d2u = tokio_uring::spawn(copy(down.clone(), up.clone()));
    let mut u2d = tokio_uring::spawn(copy(up.clone(), down.clone()));
    let failed = |r: Result<DirEnd, _>| r.unwrap_or(DirEnd::WriterFailed(0));
    // Whichever direction ends first decides whether the other must be cut short; then
    // the other one may still end in a reset of its own.
    let (a, b) = tokio::select! {
        r = &mut d2u => {
            let a = failed(r);
            if let Some((v, _)) = ending(true, &a) { reset(v, &down_ctl, &up_ctl) }
            (a, failed(u2d.await))
        }
        r = &mut u2d => {
            let b = failed(r);
            if let Some((v, _)) = ending(false, &b) { reset(v, &down_ctl, &up_ctl) }
            (failed(d2u.await), b)
        }
    };
    let termination = match ending(true, &a).or_else(|| ending(false, &b)) {
        Some((v, t)) => {
            reset(v, &down_ctl, &up_ctl);
            t
        }
        None => Termination::Closed,
    };
    let (d2u, u2d) = (a.bytes(), b.bytes());
    drop((down, up, down_ctl, up_ctl));
    let _ = done.send(FlowReport {
        downstream_to_upstream: d2u,
        upstream_to_downstream: u2d,
        userspace_bytes: d2u + u2d,
        path: super::Path::Uring,
        termination,
    });
}

/// Makes the coming close of the victim send RST (SO_LINGER 0), and wakes whoever
/// reads it (SHUT_RD) so the other direction ends too.
fn reset(victim: Victim, down: &std::net::TcpStream, up: &std::net::TcpStream) {
    let s = if victim == Victim::Down { down } else { up };
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
    let _ = s.shutdown(Shutdown::Read);
}

/// Copies `from` -> `to` until EOF, then shuts `to`'s write side (the half-close).
async fn copy(
    from: Rc<tokio_uring::net::TcpStream>,
    to: Rc<tokio_uring::net::TcpStream>,
) -> DirEnd {
    let mut buf = vec![0u8; BUF_SIZE];
    let mut total = 0u64;
    loop {
        let (res, b) = from.read(buf).await;
        buf = b;
        let n = match res {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return DirEnd::Fin(total);
            }
            Ok(n) => n,
            Err(_) => return DirEnd::ReaderReset(total),
        };
        let (res, b) = to.write_all(buf.slice(..n)).await;
        buf = b.into_inner();
        if res.is_err() {
            return DirEnd::WriterFailed(total);
        }
        total += n as u64;
    }
}

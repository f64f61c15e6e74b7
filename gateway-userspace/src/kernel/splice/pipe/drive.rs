//! The splice loop of one flow on the pipe path: both directions driven from one task,
//! waiting on the readiness either lacks, until both are done, one fails, the idle
//! timeout passes, or (`auto`) the flow is bulk and quiet enough to hand over.
use std::{future::Future, io, pin::Pin, task::Poll};

use tokio::{
    io::{Interest, Ready},
    net::TcpStream,
};

use super::{
    OffloadPolicy,
    direction::{Dir, Stop},
};
use crate::kernel::splice::{DirEnd, Termination, Victim, ending, sockopt};

pub(super) enum Drive {
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

type ErrWatch<'a> = Pin<Box<dyn Future<Output = io::Result<Ready>> + Send + 'a>>;

/// Runs both directions in one task: every pass tries each direction (read into its
/// pipe, write out of it) until neither moves, then waits for the readiness that one
/// of them lacks. One loop for both directions is what lets a handover stop both at a
/// point where both are quiet.
pub(super) async fn drive(
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

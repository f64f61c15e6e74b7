//! Stopping without cutting connections: SIGTERM or SIGINT starts a drain, a second one
//! ends the process at once.
//!
//! The drain, in order (each phase logs a line tests and operators can wait on):
//! 1. readiness becomes [`ReadyState::Draining`]: `/healthz/ready` on the status port
//!    and the admin `/ready` answer 503, so load balancers stop sending;
//! 2. [`Drain::start`](crate::sys::drain::Drain::start): every accept loop returns and drops its listening socket (a new
//!    connect is refused); HTTP/1.1 connections finish the request in flight, answer it
//!    with `Connection: close` and close, idle ones close at once; HTTP/2 connections
//!    get GOAWAY and finish their open streams (hyper's `graceful_shutdown`); L4 flows
//!    keep moving bytes;
//! 3. the process exits as soon as no downstream connection is left
//!    (`gateway_downstream_cx_active` reaches 0), or at `--drain-duration`, when
//!    [`Drain::close`](crate::sys::drain::Drain::close) closes what remains: HTTP connections are dropped, L4 flows are
//!    closed as the idle timeout closes them (a FIN each way, or a reset when bytes were
//!    still waiting) with termination `drain_timeout` in the flow log and the access
//!    log's `%CONNECTION_TERMINATION_DETAILS%`.
//!
//! The signals every connection watches are [`crate::sys::drain::Drain`]'s.
use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::Instant,
};

use crate::server::{Gateway, ReadyState};

/// How long the closing phase waits for the closed flows to report (their access-log
/// lines) before the process exits anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How often a drain in progress says how many connections remain.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// SIGTERM and SIGINT, installed once at start-up so that neither kills the process
/// from then on.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next SIGTERM or SIGINT, by name.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Waits for the first signal, drains, and returns when the process may exit: every
/// connection gone, or the deadline passed and what remained closed. A second signal
/// while draining returns at once.
pub async fn on_signals(gw: Arc<Gateway>, mut signals: Signals, duration: Duration) {
    let first = signals.next().await;
    tokio::select! {
        () = drain(&gw, duration, first) => {}
        second = signals.next() => {
            tracing::warn!(
                signal = second,
                connections = active(&gw),
                "second signal: exiting now, without waiting for the remaining connections"
            );
        }
    }
}

fn active(gw: &Gateway) -> u64 {
    gw.stats.active_total.load(Ordering::Relaxed)
}

async fn drain(gw: &Gateway, duration: Duration, sig: &str) {
    gw.readiness.set(ReadyState::Draining);
    tracing::info!(
        signal = sig,
        drain_duration = %humantime::format_duration(duration),
        connections = active(gw),
        "drain started: readiness answers 503 (a second SIGTERM/SIGINT exits at once)"
    );
    let deadline = Instant::now() + duration;
    gw.drain.start();
    for l in gw.ports.take_loops() {
        let _ = l.await;
    }
    tracing::info!(
        connections = active(gw),
        "drain: listeners closed, new connections are refused"
    );
    let mut next_progress = Instant::now() + PROGRESS_EVERY;
    loop {
        let n = active(gw);
        if n == 0 {
            tracing::info!("drain complete: no connection left, exiting");
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if now >= next_progress {
            tracing::info!(
                connections = n,
                left_ms = (deadline - now).as_millis() as u64,
                "draining"
            );
            next_progress = now + PROGRESS_EVERY;
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(20))).await;
    }
    tracing::info!(
        connections = active(gw),
        "drain deadline reached: closing the remaining connections"
    );
    gw.drain.close();
    gw.splicer.close_all();
    let grace = Instant::now() + CLOSE_GRACE;
    while active(gw) > 0 && Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::info!(
        connections = active(gw),
        "drain complete: deadline passed, exiting"
    );
}

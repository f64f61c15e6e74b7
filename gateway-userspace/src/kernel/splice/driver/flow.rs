//! A flow the driver carries and the state of its two directions (which phase each is
//! in, the copier's buffer, its poll backoff), with the readings of TCP's counters they
//! are judged by.
use std::{io, net::TcpStream, time::Duration};

use gateway_common::FlowCtl;
use tokio::{sync::oneshot, time::Instant};

use super::{DOWN, Start, UP};
use crate::kernel::splice::{FlowReport, Termination, ebpf::initial_ctl, epoll, sockopt};

/// First and longest wait between two looks at TCP's counters (FIN pending, backlog
/// draining).
pub(super) const POLL_MIN: Duration = Duration::from_micros(50);
const POLL_MAX: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Phase {
    /// The verdict redirects.
    Kernel,
    /// Paused: waiting for the peer's psock backlog to drain before userspace writes.
    Draining,
    /// Userspace moves the bytes (kept by the verdict, or the socket is not spliced).
    Copying,
    /// FIN passed on.
    Done,
}

pub(super) struct CopyBuf {
    pub(super) data: Box<[u8]>,
    /// `data[start..end]` is still to be written to the peer.
    pub(super) start: usize,
    pub(super) end: usize,
    /// Bytes at the front of `data` that were only peeked (spliced socket): written
    /// and announced before they are consumed.
    pub(super) unconsumed: usize,
}

/// One direction: bytes received on socket `d`, leaving through socket `1 - d`.
pub(super) struct Dir {
    pub(super) spliced: bool,
    pub(super) phase: Phase,
    /// RDHUP seen on the receiving socket.
    pub(super) fin: bool,
    /// Bytes userspace wrote to the peer for this direction.
    pub(super) copied: u64,
    pub(super) ctl: FlowCtl,
    pub(super) buf: Option<CopyBuf>,
    /// The copier waits for the peer to become writable.
    pub(super) want_out: bool,
    /// The copier waits for the receiving socket to become readable.
    pub(super) want_in: bool,
    /// Next look at TCP's counters, and the wait after that.
    pub(super) poll: Option<(Instant, Duration)>,
    /// The poll instant already in the driver's timer heap.
    pub(super) queued: Option<Instant>,
    /// The copier's last read emptied the receiving socket's queue.
    pub(super) drained: bool,
    /// Redirected bytes known to be written into the peer (the backlog was empty after
    /// them): kept bytes may be written after these, never before.
    pub(super) written_redirects: u64,
    /// The peer's send buffer is the small one (see `set_peer_sndbuf`).
    pub(super) shrunk: bool,
    pub(super) backoff: Duration,
}

impl Dir {
    /// A spliced direction that userspace is moving for now.
    pub(super) fn paused(&self) -> bool {
        self.spliced && matches!(self.phase, Phase::Draining | Phase::Copying)
    }

    pub(super) fn new(spliced: bool, budget: u64) -> Dir {
        Dir {
            spliced,
            phase: if spliced {
                Phase::Kernel
            } else {
                Phase::Copying
            },
            fin: false,
            copied: 0,
            ctl: initial_ctl(budget),
            buf: None,
            want_out: false,
            want_in: !spliced,
            poll: None,
            queued: None,
            drained: false,
            written_redirects: 0,
            shrunk: false,
            backoff: POLL_MIN,
        }
    }
}

pub(super) struct Flow {
    pub(super) generation: u32,
    pub(super) socks: [TcpStream; 2],
    pub(super) start: [Start; 2],
    pub(super) dirs: [Dir; 2],
    /// Registered epoll interest per socket.
    pub(super) interest: [u32; 2],
    pub(super) prior: [u64; 2],
    pub(super) pauses: u32,
    pub(super) done: Option<oneshot::Sender<FlowReport>>,
    /// The flow's counters at the last idle sweep, and when they last changed.
    pub(super) activity: u64,
    pub(super) active_at: Instant,
    /// This flow's idle timeout (`--tcp-idle-timeout` or its cluster's).
    pub(super) idle: Option<Duration>,
    /// When this flow's `maxConnectionDuration` runs out.
    pub(super) deadline: Option<Instant>,
    /// Its listener's drain deadline (`FlowLimits::closing`), checked every tick.
    pub(super) closing: Option<tokio_util::sync::CancellationToken>,
}

/// How a flow ends early.
pub(super) enum End {
    /// Socket `side` was reset (or failed): reset the other one.
    ResetBy(usize),
    /// A local failure: reset both.
    Error(String),
    /// No byte moved for the idle timeout (or the drain deadline passed: `why`): a FIN
    /// each way, or (bytes still pending) a reset each way.
    Idle { pending: bool, why: Termination },
}

/// Whether closing `flow` now would drop bytes: something received is not yet written
/// to the other side (then a reset, since a FIN would truncate silently).
pub(super) fn pending(flow: &Flow) -> bool {
    [DOWN, UP].iter().any(|&d| {
        flow.dirs[d].phase != Phase::Done
            && match (received(flow, d), written(flow, 1 - d)) {
                (Ok(r), Ok(w)) => w < r,
                _ => true,
            }
    })
}

/// The epoll interest a socket needs now: RDHUP always; IN while its receive direction
/// is copied by userspace and waits for bytes; OUT while the other direction's copier
/// waits for room in it.
pub(super) fn interest(flow: &Flow, side: usize) -> u32 {
    let mut want = epoll::RDHUP;
    let rx = &flow.dirs[side];
    if rx.phase == Phase::Copying && rx.want_in {
        want |= epoll::IN;
    }
    let tx = &flow.dirs[1 - side];
    if matches!(tx.phase, Phase::Copying | Phase::Draining) && tx.want_out {
        want |= epoll::OUT;
    }
    want
}

/// Schedules the next look at TCP's counters for direction `d`, backing off.
pub(super) fn poll_later(dir: &mut Dir) {
    if dir.poll.is_none() {
        dir.poll = Some((Instant::now() + dir.backoff, dir.backoff));
        dir.backoff = (dir.backoff * 2).min(POLL_MAX);
    }
}

/// Payload bytes socket `side` received since the splice was armed (the FIN, once
/// seen, takes one sequence number and is not payload).
pub(super) fn received(flow: &Flow, side: usize) -> io::Result<u64> {
    let seq = sockopt::bytes_received(&flow.socks[side])?;
    let fin = u64::from(flow.dirs[side].fin);
    Ok(seq
        .saturating_sub(flow.start[side].consumed)
        .saturating_sub(fin))
}

/// Payload bytes written into socket `side` since the splice was armed (by the psock
/// backlog and by userspace).
pub(super) fn written(flow: &Flow, side: usize) -> io::Result<u64> {
    Ok(sockopt::bytes_written(&flow.socks[side])?.saturating_sub(flow.start[side].written))
}

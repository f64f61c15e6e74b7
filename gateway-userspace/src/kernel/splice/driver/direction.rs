//! One direction's state machine while the kernel carries its flow: redirected by the
//! verdict (`Kernel`, with credit moved on at `EV_CREDIT`), paused while the peer's psock
//! backlog drains (`Draining`), moved by userspace (`Copying`, see [`super::copier`]),
//! and finished once its FIN is passed on (`Done`).
use std::{io, net::Shutdown, sync::atomic::Ordering};

use gateway_common::{CTL_MODE_KERNEL, FlowCtl};

use super::{
    REDIRECT_FAILED, SEQ_ERROR,
    copier::copy,
    flow::{End, Flow, POLL_MIN, Phase, poll_later, received, written},
};
use crate::kernel::splice::{ebpf::Kernel, sockopt};

pub(super) fn set_phase(kernel: &Kernel, flow: &mut Flow, d: usize, phase: Phase) {
    let dir = &mut flow.dirs[d];
    let was = dir.paused();
    let paused = dir.spliced && matches!(phase, Phase::Draining | Phase::Copying);
    match (was, paused) {
        (false, true) => {
            kernel.paths.paused_now.fetch_add(1, Ordering::Relaxed);
            kernel.paths.pauses.fetch_add(1, Ordering::Relaxed);
            flow.pauses += 1;
            tracing::debug!(dir = d, pauses = flow.pauses, "splice: paused");
        }
        (true, false) => {
            kernel.paths.paused_now.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(dir = d, copied = flow.dirs[d].copied, "splice: resumed");
        }
        _ => {}
    }
    if phase == Phase::Kernel {
        // The verdict redirects again: the backlog must find room.
        set_peer_sndbuf(kernel, flow, d, false);
    }
    let dir = &mut flow.dirs[d];
    dir.phase = phase;
    dir.drained = false;
    dir.backoff = POLL_MIN;
    dir.poll = None;
    dir.want_out = false;
    if phase != Phase::Copying {
        dir.buf = None;
        dir.want_in = false;
    }
}

/// The peer's send buffer for direction `d`: while userspace writes a paused direction
/// into it, a quarter of the budget (doubled by the kernel, skb overhead included), so
/// ordinary backpressure (EAGAIN, then EPOLLOUT once ACKs free room) keeps what it
/// queues within the room `has_room` asks for; whenever the verdict may redirect, above
/// the budget again, so the psock backlog never meets a full buffer (a full one makes it
/// re-arm itself a jiffy later). Only shrunk once the backlog is empty.
pub(super) fn set_peer_sndbuf(kernel: &Kernel, flow: &mut Flow, d: usize, shrink: bool) {
    if flow.dirs[d].shrunk == shrink {
        return;
    }
    let bytes = if shrink {
        kernel.budget / 4
    } else {
        2 * kernel.budget
    };
    if let Err(e) = sockopt::set_sndbuf_force(&flow.socks[1 - d], bytes as usize) {
        tracing::debug!("splice: SO_SNDBUFFORCE: {e}");
    }
    flow.dirs[d].shrunk = shrink;
}

/// `EV_CREDIT`: the budget is what the peer may hold of this direction, backlog and send
/// queue together; what's left of it is the new credit.
pub(super) fn grant(kernel: &Kernel, flow: &mut Flow, d: usize) -> Result<(), End> {
    let peer = 1 - d;
    let c = kernel.counters(flow.start[d].cookie);
    let io = |e: io::Error| End::Error(format!("reading TCP counters: {e}"));
    let taken = written(flow, peer)
        .map_err(io)?
        .saturating_sub(flow.dirs[d].copied);
    let backlog = c.redirected.saturating_sub(taken);
    let queued = sockopt::outq(&flow.socks[peer]).map_err(io)?;
    let budget = kernel.budget;
    let mut room = budget.saturating_sub(backlog + queued);
    if room < budget / 8 {
        // Too little to be worth an event per few KiB: let the verdict pause instead.
        room = 0;
    }
    let dir = &mut flow.dirs[d];
    dir.ctl = FlowCtl {
        limit: c.redirected + room,
        notify_at: c.redirected + room / 2,
        epoch: dir.ctl.epoch + 1,
        mode: CTL_MODE_KERNEL,
        ..dir.ctl
    };
    kernel
        .set_ctl(flow.start[d].cookie, &dir.ctl)
        .map_err(|e| End::Error(format!("CTRL update: {e}")))
}

/// Runs direction `d` as far as it can go without waiting.
pub(super) fn progress(kernel: &Kernel, flow: &mut Flow, d: usize) -> Result<(), End> {
    let peer = 1 - d;
    let io = |e: io::Error| End::Error(format!("reading TCP counters: {e}"));
    loop {
        match flow.dirs[d].phase {
            Phase::Done => return Ok(()),
            Phase::Kernel => {
                let c = kernel.counters(flow.start[d].cookie);
                if c.failures > 0 {
                    // Also caught here when its EV_REDIRECT_FAILED is late or lost.
                    return Err(End::Error(REDIRECT_FAILED.into()));
                }
                if c.seq_errors > 0 {
                    // Likewise for EV_SEQ_ERROR.
                    return Err(End::Error(SEQ_ERROR.into()));
                }
                if c.passed > flow.dirs[d].ctl.consumed {
                    // The verdict kept bytes (paused, or a lost EV_PAUSED).
                    set_phase(kernel, flow, d, Phase::Draining);
                    continue;
                }
                if !flow.dirs[d].fin {
                    return Ok(());
                }
                let recv = received(flow, d).map_err(io)?;
                if c.redirected + c.passed > recv {
                    // The verdict was handed more bytes than TCP received: some twice
                    // (tcp_read_skb passes whole skbs, and TCP queues a retransmitted
                    // segment that overlaps bytes already received without trimming
                    // it). The verdict trims those (FlowCounters::next_seq); this is
                    // the backstop if it ever could not: never pass a clean FIN after
                    // duplicates.
                    kernel.paths.integrity.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        dir = d,
                        seen = c.redirected + c.passed,
                        received = recv,
                        "splice: the kernel forwarded bytes twice; resetting the flow"
                    );
                    return Err(End::Error("kernel forwarded duplicate bytes".into()));
                }
                if c.redirected + c.passed == recv && written(flow, peer).map_err(io)? >= recv {
                    tracing::debug!(
                        dir = d,
                        bytes = recv,
                        "splice: forwarded; passing the FIN on"
                    );
                    let _ = flow.socks[peer].shutdown(Shutdown::Write);
                    set_phase(kernel, flow, d, Phase::Done);
                    return Ok(());
                }
                poll_later(&mut flow.dirs[d]);
                return Ok(());
            }
            Phase::Draining => {
                // Paused: the kept bytes wait on the receiving socket (its window is
                // closed) until the peer has taken everything redirected before them and
                // has room again; only then does userspace move them.
                let c = kernel.counters(flow.start[d].cookie);
                let taken = written(flow, peer)
                    .map_err(io)?
                    .saturating_sub(flow.dirs[d].copied);
                if taken < c.redirected {
                    // The backlog is still sending (into a buffer with room): soon.
                    poll_later(&mut flow.dirs[d]);
                    return Ok(());
                }
                flow.dirs[d].written_redirects = c.redirected;
                set_peer_sndbuf(kernel, flow, d, true);
                if has_room(kernel, flow, peer).map_err(io)? {
                    set_phase(kernel, flow, d, Phase::Copying);
                    continue;
                }
                // Wait for the reader: with the smaller send buffer the peer turns
                // writable (EPOLLOUT) about when it has room. The poll backs that up.
                flow.dirs[d].want_out = true;
                poll_later(&mut flow.dirs[d]);
                return Ok(());
            }
            Phase::Copying => return copy(kernel, flow, d),
        }
    }
}

/// The peer may take more of this flow: its send queue is within half the budget.
pub(super) fn has_room(kernel: &Kernel, flow: &Flow, peer: usize) -> io::Result<bool> {
    Ok(sockopt::outq(&flow.socks[peer])? <= kernel.budget / 2)
}

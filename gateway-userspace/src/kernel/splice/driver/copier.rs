//! Userspace's share of a kernel flow: moving a paused direction's kept bytes (or every
//! byte of a socket not in SPLICED) to the peer with nonblocking backpressure, and
//! handing the direction back to the verdict once it has caught up.
use std::{io, net::Shutdown};

use gateway_common::{CTL_MODE_KERNEL, FlowCtl};

use super::{
    direction::{has_room, progress, set_peer_sndbuf, set_phase},
    flow::{CopyBuf, End, Flow, Phase, poll_later, received, written},
};
use crate::kernel::splice::{ebpf::Kernel, sockopt};

/// Userspace's copy buffer for a non-spliced direction (allocated only while it copies).
const COPY_BUF: usize = 256 * 1024;

/// Userspace moves direction `d`'s bytes: whatever the verdict kept on the receiving
/// socket (or everything, for a socket not in SPLICED), written to the peer with
/// nonblocking backpressure.
///
/// For a spliced socket the bytes are peeked, written, announced and only then
/// consumed, all of them at once (the buffer holds a whole receive buffer's worth).
/// Consuming reopens TCP's window and a fast sender's next segment arrives within
/// microseconds; peeking everything first means that by the time the window reopens
/// the verdict already knows everything it kept is in the peer's send queue
/// (`passed == consumed`) and redirects that next segment itself, so the direction goes
/// back to the kernel after one round instead of chasing the sender.
pub(super) fn copy(kernel: &Kernel, flow: &mut Flow, d: usize) -> Result<(), End> {
    let peer = 1 - d;
    let io = |e: io::Error| End::Error(format!("reading TCP counters: {e}"));
    loop {
        let dir = &mut flow.dirs[d];
        let size = if dir.spliced {
            kernel.paused_copy_buf()
        } else {
            COPY_BUF
        };
        let buf = dir.buf.get_or_insert_with(|| CopyBuf {
            data: vec![0u8; size].into_boxed_slice(),
            start: 0,
            end: 0,
            unconsumed: 0,
        });
        if buf.start < buf.end {
            match sockopt::send_nowait(&flow.socks[peer], &buf.data[buf.start..buf.end]) {
                Ok(n) => {
                    buf.start += n;
                    dir.copied += n as u64;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    dir.want_out = true;
                    dir.want_in = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The peer is gone (reset): reset the sender too.
                Err(_) => return Err(End::ResetBy(peer)),
            }
        }
        dir.want_out = false;
        if buf.unconsumed > 0 {
            // Written: tell the verdict (when this was all it had kept and the peer has
            // room), then take the bytes off the socket.
            let n = buf.unconsumed;
            if dir.drained && has_room(kernel, flow, peer).map_err(io)? {
                announce(kernel, flow, d)?;
            }
            let buf = flow.dirs[d].buf.as_mut().expect("copy buffer");
            let mut off = 0;
            while off < n {
                match sockopt::recv_nowait(&flow.socks[d], &mut buf.data[off..n]) {
                    Ok(0) => return Err(End::Error("peeked bytes vanished".into())),
                    Ok(k) => off += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Err(End::ResetBy(d)),
                }
            }
            (buf.start, buf.end, buf.unconsumed) = (0, 0, 0);
            continue;
        }
        (buf.start, buf.end) = (0, 0);
        if dir.spliced && !dir.fin && !has_room(kernel, flow, peer).map_err(io)? {
            // The peer already holds half the budget. Taking more now would let this
            // loop chase a fast sender without bound: once an announce has raised the
            // peer's send buffer to 4 × the budget, nothing else stops these writes (the
            // soak measured 131 MB queued toward a 256 KiB/s reader). Look again later;
            // the kept bytes wait on the receiving socket, its window closed.
            let dir = &mut flow.dirs[d];
            dir.want_in = false;
            poll_later(dir);
            return Ok(());
        }
        let dir = &mut flow.dirs[d];
        let buf = dir.buf.as_mut().expect("copy buffer");
        let read = if dir.spliced {
            sockopt::peek_nowait(&flow.socks[d], &mut buf.data)
        } else {
            sockopt::recv_nowait(&flow.socks[d], &mut buf.data)
        };
        match read {
            Ok(0) => {
                // EOF. For a spliced socket, recv answers 0 once TCP saw the FIN and the
                // psock's queue is empty — even if a kept skb still waits in the psock's
                // backlog behind the other direction's bytes: trust only the counters.
                if dir.spliced {
                    // After an announce the verdict may have redirected bytes that its
                    // backlog has not written yet: the FIN must wait for them too.
                    dir.fin = true;
                    let c = kernel.counters(flow.start[d].cookie);
                    let recv = received(flow, d).map_err(io)?;
                    let written = written(flow, peer).map_err(io)?;
                    let dir = &mut flow.dirs[d];
                    if c.redirected + c.passed < recv || c.passed > dir.copied || written < recv {
                        dir.want_in = true;
                        poll_later(dir);
                        return Ok(());
                    }
                }
                let _ = flow.socks[peer].shutdown(Shutdown::Write);
                set_phase(kernel, flow, d, Phase::Done);
                return Ok(());
            }
            Ok(n) if dir.spliced => {
                // The verdict may have redirected skbs since the backlog was last seen
                // empty (after an announce, before it kept these): writing these bytes
                // now could overtake them. Then wait for the backlog first.
                let c = kernel.counters(flow.start[d].cookie);
                let dir = &mut flow.dirs[d];
                if c.redirected > dir.written_redirects {
                    let taken = written(flow, peer)
                        .map_err(io)?
                        .saturating_sub(flow.dirs[d].copied);
                    if taken < c.redirected {
                        set_phase(kernel, flow, d, Phase::Draining);
                        poll_later(&mut flow.dirs[d]);
                        return Ok(());
                    }
                    flow.dirs[d].written_redirects = c.redirected;
                }
                let dir = &mut flow.dirs[d];
                let buf = dir.buf.as_mut().expect("copy buffer");
                dir.drained = n < buf.data.len();
                (buf.end, buf.unconsumed) = (n, n);
            }
            Ok(n) => {
                dir.drained = n < buf.data.len();
                buf.end = n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                dir.want_in = true;
                if dir.spliced && !dir.fin {
                    let c = kernel.counters(flow.start[d].cookie);
                    let dir = &mut flow.dirs[d];
                    if c.passed == dir.copied && dir.ctl.consumed == dir.copied {
                        // Everything kept is written and the verdict knows it: it
                        // redirects again from its next skb.
                        set_phase(kernel, flow, d, Phase::Kernel);
                        return progress(kernel, flow, d);
                    }
                    if c.passed == dir.copied && has_room(kernel, flow, peer).map_err(io)? {
                        announce(kernel, flow, d)?;
                        set_phase(kernel, flow, d, Phase::Kernel);
                        return progress(kernel, flow, d);
                    }
                    // A kept skb may still be on its way to the psock's queue (behind
                    // the other direction's backlog), or the peer lacks room. New bytes
                    // raise EPOLLIN; the poll covers the rest.
                    poll_later(&mut flow.dirs[d]);
                }
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(End::ResetBy(d)),
        }
    }
}

/// Tells the verdict how much of what it kept userspace has written to the peer, with
/// fresh credit. The verdict redirects again from the first skb that finds
/// `passed == consumed`: every byte it kept is then already in the peer's send queue,
/// ahead of anything it redirects. Until then it keeps skbs, which the copier reads. A
/// new epoch, so a later pause is announced again.
fn announce(kernel: &Kernel, flow: &mut Flow, d: usize) -> Result<(), End> {
    let peer = 1 - d;
    let io = |e: io::Error| End::Error(format!("reading TCP counters: {e}"));
    let c = kernel.counters(flow.start[d].cookie);
    let queued = sockopt::outq(&flow.socks[peer]).map_err(io)?;
    let room = kernel.budget.saturating_sub(queued);
    // From the update on the verdict may redirect again: its backlog needs room first.
    set_peer_sndbuf(kernel, flow, d, false);
    let dir = &mut flow.dirs[d];
    dir.ctl = FlowCtl {
        limit: c.redirected + room,
        notify_at: c.redirected + room / 2,
        consumed: dir.copied,
        epoch: dir.ctl.epoch + 1,
        mode: CTL_MODE_KERNEL,
        _pad: 0,
    };
    kernel
        .set_ctl(flow.start[d].cookie, &dir.ctl)
        .map_err(|e| End::Error(format!("CTRL update: {e}")))
}

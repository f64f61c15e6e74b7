//! Kernel side of the gateway: the sk_skb stream_verdict program that splices two
//! TCP sockets, so payload of TCP and TLS-passthrough flows never enters userspace,
//! and the XDP ingress guard ([`xdp`]).
#![no_std]
#![no_main]

mod xdp;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, sk_action},
    helpers::{bpf_get_socket_cookie, bpf_probe_read_kernel},
    macros::{map, stream_verdict},
    maps::{Array, HashMap, PerCpuArray, RingBuf, SockHash},
    programs::SkBuffContext,
};
use aya_log_ebpf::{info, warn};
use gateway_common::{
    CONFIG_COUNT, CONFIG_FAULT_REDIRECT, CONFIG_LOG_REDIRECTS, CTL_MODE_KERNEL, EV_CREDIT,
    EV_PAUSED, EV_REDIRECT_FAILED, EV_SEQ_ERROR, EVENTS_BYTES, FAULT_KEY_XOR, FlowCounters,
    FlowCtl, MAX_FLOWS, MAX_SOCKS, STAT_COUNT, STAT_EMPTY_SKBS, STAT_EVENTS_LOST,
    STAT_OVERLAP_BYTES, STAT_OVERLAP_SKBS, STAT_PASSED_BYTES, STAT_PASSED_SKBS,
    STAT_REDIRECT_FAILURES, STAT_REDIRECTED_BYTES, STAT_REDIRECTED_SKBS, STAT_SEQ_ERRORS,
    STAT_UNTRACKED_SKBS, SpliceEvent,
};

/// See gateway_common::PEERS_MAP: each socket stored under its peer's cookie.
#[map(name = "PEERS")]
static PEERS: SockHash<u64> = SockHash::with_max_entries(MAX_SOCKS, 0);

/// See gateway_common::SPLICED_MAP: the map this program is attached to (own cookie).
#[map(name = "SPLICED")]
static SPLICED: SockHash<u64> = SockHash::with_max_entries(MAX_SOCKS, 0);

/// See gateway_common::FLOWS_MAP. A plain (not per-CPU) hash: the verdict for one socket
/// never runs twice at once (tcp_read_skb runs under the socket's lock), so it is the
/// only writer of its socket's entry and a non-atomic `+=` is exact.
#[map(name = "FLOWS")]
static FLOWS: HashMap<u64, FlowCounters> = HashMap::with_max_entries(MAX_FLOWS, BPF_F_NO_PREALLOC);

/// See gateway_common::CTRL_MAP: userspace's orders, read-only here.
#[map(name = "CTRL")]
static CTRL: HashMap<u64, FlowCtl> = HashMap::with_max_entries(MAX_FLOWS, BPF_F_NO_PREALLOC);

/// See gateway_common::EVENTS_MAP.
#[map(name = "SPLICE_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map(name = "SPLICE_STATS")]
static SPLICE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// See gateway_common::SPLICE_CONFIG_MAP: switches set by userspace.
#[map(name = "SPLICE_CONFIG")]
static SPLICE_CONFIG: Array<u32> = Array::with_max_entries(CONFIG_COUNT, 0);

/// Byte offsets of `sk_buff.cb` (where TCP keeps `TCP_SKB_CB(skb)->seq, end_seq`),
/// `sk_buff.sk` and `tcp_sock.copied_seq` in the running kernel, read from its BTF by
/// userspace and written here before the program is loaded (read-only data: the
/// verifier sees constants).
#[unsafe(no_mangle)]
static SKB_CB_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static SKB_SK_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TCP_COPIED_SEQ_OFFSET: u32 = 0;

/// sk_skb_adjust_room removes at most 0xfff bytes a call (net/core/filter.c).
const TRIM_STEP: u32 = 0xfff;
/// Longest head trimmed: 256 steps, ~1 MiB. Overlaps seen on loopback are one to a few
/// 64 KiB GSO segments (retransmitted after reordering); longer ones reset the flow.
const TRIM_STEPS: u32 = 256;

/// Reads a kernel u32 at `addr` (bpf_probe_read_kernel: the gateway runs with
/// CAP_PERFMON, which sk_skb programs need for it and for the address arithmetic).
#[inline(always)]
fn read_u32(addr: usize) -> Option<u32> {
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-handling
    // accessor: a bad address yields an error, never a fault.
    unsafe { bpf_probe_read_kernel(addr as *const u32).ok() }
}

#[inline(always)]
fn read_u64(addr: usize) -> Option<u64> {
    // SAFETY: as in read_u32.
    unsafe { bpf_probe_read_kernel(addr as *const u64).ok() }
}

/// Where an skb stands against the stream already handed on.
enum Seq {
    /// Starts at the next byte owed (or sequencing is unavailable).
    InOrder,
    /// Its first `n` bytes were handed on already.
    Overlap(u32),
    /// It does not fit: a gap before it, or garbage where the sequence should be.
    Broken,
}

/// Places this skb in the socket's stream (see FlowCounters::next_seq) and moves
/// `next_seq` past it.
#[inline(always)]
fn sequence(ctx: &SkBuffContext, f: &mut FlowCounters, len: u32) -> Seq {
    // SAFETY: plain reads of read-only globals the loader filled in.
    let (cb_off, sk_off, copied_off) = unsafe {
        (
            core::ptr::read_volatile(&SKB_CB_OFFSET),
            core::ptr::read_volatile(&SKB_SK_OFFSET),
            core::ptr::read_volatile(&TCP_COPIED_SEQ_OFFSET),
        )
    };
    // The bounds also let the verifier accept the pointer arithmetic below.
    if cb_off == 0 || cb_off > 512 || sk_off > 512 || copied_off == 0 || copied_off > 16384 {
        return Seq::InOrder;
    }
    // The context pointer is the kernel's struct sk_buff (bpf_prog_run(prog, skb)).
    let skb = ctx.skb.skb as usize;
    let (Some(seq), Some(end)) = (
        read_u32(skb + cb_off as usize),
        read_u32(skb + cb_off as usize + 4),
    ) else {
        return Seq::Broken;
    };
    // end_seq counts a FIN as one more.
    let span = end.wrapping_sub(seq);
    if span != len && span != len + 1 {
        return Seq::Broken;
    }
    if f.seq_known == 0 {
        // First skb since the socket entered the splice: nothing has been passed or
        // redirected yet, so copied_seq is exactly the next byte owed (userspace may
        // have read a part of this very skb before).
        let Some(sk) = read_u64(skb + sk_off as usize) else {
            return Seq::Broken;
        };
        let Some(copied) = read_u32(sk as usize + copied_off as usize) else {
            return Seq::Broken;
        };
        f.next_seq = copied;
        f.seq_known = 1;
    }
    let ahead = f.next_seq.wrapping_sub(seq) as i32;
    if ahead < 0 {
        return Seq::Broken;
    }
    let data_end = seq.wrapping_add(len);
    if (data_end.wrapping_sub(f.next_seq) as i32) > 0 {
        f.next_seq = data_end;
    }
    if ahead == 0 {
        Seq::InOrder
    } else {
        Seq::Overlap(ahead as u32)
    }
}

/// Removes the first `n` bytes of the skb.
#[inline(always)]
fn trim_head(ctx: &SkBuffContext, mut n: u32) -> bool {
    for _ in 0..TRIM_STEPS {
        if n == 0 {
            return true;
        }
        let step = if n > TRIM_STEP { TRIM_STEP } else { n };
        if ctx.adjust_room(-(step as i32), 0, 0).is_err() {
            return false;
        }
        n -= step;
    }
    n == 0
}

#[inline(always)]
fn switched_on(slot: u32) -> bool {
    SPLICE_CONFIG.get(slot).is_some_and(|v| *v != 0)
}

#[inline(always)]
fn bump(idx: u32, by: u64) {
    if let Some(p) = SPLICE_STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *p += by };
    }
}

#[inline(always)]
fn emit(cookie: u64, kind: u32) {
    let ev = SpliceEvent {
        cookie,
        kind,
        _pad: 0,
    };
    // BPF_RB_FORCE_WAKEUP is not needed: one event is all userspace waits for.
    if EVENTS.output::<SpliceEvent>(&ev, 0).is_err() {
        // Userspace notices the counter move and sweeps every flow instead.
        bump(STAT_EVENTS_LOST, 1);
    }
}

/// Runs for every skb that reaches a spliced socket's receive queue (net/core/skmsg.c:
/// sk_psock_verdict_recv, via tcp_read_skb). Returning SK_PASS with a redirect set sends
/// the skb out of the peer socket (sk_psock_skb_redirect → the peer psock's backlog);
/// SK_PASS without one keeps it on this socket, readable by userspace with recv()
/// (sk_psock_skb_ingress_self), and keeps it charged to this socket's receive buffer,
/// so TCP's window closes toward a sender that outruns the peer: that is the pause.
/// SK_DROP would lose bytes TCP has already acknowledged, so it is used only for
/// zero-length skbs.
#[stream_verdict]
pub fn splice_verdict(ctx: SkBuffContext) -> u32 {
    let len = ctx.len() as u64;
    if len == 0 {
        // tcp_read_skb hands zero-length FIN skbs to the verdict program too. Nothing to
        // forward (TCP already recorded the FIN; userspace sees it through RDHUP and shuts
        // the peer's write side), so drop the marker. Not SK_PASS: when this socket still
        // has redirected bytes waiting to go out, a passed skb is queued behind them in the
        // same psock backlog, where a zero-length "ingress" counts as a hard error (EPIPE)
        // that disables transmission and loses the queued bytes.
        bump(STAT_EMPTY_SKBS, 1);
        return sk_action::SK_DROP;
    }
    // SAFETY: the helper only reads the socket behind this program's own skb context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut _) };
    let Some(counters) = FLOWS.get_ptr_mut(&cookie) else {
        // Userspace creates FLOWS entries before a socket enters SPLICED: this is a bug.
        // Keep the bytes on the socket rather than lose them.
        bump(STAT_UNTRACKED_SKBS, 1);
        warn!(
            &ctx,
            "splice: skb on a socket with no FLOWS entry cookie={}", cookie
        );
        return sk_action::SK_PASS;
    };
    // SAFETY: this program is the only writer of this socket's entry and never runs
    // twice at once for one socket (see FLOWS); the element lives until an RCU grace
    // period after userspace deletes it, and this program runs under rcu_read_lock.
    let f = unsafe { &mut *counters };
    let mut len = len;
    match sequence(&ctx, f, len as u32) {
        Seq::InOrder => {}
        Seq::Overlap(n) => {
            let n = if (n as u64) < len { n } else { len as u32 };
            if !trim_head(&ctx, n) {
                return seq_error(&ctx, f, cookie, len);
            }
            f.overlap += n as u64;
            bump(STAT_OVERLAP_SKBS, 1);
            bump(STAT_OVERLAP_BYTES, n as u64);
            len = ctx.len() as u64;
            if len == 0 {
                // Every byte was handed on already. Trimmed to nothing, the skb moves
                // copied_seq by nothing when the kernel eats it (tcp_eat_skb).
                return sk_action::SK_DROP;
            }
        }
        Seq::Broken => return seq_error(&ctx, f, cookie, len),
    }
    // SAFETY: read-only view of an element userspace replaces atomically (NO_PREALLOC:
    // the old one stays valid for this RCU reader).
    let ctl = unsafe { CTRL.get(&cookie) };
    let (redirect, epoch) = match ctl {
        Some(c) => (
            c.mode == CTL_MODE_KERNEL && f.passed == c.consumed && f.redirected < c.limit,
            c.epoch,
        ),
        None => (false, 0),
    };
    if redirect {
        let key = if switched_on(CONFIG_FAULT_REDIRECT) {
            cookie ^ FAULT_KEY_XOR
        } else {
            cookie
        };
        // flags = 0: transmit out of the peer socket (egress). BPF_F_INGRESS would queue
        // the bytes on the peer's receive side instead.
        if PEERS.redirect_skb(&ctx, key, 0) as u32 == sk_action::SK_PASS {
            f.redirected += len;
            f.skbs += 1;
            bump(STAT_REDIRECTED_SKBS, 1);
            bump(STAT_REDIRECTED_BYTES, len);
            if let Some(c) = ctl
                && f.redirected >= c.notify_at
                && f.credit_epoch != epoch + 1
            {
                f.credit_epoch = epoch + 1;
                emit(cookie, EV_CREDIT);
            }
            if switched_on(CONFIG_LOG_REDIRECTS) {
                info!(&ctx, "splice: redirected cookie={} len={}", cookie, len);
            }
            return sk_action::SK_PASS;
        }
        // bpf_sk_redirect_hash found no peer. The bytes are already acknowledged: keep
        // them on this socket (no redirect set, so SK_PASS is a local pass) and have
        // userspace reset the flow both ways.
        f.failures += 1;
        f.passed += len;
        bump(STAT_REDIRECT_FAILURES, 1);
        emit(cookie, EV_REDIRECT_FAILED);
        warn!(
            &ctx,
            "splice: redirect failed cookie={} len={}", cookie, len
        );
        return sk_action::SK_PASS;
    }
    f.passed += len;
    bump(STAT_PASSED_SKBS, 1);
    bump(STAT_PASSED_BYTES, len);
    if f.pause_epoch != epoch + 1 {
        f.pause_epoch = epoch + 1;
        emit(cookie, EV_PAUSED);
    }
    sk_action::SK_PASS
}

/// An skb that does not fit the stream: keep it on the socket (nothing lost that TCP
/// acknowledged) and have userspace reset the flow both ways.
#[inline(always)]
fn seq_error(ctx: &SkBuffContext, f: &mut FlowCounters, cookie: u64, len: u64) -> u32 {
    f.seq_errors += 1;
    f.passed += len;
    bump(STAT_SEQ_ERRORS, 1);
    emit(cookie, EV_SEQ_ERROR);
    warn!(
        ctx,
        "splice: skb out of sequence cookie={} len={}", cookie, len
    );
    sk_action::SK_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

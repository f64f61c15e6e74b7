//! Kernel side of the gateway: the sk_skb stream_verdict program that splices two
//! TCP sockets, so payload of TCP and TLS-passthrough flows never enters userspace,
//! and the XDP ingress guard ([`xdp`]).
#![no_std]
#![no_main]

mod xdp;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, sk_action},
    helpers::bpf_get_socket_cookie,
    macros::{map, stream_verdict},
    maps::{Array, HashMap, PerCpuArray, RingBuf, SockHash},
    programs::SkBuffContext,
};
use aya_log_ebpf::{info, warn};
use gateway_common::{
    CONFIG_COUNT, CONFIG_FAULT_REDIRECT, CONFIG_LOG_REDIRECTS, CTL_MODE_KERNEL, EV_CREDIT,
    EV_PAUSED, EV_REDIRECT_FAILED, EVENTS_BYTES, FAULT_KEY_XOR, FlowCounters, FlowCtl, MAX_FLOWS,
    MAX_SOCKS, STAT_COUNT, STAT_EMPTY_SKBS, STAT_EVENTS_LOST, STAT_PASSED_BYTES, STAT_PASSED_SKBS,
    STAT_REDIRECT_FAILURES, STAT_REDIRECTED_BYTES, STAT_REDIRECTED_SKBS, STAT_UNTRACKED_SKBS,
    SpliceEvent,
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

//! Kernel side of the gateway: the sk_skb stream_verdict program that splices two
//! TCP sockets, so payload of TCP and TLS-passthrough flows never enters userspace,
//! and the XDP ingress guard ([`xdp`]).
#![no_std]
#![no_main]

mod xdp;

use aya_ebpf::{
    bindings::sk_action,
    helpers::bpf_get_socket_cookie,
    macros::{map, stream_verdict},
    maps::{PerCpuArray, PerCpuHashMap, SockHash},
    programs::SkBuffContext,
};
use aya_log_ebpf::{info, warn};
use gateway_common::{
    FlowCounters, MAX_FLOWS, MAX_SOCKS, STAT_COUNT, STAT_EMPTY_SKBS, STAT_REDIRECT_FAILURES,
    STAT_REDIRECTED_BYTES, STAT_REDIRECTED_SKBS, STAT_UNTRACKED_SKBS,
};

/// See gateway_common::PEERS_MAP: each socket stored under its peer's cookie.
#[map(name = "PEERS")]
static PEERS: SockHash<u64> = SockHash::with_max_entries(MAX_SOCKS, 0);

/// See gateway_common::SPLICED_MAP: the map this program is attached to (own cookie).
#[map(name = "SPLICED")]
static SPLICED: SockHash<u64> = SockHash::with_max_entries(MAX_SOCKS, 0);

/// See gateway_common::FLOWS_MAP. Per-CPU, because bpfel has no atomic add that core
/// exposes and a socket's skbs may be processed on any CPU.
#[map(name = "FLOWS")]
static FLOWS: PerCpuHashMap<u64, FlowCounters> = PerCpuHashMap::with_max_entries(MAX_FLOWS, 0);

#[map(name = "SPLICE_STATS")]
static SPLICE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// See gateway_common::LOG_CONFIG_MAP: switches for aya-log records, set by userspace.
#[map(name = "LOG_CONFIG")]
static LOG_CONFIG: aya_ebpf::maps::Array<u32> =
    aya_ebpf::maps::Array::with_max_entries(gateway_common::LOG_CONFIG_COUNT, 0);

#[inline(always)]
fn log_enabled(slot: u32) -> bool {
    LOG_CONFIG.get(slot).is_some_and(|v| *v != 0)
}

#[inline(always)]
fn bump(idx: u32, by: u64) {
    if let Some(p) = SPLICE_STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *p += by };
    }
}

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
    // Counted before the redirect, so at any instant FLOWS covers every byte handed to
    // the peer: userspace relies on that to know when a FIN may be passed on.
    let counters = FLOWS.get_ptr_mut(&cookie);
    match counters {
        Some(c) => {
            // SAFETY: per-CPU value, only this CPU writes it while the program runs.
            unsafe {
                (*c).bytes += len;
                (*c).skbs += 1;
            }
        }
        None => {
            bump(STAT_UNTRACKED_SKBS, 1);
            // Userspace creates FLOWS entries before a socket enters SPLICED: this is a bug.
            warn!(
                &ctx,
                "splice: skb on a socket with no FLOWS entry cookie={}", cookie
            );
        }
    }
    // flags = 0: transmit out of the peer socket (egress). BPF_F_INGRESS would queue the
    // bytes on the peer's receive side instead.
    let verdict = PEERS.redirect_skb(&ctx, cookie, 0) as u32;
    if verdict == sk_action::SK_PASS {
        bump(STAT_REDIRECTED_SKBS, 1);
        bump(STAT_REDIRECTED_BYTES, len);
        if log_enabled(gateway_common::LOG_CONFIG_REDIRECTS) {
            info!(&ctx, "splice: redirected cookie={} len={}", cookie, len);
        }
    } else {
        if let Some(c) = counters {
            // SAFETY: as above. The bytes were dropped, not handed over: uncount them.
            unsafe {
                (*c).bytes -= len;
                (*c).skbs -= 1;
            }
        }
        bump(STAT_REDIRECT_FAILURES, 1);
        warn!(
            &ctx,
            "splice: redirect failed cookie={} len={}", cookie, len
        );
    }
    verdict
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

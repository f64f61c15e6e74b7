//! Types and map names shared by the kernel programs (`gateway-ebpf`) and userspace.
//!
//! Every type here is `#[repr(C)]` with explicit padding, so both sides agree on the
//! layout byte for byte. Byte order is stated on every field where it matters.
#![no_std]

/// SOCKHASH of redirect targets: each spliced socket is stored under its *peer's*
/// socket cookie, so the verdict program's "look up my own cookie" yields the socket the
/// bytes must leave through. Socket cookies are unique for the lifetime of the network
/// namespace, so keys never collide across clients (no port-only keys). No program is
/// attached to this map: being in it does not change how a socket receives.
pub const PEERS_MAP: &str = "PEERS";
/// SOCKHASH that the stream_verdict program is attached to, keyed by the socket's own
/// cookie. Userspace inserts both sockets into [`PEERS_MAP`] first and only then into
/// this map, so by the time the verdict runs on either socket its peer is already a
/// valid redirect target: there is no window in which an skb finds no peer and is
/// dropped. Two maps instead of one for exactly that reason.
pub const SPLICED_MAP: &str = "SPLICED";
/// Hash: socket cookie -> [`FlowCounters`] for bytes *received* on that socket. Written
/// only by the verdict program (which runs serialised per socket: under the socket's
/// lock), read by userspace; inserted before the socket enters [`SPLICED_MAP`] and
/// deleted after it left. `BPF_F_NO_PREALLOC`: a deleted element is freed after an RCU
/// grace period, so a verdict still holding a pointer never writes into a reused one.
pub const FLOWS_MAP: &str = "FLOWS";
/// Hash: socket cookie -> [`FlowCtl`], written only by userspace, read by the verdict:
/// how many bytes of this socket's stream the kernel may redirect before it must pause.
/// Split from [`FLOWS_MAP`] so that no side ever overwrites the other's fields;
/// `BPF_F_NO_PREALLOC` so an update replaces the element atomically for an RCU reader.
pub const CTRL_MAP: &str = "CTRL";
/// Ring buffer of [`SpliceEvent`]s: the verdict tells userspace when a flow needs it
/// (more credit, paused, redirect failed). Userspace is woken by nothing else while a
/// flow runs in the kernel.
pub const EVENTS_MAP: &str = "SPLICE_EVENTS";
/// Per-CPU array of global splice counters, indexed by the `STAT_*` constants.
pub const SPLICE_STATS_MAP: &str = "SPLICE_STATS";

/// Capacity of [`PEERS_MAP`] and [`SPLICED_MAP`] (two entries per spliced connection).
pub const MAX_SOCKS: u32 = 131_072;
/// Capacity of [`FLOWS_MAP`] and [`CTRL_MAP`] (two entries per spliced connection).
pub const MAX_FLOWS: u32 = 131_072;
/// Size of [`EVENTS_MAP`] in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;

/// skbs redirected to a peer socket.
pub const STAT_REDIRECTED_SKBS: u32 = 0;
/// payload bytes redirected to a peer socket.
pub const STAT_REDIRECTED_BYTES: u32 = 1;
/// redirects the kernel refused (peer not in PEERS): the skb is kept for userspace
/// (SK_PASS) and the flow is reset both ways, never continued with a hole.
pub const STAT_REDIRECT_FAILURES: u32 = 2;
/// zero-length skbs (FIN markers), dropped: there is nothing to forward.
pub const STAT_EMPTY_SKBS: u32 = 3;
/// skbs seen on a socket with no FLOWS entry (should stay 0: userspace inserts the
/// FLOWS entry before the socket enters SPLICED). Kept for userspace (SK_PASS).
pub const STAT_UNTRACKED_SKBS: u32 = 4;
/// skbs kept on the receiving socket (SK_PASS) because its flow is paused.
pub const STAT_PASSED_SKBS: u32 = 5;
/// payload bytes kept on the receiving socket because its flow is paused.
pub const STAT_PASSED_BYTES: u32 = 6;
/// events that did not fit in [`EVENTS_MAP`] (userspace then sweeps every flow).
pub const STAT_EVENTS_LOST: u32 = 7;
/// skbs whose head repeated bytes already handed on (a retransmission TCP queued
/// overlapping data it had; see [`FlowCounters::next_seq`]), trimmed or dropped.
pub const STAT_OVERLAP_SKBS: u32 = 8;
/// Bytes trimmed off those skbs.
pub const STAT_OVERLAP_BYTES: u32 = 9;
/// skbs out of sequence in a way trimming can't mend (the flow is reset).
pub const STAT_SEQ_ERRORS: u32 = 10;
/// Number of slots in [`SPLICE_STATS_MAP`].
pub const STAT_COUNT: u32 = 11;

/// Per-socket byte counters (the value type of [`FLOWS_MAP`]), from the verdict's view:
/// every payload byte received on the socket since it entered the splice is either
/// `redirected` or `passed`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// Payload bytes redirected to the peer socket (the kernel path).
    pub redirected: u64,
    /// skbs redirected to the peer socket.
    pub skbs: u64,
    /// Payload bytes kept on this socket (SK_PASS: its psock's receive queue, read by
    /// userspace with recv) because the flow was paused or a redirect failed.
    pub passed: u64,
    /// Redirects the kernel refused.
    pub failures: u64,
    /// [`FlowCtl::epoch`] + 1 of the last [`EV_CREDIT`] sent (0: none yet).
    pub credit_epoch: u64,
    /// [`FlowCtl::epoch`] + 1 of the last [`EV_PAUSED`] sent (0: none yet).
    pub pause_epoch: u64,
    /// Bytes trimmed off the head of skbs that repeated bytes already handed on.
    pub overlap: u64,
    /// skbs the verdict could not place in the stream (reset: [`EV_SEQ_ERROR`]).
    pub seq_errors: u64,
    /// TCP sequence number of the next byte this socket's stream owes the verdict.
    /// tcp_read_skb hands the verdict whole skbs and ignores how much of the head one
    /// was already read (net/ipv4/tcp.c: "tcp_read_skb() reads entire skbs so there is
    /// no need to handle the 'offset!=0' case"), but tcp_data_queue queues a
    /// retransmitted segment that starts before rcv_nxt whole ("Partial packet, seq <
    /// rcv_next < end_seq"). The verdict trims such heads against this.
    pub next_seq: u32,
    /// Non-zero once `next_seq` is set (from tcp_sock.copied_seq at the first skb).
    pub seq_known: u32,
}

/// Userspace's orders for one socket's stream (the value type of [`CTRL_MAP`]). The
/// verdict redirects an skb only while `mode == CTL_MODE_KERNEL`, `passed == consumed`
/// (userspace has written every byte kept earlier, so a redirect can't overtake them)
/// and `redirected < limit` (the peer's backlog is within its budget); otherwise it
/// keeps the skb on the socket, which closes the TCP window toward the sender.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCtl {
    /// Redirect while [`FlowCounters::redirected`] is below this.
    pub limit: u64,
    /// Send [`EV_CREDIT`] once [`FlowCounters::redirected`] reaches this.
    pub notify_at: u64,
    /// Bytes of [`FlowCounters::passed`] that userspace has written to the peer.
    pub consumed: u64,
    /// Bumped by userspace at every update; events name the epoch they answer.
    pub epoch: u64,
    /// [`CTL_MODE_KERNEL`] or [`CTL_MODE_USER`].
    pub mode: u32,
    pub _pad: u32,
}

/// [`FlowCtl::mode`]: the verdict redirects (within `limit`).
pub const CTL_MODE_KERNEL: u32 = 1;
/// [`FlowCtl::mode`]: every skb stays on the socket for userspace.
pub const CTL_MODE_USER: u32 = 0;

/// One record of [`EVENTS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceEvent {
    /// The receiving socket's cookie (the key of [`FLOWS_MAP`] / [`CTRL_MAP`]).
    pub cookie: u64,
    /// `EV_*`.
    pub kind: u32,
    pub _pad: u32,
}

/// Redirected bytes reached [`FlowCtl::notify_at`]: userspace looks at the peer's queue
/// and moves `limit` on.
pub const EV_CREDIT: u32 = 1;
/// The verdict kept an skb on the socket (paused): userspace takes the stream over
/// until it can hand it back.
pub const EV_PAUSED: u32 = 2;
/// A redirect failed: the flow must be reset both ways.
pub const EV_REDIRECT_FAILED: u32 = 3;
/// An skb did not fit the stream (a gap, or an overlap too long to trim): the flow must
/// be reset both ways.
pub const EV_SEQ_ERROR: u32 = 4;

// SAFETY: these are repr(C), made only of u64s and u32s with explicit padding fields
// (no implicit padding, every bit pattern valid), so they may be copied to and from
// kernel map memory as plain bytes.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowCounters {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowCtl {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for SpliceEvent {}

// === XDP guard ===
// The XDP ingress guard (gateway-ebpf `xdp.rs`, userspace `xdp/`): AuthorizationPolicy
// rules that depend only on the source address and the destination port, compiled by
// userspace into a verdict per (destination port, source prefix).

/// The `#[xdp]` program's name in the object.
pub const XDP_GUARD_PROG: &str = "xdp_guard";
/// LPM trie for IPv4 sources: [`XdpKeyV4`] (behind a `u32` prefix length) ->
/// [`XdpVerdict`]. The port comes first in the key so one trie holds every port's
/// prefixes: prefix length = 32 (port + pad) + the CIDR's length.
pub const XDP_V4_MAP: &str = "XDP_V4";
/// LPM trie for IPv6 sources: [`XdpKeyV6`] -> [`XdpVerdict`], as [`XDP_V4_MAP`].
pub const XDP_V6_MAP: &str = "XDP_V6";
/// Hash: destination port (`u32`, host order) -> [`XdpPort`]. Ports not in it are
/// passed uncounted: the host's other services are not the gateway's to police.
pub const XDP_PORTS_MAP: &str = "XDP_PORTS";
/// Per-CPU array of [`XdpCounters`] indexed by [`XdpVerdict::rule`]: one slot per
/// (rule, port) pair, so counters can be read per rule, per port, or both.
pub const XDP_RULE_STATS_MAP: &str = "XDP_RULE_STATS";
/// Per-CPU array of [`XdpCounters`] indexed by port slot ([`XdpPort::slot`]).
pub const XDP_PORT_STATS_MAP: &str = "XDP_PORT_STATS";

/// Capacity of each LPM trie (entries = ports x distinct prefixes).
pub const XDP_MAX_PREFIXES: u32 = 65_536;
/// Capacity of [`XDP_PORTS_MAP`] and [`XDP_PORT_STATS_MAP`].
pub const XDP_MAX_PORTS: u32 = 1_024;
/// Capacity of [`XDP_RULE_STATS_MAP`]: (rule, port) slots are below this.
pub const XDP_MAX_RULES: u32 = 4_096;
/// Bits in front of the address in an LPM key: the port (16) and padding (16).
pub const XDP_KEY_PORT_BITS: u32 = 32;

/// [`XdpVerdict::action`]: let the packet through (allowed, or left to userspace).
pub const XDP_ACT_PASS: u32 = 0;
/// [`XdpVerdict::action`]: drop the packet before the TCP stack sees it.
pub const XDP_ACT_DROP: u32 = 1;

/// LPM key data for IPv4. Compared bit by bit from the first byte, so every field is
/// in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpKeyV4 {
    /// Destination port, network byte order.
    pub port: [u8; 2],
    /// Always zero.
    pub _pad: [u8; 2],
    /// Source address, network byte order.
    pub addr: [u8; 4],
}

/// LPM key data for IPv6, as [`XdpKeyV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpKeyV6 {
    /// Destination port, network byte order.
    pub port: [u8; 2],
    /// Always zero.
    pub _pad: [u8; 2],
    /// Source address, network byte order.
    pub addr: [u8; 16],
}

/// What to do with a packet, and which rule decided (for the counters).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpVerdict {
    /// Index into [`XDP_RULE_STATS_MAP`] (a (rule, port) slot); userspace keeps the names.
    pub rule: u32,
    /// [`XDP_ACT_PASS`] or [`XDP_ACT_DROP`].
    pub action: u32,
}

/// A port the guard looks at.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpPort {
    /// Index into [`XDP_PORT_STATS_MAP`].
    pub slot: u32,
    /// Verdict for sources no LPM entry of this port covers.
    pub default_rule: u32,
    pub default_action: u32,
    pub _pad: u32,
}

/// Packets and bytes (whole frames) passed and dropped; per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpCounters {
    pub pass_packets: u64,
    pub pass_bytes: u64,
    pub drop_packets: u64,
    pub drop_bytes: u64,
}

// SAFETY (all five): repr(C), made only of integers and byte arrays with explicit
// padding fields, so every bit pattern is valid and the layout has no hidden bytes.
#[cfg(feature = "user")]
unsafe impl aya::Pod for XdpKeyV4 {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for XdpKeyV6 {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for XdpVerdict {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for XdpPort {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for XdpCounters {}

// === runtime switches ===

/// Array (u32 slot -> u32 value) of runtime switches for the kernel programs, set by
/// the admin API; all zero (off) when loaded.
pub const SPLICE_CONFIG_MAP: &str = "SPLICE_CONFIG";
/// Slot of [`SPLICE_CONFIG_MAP`]: non-zero makes the splice verdict log every redirect at
/// info level ("splice: redirected cookie=.. len=.."). One ring-buffer record per skb:
/// a debugging aid (`POST /debug/kernel_log?redirects=on`), never on by default.
pub const CONFIG_LOG_REDIRECTS: u32 = 0;
/// Slot of [`SPLICE_CONFIG_MAP`]: non-zero makes every redirect look up a key that is
/// not in PEERS, so the kernel refuses it for real (fault injection for the tests:
/// `POST /debug/splice/fault?redirect=fail`).
pub const CONFIG_FAULT_REDIRECT: u32 = 1;
/// XORed into the cookie under [`CONFIG_FAULT_REDIRECT`]: cookies are counters far
/// below 2^63, so the result is never a PEERS key.
pub const FAULT_KEY_XOR: u64 = 1 << 63;
/// Number of slots in [`SPLICE_CONFIG_MAP`].
pub const CONFIG_COUNT: u32 = 4;

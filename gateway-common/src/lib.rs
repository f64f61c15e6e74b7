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
/// Per-CPU hash: socket cookie -> [`FlowCounters`] for bytes *received* on that socket
/// and redirected to its peer. Inserted before the sockets enter [`SPLICED_MAP`], read
/// and deleted by userspace when the flow closes.
pub const FLOWS_MAP: &str = "FLOWS";
/// Per-CPU array of global splice counters, indexed by the `STAT_*` constants.
pub const SPLICE_STATS_MAP: &str = "SPLICE_STATS";

/// Capacity of [`PEERS_MAP`] and [`SPLICED_MAP`] (two entries per spliced connection).
pub const MAX_SOCKS: u32 = 131_072;
/// Capacity of [`FLOWS_MAP`] (two entries per spliced connection).
pub const MAX_FLOWS: u32 = 131_072;

/// skbs redirected to a peer socket.
pub const STAT_REDIRECTED_SKBS: u32 = 0;
/// payload bytes redirected to a peer socket.
pub const STAT_REDIRECTED_BYTES: u32 = 1;
/// redirects the kernel refused (peer gone): the skb is dropped and the flow torn down.
pub const STAT_REDIRECT_FAILURES: u32 = 2;
/// zero-length skbs (FIN markers), dropped: there is nothing to forward.
pub const STAT_EMPTY_SKBS: u32 = 3;
/// skbs seen on a socket with no FLOWS entry (should stay 0: userspace inserts the
/// FLOWS entry before the socket enters SPLICED).
pub const STAT_UNTRACKED_SKBS: u32 = 4;
/// Number of slots in [`SPLICE_STATS_MAP`].
pub const STAT_COUNT: u32 = 8;

/// Per-socket, per-CPU byte counters (the value type of [`FLOWS_MAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// Payload bytes received on this socket and redirected to its peer.
    pub bytes: u64,
    /// skbs received on this socket and redirected to its peer.
    pub skbs: u64,
}

// SAFETY: FlowCounters is repr(C), made only of u64s (no padding, every bit pattern
// valid), so it may be copied to and from kernel map memory as plain bytes.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowCounters {}

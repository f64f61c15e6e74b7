//! What the XDP guard should do with a frame, in plain Rust: the model the `xdp` fuzz
//! target compares the kernel program with.
//!
//! The rules (gateway-ebpf `xdp.rs`, module docs and comments): only TCP over IPv4 or
//! IPv6 is judged, behind an Ethernet header with at most one VLAN tag (802.1Q or
//! 802.1ad); IPv4 needs version 4, IHL >= 5 and a first fragment; IPv6 may carry up to
//! four hop-by-hop / routing / destination-options / fragment headers (first fragment
//! only) before TCP; the destination port must be inside the frame. A judged packet gets
//! the verdict of `Compiled::lookup(source, port)` (longest prefix, else the port's
//! default; a port not in the table is passed). Anything else is passed.
//!
//! Written from those rules, not from the kernel code: a frame is read as a byte slice
//! with bounds-checked `get`s, and fields are taken at their RFC offsets.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use gateway::xdp::Compiled;
use gateway_common::XDP_ACT_DROP;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The action the guard must take on `frame`.
pub fn verdict(compiled: &Compiled, frame: &[u8]) -> u32 {
    match judged(frame).and_then(|(src, port)| compiled.lookup(src, port)) {
        Some(v) if v.action == XDP_ACT_DROP => XDP_DROP,
        _ => XDP_PASS,
    }
}

/// (source address, TCP destination port) of a packet the guard judges.
pub fn judged(frame: &[u8]) -> Option<(IpAddr, u16)> {
    let mut ethertype = be16(frame, 12)?;
    let mut l3 = 14;
    if ethertype == 0x8100 || ethertype == 0x88a8 {
        ethertype = be16(frame, 16)?;
        l3 = 18;
    }
    match ethertype {
        0x0800 => ipv4(frame, l3),
        0x86dd => ipv6(frame, l3),
        _ => None,
    }
}

fn ipv4(f: &[u8], l3: usize) -> Option<(IpAddr, u16)> {
    let vihl = *f.get(l3)?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    let protocol = *f.get(l3 + 9)?;
    let fragment_offset = be16(f, l3 + 6)? & 0x1fff;
    if protocol != 6 || fragment_offset != 0 {
        return None;
    }
    let src: [u8; 4] = f.get(l3 + 12..l3 + 16)?.try_into().ok()?;
    let port = be16(f, l3 + ihl + 2)?;
    Some((IpAddr::V4(Ipv4Addr::from(src)), port))
}

fn ipv6(f: &[u8], l3: usize) -> Option<(IpAddr, u16)> {
    let mut next = *f.get(l3 + 6)?;
    let src: [u8; 16] = f.get(l3 + 8..l3 + 24)?.try_into().ok()?;
    let mut off = l3 + 40;
    let mut skipped = 0;
    while next != 6 {
        if skipped == 4 {
            return None;
        }
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet units, not
            // counting the first 8.
            0 | 43 | 60 => {
                let len = usize::from(*f.get(off + 1)?);
                next = *f.get(off)?;
                off += (len + 1) * 8;
            }
            // Fragment: fixed 8 bytes; offset is the top 13 bits of bytes 2..4.
            44 => {
                next = *f.get(off)?;
                if be16(f, off + 2)? >> 3 != 0 {
                    return None;
                }
                off += 8;
            }
            _ => return None,
        }
        skipped += 1;
    }
    let port = be16(f, off + 2)?;
    Some((IpAddr::V6(Ipv6Addr::from(src)), port))
}

fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(f.get(at..at + 2)?.try_into().ok()?))
}

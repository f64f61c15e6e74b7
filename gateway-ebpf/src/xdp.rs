//! The XDP ingress guard: drops packets from denied sources before the TCP stack sees
//! them. Userspace compiles the AuthorizationPolicies into a verdict per (destination
//! port, source prefix) (see gateway-userspace `xdp/compile.rs`); this program only
//! parses far enough to find the source address and the TCP destination port, looks
//! the pair up, counts, and obeys. Anything it can't parse is passed: the guard may
//! only ever drop what userspace would have refused anyway.
use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_xdp_load_bytes,
    macros::{map, xdp},
    maps::{HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use gateway_common::{
    XDP_ACT_DROP, XDP_KEY_PORT_BITS, XDP_MAX_PORTS, XDP_MAX_PREFIXES, XDP_MAX_RULES, XdpCounters,
    XdpKeyV4, XdpKeyV6, XdpPort, XdpVerdict,
};

#[map(name = "XDP_V4")]
static XDP_V4: LpmTrie<XdpKeyV4, XdpVerdict> = LpmTrie::with_max_entries(XDP_MAX_PREFIXES, 0);

#[map(name = "XDP_V6")]
static XDP_V6: LpmTrie<XdpKeyV6, XdpVerdict> = LpmTrie::with_max_entries(XDP_MAX_PREFIXES, 0);

#[map(name = "XDP_PORTS")]
static XDP_PORTS: HashMap<u32, XdpPort> = HashMap::with_max_entries(XDP_MAX_PORTS, 0);

/// Per-CPU: plain increments are exact (bpfel has no atomic add that core exposes).
#[map(name = "XDP_RULE_STATS")]
static XDP_RULE_STATS: PerCpuArray<XdpCounters> = PerCpuArray::with_max_entries(XDP_MAX_RULES, 0);

#[map(name = "XDP_PORT_STATS")]
static XDP_PORT_STATS: PerCpuArray<XdpCounters> = PerCpuArray::with_max_entries(XDP_MAX_PORTS, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
/// IPv6 extension headers skipped on the way to TCP (hop-by-hop, routing, fragment,
/// destination options). Anything else (ESP, AH, ...) is passed unparsed.
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
/// How many IPv6 extension headers are skipped at most (the verifier needs a bound).
const IPV6_MAX_EXT: usize = 4;

#[xdp]
pub fn xdp_guard(ctx: XdpContext) -> u32 {
    match try_guard(&ctx) {
        Some(action) => action,
        None => xdp_action::XDP_PASS,
    }
}

/// A pointer to a `T` at `offset`, if the packet is long enough (the check the
/// verifier wants to see before every access).
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the whole T lies inside the packet; unaligned reads
    // because IP headers need not be aligned in the frame.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { core::ptr::read_unaligned(p) })
}

/// Reads a `T` at a variable offset through `bpf_xdp_load_bytes` (kernel 5.18+): the
/// verifier can't follow packet pointers whose offset comes from an earlier header's
/// length field once LLVM has reassociated the bounds check, so the IPv6
/// extension-header walk copies instead of dereferencing.
#[inline(always)]
fn load<T: Copy + Default>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let mut v = T::default();
    // SAFETY: the helper writes at most size_of::<T>() bytes into `v`, and fails (<0)
    // when the packet is shorter than offset + len.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            offset as u32,
            (&mut v as *mut T).cast(),
            core::mem::size_of::<T>() as u32,
        )
    };
    (rc == 0).then_some(v)
}

/// None: not a packet the guard judges (pass, uncounted).
#[inline(always)]
fn try_guard(ctx: &XdpContext) -> Option<u32> {
    let mut ethertype = u16::from_be(read::<u16>(ctx, 12)?);
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        // One VLAN tag: 4 more bytes, the real ethertype at its end.
        ethertype = u16::from_be(read::<u16>(ctx, 16)?);
        l3 += 4;
    }
    match ethertype {
        ETH_P_IP => guard_v4(ctx, l3),
        ETH_P_IPV6 => guard_v6(ctx, l3),
        _ => None,
    }
}

#[inline(always)]
fn guard_v4(ctx: &XdpContext, l3: usize) -> Option<u32> {
    let vihl: u8 = read(ctx, l3)?;
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    if read::<u8>(ctx, l3 + 9)? != IPPROTO_TCP {
        return None;
    }
    // A non-first fragment has no TCP header where we would look: pass it (without its
    // first fragment it can't be reassembled into anything the stack accepts).
    let frag = u16::from_be(read::<u16>(ctx, l3 + 6)?);
    if frag & 0x1fff != 0 {
        return None;
    }
    let addr: [u8; 4] = read(ctx, l3 + 12)?;
    let port: [u8; 2] = read(ctx, l3 + ihl + 2)?;
    let entry = port_entry(port)?;
    let key = Key::new(
        XDP_KEY_PORT_BITS + 32,
        XdpKeyV4 {
            port,
            _pad: [0; 2],
            addr,
        },
    );
    let verdict = XDP_V4.get(&key).copied();
    Some(apply(ctx, &entry, verdict))
}

#[inline(always)]
fn guard_v6(ctx: &XdpContext, l3: usize) -> Option<u32> {
    let mut next: u8 = read(ctx, l3 + 6)?;
    let addr: [u8; 16] = read(ctx, l3 + 8)?;
    let mut off = l3 + 40;
    for _ in 0..IPV6_MAX_EXT {
        match next {
            IPPROTO_TCP => break,
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let [nh, len]: [u8; 2] = load(ctx, off)?;
                next = nh;
                off += (len as usize + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let [nh, _, f0, f1]: [u8; 4] = load(ctx, off)?;
                next = nh;
                let frag = u16::from_be_bytes([f0, f1]);
                if frag & 0xfff8 != 0 {
                    return None; // not the first fragment: no TCP header here
                }
                off += 8;
            }
            _ => return None,
        }
    }
    if next != IPPROTO_TCP {
        return None;
    }
    let port: [u8; 2] = load(ctx, off + 2)?;
    let entry = port_entry(port)?;
    // An IPv4-mapped source (::ffff:a.b.c.d) is judged as that IPv4 address, as
    // userspace reads it (`authz::Cidr` keeps mapped prefixes as IPv4, so the compiler
    // puts them in the IPv4 trie). Linux's TCP refuses such SYNs itself
    // (tcp_v6_conn_request), but the guard must not pass what the policy denies.
    let verdict = match v4_mapped(&addr) {
        Some(addr) => {
            let key = Key::new(
                XDP_KEY_PORT_BITS + 32,
                XdpKeyV4 {
                    port,
                    _pad: [0; 2],
                    addr,
                },
            );
            XDP_V4.get(&key).copied()
        }
        None => {
            let key = Key::new(
                XDP_KEY_PORT_BITS + 128,
                XdpKeyV6 {
                    port,
                    _pad: [0; 2],
                    addr,
                },
            );
            XDP_V6.get(&key).copied()
        }
    };
    Some(apply(ctx, &entry, verdict))
}

/// The IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
#[inline(always)]
fn v4_mapped(a: &[u8; 16]) -> Option<[u8; 4]> {
    let zeros = a[..10].iter().fold(0u8, |acc, b| acc | b);
    (zeros == 0 && a[10] == 0xff && a[11] == 0xff).then_some([a[12], a[13], a[14], a[15]])
}

#[inline(always)]
fn port_entry(port: [u8; 2]) -> Option<XdpPort> {
    let host_order = u16::from_be_bytes(port) as u32;
    // SAFETY: a plain read of a map value; userspace only replaces whole entries.
    unsafe { XDP_PORTS.get(&host_order) }.copied()
}

/// Counts the packet against its port and its rule, and returns the action.
#[inline(always)]
fn apply(ctx: &XdpContext, port: &XdpPort, verdict: Option<XdpVerdict>) -> u32 {
    let (rule, action) = match verdict {
        Some(v) => (v.rule, v.action),
        None => (port.default_rule, port.default_action),
    };
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let drop = action == XDP_ACT_DROP;
    count(&XDP_PORT_STATS, port.slot, drop, bytes);
    count(&XDP_RULE_STATS, rule, drop, bytes);
    if drop {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
fn count(map: &PerCpuArray<XdpCounters>, idx: u32, drop: bool, bytes: u64) {
    if let Some(c) = map.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            if drop {
                (*c).drop_packets += 1;
                (*c).drop_bytes += bytes;
            } else {
                (*c).pass_packets += 1;
                (*c).pass_bytes += bytes;
            }
        }
    }
}

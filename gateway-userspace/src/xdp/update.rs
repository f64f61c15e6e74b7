//! Rewriting the guard's maps in place, while the program stays attached: how a
//! [`Compiled`] becomes map contents ([`Tables`]), which kernel counter index each
//! (rule, port, action) and each port counts in ([`assign`]), and the order of the
//! map writes ([`apply`]).
//!
//! # What a packet sees during an update
//!
//! The kernel runs the program on other CPUs while userspace writes, one map element
//! per syscall; each element is replaced atomically (RCU), never half-written. The
//! writes go: new and changed entries first (an entry present in both sets is
//! overwritten in place, never deleted), then the entries only the old set has. So a
//! packet judged mid-update gets the verdict of an entry of the old set or of the new
//! one, for its port and longest matching prefix, never "no entry": each judged port
//! has its `0.0.0.0/0` and `::/0` entries in every set, and a port that both sets
//! judge is never out of the ports map. A port only the new set judges enters the
//! ports map after its prefixes are written; a port only the old one judges leaves it
//! first (its packets are passed uncounted at once, which is what the new set says).
//!
//! This is the XDP counterpart of Envoy's filter-chain-only update, where a listener
//! update adds, updates and removes filter chains and new connections use the new
//! ones (<https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/listeners/network_filter_chain>),
//! with one difference the guard can't avoid: it judges every packet, not
//! connections, so packets of an established connection get the new verdicts as soon
//! as their entry is written (a source newly denied stops getting through at once;
//! Envoy would let that connection run until its old filter chain drains). A packet's
//! verdict is old or new for the few milliseconds the writes take, never a third thing
//! and never a gap: acceptable, as it is for Envoy's connections accepted during the
//! swap, which get whichever chain was current.
//!
//! # Counters
//!
//! The per-CPU counter arrays are indexed by kernel slot, and a fresh compile numbers
//! its slots from 0 again. [`assign`] keeps the kernel index of every (rule, port,
//! action) and every port that both sets have, so their Prometheus series stay
//! monotonic across reloads; a new one gets an index no entry of the old set uses,
//! zeroed before any entry points at it. Only when the old and the new set together
//! don't fit the array does a new one reuse an index the old set is giving up; that
//! index is zeroed once the old entries are gone (packets counted there during the
//! update are lost from the count; no series goes backwards, as the new label is not
//! shown before the update ends).
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use aya::maps::{HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key};
use gateway_common::{
    XDP_KEY_PORT_BITS, XDP_MAX_PREFIXES, XdpCounters, XdpKeyV4, XdpKeyV6, XdpPort, XdpVerdict,
};

use super::{Compiled, XdpError};

/// What a rule counter counts: (rule name, port, action).
pub(super) type RuleKey = (String, u16, u32);
/// An LPM entry: (port, prefix address, prefix length).
type EntryKey = (u16, IpAddr, u8);

/// The guard's LPM tries (IPv4, IPv6) and port map.
pub(super) struct GuardMaps {
    pub v4: LpmTrie<MapData, XdpKeyV4, XdpVerdict>,
    pub v6: LpmTrie<MapData, XdpKeyV6, XdpVerdict>,
    pub ports: HashMap<MapData, u32, XdpPort>,
}

/// The per-CPU counter arrays.
pub(super) struct Stats {
    pub rules: PerCpuArray<MapData, XdpCounters>,
    pub ports: PerCpuArray<MapData, XdpCounters>,
}

/// What one [`super::XdpGuard::update`] (or the initial fill) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// LPM entries inserted or overwritten with a different verdict.
    pub entries_written: usize,
    /// LPM entries only the old set had, deleted.
    pub entries_removed: usize,
    /// LPM entries identical in both sets, not touched.
    pub entries_unchanged: usize,
    /// Ports added to or changed in the ports map.
    pub ports_written: usize,
    /// Ports only the old set judged, deleted.
    pub ports_removed: usize,
    /// Rule and port counters carried over (same label, same kernel index).
    pub counters_kept: usize,
    /// Rule and port counters started from zero.
    pub counters_new: usize,
    /// Wall time of the map writes.
    pub elapsed: Duration,
}

/// Kernel indexes given to a new set's counters.
#[derive(Debug, PartialEq)]
pub(super) struct Assigned<K> {
    pub by_key: BTreeMap<K, u32>,
    /// Indexes no entry of the old set uses: zero them before writing.
    pub zero_before: Vec<u32>,
    /// Indexes the old set used for something else: zero them once its entries are gone.
    pub zero_after: Vec<u32>,
    pub kept: usize,
}

/// Gives each key of the new set a kernel index below `cap`: its old index when the
/// old set had it, else the lowest index the old set doesn't use, else (the two sets
/// together overflow) the lowest index the old set is giving up.
pub(super) fn assign<K: Ord + Clone>(
    old: &BTreeMap<K, u32>,
    new: impl IntoIterator<Item = K>,
    cap: u32,
) -> Result<Assigned<K>, String> {
    let new: Vec<K> = new.into_iter().collect();
    let wanted: std::collections::BTreeSet<&K> = new.iter().collect();
    let mut taken = vec![false; cap as usize];
    for &i in old.values() {
        if let Some(t) = taken.get_mut(i as usize) {
            *t = true;
        }
    }
    let mut out = Assigned {
        by_key: BTreeMap::new(),
        zero_before: vec![],
        zero_after: vec![],
        kept: 0,
    };
    let mut fresh = (0..cap).filter(|&i| !taken[i as usize]);
    let mut freed: Vec<u32> = old
        .iter()
        .filter(|(k, _)| !wanted.contains(k))
        .map(|(_, &i)| i)
        .collect();
    freed.sort_unstable();
    let mut freed = freed.into_iter();
    for k in &new {
        if out.by_key.contains_key(k) {
            continue;
        }
        let i = match old.get(k) {
            Some(&i) => {
                out.kept += 1;
                i
            }
            None => match fresh.next() {
                Some(i) => {
                    out.zero_before.push(i);
                    i
                }
                None => {
                    let i = freed
                        .next()
                        .ok_or_else(|| format!("more than {cap} counter slots"))?;
                    out.zero_after.push(i);
                    i
                }
            },
        };
        out.by_key.insert(k.clone(), i);
    }
    Ok(out)
}

/// Map contents for a [`Compiled`], with its slots renumbered to kernel indexes.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Tables {
    entries: BTreeMap<EntryKey, XdpVerdict>,
    ports: BTreeMap<u16, XdpPort>,
}

impl Tables {
    pub fn new(c: &Compiled, rules: &BTreeMap<RuleKey, u32>, ports: &BTreeMap<u16, u32>) -> Tables {
        // Every slot and port of `c` was assigned (assign() got all of them).
        let rule = |slot: u32| {
            c.slots
                .get(slot as usize)
                .and_then(|k| rules.get(k))
                .copied()
                .unwrap_or(slot)
        };
        Tables {
            entries: c
                .entries
                .iter()
                .map(|(port, cidr, v)| {
                    let verdict = XdpVerdict {
                        rule: rule(v.rule),
                        action: v.action,
                    };
                    ((*port, cidr.addr, cidr.len), verdict)
                })
                .collect(),
            ports: c
                .ports
                .iter()
                .map(|(p, (_, e))| {
                    let entry = XdpPort {
                        slot: ports.get(p).copied().unwrap_or(e.slot),
                        default_rule: rule(e.default_rule),
                        ..*e
                    };
                    (*p, entry)
                })
                .collect(),
        }
    }
}

fn missing_is_fine(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        r => r,
    }
}

impl GuardMaps {
    fn put(&mut self, (port, addr, len): &EntryKey, v: XdpVerdict) -> Result<(), MapError> {
        let port = port.to_be_bytes();
        let bits = XDP_KEY_PORT_BITS + *len as u32;
        match addr {
            IpAddr::V4(a) => self.v4.insert(
                &Key::new(
                    bits,
                    XdpKeyV4 {
                        port,
                        _pad: [0; 2],
                        addr: a.octets(),
                    },
                ),
                v,
                0,
            ),
            IpAddr::V6(a) => self.v6.insert(
                &Key::new(
                    bits,
                    XdpKeyV6 {
                        port,
                        _pad: [0; 2],
                        addr: a.octets(),
                    },
                ),
                v,
                0,
            ),
        }
    }

    /// Deletes an entry; one already gone is fine.
    fn del(&mut self, (port, addr, len): &EntryKey) -> Result<(), MapError> {
        let port = port.to_be_bytes();
        let bits = XDP_KEY_PORT_BITS + *len as u32;
        missing_is_fine(match addr {
            IpAddr::V4(a) => self.v4.remove(&Key::new(
                bits,
                XdpKeyV4 {
                    port,
                    _pad: [0; 2],
                    addr: a.octets(),
                },
            )),
            IpAddr::V6(a) => self.v6.remove(&Key::new(
                bits,
                XdpKeyV6 {
                    port,
                    _pad: [0; 2],
                    addr: a.octets(),
                },
            )),
        })
    }

    fn del_port(&mut self, port: u16) -> Result<(), MapError> {
        missing_is_fine(self.ports.remove(&(port as u32)))
    }
}

/// Sets a counter slot to zero on every CPU.
fn zero(map: &mut PerCpuArray<MapData, XdpCounters>, i: u32) -> Result<(), XdpError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| XdpError::Counters(e))?;
    let zeros =
        PerCpuValues::try_from(vec![XdpCounters::default(); cpus]).map_err(XdpError::Counters)?;
    map.set(i, zeros, 0)?;
    Ok(())
}

/// Indexes to zero, in the rule and in the port counter arrays.
#[derive(Default)]
pub(super) struct Zero {
    pub rules: Vec<u32>,
    pub ports: Vec<u32>,
}

/// Turns the maps from `old` into `new` in the order the module comment explains.
/// Zeroes `before` first (an error there leaves the maps untouched) and `after` last.
pub(super) fn apply(
    maps: &mut GuardMaps,
    stats: &mut Stats,
    old: &Tables,
    new: &Tables,
    before: &Zero,
    after: &Zero,
) -> Result<UpdateStats, XdpError> {
    let start = std::time::Instant::now();
    let mut s = UpdateStats::default();
    for &i in &before.rules {
        zero(&mut stats.rules, i)?;
    }
    for &i in &before.ports {
        zero(&mut stats.ports, i)?;
    }
    for &p in old.ports.keys() {
        if !new.ports.contains_key(&p) {
            maps.del_port(p)?;
            s.ports_removed += 1;
        }
    }
    let stale: Vec<&EntryKey> = old
        .entries
        .keys()
        .filter(|k| !new.entries.contains_key(k))
        .collect();
    // The tries hold old and new entries together for a moment; when that is more
    // than they can hold, the stale entries of that family go first (their packets
    // fall back to the nearest covering prefix, old or new: still no gap).
    for v6 in [false, true] {
        let family = |k: &EntryKey| k.1.is_ipv6() == v6;
        let union = new.entries.keys().filter(|k| family(k)).count()
            + stale.iter().filter(|k| family(k)).count();
        if union > XDP_MAX_PREFIXES as usize {
            for k in stale.iter().filter(|k| family(k)) {
                maps.del(k)?;
            }
        }
    }
    for (k, v) in &new.entries {
        if old.entries.get(k) == Some(v) {
            s.entries_unchanged += 1;
        } else {
            maps.put(k, *v)?;
            s.entries_written += 1;
        }
    }
    for (p, e) in &new.ports {
        if old.ports.get(p) != Some(e) {
            maps.ports.insert(*p as u32, *e, 0)?;
            s.ports_written += 1;
        }
    }
    for k in &stale {
        maps.del(k)?;
        s.entries_removed += 1;
    }
    // The maps hold the new set now: a failure here only leaves a new series starting
    // above zero (never one going backwards), not worth undoing the update for.
    for (map, slots) in [
        (&mut stats.rules, &after.rules),
        (&mut stats.ports, &after.ports),
    ] {
        for &i in slots {
            if let Err(e) = zero(map, i) {
                tracing::warn!(target: "gateway::authz", "XDP guard: zeroing counter slot {i}: {e}");
            }
        }
    }
    s.elapsed = start.elapsed();
    Ok(s)
}

/// After a failed [`apply`]: writes every entry of `target` and deletes what
/// `attempted` added, whatever state the failure left the maps in.
pub(super) fn restore(
    maps: &mut GuardMaps,
    target: &Tables,
    attempted: &Tables,
) -> Result<(), XdpError> {
    for p in attempted.ports.keys() {
        if !target.ports.contains_key(p) {
            maps.del_port(*p)?;
        }
    }
    for (k, v) in &target.entries {
        maps.put(k, *v)?;
    }
    for (p, e) in &target.ports {
        maps.ports.insert(*p as u32, *e, 0)?;
    }
    for k in attempted.entries.keys() {
        if !target.entries.contains_key(k) {
            maps.del(k)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn first_fill_numbers_from_zero() {
        let a = assign(&BTreeMap::new(), keys(&["a", "b", "c"]), 8).unwrap();
        assert_eq!(a.by_key.values().copied().collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(a.zero_before, [0, 1, 2]);
        assert!(a.zero_after.is_empty());
        assert_eq!(a.kept, 0);
    }

    #[test]
    fn kept_keys_keep_their_index_and_new_ones_avoid_every_old_index() {
        let old = assign(&BTreeMap::new(), keys(&["a", "b", "c"]), 8)
            .unwrap()
            .by_key;
        // "b" goes, "d" comes, and the compile now puts "c" first.
        let a = assign(&old, keys(&["c", "d", "a"]), 8).unwrap();
        assert_eq!(a.by_key["a"], 0);
        assert_eq!(a.by_key["c"], 2);
        // Not 1: entries of the old set may still point at "b"'s index.
        assert_eq!(a.by_key["d"], 3);
        assert_eq!((a.kept, a.zero_before.clone()), (2, vec![3]));
        // A later update may use 1 again (zeroed first).
        let b = assign(&a.by_key, keys(&["a", "e"]), 8).unwrap();
        assert_eq!((b.by_key["e"], b.zero_before), (1, vec![1]));
    }

    #[test]
    fn a_full_array_reuses_indexes_the_old_set_gives_up_zeroed_after() {
        let old = assign(&BTreeMap::new(), keys(&["a", "b", "c"]), 4)
            .unwrap()
            .by_key;
        let a = assign(&old, keys(&["a", "x", "y"]), 4).unwrap();
        assert_eq!(a.by_key["a"], 0);
        assert_eq!((a.by_key["x"], a.by_key["y"]), (3, 1));
        assert_eq!((a.zero_before, a.zero_after), (vec![3], vec![1]));
        assert!(assign(&old, keys(&["p", "q", "r", "s", "t"]), 4).is_err());
    }
}

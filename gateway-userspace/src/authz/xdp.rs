//! AuthorizationPolicy -> the XDP guard's maps ([`crate::xdp::Compiled`]). Pure, so it
//! is unit-tested without a kernel.
//!
//! # Compilation rules
//!
//! - **Ports.** The guard judges TCP packets to the gateway's ports and to ports some
//!   rule names explicitly (`to.operation.ports`, `when: destination.port`); every
//!   other packet (other ports, UDP, ICMP, non-IP, anything it can't parse) is passed
//!   uncounted: the host's other services are not the gateway's to police. On such a
//!   named-but-unserved port only the rules naming it count, and an ALLOW policy
//!   applies there only through such a rule (see `authz::Policies::decide`).
//! - **Atoms.** Every CIDR any rule mentions (`ipBlocks`, `notIpBlocks`,
//!   `remoteIpBlocks`, `notRemoteIpBlocks`, `source.ip` / `remote.ip` values and
//!   notValues), plus `0.0.0.0/0` and `::/0`. For an address, the longest listed
//!   prefix containing it (what an LPM lookup returns) decides every "address in
//!   block" test exactly: a block contains the address iff it contains that prefix
//!   (listed prefixes are nested or disjoint). So evaluating each rule against the
//!   *prefix* gives the verdict for all addresses the prefix stands for.
//! - **Verdicts.** For each port and atom the evaluator runs with everything past L4
//!   unknown (`authz::L7::Unknown`; on TCP-only ports Istio's TCP rules settle
//!   HTTP-only fields). DENY for sure -> DROP, counted under the DENY rule; no ALLOW
//!   rule can match -> DROP under `default-deny`; allowed for sure -> PASS under the
//!   ALLOW rule (or `none` when no ALLOW policy applies); anything that depends on
//!   hosts, paths, methods, headers or the SNI -> PASS under `userspace`, which
//!   decides per connection or request. XDP never drops what userspace would allow.
//! - **Entries.** LPM key = destination port, 16 bits of zero, source prefix; the
//!   prefix length is 32 + the CIDR's. An atom whose verdict equals that of its
//!   nearest listed ancestor is left out (the lookup falls back to the ancestor).
//! - **Counters.** One slot per (rule, port) pair that some entry uses, per-CPU, with
//!   packets and bytes passed and dropped; plus one slot per port.
use std::collections::BTreeMap;

use gateway_common::{
    XDP_ACT_DROP, XDP_ACT_PASS, XDP_MAX_PORTS, XDP_MAX_PREFIXES, XDP_MAX_RULES, XdpPort, XdpVerdict,
};

use super::{Cidr, Decision, DenyReason, L7, Policies, PortKind, PortKinds, Request};
use crate::xdp::{Compiled, RULE_DEFAULT_DENY, RULE_NONE, RULE_USERSPACE};

pub fn compile(policies: &Policies, kinds: &PortKinds) -> Compiled {
    let mut out = Compiled::default();
    let mut ports: BTreeMap<u16, PortKind> = kinds.clone();
    for p in policies.named_ports() {
        ports.entry(p).or_insert(PortKind::Unserved);
    }
    let mut atoms: Vec<Cidr> = policies.prefixes().into_iter().collect();
    atoms.push(Cidr::any(false));
    atoms.push(Cidr::any(true));
    atoms.sort_by_key(|c| (c.addr.is_ipv6(), c.len, c.addr));
    atoms.dedup();
    // Nearest listed ancestor of each atom (atoms are sorted by length, so the last
    // containing one before it is the longest).
    let parent: Vec<Option<usize>> = (0..atoms.len())
        .map(|i| {
            (0..i)
                .rev()
                .find(|&j| atoms[j].len < atoms[i].len && atoms[j].contains(&atoms[i]))
        })
        .collect();

    let mut slot_of: BTreeMap<(String, u16, u32), u32> = BTreeMap::new();
    let mut slot = |out: &mut Compiled, rule: String, port: u16, action: u32| -> u32 {
        let key = (rule, port, action);
        if let Some(s) = slot_of.get(&key) {
            return *s;
        }
        let s = out.slots.len() as u32;
        out.slots.push(key.clone());
        slot_of.insert(key, s);
        s
    };
    for (i, (&port, &kind)) in ports.iter().enumerate() {
        let l7 = match kind {
            PortKind::Tcp | PortKind::Unserved => L7::TcpUnknownSni,
            PortKind::Http | PortKind::Mixed => L7::Unknown,
        };
        let verdicts: Vec<(String, u32)> = atoms
            .iter()
            .map(|a| {
                let d = policies.decide(
                    kind,
                    &Request {
                        source: *a,
                        port,
                        l7,
                    },
                );
                match d {
                    Decision::Allow { rule } => (rule.unwrap_or(RULE_NONE.into()), XDP_ACT_PASS),
                    Decision::Undecided => (RULE_USERSPACE.into(), XDP_ACT_PASS),
                    Decision::Deny(DenyReason::Rule(r)) => (r, XDP_ACT_DROP),
                    Decision::Deny(DenyReason::NoAllowMatch) => {
                        (RULE_DEFAULT_DENY.into(), XDP_ACT_DROP)
                    }
                }
            })
            .collect();
        for (a, (rule, action)) in verdicts.iter().enumerate() {
            if parent[a].is_some_and(|p| verdicts[p] == verdicts[a]) {
                continue;
            }
            let s = slot(&mut out, rule.clone(), port, *action);
            out.entries.push((
                port,
                atoms[a],
                XdpVerdict {
                    rule: s,
                    action: *action,
                },
            ));
        }
        // Never used while both /0 atoms are present; kept so a lookup miss passes.
        let default_rule = slot(&mut out, RULE_USERSPACE.into(), port, XDP_ACT_PASS);
        out.ports.insert(
            port,
            (
                kind,
                XdpPort {
                    slot: i as u32,
                    default_rule,
                    default_action: XDP_ACT_PASS,
                    _pad: 0,
                },
            ),
        );
    }
    let v4 = out.entries.iter().filter(|e| e.1.addr.is_ipv4()).count();
    let v6 = out.entries.len() - v4;
    if out.ports.len() > XDP_MAX_PORTS as usize
        || out.slots.len() > XDP_MAX_RULES as usize
        || v4.max(v6) > XDP_MAX_PREFIXES as usize
    {
        out.overflow = Some(format!(
            "{} ports, {} counter slots, {v4}+{v6} prefixes exceed the XDP maps ({XDP_MAX_PORTS}, {XDP_MAX_RULES}, {XDP_MAX_PREFIXES})",
            out.ports.len(),
            out.slots.len()
        ));
    }
    out
}

//! AuthorizationPolicy -> XDP maps. Pure, so it is unit-tested without a kernel.
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
use serde_json::json;

use crate::authz::{Cidr, Decision, DenyReason, L7, Policies, PortKind, PortKinds, Request};

/// Counter names for verdicts that no single policy rule decided.
pub const RULE_NONE: &str = "none";
pub const RULE_USERSPACE: &str = "userspace";
pub const RULE_DEFAULT_DENY: &str = "default-deny";

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Compiled {
    /// Counter slot -> (rule name, port, action).
    pub slots: Vec<(String, u16, u32)>,
    /// Port -> (what it serves, its map entry).
    pub ports: BTreeMap<u16, (PortKind, XdpPort)>,
    /// (port, prefix, verdict); IPv4 and IPv6 prefixes together.
    pub entries: Vec<(u16, Cidr, XdpVerdict)>,
    /// Set when the policy needs more entries than the maps hold: XDP must not be
    /// used (userspace enforces everything), said in the log.
    pub overflow: Option<String>,
}

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

pub fn action_name(a: u32) -> &'static str {
    if a == XDP_ACT_DROP { "drop" } else { "pass" }
}

impl Compiled {
    /// JSON for the admin API.
    pub fn view(&self) -> serde_json::Value {
        json!({
            "ports": self.ports.iter().map(|(p, (k, e))| json!({
                "port": p, "kind": k, "slot": e.slot,
            })).collect::<Vec<_>>(),
            "entries": self.entries.iter().map(|(p, c, v)| json!({
                "port": p,
                "prefix": c.to_string(),
                "action": action_name(v.action),
                "rule": self.slots.get(v.rule as usize).map(|s| s.0.as_str()),
            })).collect::<Vec<_>>(),
            "overflow": self.overflow,
        })
    }

    /// The verdict XDP gives a packet from `src` to `port` (None: passed uncounted),
    /// computed the way the kernel does: longest prefix, else the port default.
    pub fn lookup(&self, src: std::net::IpAddr, port: u16) -> Option<XdpVerdict> {
        let (_, entry) = self.ports.get(&port)?;
        let host = Cidr::host(src);
        let best = self
            .entries
            .iter()
            .filter(|(p, c, _)| *p == port && c.contains(&host))
            .max_by_key(|(_, c, _)| c.len);
        Some(match best {
            Some((_, _, v)) => *v,
            None => XdpVerdict {
                rule: entry.default_rule,
                action: entry.default_action,
            },
        })
    }
}

//! What the XDP guard's maps hold, compiled from the AuthorizationPolicies
//! ([`crate::authz::xdp`] compiles it: the rules are documented there).
use std::collections::BTreeMap;

use gateway_common::{XDP_ACT_DROP, XdpPort, XdpVerdict};
use serde_json::json;

use crate::config::authz::{Cidr, PortKind};

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

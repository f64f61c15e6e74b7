//! AuthorizationPolicy (security.istio.io/v1): the policy model, Istio's evaluation,
//! and the runtime [`Enforcer`] the data path asks.
//!
//! Evaluation is Istio's: CUSTOM is not supported; any matching DENY rule denies; if
//! any ALLOW policy applies to the gateway a request must match one of its rules
//! (an ALLOW policy with no rules matches nothing: deny-all); otherwise it is allowed.
//! AUDIT policies never change a decision.
//!
//! One evaluator serves every enforcement point, so the policy means the same thing
//! wherever it is applied; what differs is how much of the request is known:
//!
//! - the XDP compiler (`crate::xdp::compile`) knows a source *prefix* and a port;
//! - accept (`listener`) knows the peer address and port;
//! - a TCP/TLS listener after the ClientHello knows the SNI too;
//! - HTTP knows host, path, method and headers.
//!
//! Fields not known yet evaluate to "maybe" ([`Tri::Maybe`]); a decision that
//! depends on one is [`Decision::Undecided`] and is taken later, with more data.
//!
//! Istio's rules for TCP traffic apply on TCP/TLS-passthrough ports: an HTTP-only
//! field (`hosts`, `paths`, `methods`, `request.headers`) makes an ALLOW rule's part
//! never match, and is ignored in a DENY rule (which so becomes more restrictive).
//!
//! `remoteIpBlocks` / `remote.ip` are the original client's address. The gateway
//! trusts no X-Forwarded-For hop and speaks no PROXY protocol (Istio's defaults:
//! `numTrustedProxies: 0`), so the original client *is* the peer: remote blocks are
//! the same as `ipBlocks` and can be enforced in XDP.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use serde::Serialize;

use crate::config::{GatewayIdentity, istio};

mod enforcer;
mod eval;
mod index;
#[cfg(test)]
mod tests;

pub use enforcer::Enforcer;
pub use eval::{Decision, DenyReason, HttpAttrs, L7, PortKind, Request, Tri};
pub use index::PolicyIndex;

// === model ===

/// An IPv4 or IPv6 prefix, host bits cleared. IPv4-mapped IPv6 is stored as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `fd00::/8`, or a single address (`/32`, `/128`). Host bits set
    /// below the prefix are an error, as in Istio's validation.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("invalid IP address {a:?} in {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            None => max,
            Some(l) => match l.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("invalid prefix length {l:?} in {s:?} (0..={max})")),
            },
        };
        let c = Cidr::new(addr, len);
        if c.addr != addr.to_canonical() {
            return Err(format!(
                "{s:?} has host bits set (did you mean {}/{}?)",
                c.addr, c.len
            ));
        }
        Ok(c)
    }

    /// The prefix of `addr` of length `len`, masked.
    pub fn new(addr: IpAddr, len: u8) -> Cidr {
        let mapped_v4 = matches!(addr, IpAddr::V6(_)) && addr.to_canonical().is_ipv4();
        let (addr, len) = if mapped_v4 {
            (addr.to_canonical(), len.saturating_sub(96))
        } else {
            (addr, len)
        };
        match addr {
            IpAddr::V4(a) => {
                let len = len.min(32);
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                Cidr {
                    addr: IpAddr::from(std::net::Ipv4Addr::from(u32::from(a) & mask)),
                    len,
                }
            }
            IpAddr::V6(a) => {
                let len = len.min(128);
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                Cidr {
                    addr: IpAddr::from(std::net::Ipv6Addr::from(u128::from(a) & mask)),
                    len,
                }
            }
        }
    }

    /// One address as a full-length prefix.
    pub fn host(addr: IpAddr) -> Cidr {
        let addr = addr.to_canonical();
        Cidr::new(addr, if addr.is_ipv4() { 32 } else { 128 })
    }

    /// The whole address space of a family.
    pub fn any(v6: bool) -> Cidr {
        if v6 {
            Cidr::new(IpAddr::from([0u16; 8]), 0)
        } else {
            Cidr::new(IpAddr::from([0u8; 4]), 0)
        }
    }

    /// True if every address of `other` is in `self`.
    pub fn contains(&self, other: &Cidr) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && other.len >= self.len
            && Cidr::new(other.addr, self.len).addr == self.addr
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Action {
    Allow,
    Deny,
}

/// The policies that apply to this gateway, in a form the evaluator can use.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Policies {
    pub policies: Vec<Policy>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    /// `namespace/name`.
    pub name: String,
    pub action: Action,
    pub rules: Vec<Rule>,
}

/// A rule matches when one of `from` matches (or `from` is empty), one of `to`
/// matches (or it is empty), and every `when` condition holds.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Rule {
    /// `namespace/name#index`, used in logs, counters and the 403's details.
    pub name: String,
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

/// Each non-empty list must hold (AND); an address list holds if one entry contains
/// the address (OR). `remote*` lists are folded into these (see the module doc).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Source {
    pub ip_blocks: Vec<Cidr>,
    pub not_ip_blocks: Vec<Cidr>,
    pub remote_ip_blocks: Vec<Cidr>,
    pub not_remote_ip_blocks: Vec<Cidr>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Operation {
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Condition {
    /// `source.ip` / `remote.ip`.
    SourceIp {
        values: Vec<Cidr>,
        not_values: Vec<Cidr>,
    },
    /// `destination.port`.
    DestinationPort {
        values: Vec<u16>,
        not_values: Vec<u16>,
    },
    /// `request.headers[name]` (HTTP only).
    Header {
        name: String,
        values: Vec<String>,
        not_values: Vec<String>,
    },
    /// `connection.sni`.
    Sni {
        values: Vec<String>,
        not_values: Vec<String>,
    },
}

// === from config ===

/// The `when` keys the gateway evaluates (Istio's others need mTLS or JWT).
pub const SUPPORTED_KEYS: &str =
    "source.ip, remote.ip, destination.port, request.headers[NAME], connection.sni";

/// What a condition key names, or why it is not supported.
pub fn condition_key(key: &str) -> Result<ConditionKey, String> {
    match key {
        "source.ip" | "remote.ip" => Ok(ConditionKey::SourceIp),
        "destination.port" => Ok(ConditionKey::DestinationPort),
        "connection.sni" => Ok(ConditionKey::Sni),
        k => match k
            .strip_prefix("request.headers[")
            .and_then(|r| r.strip_suffix(']'))
        {
            Some(name) if !name.is_empty() => Ok(ConditionKey::Header(name.to_ascii_lowercase())),
            _ => Err(format!(
                "condition key {key:?} is not supported by this gateway (supported: {SUPPORTED_KEYS})"
            )),
        },
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionKey {
    SourceIp,
    DestinationPort,
    Header(String),
    Sni,
}

/// A port as written in a policy (`"8080"`).
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("invalid port {s:?} (1..=65535)")),
    }
}

/// Istio: a policy in the root namespace (MeshConfig `rootNamespace`) applies to every
/// workload its selector matches (all, without one); elsewhere only to workloads of its
/// own namespace.
pub fn applies(p: &istio::AuthorizationPolicy, id: &GatewayIdentity) -> bool {
    let ns = p.metadata.namespace();
    if ns != id.root_namespace && ns != id.namespace {
        return false;
    }
    p.spec.selector.as_ref().is_none_or(|s| {
        s.match_labels
            .iter()
            .all(|(k, v)| id.labels.get(k) == Some(v))
    })
}

impl Policies {
    /// Builds the policies that apply to `id`. Expects validated resources: values
    /// that don't parse are skipped here (validation has reported them).
    pub fn build(resources: &[istio::AuthorizationPolicy], id: &GatewayIdentity) -> Policies {
        let mut policies: Vec<Policy> = resources
            .iter()
            .filter(|p| applies(p, id))
            .filter_map(|p| {
                let action = match p.spec.action {
                    istio::AuthzAction::Allow => Action::Allow,
                    istio::AuthzAction::Deny => Action::Deny,
                    istio::AuthzAction::Audit | istio::AuthzAction::Custom => return None,
                };
                let name = p.key();
                let rules = p
                    .spec
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| build_rule(&format!("{name}#{i}"), r))
                    .collect();
                Some(Policy {
                    name,
                    action,
                    rules,
                })
            })
            .collect();
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        Policies { policies }
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn rules(&self) -> impl Iterator<Item = (&Policy, &Rule)> {
        self.policies
            .iter()
            .flat_map(|p| p.rules.iter().map(move |r| (p, r)))
    }

    /// Every prefix any rule mentions (the XDP compiler's atoms).
    pub fn prefixes(&self) -> BTreeSet<Cidr> {
        let mut out = BTreeSet::new();
        for (_, r) in self.rules() {
            for s in &r.from {
                out.extend(s.ip_blocks.iter().copied());
                out.extend(s.not_ip_blocks.iter().copied());
                out.extend(s.remote_ip_blocks.iter().copied());
                out.extend(s.not_remote_ip_blocks.iter().copied());
            }
            for c in &r.when {
                if let Condition::SourceIp { values, not_values } = c {
                    out.extend(values.iter().copied());
                    out.extend(not_values.iter().copied());
                }
            }
        }
        out
    }

    /// Ports some rule names explicitly (`ports`, `destination.port` values).
    pub fn named_ports(&self) -> BTreeSet<u16> {
        self.rules().flat_map(|(_, r)| rule_ports(r)).collect()
    }
}

/// Ports a rule names explicitly.
pub(crate) fn rule_ports(r: &Rule) -> BTreeSet<u16> {
    let mut out: BTreeSet<u16> = r.to.iter().flat_map(|o| o.ports.iter().copied()).collect();
    for c in &r.when {
        if let Condition::DestinationPort { values, .. } = c {
            out.extend(values.iter().copied());
        }
    }
    out
}

fn cidrs(v: &[String]) -> Vec<Cidr> {
    v.iter().filter_map(|s| Cidr::parse(s).ok()).collect()
}

fn ports(v: &[String]) -> Vec<u16> {
    v.iter().filter_map(|s| parse_port(s).ok()).collect()
}

fn build_rule(name: &str, r: &istio::AuthzRule) -> Rule {
    Rule {
        name: name.to_string(),
        from: r
            .from
            .iter()
            .map(|f| Source {
                ip_blocks: cidrs(&f.source.ip_blocks),
                not_ip_blocks: cidrs(&f.source.not_ip_blocks),
                remote_ip_blocks: cidrs(&f.source.remote_ip_blocks),
                not_remote_ip_blocks: cidrs(&f.source.not_remote_ip_blocks),
            })
            .collect(),
        to: r
            .to
            .iter()
            .map(|t| {
                let o = &t.operation;
                let lower = |v: &[String]| v.iter().map(|h| h.to_ascii_lowercase()).collect();
                Operation {
                    hosts: lower(&o.hosts),
                    not_hosts: lower(&o.not_hosts),
                    ports: ports(&o.ports),
                    not_ports: ports(&o.not_ports),
                    methods: o.methods.clone(),
                    not_methods: o.not_methods.clone(),
                    paths: o.paths.clone(),
                    not_paths: o.not_paths.clone(),
                }
            })
            .collect(),
        when: r
            .when
            .iter()
            .filter_map(|c| {
                Some(match condition_key(&c.key).ok()? {
                    ConditionKey::SourceIp => Condition::SourceIp {
                        values: cidrs(&c.values),
                        not_values: cidrs(&c.not_values),
                    },
                    ConditionKey::DestinationPort => Condition::DestinationPort {
                        values: ports(&c.values),
                        not_values: ports(&c.not_values),
                    },
                    ConditionKey::Header(name) => Condition::Header {
                        name,
                        values: c.values.clone(),
                        not_values: c.not_values.clone(),
                    },
                    ConditionKey::Sni => Condition::Sni {
                        values: c.values.iter().map(|h| h.to_ascii_lowercase()).collect(),
                        not_values: c
                            .not_values
                            .iter()
                            .map(|h| h.to_ascii_lowercase())
                            .collect(),
                    },
                })
            })
            .collect(),
    }
}

/// Validation problems of one policy as (path, message), for `config::validate`.
pub fn problems(spec: &istio::AuthorizationPolicySpec) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut push = |path: String, msg: String| out.push((path, msg));
    match spec.action {
        istio::AuthzAction::Custom => push(
            "spec.action".into(),
            "action CUSTOM (external authorization) is not supported by this gateway".into(),
        ),
        _ if spec.provider.is_some() => push(
            "spec.provider".into(),
            "`provider` is only valid with action CUSTOM".into(),
        ),
        _ => {}
    }
    if spec.target_ref.is_some() || spec.target_refs.is_some() {
        let f = if spec.target_ref.is_some() {
            "targetRef"
        } else {
            "targetRefs"
        };
        push(
            format!("spec.{f}"),
            format!("`{f}` (Gateway API attachment) is not supported; use `selector`"),
        );
    }
    for (i, r) in spec.rules.iter().enumerate() {
        let base = format!("spec.rules[{i}]");
        for (j, f) in r.from.iter().enumerate() {
            let s = &f.source;
            let p = format!("{base}.from[{j}].source");
            for (field, v) in [
                ("principals", &s.principals),
                ("notPrincipals", &s.not_principals),
                ("requestPrincipals", &s.request_principals),
                ("notRequestPrincipals", &s.not_request_principals),
                ("namespaces", &s.namespaces),
                ("notNamespaces", &s.not_namespaces),
                ("serviceAccounts", &s.service_accounts),
                ("notServiceAccounts", &s.not_service_accounts),
                ("trustDomains", &s.trust_domains),
                ("notTrustDomains", &s.not_trust_domains),
            ] {
                if !v.is_empty() {
                    push(
                        format!("{p}.{field}"),
                        format!(
                            "`{field}` needs a peer or JWT identity, which this gateway does not authenticate; use ipBlocks"
                        ),
                    );
                }
            }
            for (field, v) in [
                ("ipBlocks", &s.ip_blocks),
                ("notIpBlocks", &s.not_ip_blocks),
                ("remoteIpBlocks", &s.remote_ip_blocks),
                ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
            ] {
                for (k, c) in v.iter().enumerate() {
                    if let Err(e) = Cidr::parse(c) {
                        push(format!("{p}.{field}[{k}]"), e);
                    }
                }
            }
        }
        for (j, t) in r.to.iter().enumerate() {
            let o = &t.operation;
            let p = format!("{base}.to[{j}].operation");
            for (field, v) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
                for (k, port) in v.iter().enumerate() {
                    if let Err(e) = parse_port(port) {
                        push(format!("{p}.{field}[{k}]"), e);
                    }
                }
            }
            for (field, v) in [("paths", &o.paths), ("notPaths", &o.not_paths)] {
                for (k, path) in v.iter().enumerate() {
                    if path.is_empty() {
                        push(format!("{p}.{field}[{k}]"), "empty path".into());
                    }
                }
            }
        }
        for (j, c) in r.when.iter().enumerate() {
            let p = format!("{base}.when[{j}]");
            if c.values.is_empty() && c.not_values.is_empty() {
                push(
                    p.clone(),
                    "a condition needs `values` or `notValues`".into(),
                );
            }
            match condition_key(&c.key) {
                Err(e) => push(format!("{p}.key"), e),
                Ok(key) => {
                    for (field, v) in [("values", &c.values), ("notValues", &c.not_values)] {
                        for (k, val) in v.iter().enumerate() {
                            let err = match key {
                                ConditionKey::SourceIp => Cidr::parse(val).err(),
                                ConditionKey::DestinationPort => parse_port(val).err(),
                                _ => None,
                            };
                            if let Some(e) = err {
                                push(format!("{p}.{field}[{k}]"), e);
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// Port -> what is served there, for evaluation of HTTP-only fields.
pub type PortKinds = BTreeMap<u16, PortKind>;

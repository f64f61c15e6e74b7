//! An AuthorizationPolicy's fields as this gateway reads them: address blocks
//! ([`Cidr`]), ports, `when` keys, and what Istio's validation (or this gateway) refuses
//! ([`problems`]). The policies compiled for evaluation and the evaluator are
//! [`crate::authz`]'s.
use std::{fmt, net::IpAddr};

use serde::Serialize;

use super::istio;

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

/// What is served on a port, which decides how HTTP-only fields are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PortKind {
    /// Plain HTTP or HTTPS terminated here.
    Http,
    /// TCP and TLS passthrough only: Istio's TCP rules for HTTP-only fields.
    Tcp,
    /// A TLS port where some SNIs are terminated (HTTP) and others passed through:
    /// HTTP-only fields are unknown until the ClientHello is read.
    Mixed,
    /// Not a gateway port: only rules naming it explicitly apply (XDP only).
    Unserved,
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

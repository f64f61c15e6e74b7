//! Istio's evaluation order over three-valued matches: a field the caller doesn't
//! know yet is [`Tri::Maybe`], and a decision that hangs on one is
//! [`Decision::Undecided`].
use hyper::HeaderMap;
use serde::Serialize;

use super::{Action, Cidr, Condition, Operation, Policies, PortKind, Rule, Source, rule_ports};

/// Yes, no, or "depends on what isn't known yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tri {
    Yes,
    No,
    Maybe,
}

impl Tri {
    fn of(b: bool) -> Tri {
        if b { Tri::Yes } else { Tri::No }
    }
    fn and(self, o: Tri) -> Tri {
        match (self, o) {
            (Tri::No, _) | (_, Tri::No) => Tri::No,
            (Tri::Yes, Tri::Yes) => Tri::Yes,
            _ => Tri::Maybe,
        }
    }
    fn or(self, o: Tri) -> Tri {
        match (self, o) {
            (Tri::Yes, _) | (_, Tri::Yes) => Tri::Yes,
            (Tri::No, Tri::No) => Tri::No,
            _ => Tri::Maybe,
        }
    }
    /// OR over a list; an empty list is no constraint (Yes).
    fn any<T>(items: &[T], f: impl Fn(&T) -> Tri) -> Tri {
        if items.is_empty() {
            return Tri::Yes;
        }
        items.iter().fold(Tri::No, |acc, i| acc.or(f(i)))
    }
}

/// What is known about the traffic being judged.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The peer's address as a host prefix (`Cidr::host`), or for the XDP compiler a
    /// prefix standing for every address whose longest listed prefix it is.
    pub source: Cidr,
    pub port: u16,
    pub l7: L7<'a>,
}

#[derive(Debug, Clone, Copy)]
pub enum L7<'a> {
    /// Nothing past the port: HTTP-only fields and the SNI are Maybe...
    Unknown,
    /// ...except on a TCP port, where HTTP-only fields follow Istio's TCP rules.
    TcpUnknownSni,
    /// A TCP/TLS flow after its ClientHello (None: no SNI).
    Tcp {
        sni: Option<&'a str>,
    },
    Http(HttpAttrs<'a>),
}

#[derive(Debug, Clone, Copy)]
pub struct HttpAttrs<'a> {
    /// Host header / :authority, as sent.
    pub host: &'a str,
    /// Without the query string.
    pub path: &'a str,
    pub method: &'a str,
    pub headers: &'a HeaderMap,
    /// The TLS SNI when the connection is HTTPS.
    pub sni: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Decision {
    /// `rule`: the ALLOW rule that matched, None when no ALLOW policy applies.
    Allow {
        rule: Option<String>,
    },
    Deny(DenyReason),
    /// Depends on fields not known yet: ask again with more.
    Undecided,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum DenyReason {
    /// A DENY rule matched (`namespace/name#index`).
    Rule(String),
    /// ALLOW policies apply and none of their rules matched.
    NoAllowMatch,
}

impl DenyReason {
    /// Envoy's `rbac_access_denied_matched_policy[...]` naming.
    pub fn policy(&self) -> &str {
        match self {
            DenyReason::Rule(r) => r.split('#').next().unwrap_or(r),
            DenyReason::NoAllowMatch => "none",
        }
    }
}

impl Policies {
    /// Istio's order: a DENY match denies; with ALLOW policies present a request must
    /// match one of their rules; otherwise allowed. On a [`PortKind::Unserved`] port
    /// only rules naming the port count, and ALLOW policies apply there only through
    /// such rules (the host's other services are not the gateway's).
    pub fn decide(&self, kind: PortKind, req: &Request) -> Decision {
        let unserved = kind == PortKind::Unserved;
        let considered = |r: &Rule| !unserved || rule_ports(r).contains(&req.port);
        let mut deny_maybe = false;
        for p in self.policies.iter().filter(|p| p.action == Action::Deny) {
            for r in p.rules.iter().filter(|r| considered(r)) {
                match rule_match(r, Action::Deny, req) {
                    Tri::Yes => return Decision::Deny(DenyReason::Rule(r.name.clone())),
                    Tri::Maybe => deny_maybe = true,
                    Tri::No => {}
                }
            }
        }
        let mut allow_applies = false;
        let mut allow_maybe = false;
        for p in self.policies.iter().filter(|p| p.action == Action::Allow) {
            if !unserved {
                allow_applies = true;
            }
            for r in p.rules.iter().filter(|r| considered(r)) {
                allow_applies = true;
                match rule_match(r, Action::Allow, req) {
                    Tri::Yes if !deny_maybe => {
                        return Decision::Allow {
                            rule: Some(r.name.clone()),
                        };
                    }
                    Tri::Yes | Tri::Maybe => allow_maybe = true,
                    Tri::No => {}
                }
            }
        }
        if !allow_applies {
            return if deny_maybe {
                Decision::Undecided
            } else {
                Decision::Allow { rule: None }
            };
        }
        if !allow_maybe {
            // Whatever the DENY rules say, nothing allows it.
            return Decision::Deny(DenyReason::NoAllowMatch);
        }
        Decision::Undecided
    }
}

pub(super) fn rule_match(r: &Rule, action: Action, req: &Request) -> Tri {
    Tri::any(&r.from, |s| source_match(s, &req.source))
        .and(Tri::any(&r.to, |o| op_match(o, action, req)))
        .and(
            r.when
                .iter()
                .fold(Tri::Yes, |acc, c| acc.and(cond_match(c, action, req))),
        )
}

/// `list` holds (non-empty and one entry contains `src`) and `not_list` doesn't.
fn in_blocks(list: &[Cidr], not_list: &[Cidr], src: &Cidr) -> Tri {
    let hit = |l: &[Cidr]| l.iter().any(|b| b.contains(src));
    let pos = if list.is_empty() {
        Tri::Yes
    } else {
        Tri::of(hit(list))
    };
    let neg = if not_list.is_empty() {
        Tri::Yes
    } else {
        Tri::of(!hit(not_list))
    };
    pos.and(neg)
}

fn source_match(s: &Source, src: &Cidr) -> Tri {
    in_blocks(&s.ip_blocks, &s.not_ip_blocks, src).and(in_blocks(
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
        src,
    ))
}

fn in_list<T: PartialEq>(list: &[T], not_list: &[T], v: &T) -> Tri {
    let pos = list.is_empty() || list.contains(v);
    let neg = not_list.is_empty() || !not_list.contains(v);
    Tri::of(pos && neg)
}

/// An HTTP-only field: evaluated on HTTP requests; on TCP, Istio's rule (never
/// matches in ALLOW, ignored in DENY); unknown otherwise.
fn http_only(action: Action, req: &Request, f: impl Fn(&HttpAttrs) -> bool) -> Tri {
    match req.l7 {
        L7::Http(h) => Tri::of(f(&h)),
        L7::Tcp { .. } | L7::TcpUnknownSni => match action {
            Action::Allow => Tri::No,
            Action::Deny => Tri::Yes,
        },
        L7::Unknown => Tri::Maybe,
    }
}

/// A field given as `list` / `not_list` of patterns: holds if some `list` pattern
/// matches (or `list` is empty) and no `not_list` pattern does.
fn patterns(list: &[String], not_list: &[String], m: impl Fn(&str) -> bool) -> bool {
    (list.is_empty() || list.iter().any(|p| m(p))) && !not_list.iter().any(|p| m(p))
}

fn op_match(o: &Operation, action: Action, req: &Request) -> Tri {
    let mut t = in_list(&o.ports, &o.not_ports, &req.port);
    if !o.hosts.is_empty() || !o.not_hosts.is_empty() {
        t = t.and(http_only(action, req, |h| {
            patterns(&o.hosts, &o.not_hosts, |p| host_match(p, h.host))
        }));
    }
    if !o.methods.is_empty() || !o.not_methods.is_empty() {
        t = t.and(http_only(action, req, |h| {
            patterns(&o.methods, &o.not_methods, |p| p == h.method)
        }));
    }
    if !o.paths.is_empty() || !o.not_paths.is_empty() {
        t = t.and(http_only(action, req, |h| {
            patterns(&o.paths, &o.not_paths, |p| string_match(p, h.path))
        }));
    }
    t
}

fn cond_match(c: &Condition, action: Action, req: &Request) -> Tri {
    match c {
        Condition::SourceIp { values, not_values } => {
            // `when` values must match (a condition with only notValues is fine).
            in_blocks(values, not_values, &req.source)
        }
        Condition::DestinationPort { values, not_values } => in_list(values, not_values, &req.port),
        Condition::Header {
            name,
            values,
            not_values,
        } => http_only(action, req, |h| {
            let got = joined_header(h.headers, name);
            let m = |p: &String| match &got {
                // Istio's HeaderMatcher: `*` is a presence match (an empty value too).
                Some(_) if p == "*" => true,
                Some(g) => string_match(p, g),
                None => false,
            };
            (values.is_empty() || values.iter().any(m)) && !not_values.iter().any(m)
        }),
        Condition::Sni { values, not_values } => {
            let sni = match req.l7 {
                L7::Tcp { sni } => sni,
                L7::Http(h) => h.sni,
                L7::Unknown | L7::TcpUnknownSni => return Tri::Maybe,
            };
            let sni = sni.map(str::to_ascii_lowercase);
            let m = |p: &str| sni.as_deref().is_some_and(|s| host_match(p, s));
            Tri::of(patterns(values, not_values, m))
        }
    }
}

/// A request header as Istio's `request.headers[...]` conditions see it: every value
/// of a repeated header joined with `,` (Envoy's header matcher on a multi-valued
/// header; Istio's "Authorization Policy Normalization"), so a condition can't be
/// dodged by sending a header twice. None: absent.
pub fn joined_header(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    Some(
        values
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// Istio's string match: `*` (anything non-empty), `prefix*`, `*suffix`, or exact.
pub fn string_match(pattern: &str, v: &str) -> bool {
    if pattern == "*" {
        return !v.is_empty();
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return v.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return v.ends_with(suffix);
    }
    pattern == v
}

/// `hosts`: case-insensitive string match against the Host header (RFC 4343;
/// CVE-2021-39155), with and without its port (Istio matches `example.com` for
/// `example.com:8080` too), and without a trailing dot (`example.com.` is the same
/// name, and routing already treats it so: a policy must not see it as another).
pub fn host_match(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    let (with_port, bare) = host_keys(host);
    string_match(&pattern, &with_port)
        || string_match(&pattern, bare.as_deref().unwrap_or(&with_port))
}

/// The strings [`host_match`] matches `hosts` patterns against: the lowercase host
/// without a trailing dot, with its port if it has one, and (when there is a port)
/// without it.
pub(super) fn host_keys(host: &str) -> (String, Option<String>) {
    let host = host.to_ascii_lowercase();
    let (bare, port) = match host.rsplit_once(':') {
        // Not an IPv6 literal's colon: `[::1]:80` -> `[::1]`, `a.b:80` -> `a.b`.
        Some((h, p))
            if p.chars().all(|c| c.is_ascii_digit()) && (!h.contains(':') || h.ends_with(']')) =>
        {
            (h, Some(p))
        }
        _ => (host.as_str(), None),
    };
    let bare = match bare.strip_suffix('.') {
        Some(b) if !b.is_empty() => b,
        _ => bare,
    };
    match port {
        Some(p) => (format!("{bare}:{p}"), Some(bare.to_string())),
        None => (bare.to_string(), None),
    }
}

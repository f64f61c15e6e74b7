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
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::config::{GatewayIdentity, istio};

mod enforcer;
mod eval;
mod index;
#[cfg(test)]
mod tests;
pub mod xdp;

pub use enforcer::Enforcer;
pub use eval::{Decision, DenyReason, HttpAttrs, L7, Request, Tri};
pub use index::PolicyIndex;

// === model ===

pub use crate::config::authz::{
    Cidr, ConditionKey, PortKind, SUPPORTED_KEYS, condition_key, parse_port, problems,
};

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

/// Port -> what is served there, for evaluation of HTTP-only fields.
pub type PortKinds = BTreeMap<u16, PortKind>;

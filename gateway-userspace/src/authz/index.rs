//! AuthorizationPolicy rules indexed by what they match (issue 17): an HTTP request is
//! judged against the rules that *could* match it, found by hash lookups on its host
//! and port, instead of against every rule of every policy.
//!
//! A rule matches only if one of its `to` operations matches (or `to` is empty). An
//! operation with `hosts` matches an HTTP request only if one of those patterns
//! matches the request's host; one without `hosts` but with `ports` only if the port
//! is listed. So each operation files its rule under its host patterns (exact, `*x`
//! suffix, `x*` prefix: Istio's string match), else under its ports; a rule with an
//! operation that names neither, with no `to` at all, or with a `*` host, stays in a
//! residual list that every request scans. What the index gives is only a candidate
//! set: each candidate is then judged by the same [`rule_match`] as before, in the same
//! order (DENY policies, then ALLOW policies, each by name, rules in order), so the
//! first DENY rule that matches still denies and the first ALLOW rule still allows:
//! Istio's evaluation order is unchanged, only rules that cannot match are skipped.
//!
//! The index serves full HTTP requests, where every field is known; connections
//! judged before their request (accept, the ClientHello, XDP) keep the plain scan of
//! [`Policies::decide`], which is also the reference the property tests compare with.
use std::collections::HashMap;

use super::{
    Action, Decision, DenyReason, Policies, PortKind, Request, Rule,
    eval::{L7, Tri, host_keys, rule_match},
};

/// Rule numbers: DENY rules first, then ALLOW rules, each in [`Policies::decide`]'s order.
type RuleId = u32;

#[derive(Debug, Default)]
pub struct PolicyIndex {
    /// (action, rule) by [`RuleId`].
    rules: Vec<(Action, RuleRef)>,
    /// Rules `< deny_count` are DENY rules.
    deny_count: usize,
    /// Some ALLOW policy applies (even one without rules: it allows nothing).
    has_allow: bool,
    exact: HashMap<Box<str>, Vec<RuleId>>,
    /// `*x` patterns keyed by `x`.
    suffix: HashMap<Box<str>, Vec<RuleId>>,
    /// `x*` patterns keyed by `x`.
    prefix: HashMap<Box<str>, Vec<RuleId>>,
    port: HashMap<u16, Vec<RuleId>>,
    /// Candidates for every request, sorted.
    residual: Vec<RuleId>,
}

/// Where a rule lives in [`Policies`]: (policy, rule) indexes.
#[derive(Debug, Clone, Copy)]
struct RuleRef(u32, u32);

impl PolicyIndex {
    pub fn new(policies: &Policies) -> PolicyIndex {
        let mut ix = PolicyIndex::default();
        for action in [Action::Deny, Action::Allow] {
            for (pi, p) in policies.policies.iter().enumerate() {
                if p.action != action {
                    continue;
                }
                ix.has_allow |= action == Action::Allow;
                for (ri, r) in p.rules.iter().enumerate() {
                    let id = ix.rules.len() as RuleId;
                    ix.rules.push((action, RuleRef(pi as u32, ri as u32)));
                    ix.file(id, r);
                }
            }
            if action == Action::Deny {
                ix.deny_count = ix.rules.len();
            }
        }
        ix
    }

    /// Files rule `id` under every key one of its operations needs.
    fn file(&mut self, id: RuleId, r: &Rule) {
        if r.to.is_empty() {
            push_once(&mut self.residual, id);
            return;
        }
        for o in &r.to {
            if !o.hosts.is_empty() {
                for h in &o.hosts {
                    let h = h.to_ascii_lowercase();
                    // As `string_match` reads a pattern, in its order.
                    let (map, key) = if h == "*" {
                        push_once(&mut self.residual, id);
                        continue;
                    } else if let Some(p) = h.strip_suffix('*') {
                        (&mut self.prefix, p)
                    } else if let Some(s) = h.strip_prefix('*') {
                        (&mut self.suffix, s)
                    } else {
                        (&mut self.exact, h.as_str())
                    };
                    push_once(map.entry(key.into()).or_default(), id);
                }
            } else if !o.ports.is_empty() {
                for p in &o.ports {
                    push_once(self.port.entry(*p).or_default(), id);
                }
            } else {
                push_once(&mut self.residual, id);
            }
        }
    }

    /// The rules that may match an HTTP request with this host and port, in evaluation
    /// order.
    fn candidates(&self, host: &str, port: u16) -> Vec<RuleId> {
        let mut out = self.residual.clone();
        let mut add = |ids: Option<&Vec<RuleId>>| {
            if let Some(ids) = ids {
                out.extend_from_slice(ids);
            }
        };
        add(self.port.get(&port));
        if !(self.exact.is_empty() && self.suffix.is_empty() && self.prefix.is_empty()) {
            let (with_port, bare) = host_keys(host);
            for s in [Some(with_port.as_str()), bare.as_deref()]
                .into_iter()
                .flatten()
            {
                add(self.exact.get(s));
                if !(self.suffix.is_empty() && self.prefix.is_empty()) {
                    for (i, _) in s.char_indices().chain([(s.len(), ' ')]) {
                        add(self.suffix.get(&s[i..]));
                        add(self.prefix.get(&s[..i]));
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// [`Policies::decide`] for a full HTTP request (`PortKind::Http`, `L7::Http`), over
    /// the candidate rules only; the same answer.
    pub fn decide_http(&self, policies: &Policies, req: &Request) -> Decision {
        let L7::Http(h) = req.l7 else {
            return policies.decide(PortKind::Http, req);
        };
        let candidates = self.candidates(h.host, req.port);
        let rule = |id: RuleId| {
            let (action, RuleRef(p, r)) = self.rules[id as usize];
            (action, &policies.policies[p as usize].rules[r as usize])
        };
        let split = candidates.partition_point(|&id| (id as usize) < self.deny_count);
        for &id in &candidates[..split] {
            let (action, r) = rule(id);
            match rule_match(r, action, req) {
                Tri::Yes => return Decision::Deny(DenyReason::Rule(r.name.clone())),
                Tri::No => {}
                // Not on a full HTTP request; should it ever be, ask the scan.
                Tri::Maybe => return policies.decide(PortKind::Http, req),
            }
        }
        if !self.has_allow {
            return Decision::Allow { rule: None };
        }
        for &id in &candidates[split..] {
            let (action, r) = rule(id);
            match rule_match(r, action, req) {
                Tri::Yes => {
                    return Decision::Allow {
                        rule: Some(r.name.clone()),
                    };
                }
                Tri::No => {}
                Tri::Maybe => return policies.decide(PortKind::Http, req),
            }
        }
        Decision::Deny(DenyReason::NoAllowMatch)
    }

    /// Rules every request is judged against (not indexable), for the startup log.
    pub fn residual_len(&self) -> usize {
        self.residual.len()
    }
}

fn push_once(v: &mut Vec<RuleId>, id: RuleId) {
    if v.last() != Some(&id) {
        v.push(id);
    }
}

#[cfg(test)]
mod tests;

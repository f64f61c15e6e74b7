//! `delegate` VirtualServices, merged when the snapshot is built so the data plane only
//! ever sees ordinary routes.
//!
//! Istio (pilot/pkg/model/virtualservice_controller.go `mergeVirtualServices`, and
//! pilot/pkg/model/virtualservice.go `MergeHTTPRoutes`, `mergeHTTPRoute`,
//! `mergeHTTPMatchRequests`, `hasConflict`, `stringMatchConflict`, istio/istio
//! 86c9f01): a root VirtualService's `http[]` entry with `delegate: {name, namespace}`
//! is replaced, in place, by the delegate's `http[]` entries, each merged with it:
//! - every delegate match must find a root match it does not conflict with (a subset:
//!   root prefix `/api`, delegate prefix `/api/v1`); it is merged with each such root
//!   match (unset fields and map keys taken from the root). A delegate route with a
//!   match that fits no root match is dropped (Istio logs a warning; here GW1009).
//! - unset route fields (rewrite, directResponse, timeout, retries, fault, mirror(s),
//!   corsPolicy, headers) come from the root; names join as `root-delegate`.
//! - a delegate VirtualService is one without `hosts`; its destinations' short names are
//!   its own namespace's. Not found, or not exported to the root's namespace: the root
//!   entry is left out (Istio: "delegate not found, ignore only the current HTTP route").

use std::collections::{BTreeMap, HashMap};

use super::istio::{HttpMatchRequest, HttpRoute, StringMatch, VirtualService};
use super::parse::Entry;

/// Delegate VirtualServices (those without hosts) by `namespace/name`.
pub(crate) struct Delegates<'a> {
    by_key: HashMap<String, &'a Entry<VirtualService>>,
}

impl<'a> Delegates<'a> {
    pub(crate) fn new(vss: &'a [Entry<VirtualService>]) -> Self {
        let by_key = vss
            .iter()
            .filter(|e| e.res.spec.hosts.is_empty())
            .map(|e| (e.res.key(), e))
            .collect();
        Delegates { by_key }
    }

    /// The delegate `root` names in `spec.http[..].delegate`, or why it cannot be used.
    pub(crate) fn find(
        &self,
        root: &VirtualService,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<&'a Entry<VirtualService>, String> {
        let root_ns = root.metadata.namespace();
        let ns = namespace.filter(|n| !n.is_empty()).unwrap_or(root_ns);
        let key = format!("{ns}/{name}");
        let Some(d) = self.by_key.get(&key) else {
            return Err(format!(
                "delegate virtual service \"{key}\" not found (a delegate is a VirtualService without hosts)"
            ));
        };
        if !exported_to(&d.res, root_ns) {
            return Err(format!(
                "delegate virtual service \"{key}\" is not exported to namespace \"{root_ns}\""
            ));
        }
        Ok(d)
    }
}

/// `exportTo` (empty: everywhere; `.` its own namespace; `~` nowhere) admits `ns`.
fn exported_to(vs: &VirtualService, ns: &str) -> bool {
    let x = &vs.spec.export_to;
    x.is_empty()
        || x.iter()
            .any(|e| e == "*" || e == ns || (e == "." && vs.metadata.namespace() == ns))
}

/// Istio's `mergeHTTPRoute`: `None` when a delegate match conflicts with every root
/// match (the delegate route is dropped).
pub(crate) fn merge_route(root: &HttpRoute, delegate: &HttpRoute) -> Option<HttpRoute> {
    let matches = merge_matches(&root.matches, &delegate.matches)?;
    let mut out = delegate.clone();
    out.matches = matches;
    out.delegate = None;
    out.name = join_names(root.name.as_deref(), delegate.name.as_deref());
    or_root(&mut out.rewrite, &root.rewrite);
    or_root(&mut out.direct_response, &root.direct_response);
    or_root(&mut out.timeout, &root.timeout);
    or_root(&mut out.retries, &root.retries);
    or_root(&mut out.fault, &root.fault);
    or_root(&mut out.mirror, &root.mirror);
    or_root(&mut out.mirror_percent, &root.mirror_percent);
    or_root(
        &mut out.mirror_percent_proto_name,
        &root.mirror_percent_proto_name,
    );
    or_root(&mut out.mirror_percentage, &root.mirror_percentage);
    or_root(&mut out.cors_policy, &root.cors_policy);
    if out.mirrors.is_empty() {
        out.mirrors.clone_from(&root.mirrors);
    }
    or_root(&mut out.headers, &root.headers);
    Some(out)
}

/// Whether the merged route's mirror settings are the delegate's own (else the root's).
pub(crate) fn own_mirror(delegate: &HttpRoute) -> bool {
    delegate.mirror.is_some() || !delegate.mirrors.is_empty()
}

fn or_root<T: Clone>(field: &mut Option<T>, root: &Option<T>) {
    if field.is_none() {
        field.clone_from(root);
    }
}

/// `root-delegate`; either alone when the other is unset.
fn join_names(root: Option<&str>, delegate: Option<&str>) -> Option<String> {
    let root = root.filter(|s| !s.is_empty());
    match delegate.filter(|s| !s.is_empty()) {
        None => root.map(str::to_string),
        Some(d) => Some(match root {
            Some(r) => format!("{r}-{d}"),
            None => d.to_string(),
        }),
    }
}

/// Istio's `mergeHTTPMatchRequests`: each delegate match is merged with every root
/// match it does not conflict with; `None` if one of them fits no root match.
fn merge_matches(
    root: &[HttpMatchRequest],
    delegate: &[HttpMatchRequest],
) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(delegate.to_vec());
    }
    if delegate.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for leaf in delegate {
        let before = out.len();
        for r in root.iter().filter(|r| !has_conflict(r, leaf)) {
            out.push(merge_match(r, leaf));
        }
        if out.len() == before {
            return None;
        }
    }
    Some(out)
}

fn merge_map<V: Clone>(
    root: &BTreeMap<String, V>,
    leaf: &BTreeMap<String, V>,
) -> BTreeMap<String, V> {
    let mut out = root.clone();
    out.extend(leaf.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// Istio's `mergeHTTPMatchRequest`: the delegate's match, unset parts from the root's.
fn merge_match(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = leaf.clone();
    out.name = join_names(root.name.as_deref(), leaf.name.as_deref());
    or_root(&mut out.uri, &root.uri);
    or_root(&mut out.scheme, &root.scheme);
    or_root(&mut out.method, &root.method);
    or_root(&mut out.authority, &root.authority);
    out.headers = merge_map(&root.headers, &leaf.headers);
    out.without_headers = merge_map(&root.without_headers, &leaf.without_headers);
    out.query_params = merge_map(&root.query_params, &leaf.query_params);
    if out.port.is_none_or(|p| p == 0) {
        out.port = root.port;
    }
    out.source_labels = merge_map(&root.source_labels, &leaf.source_labels);
    if out.source_namespace.as_deref().is_none_or(str::is_empty) {
        out.source_namespace.clone_from(&root.source_namespace);
    }
    if out.gateways.is_empty() {
        out.gateways.clone_from(&root.gateways);
    }
    if out.stat_prefix.as_deref().is_none_or(str::is_empty) {
        out.stat_prefix.clone_from(&root.stat_prefix);
    }
    out
}

/// Istio's `hasConflict`: the leaf match is not within the root match.
fn has_conflict(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let pairs = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if pairs
        .iter()
        .any(|(r, l)| string_match_conflict(r.as_ref(), l.as_ref()))
    {
        return true;
    }
    let map_conflict = |r: &BTreeMap<String, StringMatch>, l: &BTreeMap<String, StringMatch>| {
        l.iter()
            .any(|(k, lv)| string_match_conflict(r.get(k), Some(lv)))
    };
    if map_conflict(&root.headers, &leaf.headers)
        || map_conflict(&root.without_headers, &leaf.without_headers)
        || map_conflict(&root.query_params, &leaf.query_params)
    {
        return true;
    }
    if root.ignore_uri_case != leaf.ignore_uri_case {
        return true;
    }
    if let (Some(r), Some(l)) = (root.port, leaf.port)
        && r > 0
        && l > 0
        && r != l
    {
        return true;
    }
    if let Some(rns) = root.source_namespace.as_deref().filter(|s| !s.is_empty())
        && leaf.source_namespace.as_deref() != Some(rns)
    {
        return true;
    }
    if leaf
        .source_labels
        .iter()
        .any(|(k, v)| root.source_labels.get(k).is_some_and(|rv| rv != v))
    {
        return true;
    }
    // The root's gateways must be a superset of the leaf's.
    if !root.gateways.is_empty() && !leaf.gateways.is_empty() {
        return leaf.gateways.iter().any(|g| !root.gateways.contains(g));
    }
    false
}

/// Istio's `stringMatchConflict` (an empty string is unset, as proto3's getters say).
fn string_match_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return false;
    };
    let get = |o: &Option<String>| o.clone().filter(|s| !s.is_empty());
    let (r_exact, r_prefix, r_regex) = (get(&root.exact), get(&root.prefix), get(&root.regex));
    let (l_exact, l_prefix, l_regex) = (get(&leaf.exact), get(&leaf.prefix), get(&leaf.regex));
    let r_any = r_exact.is_some() || r_prefix.is_some() || r_regex.is_some();
    let l_any = l_exact.is_some() || l_prefix.is_some() || l_regex.is_some();
    // A regex on either side admits nothing else on the other.
    if (r_regex.is_some() && l_any) || (l_regex.is_some() && r_any) {
        return true;
    }
    if let Some(exact) = r_exact {
        return l_prefix.is_some() || l_exact.as_deref() != Some(exact.as_str());
    }
    if let Some(prefix) = r_prefix {
        if let Some(lp) = l_prefix {
            return !lp.starts_with(&prefix);
        }
        if let Some(le) = l_exact {
            return !le.starts_with(&prefix);
        }
    }
    true
}

#[cfg(test)]
mod tests;

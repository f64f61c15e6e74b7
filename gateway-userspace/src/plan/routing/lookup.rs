//! The decisions of every request over a compiled table: the virtual host of a host,
//! the route a request matches, the weighted destination, the rewritten path and a
//! redirect's `Location`.
use std::sync::Arc;

use hyper::{HeaderMap, header::HeaderName};

use super::table::{
    Destination, Match, Redirect, Rewrite, Route, RouteTable, StrMatch, VirtualHost,
};
use super::{authority_port, normalize_host};

/// What route matching looks at, borrowed from the request.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Normalized (see [`normalize_host`]).
    pub host: &'a str,
    pub port: u16,
    pub headers: &'a HeaderMap,
}

/// The virtual host for a normalized host: exact, then longest `*.` suffix, then `*`
/// (the best [`host_score`](super::host_score)). A hash lookup per label of the host, whatever the number
/// of virtual hosts.
pub fn find_vhost<'a>(table: &'a RouteTable, host: &str) -> Option<&'a VirtualHost> {
    table.index.get(host).map(|&i| &table.vhosts[i])
}

/// The first route whose match (any block) accepts the request, with the index of
/// the block that did (`None` for a route without `match`).
pub fn find_route<'a>(
    vh: &'a VirtualHost,
    req: &RequestView,
) -> Option<(&'a Arc<Route>, Option<usize>)> {
    vh.routes.iter().find_map(|r| {
        if r.matches.is_empty() {
            return Some((r, None));
        }
        r.matches
            .iter()
            .position(|m| m.accepts(req))
            .map(|i| (r, Some(i)))
    })
}

impl Match {
    /// All conditions of one block (ANDed).
    pub fn accepts(&self, req: &RequestView) -> bool {
        if let Some(uri) = &self.uri {
            let ok = if self.ignore_uri_case {
                uri.matches_ignore_case(req.path)
            } else {
                uri.matches(req.path)
            };
            if !ok {
                return false;
            }
        }
        let simple = [
            (&self.scheme, req.scheme),
            (&self.method, req.method),
            (&self.authority, req.host),
        ];
        if simple
            .iter()
            .any(|(m, v)| m.as_ref().is_some_and(|m| !m.matches(v)))
        {
            return false;
        }
        if self.port.is_some_and(|p| p != req.port) {
            return false;
        }
        let header_ok = |name: &HeaderName, m: &Option<StrMatch>| -> bool {
            let mut values = req.headers.get_all(name).iter().peekable();
            if values.peek().is_none() {
                return false;
            }
            match m {
                None => true,
                // Envoy joins repeated headers with "," before matching.
                Some(m) => {
                    let joined: Vec<&str> = values.filter_map(|v| v.to_str().ok()).collect();
                    m.matches(&joined.join(","))
                }
            }
        };
        if !self.headers.iter().all(|(n, m)| header_ok(n, m)) {
            return false;
        }
        if self.without_headers.iter().any(|(n, m)| header_ok(n, m)) {
            return false;
        }
        self.query_params.iter().all(|(name, m)| {
            query_value(req.query, name).is_some_and(|v| m.as_ref().is_none_or(|m| m.matches(v)))
        })
    }
}

/// The first value of a query parameter, undecoded (Envoy matches the raw value).
/// A parameter without `=` has the empty value.
pub fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// Picks a destination by weight with `r` uniform in `0..total weight`
/// ([`crate::lb::weighted::pick_by_weight`]).
pub fn pick_weighted(dests: &[Destination], r: u64) -> Option<&Destination> {
    crate::lb::weighted::pick_by_weight(dests, |d| u64::from(d.weight), r)
}

pub fn total_weight(dests: &[Destination]) -> u64 {
    crate::lb::weighted::total_weight(dests, |d| u64::from(d.weight))
}

/// The upstream path after `rewrite`: a matched `uri.prefix` is replaced by
/// `rewrite.uri`, any other match has its whole path replaced (Istio's rule).
pub fn rewrite_path(path: &str, rewrite: &Rewrite, matched_prefix: Option<&str>) -> String {
    if let Some(uri) = &rewrite.uri {
        return match matched_prefix {
            Some(p) if path.len() >= p.len() => {
                let rest = &path[p.len()..];
                // `/api` -> `/` on `/api/x` would give `//x`: Envoy leaves that to the
                // user; we avoid the double slash, as Istio's docs example expects.
                if uri.ends_with('/') && rest.starts_with('/') {
                    format!("{uri}{}", &rest[1..])
                } else {
                    format!("{uri}{rest}")
                }
            }
            _ => uri.clone(),
        };
    }
    if let Some((re, with)) = &rewrite.uri_regex {
        return re.replace_all(path, with.as_str()).into_owned();
    }
    path.to_string()
}

/// Envoy's `require_tls: ALL` redirect (`tls.httpsRedirect`): https, the same host,
/// path and query, the default port. A request-target that is not a path (`OPTIONS *`,
/// a CONNECT authority) passes on none, so the Location stays a URI of that host.
pub fn https_redirect_location(host: &str, path_and_query: &str) -> String {
    let pq = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        ""
    };
    format!("https://{host}{pq}")
}

/// The `Location` of a redirect for a request (scheme, normalized host, authority as
/// received, path and query). A path that is not one (`*`) is left out, as in
/// [`https_redirect_location`].
pub fn redirect_location(
    r: &Redirect,
    scheme: &str,
    authority: &str,
    path: &str,
    query: Option<&str>,
    listener_port: u16,
) -> String {
    let scheme_out = r.scheme.as_deref().unwrap_or(scheme).to_ascii_lowercase();
    let host = match &r.authority {
        Some(a) => a.clone(),
        None => normalize_host(authority),
    };
    let port = r.port.or_else(|| {
        if r.port_from_request {
            return authority_port(authority).or(Some(listener_port));
        }
        // Keep an explicit port only when neither the host nor the scheme changes.
        (r.authority.is_none() && r.scheme.is_none())
            .then(|| authority_port(authority))
            .flatten()
    });
    let default_port = if scheme_out == "https" { 443 } else { 80 };
    let mut loc = format!("{scheme_out}://{host}");
    if let Some(p) = port.filter(|p| *p != default_port) {
        loc.push_str(&format!(":{p}"));
    }
    match &r.uri {
        Some(u) => {
            loc.push_str(u);
            if !u.contains('?')
                && let Some(q) = query
            {
                loc.push('?');
                loc.push_str(q);
            }
        }
        None => {
            if path.starts_with('/') {
                loc.push_str(path);
            }
            if let Some(q) = query {
                loc.push('?');
                loc.push_str(q);
            }
        }
    }
    loc
}

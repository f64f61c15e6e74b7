//! Route tables and the pure decisions over them: which virtual host a `Host` /
//! `:authority` selects, which `http[]` entry a request matches, which weighted
//! destination takes it, which retry policy applies. Built once per snapshot from the
//! validated Istio resources; nothing here does I/O.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use hyper::{
    HeaderMap, StatusCode,
    body::Bytes,
    header::{HeaderName, HeaderValue},
};
use regex::Regex;

use crate::config::{
    ConfigError, HostMap, HostSemantics, HttpRouteEntry, Listener, ServerKind, ServerRef,
    WeightedCluster, hosts,
    istio::{self, HttpRoute, StringMatch},
};

// === hosts ===

pub use crate::config::hosts::{authority_port, host_score, normalize_host, valid_request_host};

/// The lowercase host patterns of a Gateway server, namespaces dropped.
pub fn server_hosts(server: &ServerRef) -> Vec<String> {
    let gw_ns = server.gateway.split('/').next().unwrap_or_default();
    server
        .hosts
        .iter()
        .map(|h| hosts::split_server_host(h, gw_ns).1.to_ascii_lowercase())
        .collect()
}

/// Servers whose TLS is terminated here: HTTPS ones (routed by `http`) and TLS ones
/// (routed by `tcp`).
pub fn terminating(kind: ServerKind) -> bool {
    matches!(kind, ServerKind::HttpsTerminate | ServerKind::TlsTerminate)
}

/// The TLS-terminating server a TLS connection with this SNI belongs to, as Envoy's
/// filter-chain match picks among the chains Istio builds for the port's servers.
///
/// Istio gives each HTTPS server a filter chain whose `server_names` are its hosts,
/// sorted, and none at all when one of them is `*` (pilot/pkg/networking/core/
/// listener.go `toFilterChainMatch`: `fullWildcardFound`; gateway.go passes
/// `GetSNIHostsForServer`, the hosts without their `ns/`), and a gateway listener has
/// no default filter chain (listener.go `buildGatewayListener`). Envoy's
/// `FilterChainManagerImpl::findFilterChainForServerName` then takes, for an SNI, the
/// exact name, else the longest `*.` suffix, else a chain without `server_names`; for a
/// ClientHello **without SNI only a chain without `server_names`**: the first HTTPS
/// server with host `*`. Otherwise no chain matches and Envoy closes the connection
/// (no certificate is served). Ties go to the first server.
///
/// TLS-terminating servers of protocol TLS ([`ServerKind::TlsTerminate`]) take part:
/// Istio gives them a filter chain with the same `server_names` on the same listener,
/// so the caller looks at the kind of the server picked.
///
/// A scan of every server: the data path asks [`TlsServers`], built once per port,
/// which answers the same; this stays as its reference.
pub fn tls_server_for(listener: &Listener, sni: Option<&str>) -> Option<usize> {
    let mut candidates = listener
        .servers
        .iter()
        .enumerate()
        .filter(|(_, s)| terminating(s.kind));
    let Some(sni) = sni else {
        return candidates
            .find(|(_, s)| server_hosts(s).iter().any(|h| h == "*"))
            .map(|(i, _)| i);
    };
    let sni = normalize_host(sni);
    let mut best: Option<((u8, usize), usize)> = None;
    for (i, s) in candidates {
        for h in server_hosts(s) {
            if let Some(score) = host_score(&h, &sni)
                && best.is_none_or(|(b, _)| score > b)
            {
                best = Some((score, i));
            }
        }
    }
    best.map(|(_, i)| i)
}

/// The host patterns of one HTTPS server, indexed once: does a request's host belong to
/// this server (else 421, see `proxy`)? A hash lookup per label of the host instead of
/// a [`host_score`] per pattern on every request ([`serves_scan`], its reference).
#[derive(Debug)]
pub struct ServerHosts(HostMap<()>);

impl ServerHosts {
    /// Over lowercase patterns (what [`server_hosts`] gives).
    pub fn new(patterns: &[String]) -> ServerHosts {
        let mut m = HostMap::new(HostSemantics::Host);
        for p in patterns {
            m.insert(p, ());
        }
        ServerHosts(m)
    }

    /// True if some pattern matches the (normalized) host.
    pub fn serves(&self, host: &str) -> bool {
        self.0.get(host).is_some()
    }
}

/// What [`ServerHosts::serves`] answers, by a scan of the patterns.
pub fn serves_scan(patterns: &[String], host: &str) -> bool {
    patterns.iter().any(|p| host_score(p, host).is_some())
}

/// A port's HTTPS-terminating servers by SNI, built once: what [`tls_server_for`]
/// answers, at a cost independent of how many servers and hosts the port has.
#[derive(Debug)]
pub struct TlsServers {
    by_name: HostMap<usize>,
    /// For a ClientHello without SNI: the first server with host `*` (Envoy's chain
    /// without `server_names`), if any.
    catch_all: Option<usize>,
}

impl TlsServers {
    pub fn new(listener: &Listener) -> TlsServers {
        let mut by_name = HostMap::new(HostSemantics::Host);
        let mut catch_all = None;
        for (i, s) in listener.servers.iter().enumerate() {
            if !terminating(s.kind) {
                continue;
            }
            for h in server_hosts(s) {
                if h == "*" && catch_all.is_none() {
                    catch_all = Some(i);
                }
                by_name.insert(&h, i);
            }
        }
        TlsServers { by_name, catch_all }
    }

    /// The server (index in `Listener::servers`) for a ClientHello's SNI.
    pub fn get(&self, sni: Option<&str>) -> Option<usize> {
        match sni {
            Some(sni) => self.by_name.get(&normalize_host(sni)).copied(),
            None => self.catch_all,
        }
    }
}

// === compiled routes ===

/// One routing table: Istio's `http.80` (all HTTP servers of a port merged) or, on a
/// TLS port, the per-server `https.443.<server>.<gateway>` route config.
#[derive(Debug)]
pub struct RouteTable {
    pub vhosts: Vec<VirtualHost>,
    /// `vhosts` by domain, built with the table: the lookup of every request.
    index: HostMap<usize>,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable::new(Vec::new())
    }
}

impl RouteTable {
    /// A table over these virtual hosts (domains unique), indexed once.
    pub fn new(vhosts: Vec<VirtualHost>) -> RouteTable {
        let mut index = HostMap::new(HostSemantics::Host);
        for (i, vh) in vhosts.iter().enumerate() {
            index.insert(&vh.domain, i);
        }
        RouteTable { vhosts, index }
    }
}

#[derive(Debug)]
pub struct VirtualHost {
    /// Lowercase: a name, `*.suffix` or `*`.
    pub domain: String,
    /// The HTTP server this domain came from has `tls.httpsRedirect` (Envoy's
    /// `require_tls: ALL`).
    pub https_redirect: bool,
    /// VS routes in VS order (namespace/name), then `http[]` order.
    pub routes: Vec<Arc<Route>>,
}

#[derive(Debug)]
pub struct Route {
    /// `namespace/name` of the VirtualService.
    pub vs: String,
    /// `http[].name` (Envoy's route name is this, plus `.<match name>`: [`Route::envoy_name`]).
    pub name: Option<String>,
    /// ORed blocks of ANDed conditions; empty matches every request.
    pub matches: Vec<Match>,
    pub action: Action,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub rewrite: Option<Rewrite>,
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub fault: Fault,
    /// `corsPolicy` (`super::cors`).
    pub cors: Option<super::cors::Cors>,
    /// `mirror` / `mirrors` with their shares (`crate::config::mirror`); used by forwarding routes.
    pub mirrors: Vec<crate::config::mirror::Mirror>,
}

impl Route {
    /// The Envoy route name (`%ROUTE_NAME%`) of the match block `matched` (None: a route
    /// without matches), as Istio's `TranslateRoute` (pilot/pkg/networking/core/route/
    /// route.go) names it: `routeName := in.Name; if match != nil && match.Name != ""
    /// { routeName = routeName + "." + match.Name }` — so `http[].name`, plus
    /// `.<match name>` when the block has one (`.m` when only the block is named). None
    /// when that is empty: Envoy prints `-` (an unnamed route has no name).
    pub fn envoy_name(&self, matched: Option<usize>) -> Option<String> {
        let mut name = self.name.clone().unwrap_or_default();
        if let Some(m) = matched
            .and_then(|i| self.matches.get(i))
            .and_then(|m| m.name.as_deref())
            .filter(|n| !n.is_empty())
        {
            name.push('.');
            name.push_str(m);
        }
        (!name.is_empty()).then_some(name)
    }
}

#[derive(Debug)]
pub enum Action {
    Forward(Vec<Destination>),
    Redirect(Redirect),
    Direct { status: StatusCode, body: Bytes },
}

#[derive(Debug)]
pub struct Destination {
    pub cluster: String,
    pub weight: u32,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

#[derive(Debug, Default)]
pub struct Match {
    /// Istio appends it to the route's name: `<route name>.<match name>` (ROUTE_NAME).
    pub name: Option<String>,
    pub uri: Option<StrMatch>,
    pub scheme: Option<StrMatch>,
    pub method: Option<StrMatch>,
    pub authority: Option<StrMatch>,
    /// `None`: presence only (`name: {}`).
    pub headers: Vec<(HeaderName, Option<StrMatch>)>,
    pub without_headers: Vec<(HeaderName, Option<StrMatch>)>,
    pub query_params: Vec<(String, Option<StrMatch>)>,
    pub port: Option<u16>,
    pub ignore_uri_case: bool,
}

#[derive(Debug)]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    /// Anchored: RE2 in Envoy matches the whole value.
    Regex(Regex),
}

impl StrMatch {
    pub(crate) fn compile(sm: &StringMatch, what: &str) -> Result<Option<StrMatch>, String> {
        Ok(if let Some(e) = &sm.exact {
            Some(StrMatch::Exact(e.clone()))
        } else if let Some(p) = &sm.prefix {
            Some(StrMatch::Prefix(p.clone()))
        } else if let Some(r) = &sm.regex {
            Some(StrMatch::Regex(compile_regex(r, what)?))
        } else {
            None
        })
    }

    /// The value as written (a regex without the anchors [`compile_regex`] adds), for
    /// the config dump.
    pub fn written(&self) -> &str {
        match self {
            StrMatch::Exact(s) | StrMatch::Prefix(s) => s,
            StrMatch::Regex(r) => r
                .as_str()
                .strip_prefix("^(?:")
                .and_then(|r| r.strip_suffix(")$"))
                .unwrap_or(r.as_str()),
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            StrMatch::Exact(e) => value == e,
            StrMatch::Prefix(p) => value.starts_with(p.as_str()),
            StrMatch::Regex(r) => r.is_match(value),
        }
    }

    fn matches_ignore_case(&self, value: &str) -> bool {
        match self {
            StrMatch::Exact(e) => value.eq_ignore_ascii_case(e),
            StrMatch::Prefix(p) => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            StrMatch::Regex(r) => r.is_match(value),
        }
    }
}

pub use crate::config::regex::compile as compile_regex;

#[derive(Debug, Default, Clone)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    fn compile(ops: Option<&istio::HeaderOperations>, what: &str) -> Result<HeaderOps, String> {
        let Some(ops) = ops else {
            return Ok(HeaderOps::default());
        };
        let pair = |(k, v): (&String, &String)| -> Result<(HeaderName, HeaderValue), String> {
            Ok((
                header_name(k, what)?,
                HeaderValue::from_str(v)
                    .map_err(|_| format!("{what}: invalid value for header {k:?}: {v:?}"))?,
            ))
        };
        Ok(HeaderOps {
            set: ops.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: ops.add.iter().map(pair).collect::<Result<_, _>>()?,
            remove: ops
                .remove
                .iter()
                .map(|k| header_name(k, what))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Envoy's order: remove, then set (replace), then add (append).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

fn header_name(name: &str, what: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("{what}: invalid header name {name:?}"))
}

#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// Replaces the matched `uri.prefix`, or the whole path for other matches.
    pub uri: Option<String>,
    /// `uriRegexRewrite`: pattern and replacement (`\1` already turned into `${1}`).
    pub uri_regex: Option<(Regex, String)>,
    pub authority: Option<HeaderValue>,
}

#[derive(Debug, Clone, Default)]
pub struct Redirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u16>,
    /// `derivePort: FROM_REQUEST_PORT`.
    pub port_from_request: bool,
    pub scheme: Option<String>,
    pub code: Option<StatusCode>,
}

/// `retryOn` conditions, as Envoy's router names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    pub connect_failure: bool,
    pub refused_stream: bool,
    pub reset: bool,
    pub five_xx: bool,
    pub gateway_error: bool,
    pub retriable_4xx: bool,
    /// `retriable-status-codes` with its codes (numbers written in `retryOn`).
    pub status_codes: Vec<u16>,
    /// gRPC status codes from `cancelled`, `deadline-exceeded`, `internal`,
    /// `resource-exhausted`, `unavailable`.
    pub grpc: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (Istio's `attempts`, Envoy's `num_retries`).
    pub retries: u32,
    pub per_try_timeout: Option<Duration>,
    /// Istio's `backoff`: Envoy's base interval (default 25 ms).
    pub backoff: Option<Duration>,
    pub on: RetryOn,
}

impl RetryPolicy {
    /// Istio's default when `retries` is unset: 2 retries on
    /// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`
    /// with retriable status code 503.
    pub fn istio_default() -> RetryPolicy {
        let (on, _) = parse_retry_on(
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        );
        RetryPolicy {
            retries: 2,
            per_try_timeout: None,
            backoff: None,
            on: RetryOn {
                status_codes: vec![503],
                ..on
            },
        }
    }

    pub fn from_istio(r: Option<&istio::HttpRetry>) -> RetryPolicy {
        let Some(r) = r else {
            return RetryPolicy::istio_default();
        };
        let mut p = RetryPolicy::istio_default();
        p.retries = u32::try_from(r.attempts.unwrap_or(0)).unwrap_or(0);
        p.per_try_timeout = r.per_try_timeout.as_ref().map(|d| d.duration);
        p.backoff = r
            .backoff
            .as_ref()
            .map(|d| d.duration)
            .filter(|d| !d.is_zero());
        if let Some(on) = r.retry_on.as_deref().filter(|s| !s.trim().is_empty()) {
            p.on = parse_retry_on(on).0;
        }
        p
    }

    /// The pause before retry number `retry` (1-based), Envoy's way: a random share
    /// (`jitter` in 0..1) of `base * 2^(retry-1)`, capped at 10 × base.
    pub fn backoff(&self, retry: u32, jitter: f64) -> Duration {
        let base = self.backoff.unwrap_or(Duration::from_millis(25));
        let ceiling = (base * (1u32 << retry.saturating_sub(1).min(10))).min(base * 10);
        ceiling.mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// Whether a response with this status (and `grpc-status`) is worth another try.
    /// `grpc_status` is the response headers' (a trailers-only answer): Envoy's
    /// `RetryStateImpl::wouldRetryFromHeaders` (source/common/router/retry_state_impl.cc)
    /// reads `Grpc::Common::getGrpcStatus(response_headers)` only; a status in trailers
    /// comes after the response has gone downstream and is never retried.
    pub fn retries_status(&self, status: u16, grpc_status: Option<u32>) -> bool {
        let on = &self.on;
        (on.five_xx && status >= 500)
            || (on.gateway_error && matches!(status, 502..=504))
            || (on.retriable_4xx && status == 409)
            || on.status_codes.contains(&status)
            || grpc_status.is_some_and(|g| on.grpc.contains(&g))
    }

    /// Whether a failure to connect is worth another try.
    pub fn retries_connect_failure(&self) -> bool {
        let on = &self.on;
        on.connect_failure || on.five_xx || on.gateway_error
    }

    /// Whether a reset (or per-try timeout) before the response is worth another try.
    pub fn retries_reset(&self) -> bool {
        let on = &self.on;
        on.reset || on.five_xx || on.gateway_error
    }
}

/// Parses Istio's `retryOn`: Envoy policy names plus bare status codes (which imply
/// `retriable-status-codes`). Returns the unknown names too, for a warning.
pub fn parse_retry_on(s: &str) -> (RetryOn, Vec<String>) {
    let mut on = RetryOn::default();
    let mut unknown = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if let Ok(code) = item.parse::<u16>() {
            on.status_codes.push(code);
            continue;
        }
        match item {
            "connect-failure" => on.connect_failure = true,
            "refused-stream" => on.refused_stream = true,
            "reset" | "reset-before-request" => on.reset = true,
            "5xx" => on.five_xx = true,
            "gateway-error" => on.gateway_error = true,
            "retriable-4xx" => on.retriable_4xx = true,
            "retriable-status-codes" => {}
            "cancelled" => on.grpc.push(1),
            "deadline-exceeded" => on.grpc.push(4),
            "resource-exhausted" => on.grpc.push(8),
            "internal" => on.grpc.push(13),
            "unavailable" => on.grpc.push(14),
            other => unknown.push(other.to_string()),
        }
    }
    (on, unknown)
}

#[derive(Debug, Clone, Default)]
pub struct Fault {
    /// (delay, percentage 0-100)
    pub delay: Option<(Duration, f64)>,
    /// (status, percentage 0-100)
    pub abort: Option<(StatusCode, f64)>,
}

// === matching ===

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
/// (the best [`host_score`]). A hash lookup per label of the host, whatever the number
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

// === building ===

/// The route table of an HTTP listener (all servers merged) or of one HTTPS server
/// (`only_server`), or what is wrong with every route that does not compile, each at
/// its field ([`route_errors`]).
pub fn build_table(
    listener: &Listener,
    only_server: Option<usize>,
) -> Result<RouteTable, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut table = TableBuilder::default();
    for vh in &listener.http {
        let vs_ns = vh.name.split('/').next().unwrap_or_default();
        for &si in &vh.servers {
            if only_server.is_some_and(|o| o != si) {
                continue;
            }
            let server = &listener.servers[si];
            let gw_ns = server.gateway.split('/').next().unwrap_or_default();
            let redirect = server.kind == ServerKind::Http
                && server.tls.as_ref().is_some_and(|t| t.https_redirect);
            let routes = compile_routes(
                vh.name.as_str(),
                &vh.routes,
                server,
                listener.port,
                &mut errors,
            );
            for written in &server.hosts {
                let (ns, shost) = hosts::split_server_host(written, gw_ns);
                let shost = shost.to_ascii_lowercase();
                if ns != "*" && ns != vs_ns {
                    continue;
                }
                for vhost in &vh.hosts {
                    if !hosts::intersects(vhost, &shost) {
                        continue;
                    }
                    // Istio's vhost domain is the narrower of the two names.
                    let domain = if hosts::covers(&shost, vhost) {
                        vhost.clone()
                    } else {
                        shost.clone()
                    };
                    table.add(domain, redirect, &vh.name, &routes);
                }
            }
        }
    }
    // A redirecting HTTP server redirects its hosts even where no VS is bound (Istio
    // builds the vhost from the server for `httpsRedirect`).
    if only_server.is_none() {
        for server in &listener.servers {
            if server.kind == ServerKind::Http
                && server.tls.as_ref().is_some_and(|t| t.https_redirect)
            {
                for h in server_hosts(server) {
                    if !table.by_domain.contains_key(&h) {
                        table.by_domain.insert(h.clone(), table.vhosts.len());
                        table.vhosts.push(VirtualHost {
                            domain: h,
                            https_redirect: true,
                            routes: Vec::new(),
                        });
                    }
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(RouteTable::new(table.vhosts))
}

/// A table being built: vhosts in first-seen order, found by domain in a map (a scan
/// per VS host made building 10 000 VirtualServices quadratic).
#[derive(Default)]
struct TableBuilder {
    vhosts: Vec<VirtualHost>,
    by_domain: HashMap<String, usize>,
    /// (vhost, VS) pairs whose routes are in (a VS that brought none may bring them
    /// through its next server).
    merged: HashSet<(usize, String)>,
}

impl TableBuilder {
    fn add(&mut self, domain: String, redirect: bool, vs: &str, routes: &[Arc<Route>]) {
        let i = match self.by_domain.get(&domain) {
            Some(&i) => i,
            None => {
                self.by_domain.insert(domain.clone(), self.vhosts.len());
                self.vhosts.push(VirtualHost {
                    domain,
                    https_redirect: false,
                    routes: Vec::new(),
                });
                self.vhosts.len() - 1
            }
        };
        let vh = &mut self.vhosts[i];
        vh.https_redirect |= redirect;
        // The same VS reached through a second server: its routes are there already.
        let key = (i, vs.to_string());
        if self.merged.contains(&key) || routes.is_empty() {
            return;
        }
        self.merged.insert(key);
        vh.routes.extend(routes.iter().cloned());
    }
}

/// Compiles a VS's routes for one server: match blocks whose `gateways` or `port`
/// exclude this server are dropped, and a route left with no block is dropped. A route
/// that does not compile is left out and its errors go to `errors`.
fn compile_routes(
    vs: &str,
    entries: &[HttpRouteEntry],
    server: &ServerRef,
    port: u16,
    errors: &mut Vec<ConfigError>,
) -> Vec<Arc<Route>> {
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        match compile_route(vs, i, e, server, port) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(message) => errors.extend(route_errors(e, message)),
        }
    }
    out
}

/// Where a route that does not compile is wrong: what [`problems`] finds in each entry
/// it is written as ([`HttpRouteEntry::written`]), at its field; the compile's own
/// `message`, at the route, should they find nothing.
fn route_errors(e: &HttpRouteEntry, message: String) -> Vec<ConfigError> {
    let mut out: Vec<ConfigError> = e
        .written
        .iter()
        .flat_map(|w| {
            problems(&w.route)
                .into_iter()
                .map(|(path, message)| ConfigError {
                    loc: w.at.loc(&path),
                    message,
                })
        })
        .collect();
    if out.is_empty() {
        out.push(ConfigError {
            loc: e
                .written
                .first()
                .map(|w| w.at.clone())
                .unwrap_or_default()
                .loc(""),
            message,
        });
    }
    out
}

/// The route `entries[i]` of VS `vs` on one server; None when none of its match blocks
/// applies there.
fn compile_route(
    vs: &str,
    i: usize,
    e: &HttpRouteEntry,
    server: &ServerRef,
    port: u16,
) -> Result<Option<Arc<Route>>, String> {
    let vs_ns = vs.split('/').next().unwrap_or_default();
    let r = &e.route;
    let what = format!("virtual service {vs} http[{i}]");
    let mut matches = Vec::with_capacity(r.matches.len());
    for m in &r.matches {
        let gw_ok = m.gateways.is_empty()
            || m.gateways.iter().any(|g| {
                let key = if g.contains('/') {
                    g.clone()
                } else {
                    format!("{vs_ns}/{g}")
                };
                key == server.gateway
            });
        let port_ok = m.port.is_none_or(|p| p == u32::from(port));
        if gw_ok && port_ok {
            matches.push(compile_match(m, &what)?);
        }
    }
    if !r.matches.is_empty() && matches.is_empty() {
        return Ok(None);
    }
    Ok(Some(Arc::new(Route {
        vs: vs.to_string(),
        name: r.name.clone(),
        matches,
        action: compile_action(r, &e.destinations, &what)?,
        request_headers: HeaderOps::compile(
            r.headers.as_ref().and_then(|h| h.request.as_ref()),
            &what,
        )?,
        response_headers: HeaderOps::compile(
            r.headers.as_ref().and_then(|h| h.response.as_ref()),
            &what,
        )?,
        rewrite: compile_rewrite(r.rewrite.as_ref(), &what)?,
        timeout: r
            .timeout
            .as_ref()
            .map(|d| d.duration)
            .filter(|d| !d.is_zero()),
        retry: RetryPolicy::from_istio(r.retries.as_ref()),
        fault: compile_fault(r.fault.as_ref(), &what)?,
        cors: r
            .cors_policy
            .as_ref()
            .map(|p| super::cors::Cors::compile(p, &what))
            .transpose()?,
        mirrors: e
            .mirrors
            .iter()
            .map(|m| crate::config::mirror::Mirror {
                cluster: m.cluster.clone(),
                per_million: m.per_million,
            })
            .collect(),
    })))
}

fn compile_match(m: &istio::HttpMatchRequest, what: &str) -> Result<Match, String> {
    let one = |sm: &Option<StringMatch>, field: &str| -> Result<Option<StrMatch>, String> {
        match sm {
            Some(sm) => StrMatch::compile(sm, &format!("{what} match {field}")),
            None => Ok(None),
        }
    };
    let headers = |map: &std::collections::BTreeMap<String, StringMatch>,
                   field: &str|
     -> Result<Vec<(HeaderName, Option<StrMatch>)>, String> {
        map.iter()
            .map(|(k, sm)| {
                Ok((
                    header_name(k, what)?,
                    StrMatch::compile(sm, &format!("{what} match {field}.{k}"))?,
                ))
            })
            .collect()
    };
    Ok(Match {
        name: m.name.clone().filter(|n| !n.is_empty()),
        uri: one(&m.uri, "uri")?,
        scheme: one(&m.scheme, "scheme")?,
        method: one(&m.method, "method")?,
        authority: one(&m.authority, "authority")?,
        headers: headers(&m.headers, "headers")?,
        without_headers: headers(&m.without_headers, "withoutHeaders")?,
        query_params: m
            .query_params
            .iter()
            .map(|(k, sm)| {
                Ok((
                    k.clone(),
                    StrMatch::compile(sm, &format!("{what} match queryParams.{k}"))?,
                ))
            })
            .collect::<Result<_, String>>()?,
        port: m.port.and_then(|p| u16::try_from(p).ok()),
        ignore_uri_case: m.ignore_uri_case,
    })
}

fn compile_action(r: &HttpRoute, dests: &[WeightedCluster], what: &str) -> Result<Action, String> {
    if let Some(d) = &r.direct_response {
        let status = u16::try_from(d.status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| format!("{what}: invalid directResponse status {}", d.status))?;
        let body = match &d.body {
            Some(istio::HttpBody {
                string: Some(s), ..
            }) => Bytes::from(s.clone()),
            Some(istio::HttpBody { bytes: Some(b), .. }) => {
                use base64::Engine as _;
                Bytes::from(
                    base64::engine::general_purpose::STANDARD
                        .decode(b.trim())
                        .map_err(|e| format!("{what}: directResponse.body.bytes: {e}"))?,
                )
            }
            _ => Bytes::new(),
        };
        return Ok(Action::Direct { status, body });
    }
    if let Some(rd) = &r.redirect {
        let code = match rd.redirect_code {
            None => None,
            Some(c) => Some(
                u16::try_from(c)
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .filter(StatusCode::is_redirection)
                    .ok_or_else(|| format!("{what}: invalid redirectCode {c}"))?,
            ),
        };
        return Ok(Action::Redirect(Redirect {
            uri: rd.uri.clone(),
            authority: rd.authority.clone(),
            port: rd.port.and_then(|p| u16::try_from(p).ok()),
            port_from_request: rd.derive_port.as_deref() == Some("FROM_REQUEST_PORT"),
            scheme: rd.scheme.clone(),
            code,
        }));
    }
    // Destinations are resolved in `route[]` order (resolution errors fail the load),
    // so the per-destination headers line up by index.
    let mut out = Vec::with_capacity(dests.len());
    for (i, d) in dests.iter().enumerate() {
        let h = r.route.get(i).and_then(|rd| rd.headers.as_ref());
        out.push(Destination {
            cluster: d.cluster.clone(),
            weight: d.weight,
            request_headers: HeaderOps::compile(h.and_then(|h| h.request.as_ref()), what)?,
            response_headers: HeaderOps::compile(h.and_then(|h| h.response.as_ref()), what)?,
        });
    }
    Ok(Action::Forward(out))
}

fn compile_rewrite(rw: Option<&istio::HttpRewrite>, what: &str) -> Result<Option<Rewrite>, String> {
    let Some(rw) = rw else { return Ok(None) };
    let uri_regex = match &rw.uri_regex_rewrite {
        Some(rr) => Some(compile_regex_rewrite(rr, what)?),
        None => None,
    };
    let authority = match &rw.authority {
        Some(a) => Some(rewrite_authority(a, what)?),
        None => None,
    };
    Ok(Some(Rewrite {
        uri: rw.uri.clone().filter(|u| !u.is_empty()),
        uri_regex,
        authority,
    }))
}

fn compile_regex_rewrite(rr: &istio::RegexRewrite, what: &str) -> Result<(Regex, String), String> {
    let re = Regex::new(&rr.pattern).map_err(|e| {
        format!(
            "{what}: invalid uriRegexRewrite.match {:?}: {e}",
            rr.pattern
        )
    })?;
    // RE2 substitutions are `\1`; Rust's are `${1}`.
    let with = Regex::new(r"\\(\d)")
        .expect("static regex")
        .replace_all(&rr.rewrite.replace('$', "$$"), "$${$1}")
        .into_owned();
    Ok((re, with))
}

fn rewrite_authority(a: &str, what: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(a).map_err(|_| format!("{what}: invalid rewrite.authority {a:?}"))
}

/// What [`build_table`] refuses in one VirtualService `http[]` route, as (path below
/// the route, message): asked only of a route that did not compile, to say where it is
/// wrong. Match regexes and CORS policies are validation's own checks.
pub fn problems(r: &HttpRoute) -> Vec<(String, String)> {
    const WHAT: &str = "HTTP route";
    let mut out = Vec::new();
    let mut check = |path: String, result: Result<(), String>| {
        if let Err(e) = result {
            out.push((path, e));
        }
    };
    for (j, m) in r.matches.iter().enumerate() {
        for (field, map) in [
            ("headers", &m.headers),
            ("withoutHeaders", &m.without_headers),
        ] {
            for k in map.keys() {
                check(
                    format!("match[{j}].{field}.{k}"),
                    header_name(k, WHAT).map(drop),
                );
            }
        }
    }
    let headers = r
        .route
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("route[{i}].headers"), d.headers.as_ref()))
        .chain([("headers".to_string(), r.headers.as_ref())]);
    for (path, h) in headers {
        check(
            format!("{path}.request"),
            HeaderOps::compile(h.and_then(|h| h.request.as_ref()), WHAT).map(drop),
        );
        check(
            format!("{path}.response"),
            HeaderOps::compile(h.and_then(|h| h.response.as_ref()), WHAT).map(drop),
        );
    }
    let action = if r.direct_response.is_some() {
        "directResponse"
    } else {
        "redirect"
    };
    check(action.into(), compile_action(r, &[], WHAT).map(drop));
    if let Some(rw) = &r.rewrite {
        if let Some(rr) = &rw.uri_regex_rewrite {
            check(
                "rewrite.uriRegexRewrite.match".into(),
                compile_regex_rewrite(rr, WHAT).map(drop),
            );
        }
        if let Some(a) = &rw.authority {
            check(
                "rewrite.authority".into(),
                rewrite_authority(a, WHAT).map(drop),
            );
        }
    }
    check(
        "fault".into(),
        compile_fault(r.fault.as_ref(), WHAT).map(drop),
    );
    out
}

fn compile_fault(f: Option<&istio::HttpFaultInjection>, what: &str) -> Result<Fault, String> {
    let Some(f) = f else {
        return Ok(Fault::default());
    };
    let delay = match &f.delay {
        Some(d) => {
            let dur = d
                .fixed_delay
                .as_ref()
                .or(d.exponential_delay.as_ref())
                .map(|d| d.duration)
                .ok_or_else(|| format!("{what}: fault.delay needs fixedDelay"))?;
            let pct = d
                .percentage
                .map(|p| p.value)
                .or(d.percent.map(f64::from))
                .unwrap_or(100.0);
            Some((dur, pct))
        }
        None => None,
    };
    let abort = match &f.abort {
        Some(a) => {
            let status = a
                .http_status
                .and_then(|s| u16::try_from(s).ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or_else(|| {
                    format!("{what}: fault.abort needs an httpStatus (grpcStatus/http2Error are not supported)")
                })?;
            Some((status, a.percentage.map(|p| p.value).unwrap_or(100.0)))
        }
        None => None,
    };
    Ok(Fault { delay, abort })
}

#[cfg(test)]
mod lookup_tests;
#[cfg(test)]
mod tests;

//! The compiled route tables: virtual hosts by domain, routes with their match blocks,
//! actions, header operations, rewrites, retry policies and faults.
use std::{sync::Arc, time::Duration};

use hyper::{
    HeaderMap, StatusCode,
    body::Bytes,
    header::{HeaderName, HeaderValue},
};
use regex::Regex;

use super::compile_regex;
use crate::config::{
    HostMap, HostSemantics,
    istio::{self, StringMatch},
};

/// One routing table: Istio's `http.80` (all HTTP servers of a port merged) or, on a
/// TLS port, the per-server `https.443.<server>.<gateway>` route config.
#[derive(Debug)]
pub struct RouteTable {
    pub vhosts: Vec<VirtualHost>,
    /// `vhosts` by domain, built with the table: the lookup of every request.
    pub(super) index: HostMap<usize>,
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
    /// `corsPolicy` (`crate::plan::cors`).
    pub cors: Option<crate::plan::cors::Cors>,
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

    pub(super) fn matches_ignore_case(&self, value: &str) -> bool {
        match self {
            StrMatch::Exact(e) => value.eq_ignore_ascii_case(e),
            StrMatch::Prefix(p) => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            StrMatch::Regex(r) => r.is_match(value),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub(super) fn compile(
        ops: Option<&istio::HeaderOperations>,
        what: &str,
    ) -> Result<HeaderOps, String> {
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

pub(super) fn header_name(name: &str, what: &str) -> Result<HeaderName, String> {
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

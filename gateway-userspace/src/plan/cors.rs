//! A route's `corsPolicy`, as Istio compiles it into Envoy's CORS filter and as that
//! filter answers (source/extensions/filters/http/cors/cors_filter.cc):
//!
//! - Istio's translation (pilot/pkg/networking/core/route/route.go, translateCORSPolicy):
//!   `allowOrigins` become StringMatchers (exact, prefix, full-match regex); the
//!   deprecated `allowOrigin` list, used only when `allowOrigins` is unset, exact ones;
//!   the method and header lists are joined with `,`; `maxAge` is whole seconds;
//!   `unmatchedPreflights: IGNORE` is `forward_not_matching_preflights: false`, anything
//!   else `true` (FORWARD, Envoy's default).
//! - The filter: a request with a non-empty `Origin` is a CORS request. An origin is
//!   allowed when a matcher matches it (or matches `*`: an exact `*` allows every
//!   origin). A preflight (OPTIONS with a non-empty `Access-Control-Request-Method`) is
//!   answered at the gateway with 200 and no body, unless its origin is not allowed and
//!   unmatched preflights are forwarded; the answer carries the allowed origin, and,
//!   whatever the origin, `allow-credentials`, `allow-methods` (`*` echoes the requested
//!   method), `allow-headers` (`*` echoes the requested headers) and `max-age`. Any other
//!   response to an allowed origin gets `access-control-allow-origin`, and
//!   `allow-credentials` and `expose-headers` when configured.
//!
//! Istio places the filter after the RBAC and fault filters (listener_builder.go:
//! `filters = append(filters, xdsfilters.Fault, xdsfilters.Cors)`), so a preflight must
//! pass the AuthorizationPolicy, and a fault abort gets no CORS headers.
use hyper::{
    HeaderMap, Method, Response, StatusCode,
    header::{self, HeaderValue},
};

use super::routing::StrMatch;
use crate::config::istio::{self, UnmatchedPreflights};

/// A compiled `corsPolicy` (fields read by the config dump, `proxyconfig::routes`).
#[derive(Debug)]
pub struct Cors {
    pub origins: Vec<StrMatch>,
    pub allow_methods: Option<HeaderValue>,
    pub allow_headers: Option<HeaderValue>,
    pub expose_headers: Option<HeaderValue>,
    pub max_age: Option<HeaderValue>,
    pub allow_credentials: bool,
    pub forward_unmatched: bool,
}

/// What the CORS filter does with one request.
#[derive(Debug)]
pub enum Decision {
    /// Not a CORS request, or an origin that is not allowed: nothing to add.
    Pass,
    /// A preflight answered at the gateway (Envoy's details `cors_response`); the
    /// decoration (if any) still applies, as the filter's encodeHeaders runs on it.
    Answer(Response<()>, Option<Decoration>),
    /// Forward, and add these headers to whatever response comes back.
    Decorate(Decoration),
}

/// The headers added to the response for an allowed origin.
#[derive(Debug, Clone)]
pub struct Decoration {
    origin: HeaderValue,
    credentials: bool,
    expose: Option<HeaderValue>,
}

impl Decoration {
    pub fn apply(&self, h: &mut HeaderMap) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.origin.clone());
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(e) = &self.expose {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }
}

impl Cors {
    /// Compiles a policy that [`problems`] found nothing wrong with.
    pub fn compile(p: &istio::CorsPolicy, what: &str) -> Result<Cors, String> {
        // A proto repeated field cannot tell `[]` from unset: an empty `allowOrigins`
        // falls back to `allowOrigin`, as in Istio.
        let origins = match p.allow_origins.as_deref().filter(|l| !l.is_empty()) {
            Some(list) => list
                .iter()
                .map(|sm| StrMatch::compile(sm, &format!("{what} corsPolicy.allowOrigins")))
                .filter_map(Result::transpose)
                .collect::<Result<Vec<_>, _>>()?,
            None => p
                .allow_origin
                .iter()
                .cloned()
                .map(StrMatch::Exact)
                .collect(),
        };
        let joined = |list: &[String], field: &str| -> Result<Option<HeaderValue>, String> {
            if list.is_empty() {
                return Ok(None);
            }
            let v = list.join(",");
            HeaderValue::from_str(&v)
                .map(Some)
                .map_err(|_| format!("{what}: corsPolicy.{field}: invalid header value {v:?}"))
        };
        Ok(Cors {
            origins,
            allow_methods: joined(&p.allow_methods, "allowMethods")?,
            allow_headers: joined(&p.allow_headers, "allowHeaders")?,
            expose_headers: joined(&p.expose_headers, "exposeHeaders")?,
            max_age: p
                .max_age
                .as_ref()
                .map(|d| HeaderValue::from(d.duration.as_secs())),
            allow_credentials: p.allow_credentials.unwrap_or(false),
            forward_unmatched: p.unmatched_preflights != Some(UnmatchedPreflights::Ignore),
        })
    }

    /// Envoy's `isOriginAllowed`: a matcher that matches `*` allows every origin.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.origins
            .iter()
            .any(|m| m.matches("*") || m.matches(origin))
    }

    /// The filter's decodeHeaders for one request.
    pub fn decide(&self, method: &Method, headers: &HeaderMap) -> Decision {
        let Some(origin) = headers.get(header::ORIGIN).filter(|o| !o.is_empty()) else {
            return Decision::Pass;
        };
        let allowed = origin.to_str().is_ok_and(|o| self.origin_allowed(o));
        let decoration = allowed.then(|| Decoration {
            origin: origin.clone(),
            credentials: self.allow_credentials,
            expose: self.expose_headers.clone(),
        });
        let requested = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .filter(|m| !m.is_empty());
        let (true, Some(requested)) = (method == Method::OPTIONS, requested) else {
            return decoration.map_or(Decision::Pass, Decision::Decorate);
        };
        if !allowed && self.forward_unmatched {
            return Decision::Pass;
        }
        let mut resp = Response::new(());
        *resp.status_mut() = StatusCode::OK;
        let h = resp.headers_mut();
        if allowed {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        }
        if self.allow_credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(m) = &self.allow_methods {
            let v = if m == "*" { requested } else { m };
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v.clone());
        }
        if let Some(a) = &self.allow_headers {
            if a == "*" {
                let asked = headers
                    .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                    .cloned()
                    .unwrap_or_else(|| HeaderValue::from_static(""));
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
            } else {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, a.clone());
            }
        }
        if let Some(m) = &self.max_age {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, m.clone());
        }
        Decision::Answer(resp, decoration)
    }
}

#[cfg(test)]
mod tests;

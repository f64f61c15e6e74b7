//! What Istio's validation refuses in a VirtualService `corsPolicy`
//! (pilot/pkg/config/validation/validation.go, validateCORSPolicy). The policy compiled
//! for the data path is `crate::plan::cors`.
use hyper::header::HeaderName;

use super::istio;

/// The methods Istio's validation accepts in `allowMethods` (validation.go,
/// `supportedMethods`), and Envoy's `*`.
pub(crate) const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "*",
];

/// What Istio's validation (validateCORSPolicy) refuses in a `corsPolicy`, as (path
/// below the route, message).
pub fn problems(p: &istio::CorsPolicy) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, sm) in p.allow_origins.iter().flatten().enumerate() {
        let at = format!("corsPolicy.allowOrigins[{i}]");
        let set: Vec<&String> = [&sm.exact, &sm.prefix, &sm.regex]
            .into_iter()
            .flatten()
            .collect();
        match set.as_slice() {
            [one] if one.is_empty() => {
                out.push((at.clone(), "allowOrigins match must not be empty".into()));
            }
            [_] => {}
            _ => out.push((
                at.clone(),
                "string match must set exactly one of exact, prefix or regex".into(),
            )),
        }
        if let Some(re) = &sm.regex
            && let Err(e) = super::regex::compile(re, "corsPolicy.allowOrigins")
        {
            out.push((format!("{at}.regex"), e));
        }
    }
    for (i, m) in p.allow_methods.iter().enumerate() {
        if !METHODS.contains(&m.as_str()) {
            out.push((
                format!("corsPolicy.allowMethods[{i}]"),
                format!("{m:?} is not a supported HTTP method"),
            ));
        }
    }
    for (field, list) in [
        ("allowHeaders", &p.allow_headers),
        ("exposeHeaders", &p.expose_headers),
    ] {
        for (i, name) in list.iter().enumerate() {
            if name != "*" && HeaderName::from_bytes(name.as_bytes()).is_err() {
                out.push((
                    format!("corsPolicy.{field}[{i}]"),
                    format!("invalid header name {name:?}"),
                ));
            }
        }
    }
    if let Some(d) = &p.max_age {
        if d.duration.subsec_nanos() != 0 {
            out.push((
                "corsPolicy.maxAge".into(),
                "max_age duration is accurate only to seconds precision".into(),
            ));
        } else if d.duration.is_zero() {
            out.push((
                "corsPolicy.maxAge".into(),
                "duration must be at least 1ms".into(),
            ));
        }
    }
    out
}

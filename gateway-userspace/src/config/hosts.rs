//! Host-name rules as Istio applies them (case-insensitive, `*.suffix`
//! wildcards matching any number of labels, `*` matching everything): the one host
//! matcher of the gateway. Config validation, the route tables
//! ([`crate::plan::routing`]), the HTTPS server choice by SNI and the request path all
//! use these functions.

/// Istio expands a short name (no dot) relative to the namespace of the
/// resource that wrote it: `reviews` -> `reviews.<ns>.svc.cluster.local`.
pub(crate) fn expand(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.contains('*') || host.is_empty() {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.cluster.local")
    }
}

/// True if some name matches both `a` and `b`.
pub(crate) fn intersects(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    if a == "*" || b == "*" {
        return true;
    }
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.ends_with(sb) || sb.ends_with(sa),
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// True if every name matching `inner` also matches `outer`.
pub(crate) fn covers(outer: &str, inner: &str) -> bool {
    let (outer, inner) = (outer.to_ascii_lowercase(), inner.to_ascii_lowercase());
    if outer == "*" {
        return true;
    }
    if inner == "*" {
        return false;
    }
    match outer.strip_prefix('*') {
        Some(suffix) => inner.trim_start_matches('*').ends_with(suffix),
        None => outer == inner,
    }
}

/// Splits a Gateway server host `ns/host`; `./host` means the Gateway's own
/// namespace and a plain `host` means `*/host` (Istio's rules).
pub(crate) fn split_server_host<'a>(host: &'a str, gateway_ns: &'a str) -> (&'a str, &'a str) {
    match host.split_once('/') {
        Some((".", h)) => (gateway_ns, h),
        Some((ns, h)) => (ns, h),
        None => ("*", host),
    }
}

/// `*`, `*.example.com` or a plain name; `*` only as the whole first label.
pub(crate) fn valid_host(host: &str) -> bool {
    if host.is_empty() || host.contains(char::is_whitespace) {
        return false;
    }
    match host.strip_prefix('*') {
        Some("") => true,
        Some(rest) => rest.starts_with('.') && rest.len() > 1 && !rest.contains('*'),
        None => !host.contains('*'),
    }
}

// === request hosts ===

/// The host part of a `Host` / `:authority` value: port stripped (`[v6]:port` too),
/// lowercased, as Istio's gateways match it (`strip_any_host_port`).
pub fn normalize_host(authority: &str) -> String {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        // IPv6 literal: keep the brackets, drop what follows `]`.
        match rest.find(']') {
            Some(i) => &a[..i + 2],
            None => a,
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => a,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The port written in a `Host` value, if any.
pub fn authority_port(authority: &str) -> Option<u16> {
    let a = authority.trim();
    let tail = match a.rfind(']') {
        Some(i) => &a[i + 1..],
        None => a,
    };
    tail.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

/// True if a normalized host (see [`normalize_host`]) can stand as the host of a URI:
/// an RFC 3986 reg-name (letters, digits, `-._~`, `!$&'()*+,;=`; no `%`-escapes, which
/// no DNS name needs and the http crate refuses in an authority) or a bracketed IPv6
/// literal. hyper only checks that a `Host` header is visible ASCII, so it may carry a
/// space, `/`, `?`, `#`, `@` or a second `:`; a redirect built from such a host would
/// point elsewhere (`Host: evil.example/x.example.com` matches `*.example.com`). Envoy
/// refuses the request (400, invalid authority), and so does the proxy.
pub fn valid_request_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b))
}

/// How well a host pattern (`name`, `*.suffix`, `*`) matches a lowercase host, as
/// Envoy ranks virtual host domains: exact (2) beats the longest `*.` suffix (1) beats
/// `*` (0). `None`: no match. A `*.x` wildcard needs at least one character before
/// `.x`, and matches any number of labels.
pub fn host_score(pattern: &str, host: &str) -> Option<(u8, usize)> {
    if pattern == "*" {
        Some((0, 0))
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        (host.len() > suffix.len() && host.ends_with(suffix)).then_some((1, suffix.len()))
    } else {
        (pattern == host).then_some((2, pattern.len()))
    }
}

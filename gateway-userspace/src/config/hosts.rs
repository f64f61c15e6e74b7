//! Host-name rules as Istio applies them (case-insensitive, `*.suffix`
//! wildcards matching any number of labels, `*` matching everything).

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

//! gRPC requests as Envoy's router and connection manager treat them: the client's
//! `grpc-timeout` is the request's timeout (capped by the route's), and an answer the
//! gateway makes itself (no route, no healthy upstream, timeout, RBAC, …) goes back as
//! a gRPC trailers-only response, which is what a gRPC client can read.
//!
//! Envoy: `Grpc::Common::isGrpcRequestHeaders` (content-type `application/grpc`,
//! `application/grpc+…`), `Grpc::Common::getGrpcTimeout`, the router's
//! `FilterUtility::finalTimeout` with `max_grpc_timeout` (Istio's route translation sets
//! it to the VirtualService `timeout`, 0 when there is none: no cap), and
//! `Http::Utility::prepareLocalReply` for gRPC (status 200, `content-type:
//! application/grpc`, `grpc-status` from `Grpc::Utility::httpToGrpcStatus`, the body
//! text as a percent-encoded `grpc-message`, no body).
use std::time::Duration;

use hyper::{
    HeaderMap, Response, StatusCode,
    header::{self, HeaderValue},
};

use super::body::{Body, empty};

/// Marks a response the gateway made itself, with the text its body carries; a gRPC
/// request gets it as `grpc-message`.
#[derive(Debug, Clone, Copy)]
pub struct LocalReply(pub &'static str);

/// Envoy's `isGrpcRequestHeaders`: `application/grpc`, or `application/grpc+<codec>`
/// (`application/grpc-web` is not).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.as_bytes();
            ct.len() >= 16
                && ct[..16].eq_ignore_ascii_case(b"application/grpc")
                && matches!(ct.get(16), None | Some(b'+') | Some(b';'))
        })
}

/// The `grpc-timeout` header: up to 8 ASCII digits and a unit (H, M, S, m, u, n).
/// Anything else is no timeout, as in Envoy.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The request's timeout: for a gRPC request, its `grpc-timeout` (none: no timeout)
/// capped by the route's; otherwise the route's. Zero durations mean none, as Envoy's.
pub fn request_timeout(route: Option<Duration>, headers: &HeaderMap) -> Option<Duration> {
    let route = route.filter(|d| !d.is_zero());
    if !is_grpc(headers) {
        return route;
    }
    match (timeout(headers).filter(|d| !d.is_zero()), route) {
        (Some(g), Some(max)) => Some(g.min(max)),
        (Some(g), None) => Some(g),
        (None, max) => max,
    }
}

/// `Grpc::Utility::httpToGrpcStatus`, from grpc's http-grpc-status-mapping.md.
pub fn status_for_http(status: u16) -> u32 {
    match status {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// gRPC's percent-encoding of `grpc-message`: `%` and bytes outside 0x20..=0x7E.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A gateway-made answer to a gRPC request, as Envoy sends it: trailers-only (status
/// 200, `content-type: application/grpc`, `grpc-status`, `grpc-message`, no body).
/// Returns the gRPC status set, or None when `resp` is not a local reply (an upstream
/// answer goes through untouched).
pub fn to_trailers_only(resp: &mut Response<Body>) -> Option<u32> {
    let LocalReply(text) = *resp.extensions().get::<LocalReply>()?;
    let status = status_for_http(resp.status().as_u16());
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.remove(header::CONTENT_LENGTH);
    headers.insert("grpc-status", HeaderValue::from(status));
    let text = text.trim_end_matches('\n');
    if !text.is_empty()
        && let Ok(v) = HeaderValue::from_str(&percent_encode(text))
    {
        headers.insert("grpc-message", v);
    }
    *resp.status_mut() = StatusCode::OK;
    *resp.body_mut() = empty();
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn grpc_requests_by_content_type() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC",
            "application/grpc;charset=utf-8",
        ] {
            assert!(is_grpc(&headers(&[("content-type", ct)])), "{ct}");
        }
        for ct in [
            "application/grpc-web",
            "application/json",
            "application/grp",
        ] {
            assert!(!is_grpc(&headers(&[("content-type", ct)])), "{ct}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeout_units_and_garbage() {
        let t = |v: &'static str| timeout(&headers(&[("grpc-timeout", v)]));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("7u"), Some(Duration::from_micros(7)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789S", "10x", "-1S", "1.5S", "10"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_route_timeout_caps_grpc_timeout() {
        let grpc =
            |t: &'static str| headers(&[("content-type", "application/grpc"), ("grpc-timeout", t)]);
        let s = Duration::from_secs;
        assert_eq!(request_timeout(Some(s(5)), &grpc("1S")), Some(s(1)));
        assert_eq!(request_timeout(Some(s(5)), &grpc("10S")), Some(s(5)));
        assert_eq!(request_timeout(None, &grpc("10S")), Some(s(10)));
        let no_header = headers(&[("content-type", "application/grpc")]);
        assert_eq!(request_timeout(Some(s(5)), &no_header), Some(s(5)));
        assert_eq!(request_timeout(None, &no_header), None);
        // Not gRPC: the header means nothing.
        let plain = headers(&[("grpc-timeout", "1S")]);
        assert_eq!(request_timeout(Some(s(5)), &plain), Some(s(5)));
    }

    #[test]
    fn local_replies_become_trailers_only() {
        let mut resp = super::super::proxy::local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream",
        );
        assert_eq!(to_trailers_only(&mut resp), Some(14));
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["grpc-message"], "no healthy upstream");
        assert_eq!(status_for_http(404), 12);
        assert_eq!(status_for_http(403), 7);
        assert_eq!(status_for_http(500), 2);
        assert_eq!(percent_encode("a%b\nc"), "a%25b%0Ac");
        // An upstream's answer is left alone.
        let mut up = Response::new(empty());
        *up.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(to_trailers_only(&mut up), None);
        assert_eq!(up.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}

//! The hyper service: one request in, routed by the listener's tables, answered locally
//! (404, 421, redirect, direct response, fault) or forwarded to a pooled upstream
//! connection with Istio's retries and timeouts. Every response carries its
//! [`AccessRecord`], emitted when the response body ends (or the client goes away).
use std::{
    convert::Infallible,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use http_body_util::BodyExt;
use hyper::{
    HeaderMap, Request, Response, StatusCode, Version,
    body::{Bytes, Incoming},
    header::{self, HeaderName, HeaderValue},
};

use super::{
    AccessRecord, ResponseFlag,
    body::{Body, CountingBody, LoggedBody, empty, full},
    grpc, mirror,
    upgrade::{self, Offer},
    upstream,
};
use crate::{
    plan::{
        cors, normalize,
        routing::{self, Action, RequestView},
    },
    server::Gateway,
};

pub use super::conn::{ConnCtx, OpenStream, PREMATURE_RESET_MIN_STREAMS};

/// Hop-by-hop headers (RFC 9110 §7.6.1) never cross the proxy.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

pub(super) fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(*n);
    }
}

/// A random UUID v4, Envoy's `x-request-id` format.
fn request_id() -> String {
    let a = fastrand::u64(..);
    let b = fastrand::u64(..);
    let a = (a & !0xF000) | 0x4000; // version 4
    let b = (b & !(0xC << 60)) | (0x8 << 60); // variant 10
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xFFFF,
        a & 0xFFFF,
        b >> 48,
        b & 0xFFFF_FFFF_FFFF
    )
}

// === the service ===

pub async fn handle(
    gw: Arc<Gateway>,
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    conn.streams.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let mut guard = CancelGuard {
        log: None,
        started,
        conn: conn.clone(),
    };
    let resp = route_request(gw, conn, req, started, &mut guard).await;
    guard.log = None;
    resp
}

/// Logs a request whose handling was abandoned because the client reset the stream or
/// closed the connection before the response (Envoy: status 0, `DC`), and counts it
/// against the connection's premature-reset budget.
struct CancelGuard {
    log: Option<AccessRecord>,
    started: Instant,
    conn: Arc<ConnCtx>,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(mut log) = self.log.take() {
            log.status = 0;
            log.response_flags
                .insert(ResponseFlag::DownstreamConnectionTermination);
            log.details = "downstream_remote_disconnect";
            log.duration = self.started.elapsed();
            log.emit(&self.conn.telemetry);
            self.conn.premature_reset();
        }
    }
}

async fn route_request(
    gw: Arc<Gateway>,
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
    started: Instant,
    guard: &mut CancelGuard,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = req.into_parts();
    // This request's config, start to end: routes, policies, clusters.
    let plan = gw.plan();
    // The upgrade offer is settled before anything reads the headers: an h2c offer is
    // stripped here, and the request goes on as plain HTTP/1.1.
    let offer = upgrade::classify(
        parts.version,
        &mut parts.headers,
        &gw.opts.http.upgrade_types,
    );
    // Envoy's internal request (conn_manager_utility.cc, mutateRequestHeaders): an
    // internal peer and no X-Forwarded-For as received.
    let internal = gw.opts.http.is_internal(
        conn.peer.ip(),
        parts.headers.contains_key("x-forwarded-for"),
    );
    let received = Arc::new(AtomicU64::new(0));
    let body = CountingBody::new(body, received.clone(), gw.opts.http.stream_idle_timeout);

    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
    // x-request-id as Envoy's at an edge (use_remote_address, and Istio leaves
    // preserve_external_request_id off): `force_set = !preserve && edge_request`, so
    // only an internal request keeps the id it brought; every other gets a fresh one.
    let req_id = match parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
    {
        Some(id) if internal && !id.is_empty() => id.to_string(),
        _ => request_id(),
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut log = AccessRecord {
        method: parts.method.to_string(),
        path: path_and_query,
        protocol: Some(version_name(parts.version)),
        authority: authority.clone().unwrap_or_default(),
        request_id: req_id.clone(),
        downstream_local_port: conn.port,
        downstream_local: conn.local,
        sni: conn.sni.clone(),
        user_agent: header_str(&parts.headers, header::USER_AGENT),
        x_forwarded_for: header_str(&parts.headers, "x-forwarded-for"),
        ..AccessRecord::new(std::time::SystemTime::now(), conn.peer)
    };
    // After an upgrade offer that was not stripped, bytes behind the request may be
    // upgrade payload (a smuggled request): unless a tunnel follows, the connection
    // carries no further request (Envoy: saw_connection_close_ for a rejected upgrade;
    // its codec never parses past an upgrade request).
    let close_after = offer.closes_unless_tunnelled();
    // The CORS filter's response headers, once it has seen the request (`cors`).
    let cors_out: OnceLock<cors::Decoration> = OnceLock::new();
    // A gRPC client gets the gateway's own answers as gRPC trailers-only responses.
    let grpc_request = grpc::is_grpc(&parts.headers);
    let done =
        |mut log: AccessRecord, mut resp: Response<Body>| -> Result<Response<Body>, Infallible> {
            if grpc_request && let Some(status) = grpc::to_trailers_only(&mut resp) {
                log.grpc_status = Some(status);
            }
            if let Some(d) = cors_out.get() {
                d.apply(resp.headers_mut());
            }
            if close_after && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(finish(log, resp, started, received.clone(), conn.clone()))
        };

    // Istio's request normalization (issue 15), before anything reads the request:
    // routing, AuthorizationPolicy, rewrites, the access log and metrics all see the
    // normalized path, and so does the upstream.
    if !normalize::method_ok(parts.method.as_str()) {
        log.details = "method_not_upper_case";
        return done(log, empty_reply(StatusCode::BAD_REQUEST));
    }
    match normalize::normalize_uri(plan.snapshot.mesh.normalization(), &parts.uri) {
        Ok(None) => {}
        Ok(Some(uri)) => {
            if let Some(pq) = uri.path_and_query() {
                log.path = pq.as_str().to_string();
            }
            parts.uri = uri;
        }
        Err(e) => {
            tracing::debug!(target: "gateway::http", path = %log.path, "path normalization failed: {e}");
            // Envoy: 400 with an empty body and details path_normalization_failed.
            log.details = normalize::PATH_NORMALIZATION_FAILED;
            return done(log, empty_reply(StatusCode::BAD_REQUEST));
        }
    }

    let Some(authority) = authority else {
        log.details = "missing_host_header";
        return done(
            log,
            local_reply(StatusCode::BAD_REQUEST, "missing host header"),
        );
    };
    let host = routing::normalize_host(&authority);
    // hyper only checks that a Host is visible ASCII; like Envoy, refuse one that is no
    // URI host before anything (a redirect) is built from it.
    if !routing::valid_request_host(&host) {
        log.details = "invalid_authority";
        return done(
            log,
            local_reply(StatusCode::BAD_REQUEST, "invalid authority"),
        );
    }
    // AuthorizationPolicy (Envoy's RBAC filter runs before the router).
    let authz = crate::authz::HttpAttrs {
        host: &authority,
        path: parts.uri.path(),
        method: parts.method.as_str(),
        headers: &parts.headers,
        sni: conn.sni.as_deref(),
    };
    if let crate::authz::Decision::Deny(why) = plan.authz.check_http(conn.peer, conn.port, authz) {
        log.response_flags.insert(ResponseFlag::RbacAccessDenied);
        log.details = match why {
            crate::authz::DenyReason::NoAllowMatch => "rbac_access_denied_matched_policy[none]",
            crate::authz::DenyReason::Rule(_) => "rbac_access_denied_matched_policy",
        };
        return done(
            log,
            local_reply(StatusCode::FORBIDDEN, "RBAC: access denied"),
        );
    }
    // HTTP/2 connection coalescing: a client may reuse a connection made for one name
    // for another the certificate also covers. Only the SNI's server may answer, or
    // its client-certificate policy could be bypassed: 421 tells the client to open a
    // new connection (RFC 9110 §15.5.20).
    if conn.tls && !conn.server_hosts.as_ref().is_some_and(|s| s.serves(&host)) {
        log.details = "misdirected_request";
        return done(
            log,
            local_reply(StatusCode::MISDIRECTED_REQUEST, "misdirected request\n"),
        );
    }
    let table = conn.table_in(&plan);
    let Some(vhost) = routing::find_vhost(&table, &host) else {
        log.response_flags.insert(ResponseFlag::NoRouteFound);
        log.details = "route_not_found";
        return done(log, empty_reply(StatusCode::NOT_FOUND));
    };
    let scheme = if conn.tls { "https" } else { "http" };
    if vhost.https_redirect && !conn.tls {
        // Envoy's `require_tls: ALL`: same host and path, https, default port.
        let loc = routing::https_redirect_location(&host, &log.path);
        log.details = "tls_redirect";
        return done(log, redirect_reply(StatusCode::MOVED_PERMANENTLY, &loc));
    }
    let query = parts.uri.query().map(str::to_string);
    let view = RequestView {
        method: parts.method.as_str(),
        scheme,
        path: parts.uri.path(),
        query: query.as_deref(),
        host: &host,
        port: conn.port,
        headers: &parts.headers,
    };
    let Some((route, matched)) = routing::find_route(vhost, &view) else {
        log.response_flags.insert(ResponseFlag::NoRouteFound);
        log.details = "route_not_found";
        return done(log, empty_reply(StatusCode::NOT_FOUND));
    };
    let route = route.clone();
    log.route_name = route.envoy_name(matched);
    // Envoy refuses an upgrade type it has no upgrade config for once the route is
    // known, before any filter runs: 403, empty body, `upgrade_failed`.
    if let Offer::Refused(what) = &offer {
        tracing::info!(
            target: "gateway::http",
            peer = %conn.peer,
            request_id = req_id.as_str(),
            upgrade = what.as_str(),
            "upgrade refused: not a configured upgrade type (see --upgrade-type); closing the connection"
        );
        log.details = "upgrade_failed";
        return done(log, empty_reply(StatusCode::FORBIDDEN));
    }
    guard.log = Some(log.clone());

    // Fault injection happens before the route's action, as Envoy's fault filter.
    if let Some((delay, pct)) = route.fault.delay
        && roll(pct)
    {
        log.response_flags.insert(ResponseFlag::DelayInjected);
        tokio::time::sleep(delay).await;
    }
    if let Some((status, pct)) = route.fault.abort
        && roll(pct)
    {
        log.response_flags.insert(ResponseFlag::FaultInjected);
        log.details = "fault_filter_abort";
        let mut resp = local_reply(status, "fault filter abort");
        route.response_headers.apply(resp.headers_mut());
        return done(log, resp);
    }
    // Istio's CORS filter comes after the fault filter.
    if let Some(c) = &route.cors {
        match c.decide(&parts.method, &parts.headers) {
            cors::Decision::Pass => {}
            cors::Decision::Decorate(d) => {
                let _ = cors_out.set(d);
            }
            cors::Decision::Answer(resp, d) => {
                if let Some(d) = d {
                    let _ = cors_out.set(d);
                }
                log.details = "cors_response";
                return done(log, resp.map(|()| empty()));
            }
        }
    }

    match &route.action {
        Action::Direct { status, body } => {
            log.details = "direct_response";
            let mut resp = Response::new(full(body.clone()));
            *resp.status_mut() = *status;
            if !body.is_empty() {
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            }
            route.response_headers.apply(resp.headers_mut());
            done(log, resp)
        }
        Action::Redirect(r) => {
            let loc = routing::redirect_location(
                r,
                scheme,
                &authority,
                parts.uri.path(),
                query.as_deref(),
                conn.port,
            );
            log.details = "redirect";
            let mut resp = redirect_reply(r.code.unwrap_or(StatusCode::MOVED_PERMANENTLY), &loc);
            route.response_headers.apply(resp.headers_mut());
            done(log, resp)
        }
        Action::Forward(dests) => {
            let matched_prefix = matched
                .and_then(|i| route.matches.get(i))
                .and_then(|m| match &m.uri {
                    Some(routing::StrMatch::Prefix(p)) => Some(p.clone()),
                    _ => None,
                });
            let path = match &route.rewrite {
                Some(rw) => routing::rewrite_path(parts.uri.path(), rw, matched_prefix.as_deref()),
                None => parts.uri.path().to_string(),
            };
            let dest = crate::lb::weighted::pick_random(dests, |d| u64::from(d.weight));
            let Some(dest) = dest else {
                log.response_flags.insert(ResponseFlag::NoRouteFound);
                log.details = "route_has_no_destination";
                return done(log, empty_reply(StatusCode::NOT_FOUND));
            };
            log.upstream_cluster = Some(dest.cluster.clone());

            // The request as the upstream sees it.
            // A permitted upgrade (websocket; Istio enables it on every route): the
            // Upgrade header survives, and the client's half of the connection is kept
            // for the tunnel. Hop-by-hop headers, and those `Connection` names, go
            // before the gateway adds its own below, so a client cannot remove those.
            let on_upgrade = match &offer {
                Offer::Permitted(_) => parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
                _ => None,
            };
            // Envoy keeps `te: trailers` (gRPC needs it upstream) and drops any other
            // TE value (`ConnectionManagerUtility::sanitizeTEHeader`).
            let te_trailers = parts.headers.get_all(header::TE).iter().any(|v| {
                v.to_str().is_ok_and(|v| {
                    v.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
                })
            });
            strip_hop_by_hop(&mut parts.headers);
            if te_trailers {
                parts
                    .headers
                    .insert(header::TE, HeaderValue::from_static("trailers"));
            }
            if let Offer::Permitted(u) = &offer {
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                parts.headers.insert(header::UPGRADE, u.clone());
            }
            let envoy_headers: Vec<HeaderName> = parts
                .headers
                .keys()
                .filter(|k| k.as_str().starts_with("x-envoy-"))
                .cloned()
                .collect();
            for k in envoy_headers {
                parts.headers.remove(k);
            }
            if internal {
                parts
                    .headers
                    .insert("x-envoy-internal", HeaderValue::from_static("true"));
            }
            // Istio gateways: forwardClientCertDetails SANITIZE_SET.
            parts.headers.remove("x-forwarded-client-cert");
            if let Some(xfcc) = &conn.client_cert {
                parts
                    .headers
                    .insert("x-forwarded-client-cert", xfcc.clone());
            }
            let host_value = match route.rewrite.as_ref().and_then(|r| r.authority.clone()) {
                Some(a) => a,
                None => HeaderValue::from_str(&authority)
                    .unwrap_or_else(|_| HeaderValue::from_static("")),
            };
            parts.headers.insert(header::HOST, host_value);
            let peer_ip = conn.peer.ip().to_string();
            let xff = match header_str(&parts.headers, "x-forwarded-for") {
                Some(prev) => format!("{prev}, {peer_ip}"),
                None => peer_ip,
            };
            log.x_forwarded_for = Some(xff.clone());
            if let Ok(v) = HeaderValue::from_str(&xff) {
                parts.headers.insert("x-forwarded-for", v);
            }
            parts
                .headers
                .insert("x-forwarded-proto", HeaderValue::from_static(scheme));
            if let Ok(v) = HeaderValue::from_str(&req_id) {
                parts.headers.insert("x-request-id", v);
            }
            route.request_headers.apply(&mut parts.headers);
            dest.request_headers.apply(&mut parts.headers);
            let path_and_query = match &query {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let mut body = body;
            let mirrors = match offer {
                Offer::Permitted(_) => Vec::new(),
                _ => mirror::roll(&route.mirrors),
            };
            if !mirrors.is_empty() {
                let copy = mirror::Copy {
                    method: parts.method.clone(),
                    headers: parts.headers.clone(),
                    path_and_query: path_and_query.clone(),
                    timeout: route.timeout,
                    client_h2: parts.version == Version::HTTP_2,
                };
                let copied = body.tee(mirror::BUFFER_LIMIT);
                mirror::spawn(gw.clone(), plan.clone(), mirrors, copy, copied);
            }

            let up = upstream::forward(
                (&gw, &plan),
                &conn,
                &route,
                (&dest.cluster, parts.version == Version::HTTP_2),
                parts.method.clone(),
                parts.headers,
                path_and_query,
                body,
                on_upgrade,
                &mut log,
            )
            .await;
            let mut resp = up;
            route.response_headers.apply(resp.headers_mut());
            dest.response_headers.apply(resp.headers_mut());
            done(log, resp)
        }
    }
}

fn roll(pct: f64) -> bool {
    pct >= 100.0 || fastrand::f64() * 100.0 < pct
}

fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

fn header_str(h: &HeaderMap, name: impl header::AsHeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

pub(super) fn local_reply(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp.extensions_mut().insert(grpc::LocalReply(body));
    resp
}

/// Envoy's NR 404 has an empty body.
fn empty_reply(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    resp.extensions_mut().insert(grpc::LocalReply(""));
    resp
}

fn redirect_reply(status: StatusCode, location: &str) -> Response<Body> {
    let mut resp = empty_reply(status);
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Stamps the response (status into the log, `server` header) and wraps its body so
/// the log line is written when the body is done.
fn finish(
    mut log: AccessRecord,
    mut resp: Response<Body>,
    started: Instant,
    received: Arc<AtomicU64>,
    conn: Arc<ConnCtx>,
) -> Response<Body> {
    log.status = resp.status().as_u16();
    resp.headers_mut()
        .insert(header::SERVER, HeaderValue::from_static("gateway"));
    let (parts, body) = resp.into_parts();
    let body = LoggedBody {
        inner: body,
        log: Some(log),
        started,
        received,
        sent: 0,
        conn,
    };
    Response::from_parts(parts, body.boxed_unsync())
}

#[cfg(test)]
mod tests;

//! Forwarding upstream: the pooled HTTP/1.1 client, Istio's retry policy and route /
//! per-try timeouts around it, what each failure becomes (UF, UC, UT, URX, UPE), and
//! the switch to a tunnel when an upstream accepts a permitted upgrade.
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode, Version,
    body::{Body as HttpBody, Bytes, Incoming},
    header::{self, HeaderValue},
};

use super::{
    AccessRecord, ResponseFlag,
    body::{Body, BoxError, CountingBody, DeadlineBody, empty, full},
    proxy::{ConnCtx, local_reply, strip_hop_by_hop},
    upgrade,
};
use crate::lb::outlier::Outcome;
use crate::{
    plan::{
        Plan,
        routing::{self, Route},
    },
    server::Gateway,
};

pub use super::upstream_tls::UpstreamClient;

/// The Plan's upstream client (its connection pools), built on the first request.
pub fn client(plan: &Plan, connect_timeout: std::time::Duration) -> &UpstreamClient {
    plan.http
        .upstream(|| UpstreamClient::new(connect_timeout, &plan.snapshot))
}

/// Request bodies up to this size are buffered so that a retry can resend them
/// (Envoy buffers for retries too); larger or unsized bodies stream, recorded up to
/// this size ([`super::replay`]): a retry resends one that ended within it.
const RETRY_BUFFER_LIMIT: u64 = 64 * 1024;

/// A permitted upgrade offer on its way upstream.
struct Upgrade {
    /// The client's half of the connection.
    down: hyper::upgrade::OnUpgrade,
    /// The `Upgrade` value sent upstream.
    asked: Option<HeaderValue>,
    idle: Option<Duration>,
    /// For the tunnel: the gateway (whose drain closes it) and the listener's port
    /// (whose gauges count it).
    gw: std::sync::Arc<Gateway>,
    port: u16,
    /// The listener's drain, whose deadline closes the tunnel.
    drain: std::sync::Arc<crate::sys::drain::Drain>,
}

/// How one try ended.
enum TryOutcome {
    Response(Response<Incoming>, Duration),
    ConnectFailure(String),
    Reset(String),
    Timeout,
}

/// Sends the request to an endpoint of `cluster`, retrying per the route's policy,
/// within the route's timeout. Returns the response to send downstream.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    (gw, plan): (&std::sync::Arc<Gateway>, &Plan),
    conn: &ConnCtx,
    route: &Route,
    (cluster, client_h2): (&str, bool),
    method: Method,
    headers: HeaderMap,
    path_and_query: String,
    body: CountingBody,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    log: &mut AccessRecord,
) -> Response<Body> {
    // A gRPC request's `grpc-timeout`, capped by the route's timeout (Envoy's
    // max_grpc_timeout as Istio sets it), else the route's.
    let deadline = super::grpc::request_timeout(route.timeout, &headers)
        .map(|t| tokio::time::Instant::now() + t);
    // What the tunnel needs if the upstream switches protocols: the client's half of
    // the connection, the type it asked for, the idle timeout.
    let upgrade = on_upgrade.map(|down| Upgrade {
        down,
        asked: headers.get(header::UPGRADE).cloned(),
        idle: gw.opts.http.upgrade_idle_timeout,
        gw: gw.clone(),
        port: conn.port,
        drain: conn.drain.clone(),
    });
    let body_timed_out = body.timed_out.clone();
    // Buffer small bodies so they can be replayed on retry.
    let (replay, mut streaming): (Option<Bytes>, Option<CountingBody>) = if body.is_end_stream() {
        (Some(Bytes::new()), None)
    } else if body
        .size_hint()
        .upper()
        .is_some_and(|n| n <= RETRY_BUFFER_LIMIT)
    {
        match body.collect().await {
            Ok(b) => (Some(b.to_bytes()), None),
            Err(_) if body_timed_out.load(std::sync::atomic::Ordering::Relaxed) => {
                return stream_idle_timeout(log);
            }
            Err(_) => {
                log.response_flags
                    .insert(ResponseFlag::DownstreamConnectionTermination);
                log.details = "downstream_body_error";
                return local_reply(StatusCode::BAD_REQUEST, "request body error");
            }
        }
    } else {
        (None, Some(body))
    };
    let policy = &route.retry;
    let max_tries = 1 + policy.retries;
    // The streamed body's copy, for a retry (`None` until it starts streaming).
    let mut recording: Option<super::replay::Recording> = None;

    // Consistent hashing: the request's hash, once (retries hash the same).
    let lb_hash = plan
        .balancers
        .get(cluster)
        .and_then(|b| b.policy.hash_key())
        .map(|k| {
            crate::plan::hash_policy::request_hash(
                k,
                &headers,
                &path_and_query,
                conn.peer,
                conn.local,
            )
        })
        .unwrap_or_default();
    let mut last = None;
    let mut tried = Vec::new();
    // The retry's slot of the cluster's `maxRetries`, held through its back-off.
    let mut retry_slot = None;
    for attempt in 0..max_tries {
        if attempt > 0 {
            let pause = policy.backoff(attempt, fastrand::f64());
            if deadline.is_some_and(|d| tokio::time::Instant::now() + pause >= d) {
                break;
            }
            tokio::time::sleep(pause).await;
            drop(retry_slot.take());
        }
        // The cluster's circuit breakers (DestinationRule connectionPool), per try.
        let admission = match admit(plan, cluster, deadline, log).await {
            Ok(a) => a,
            Err(resp) => return resp,
        };
        let picked = match pick_untried(plan, cluster, lb_hash.hash, &tried) {
            crate::lb::Pick::Endpoint(p) => p,
            // Envoy's router for a route whose cluster does not exist (a subset no
            // DestinationRule defines): 503, empty body, NC, `cluster_not_found`.
            crate::lb::Pick::NoCluster => {
                log.response_flags.insert(ResponseFlag::NoClusterFound);
                log.details = "cluster_not_found";
                let mut resp = local_reply(StatusCode::SERVICE_UNAVAILABLE, "");
                resp.headers_mut().remove(header::CONTENT_TYPE);
                return resp;
            }
            crate::lb::Pick::NoHealthy => {
                log.response_flags.insert(ResponseFlag::NoHealthyUpstream);
                log.details = "no_healthy_upstream";
                return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
            }
        };
        let endpoint = picked.addr;
        tried.push(endpoint);
        log.upstream_host = Some(endpoint);
        let target = match client(plan, gw.opts.connect_timeout).for_cluster(cluster, client_h2) {
            Ok(t) => t,
            Err(why) => {
                tracing::info!(target: "gateway::http", cluster, %endpoint, "upstream TLS origination is not set up: {why}");
                log.response_flags
                    .insert(ResponseFlag::UpstreamConnectionFailure);
                log.details = "upstream_reset_before_response_started{connection_failure}";
                return local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                );
            }
        };
        let body = match (&replay, streaming.take()) {
            (Some(b), _) if b.is_empty() => empty(),
            (Some(b), _) => full(b.clone()),
            // A body of unknown length is recorded for a retry; one known to be
            // larger than the buffer could never be resent, and is not.
            (None, Some(s)) if s.size_hint().upper().is_none() => {
                let (tee, rec) = super::replay::tee(s, RETRY_BUFFER_LIMIT as usize);
                recording = Some(rec);
                tee.map_err(BoxError::from).boxed_unsync()
            }
            (None, Some(s)) => s.map_err(BoxError::from).boxed_unsync(),
            // A retry of a streamed body (only when it was recorded whole: `more`).
            (None, None) => recording
                .as_ref()
                .and_then(super::replay::Recording::replay)
                .map_or_else(empty, full),
        };
        let mut req = Request::new(body);
        *req.method_mut() = method.clone();
        *req.headers_mut() = headers.clone();
        let req = match target.request(endpoint, &path_and_query, req) {
            Ok(r) => r,
            Err(_) => {
                log.details = "invalid_upstream_uri";
                return local_reply(StatusCode::BAD_REQUEST, "invalid request path");
            }
        };

        let per_try = match (policy.per_try_timeout, deadline) {
            (Some(p), Some(d)) => Some((tokio::time::Instant::now() + p).min(d)),
            (Some(p), None) => Some(tokio::time::Instant::now() + p),
            (None, d) => d,
        };
        let sent_at = Instant::now();
        let call = target.send(endpoint, req);
        let result = match per_try {
            Some(at) => tokio::time::timeout_at(at, call).await.ok(),
            None => Some(call.await),
        };
        let outcome = match result {
            None => TryOutcome::Timeout,
            Some(Ok(resp)) => TryOutcome::Response(resp, sent_at.elapsed()),
            Some(Err(e)) if e.connect => {
                if target.tls() {
                    // Envoy logs a TLS error (`TLS_error:...`) as the connection failure.
                    tracing::info!(target: "gateway::http", cluster, %endpoint, "upstream TLS connection failed: {}", e.message);
                }
                TryOutcome::ConnectFailure(e.message)
            }
            Some(Err(e)) => TryOutcome::Reset(e.message),
        };
        // Outlier detection (`lb::outlier`).
        picked.report(match &outcome {
            TryOutcome::Response(r, _) => Outcome::Response(r.status().as_u16()),
            TryOutcome::ConnectFailure(_) | TryOutcome::Reset(_) => Outcome::ConnectFailed,
            TryOutcome::Timeout => Outcome::Timeout,
        });
        // A streamed body that the client stopped sending: the upstream request was
        // abandoned because of it, whatever the upstream call reports.
        if !matches!(outcome, TryOutcome::Response(..))
            && body_timed_out.load(std::sync::atomic::Ordering::Relaxed)
        {
            return stream_idle_timeout(log);
        }
        // A streamed body can be sent again only if it ended and fit the buffer.
        let more = attempt + 1 < max_tries
            && (replay.is_some()
                || recording
                    .as_ref()
                    .is_some_and(super::replay::Recording::replayable));
        let overall_expired = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
        let retry = more
            && !overall_expired
            && match &outcome {
                TryOutcome::Response(r, _) => policy
                    .retries_status(r.status().as_u16(), super::body::grpc_status(r.headers())),
                TryOutcome::ConnectFailure(_) => policy.retries_connect_failure(),
                TryOutcome::Reset(_) | TryOutcome::Timeout => policy.retries_reset(),
            };
        // The cluster's retry circuit breaker (`http.maxRetries`): no slot, no retry,
        // and the response at hand goes out with `UO` (Envoy RetryStatus::NoOverflow).
        let retry = retry && {
            let pool = plan.balancers.get(cluster).and_then(|b| b.pool.as_ref());
            match pool.map(|p| p.retry()) {
                None => true,
                Some(Some(slot)) => {
                    retry_slot = Some(slot);
                    true
                }
                Some(None) => {
                    log.response_flags.insert(ResponseFlag::UpstreamOverflow);
                    false
                }
            }
        };
        if retry {
            tracing::debug!(target: "gateway::http", %endpoint, attempt, "retrying upstream request");
            last = Some(outcome);
            continue;
        }
        // Retries were available but ran out on a retriable outcome.
        let exhausted = attempt > 0 && !more && retriable(policy, &outcome);
        if exhausted {
            log.response_flags
                .insert(ResponseFlag::UpstreamRetryLimitExceeded);
        }
        let answered = matches!(outcome, TryOutcome::Response(..));
        let resp = respond_upstream(outcome, overall_expired, deadline, upgrade, log);
        return hold_until_done(
            resp,
            (picked, admission),
            answered.then_some(lb_hash.set_cookie).flatten(),
        );
    }
    // The deadline cut the back-off short.
    log.response_flags
        .insert(ResponseFlag::UpstreamRetryLimitExceeded);
    match last {
        Some(outcome) => respond_upstream(outcome, true, deadline, None, log),
        None => local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
    }
}

/// Admission by the cluster's circuit breakers (`lb::pool`), waiting at most until the
/// route's deadline. Overflow is Envoy's answer to a pool failure of reason Overflow
/// (router `onUpstreamReset`): 503, flag `UO`, the reset reason "overflow".
async fn admit(
    plan: &Plan,
    cluster: &str,
    deadline: Option<tokio::time::Instant>,
    log: &mut AccessRecord,
) -> Result<Option<crate::lb::pool::Admission>, Response<Body>> {
    let Some(pool) = plan.balancers.get(cluster).and_then(|b| b.pool.clone()) else {
        return Ok(None);
    };
    let admitted = match deadline {
        Some(at) => match tokio::time::timeout_at(at, pool.admit()).await {
            Ok(r) => r,
            Err(_) => {
                log.response_flags
                    .insert(ResponseFlag::UpstreamRequestTimeout);
                log.details = "upstream_response_timeout";
                return Err(local_reply(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream request timeout",
                ));
            }
        },
        None => pool.admit().await,
    };
    match admitted {
        Ok(a) => Ok(Some(a)),
        Err(crate::lb::pool::Overflow) => {
            log.response_flags.insert(ResponseFlag::UpstreamOverflow);
            log.details = "upstream_reset_before_response_started{overflow}";
            Err(local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            ))
        }
    }
}

/// Istio's retry policy asks Envoy for `previous_hosts` with
/// `host_selection_retry_max_attempts: 5` (`retryIgnorePreviousHosts` defaults to true,
/// pilot/pkg/networking/core/route/retry): a retry re-picks up to 5 times to find an
/// endpoint not tried yet, then takes the last pick.
fn pick_untried(
    plan: &Plan,
    cluster: &str,
    hash: Option<u64>,
    tried: &[std::net::SocketAddr],
) -> crate::lb::Pick {
    let mut pick = plan.pick_endpoint(cluster, hash);
    for _ in 0..5 {
        match &pick {
            crate::lb::Pick::Endpoint(p) if tried.contains(&p.addr) => {
                pick = plan.pick_endpoint(cluster, hash);
            }
            _ => break,
        }
    }
    pick
}

/// The response with the endpoint counted active (LEAST_REQUEST) until its body is done
/// or dropped, and the consistent-hash cookie the gateway generated, if any.
fn hold_until_done(
    resp: Response<Body>,
    picked: (crate::lb::Picked, Option<crate::lb::pool::Admission>),
    set_cookie: Option<HeaderValue>,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    if let Some(c) = set_cookie {
        parts.headers.append(header::SET_COOKIE, c);
    }
    let body = body
        .map_frame(move |f| {
            let _held = &picked;
            f
        })
        .boxed_unsync();
    Response::from_parts(parts, body)
}

/// Envoy's answer when the stream idle timeout fires before the response started
/// (`ConnectionManagerImpl::ActiveStream::onIdleTimeout`): 408 "stream timeout", flag
/// `SI`, details `stream_idle_timeout`; the connection is not reused (the rest of the
/// request body was never read).
fn stream_idle_timeout(log: &mut AccessRecord) -> Response<Body> {
    log.response_flags.insert(ResponseFlag::StreamIdleTimeout);
    log.details = "stream_idle_timeout";
    let mut resp = local_reply(StatusCode::REQUEST_TIMEOUT, "stream timeout");
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn retriable(policy: &routing::RetryPolicy, outcome: &TryOutcome) -> bool {
    match outcome {
        TryOutcome::Response(r, _) => {
            policy.retries_status(r.status().as_u16(), super::body::grpc_status(r.headers()))
        }
        TryOutcome::ConnectFailure(_) => policy.retries_connect_failure(),
        TryOutcome::Reset(_) | TryOutcome::Timeout => policy.retries_reset(),
    }
}

fn respond_upstream(
    outcome: TryOutcome,
    overall_expired: bool,
    deadline: Option<tokio::time::Instant>,
    upgrade: Option<Upgrade>,
    log: &mut AccessRecord,
) -> Response<Body> {
    match outcome {
        TryOutcome::Response(mut resp, took) => {
            log.upstream_service_time = Some(took);
            log.upstream_local = resp
                .extensions()
                .get::<hyper_util::client::legacy::connect::HttpInfo>()
                .map(|i| i.local_addr());
            log.grpc_status = super::body::grpc_status(resp.headers());
            let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            let accepted = resp.headers().get(header::UPGRADE).cloned();
            let tunnel = match upgrade {
                Some(u) if switched && same_token(u.asked.as_ref(), accepted.as_ref()) => Some((
                    u.down,
                    hyper::upgrade::on(&mut resp),
                    u.idle,
                    u.gw,
                    (u.port, u.drain),
                )),
                _ => None,
            };
            if switched && tunnel.is_none() {
                return unasked_switch(resp, accepted, log);
            }
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            // An HTTP/2 stream stays counted against its connection's
            // `maxConcurrentStreams` until the body is done or dropped.
            let open = parts.extensions.remove::<super::upstream_h2::OpenStream>();
            if let Some((down, up, idle, gw, (port, drain))) = tunnel {
                if let Some(u) = accepted {
                    parts
                        .headers
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    parts.headers.insert(header::UPGRADE, u);
                }
                // The client's connection lives on in the tunnel: it stays counted
                // (gauges, caps, the drain), and is closed at the drain deadline.
                let held = crate::server::Active::hold(&gw, port);
                let closing = drain.closing_token();
                let id = log.request_id.clone();
                tokio::spawn(async move {
                    let _held = held;
                    upgrade::run_tunnel(down, up, idle, id, closing).await
                });
            }
            parts.version = Version::default();
            if let Ok(v) = HeaderValue::from_str(&took.as_millis().to_string()) {
                parts.headers.insert("x-envoy-upstream-service-time", v);
            }
            let body = body
                .map_err(BoxError::from)
                .map_frame(move |f| {
                    let _open = &open;
                    f
                })
                .boxed_unsync();
            let body = match deadline {
                // Envoy's route timeout lasts until the response is complete.
                Some(at) => DeadlineBody {
                    inner: body,
                    sleep: Box::pin(tokio::time::sleep_until(at)),
                }
                .boxed_unsync(),
                None => body,
            };
            Response::from_parts(parts, body)
        }
        TryOutcome::ConnectFailure(e) => {
            tracing::debug!(target: "gateway::http", error = %e, "upstream connect failed");
            log.response_flags
                .insert(ResponseFlag::UpstreamConnectionFailure);
            log.details = "upstream_reset_before_response_started{connection_failure}";
            local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            )
        }
        TryOutcome::Reset(e) => {
            tracing::debug!(target: "gateway::http", error = %e, "upstream reset");
            log.response_flags
                .insert(ResponseFlag::UpstreamConnectionTermination);
            log.details = "upstream_reset_before_response_started{connection_termination}";
            local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
            )
        }
        TryOutcome::Timeout => {
            log.response_flags
                .insert(ResponseFlag::UpstreamRequestTimeout);
            log.details = if overall_expired {
                "upstream_response_timeout"
            } else {
                "upstream_per_try_timeout"
            };
            local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
        }
    }
}

/// True if the upstream switched to the type that was asked for (ignoring case).
fn same_token(asked: Option<&HeaderValue>, accepted: Option<&HeaderValue>) -> bool {
    matches!((asked, accepted), (Some(a), Some(b)) if a.as_bytes().eq_ignore_ascii_case(b.as_bytes()))
}

/// A 101 the request did not ask for (no permitted upgrade offer, or another type than
/// offered). Envoy's HTTP/1 client codec switches only for a request that offered an
/// upgrade (`ClientConnectionImpl::upgradeAllowed`, source/common/http/http1/codec_impl.cc),
/// so anything after such a 101 is an upstream protocol error: the client gets 502
/// (`UPE`), the upstream connection is closed, never reused or tunnelled.
fn unasked_switch(
    mut resp: Response<Incoming>,
    accepted: Option<HeaderValue>,
    log: &mut AccessRecord,
) -> Response<Body> {
    let upstream = log.upstream_host;
    let request_id = log.request_id.clone();
    tracing::info!(
        target: "gateway::http",
        request_id,
        upstream = %upstream.map(|u| u.to_string()).unwrap_or_default(),
        upgrade = %accepted.as_ref().map(|u| String::from_utf8_lossy(u.as_bytes()).into_owned()).unwrap_or_default(),
        "upstream switched protocols unasked (101); closing its connection (UPE)"
    );
    // hyper hands over the switched connection only through the upgrade: take it and
    // shut it down, so it is closed now rather than whenever it is dropped.
    let up = hyper::upgrade::on(&mut resp);
    drop(resp);
    tokio::spawn(async move {
        if let Ok(Ok(io)) = tokio::time::timeout(Duration::from_secs(5), up).await {
            use tokio::io::AsyncWriteExt;
            let mut io = hyper_util::rt::TokioIo::new(io);
            let _ = io.shutdown().await;
        }
    });
    log.response_flags
        .insert(ResponseFlag::UpstreamProtocolError);
    log.details = "upstream_reset_before_response_started{protocol_error}";
    local_reply(
        StatusCode::BAD_GATEWAY,
        "upstream connect error or disconnect/reset before headers. reset reason: protocol error",
    )
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

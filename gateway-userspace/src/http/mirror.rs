//! `mirror`, `mirrorPercentage` / `mirrorPercent` and `mirrors[]`: a fire-and-forget
//! copy of a forwarded request, as Istio builds Envoy's `request_mirror_policies`
//! (pilot/pkg/networking/core/route/route.go) and Envoy's router sends them
//! (source/common/router/shadow_writer_impl.cc):
//!
//! - `mirror` with `mirrorPercentage` (or the legacy integer `mirrorPercent`), then each
//!   of `mirrors[]` with its own `percentage`; an unset share is 100 %, an explicit 0
//!   sends nothing (Istio drops that policy). Shares are per million (Istio's
//!   FractionalPercent, denominator MILLION), rolled independently per mirror.
//! - Only routes that forward (`route[]`) mirror: Istio puts the policies in the
//!   RouteAction, which redirects and direct responses do not have.
//! - The copy carries the request as the primary upstream gets it (method, path after
//!   rewrites, headers after the route's and destination's header operations) with
//!   `-shadow` appended to the host part of `Host` (`a.example.com:8080` becomes
//!   `a.example.com-shadow:8080`, Envoy's shadowAppendedHost). Its answer is read and
//!   discarded; its failure never touches the primary, which is not delayed by it.
//! - The body: Envoy's router (buffered shadows) keeps a copy of the request body up to
//!   the connection's buffer limit, 1 MiB by default, and sends the shadow once the
//!   body is complete; a larger body abandons the shadows (`retry_or_shadow_abandoned`).
//!   So does this gateway, with [`BUFFER_LIMIT`]; abandoned copies are counted in
//!   `gateway_mirror_requests_total{outcome="abandoned"}`.
//! - Timeout: the route's `timeout` (Envoy gives the shadow the route's global timeout);
//!   without one, the stream idle timeout, so a mirror that never answers cannot hold
//!   a task forever. Envoy writes no access-log line for a shadow (its async client has
//!   no access log), nor does this gateway: outcomes are counted in
//!   `gateway_mirror_requests_total` and logged at debug level (`gateway::mirror`).
//! - Upgrade requests (websocket) are not mirrored: a copy cannot take over the
//!   client's connection.
use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use http_body_util::BodyExt;
use hyper::{
    HeaderMap, Method, Request,
    body::Bytes,
    header::{self, HeaderValue},
};

use super::body::full;
pub use crate::config::mirror::Mirror;
use crate::{plan::Plan, server::Gateway};

/// The most request body copied for the mirrors: Envoy's default connection buffer
/// limit (`per_connection_buffer_limit_bytes`, 1 MiB), which bounds its shadow buffer.
pub const BUFFER_LIMIT: usize = 1024 * 1024;

/// The mirrors chosen for one request (each rolled on its own share).
pub fn roll(mirrors: &[Mirror]) -> Vec<String> {
    mirrors
        .iter()
        .filter(|m| m.per_million >= 1_000_000 || fastrand::u32(0..1_000_000) < m.per_million)
        .map(|m| m.cluster.clone())
        .collect()
}

/// Envoy's shadowAppendedHost: `-shadow` after the host, before any port
/// (HeaderUtility::getPortStart: the last `:` unless it is inside an IPv6 literal).
pub fn shadow_host(host: &str) -> String {
    let port_start = host
        .rfind(':')
        .filter(|&i| host.rfind(']').is_none_or(|v6_end| v6_end < i));
    match port_start {
        Some(i) => format!("{}-shadow{}", &host[..i], &host[i..]),
        None => format!("{host}-shadow"),
    }
}

/// One request to copy to `clusters` once its body is complete.
pub struct Copy {
    pub method: Method,
    pub headers: HeaderMap,
    pub path_and_query: String,
    pub timeout: Option<Duration>,
    /// The client spoke HTTP/2 (for a cluster with `useClientProtocol`).
    pub client_h2: bool,
}

/// Sends the copy to each cluster in the background; nothing here reaches the
/// primary request.
pub fn spawn(
    gw: Arc<Gateway>,
    plan: Arc<Plan>,
    clusters: Vec<String>,
    mut copy: Copy,
    body: tokio::sync::oneshot::Receiver<Bytes>,
) {
    let host = copy
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(shadow_host)
        .and_then(|h| HeaderValue::from_str(&h).ok());
    if let Some(h) = host {
        copy.headers.insert(header::HOST, h);
    }
    let copy = Arc::new(copy);
    tokio::spawn(async move {
        let stats = &gw.stats.mirror;
        let Ok(body) = body.await else {
            tracing::debug!(target: "gateway::mirror", clusters = ?clusters, "request body not copied in full (over the mirror buffer, failed or unread): mirror abandoned");
            stats
                .abandoned
                .fetch_add(clusters.len() as u64, Ordering::Relaxed);
            return;
        };
        for cluster in clusters {
            let (gw, plan, copy, body) = (gw.clone(), plan.clone(), copy.clone(), body.clone());
            tokio::spawn(async move { send_one(&gw, &plan, &cluster, &copy, body).await });
        }
    });
}

async fn send_one(gw: &Gateway, plan: &Plan, cluster: &str, copy: &Copy, body: Bytes) {
    let stats = &gw.stats.mirror;
    // The mirror cluster's own load balancer (its DestinationRule's policy; a hash
    // policy has no key here, so a hashing cluster picks at random). The pick counts
    // as an active request (LEAST_REQUEST) until the copy is done.
    let picked = match plan.pick_endpoint(cluster, None) {
        crate::lb::Pick::Endpoint(p) => p,
        crate::lb::Pick::NoCluster | crate::lb::Pick::NoHealthy => {
            tracing::debug!(target: "gateway::mirror", cluster, "mirror cluster has no endpoint");
            stats.no_endpoint.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let endpoint = picked.addr;
    let client = super::upstream::client(plan, gw.opts.connect_timeout);
    let Ok(target) = client.for_cluster(cluster, copy.client_h2) else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut req = Request::new(full(body));
    *req.method_mut() = copy.method.clone();
    *req.headers_mut() = copy.headers.clone();
    let Ok(req) = target.request(endpoint, &copy.path_and_query, req) else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let exchange = async {
        let resp = target.send(endpoint, req).await.map_err(|e| e.message)?;
        let status = resp.status();
        // Read to the end so the connection can be reused; the bytes are dropped.
        resp.into_body().collect().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status)
    };
    let timeout = copy
        .timeout
        .or(gw.opts.http.stream_idle_timeout)
        .unwrap_or(Duration::from_secs(300));
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(status)) => {
            tracing::debug!(target: "gateway::mirror", cluster, %endpoint, status = status.as_u16(), "mirror answered");
            stats.answered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(e)) => {
            tracing::debug!(target: "gateway::mirror", cluster, %endpoint, error = %e, "mirror failed");
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            tracing::debug!(target: "gateway::mirror", cluster, %endpoint, ?timeout, "mirror timed out");
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_goes_before_the_port() {
        assert_eq!(shadow_host("a.example.com"), "a.example.com-shadow");
        assert_eq!(
            shadow_host("a.example.com:8080"),
            "a.example.com-shadow:8080"
        );
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_host("[::1]"), "[::1]-shadow");
        assert_eq!(shadow_host("10.0.0.1:80"), "10.0.0.1-shadow:80");
    }

    #[test]
    fn roll_respects_the_share() {
        let never = [Mirror {
            cluster: "c".into(),
            per_million: 0,
        }];
        let always = [Mirror {
            cluster: "c".into(),
            per_million: 1_000_000,
        }];
        for _ in 0..1000 {
            assert!(roll(&never).is_empty());
            assert_eq!(roll(&always).len(), 1);
        }
    }
}

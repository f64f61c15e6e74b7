//! The admin API (127.0.0.1:15000 by default, like Envoy's admin port): readiness,
//! Prometheus stats (Istio's metrics and the gateway's own), the Envoy-shaped config
//! dump `gateway proxy-config` reads, and the splice's kernel-side state.
//!
//! Istio's two other ports are here too ([`serve_istio_port`]): the status port
//! (`/healthz/ready`, 15021) and the Prometheus port (`/stats/prometheus`, 15090),
//! which serves the same text as the admin port's `/stats/prometheus`
//! ([`prometheus_text`]).
//!
//! `POST /debug/kernel_log?redirects=on|off` switches the kernel program's per-redirect
//! aya-log record ("splice: redirected cookie=.. len=..", info level) on or off: a
//! debugging aid that costs one ring-buffer record per skb, off by default.
use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, header, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::{
    kernel::splice::Splicer,
    server::{Gateway, ReadyState},
};

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("admin bind {addr}: {e}")))
}

pub async fn serve(gw: Arc<Gateway>, listener: TcpListener) {
    serve_with(gw, listener, handle).await
}

/// Which of Istio's ports a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IstioPort {
    /// `/healthz/ready`: 200 once the config serves, 503 before and while draining.
    Status,
    /// `/stats/prometheus`: what the admin port serves there.
    Prometheus,
}

/// Serves one of Istio's ports. As Envoy's bootstrap routes them
/// (tools/packaging/common/envoy_bootstrap.json): one virtual host `*` with one route,
/// `prefix: /healthz/ready` (to pilot-agent, whose `handleReadyProbe` answers 200 or 503
/// with an empty body) or `prefix: /stats/prometheus` (to the admin port); any other
/// path has no route: 404.
pub async fn serve_istio_port(gw: Arc<Gateway>, listener: TcpListener, which: IstioPort) {
    let handler = move |gw: &Gateway, req: Request<hyper::body::Incoming>| {
        let path = req.uri().path();
        match which {
            IstioPort::Status if path.starts_with("/healthz/ready") => {
                let status = if gw.readiness.is_ready() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                reply(status, "text/plain", String::new())
            }
            IstioPort::Prometheus if path.starts_with("/stats/prometheus") => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                prometheus_text(gw),
            ),
            _ => reply(StatusCode::NOT_FOUND, "text/plain", String::new()),
        }
    };
    serve_with(gw, listener, handler).await
}

async fn serve_with<H>(gw: Arc<Gateway>, listener: TcpListener, handler: H)
where
    H: Fn(&Gateway, Request<hyper::body::Incoming>) -> Response<Full<Bytes>>
        + Copy
        + Send
        + Sync
        + 'static,
{
    let port = listener.local_addr().map_or(0, |a| a.port());
    let mut errors = crate::listener::ErrorLog::default();
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                // EMFILE and friends: back off rather than spin (and log rate-limited).
                errors.warn(port, &e);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let gw = gw.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(handler(&gw, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(conn), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

/// The Prometheus text of `/stats/prometheus`, on the admin port and the Prometheus
/// port alike: the gateway's own counters, Istio's metrics, the access logs' counters.
pub fn prometheus_text(gw: &Gateway) -> String {
    let mut out = gw
        .stats
        .render_prometheus(&gw.splicer, &gw.opts.bind.to_string());
    gw.telemetry.render_prometheus(&mut out);
    let plan = gw.plan();
    crate::telemetry::metrics::render_balancers(&plan.balancers, &mut out);
    crate::telemetry::metrics::render_config_warnings(&plan.snapshot.warnings, &mut out);
    plan.authz.prometheus(&mut out);
    crate::runtime::reload::render_prometheus(gw, &mut out);
    gw.readiness.render_prometheus(&mut out);
    out
}

fn handle(gw: &Gateway, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let json = |v: serde_json::Value| reply(StatusCode::OK, "application/json", format!("{v:#}\n"));
    match req.uri().path() {
        // Envoy's /ready: 200 `LIVE` once serving, else 503 and the state.
        "/ready" => match gw.readiness.get() {
            ReadyState::Serving => reply(StatusCode::OK, "text/plain", "LIVE\n".into()),
            ReadyState::Starting => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "INITIALIZING\n".into(),
            ),
            ReadyState::Draining => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "DRAINING\n".into(),
            ),
        },
        "/stats/prometheus" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            prometheus_text(gw),
        ),
        "/config_dump" => {
            json(crate::proxyconfig::config_dump(
                &gw.plan(),
                &gw.listen_addrs(),
                &gw.opts.istio_ports,
            ))
        }
        // Envoy's /logging, read-only: the levels come from RUST_LOG at start.
        "/logging" => reply(StatusCode::OK, "text/plain", crate::proxyconfig::active_loggers()),
        "/debug/kernel_log" => kernel_log(gw, &req),
        "/xdp" => json(gw.plan().authz.rules_view()),
        "/debug/splice/fault" if req.method() == hyper::Method::POST => splice_fault(gw, &req),
        "/debug/splice" => json(splice_view(&gw.splicer)),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "admin endpoints: /ready /stats/prometheus /config_dump /logging /debug/splice /debug/kernel_log\n".into(),
        ),
    }
}

/// `/debug/splice`: the mode, per-path counters, the kernel program's counters and map
/// sizes.
pub fn splice_view(splicer: &Splicer) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let p = splicer.paths();
    let path = |c: &crate::kernel::splice::PathCounters| {
        serde_json::json!({
            "active": c.active.load(Relaxed),
            "flows": c.flows.load(Relaxed),
            "bytes": c.bytes.load(Relaxed),
        })
    };
    let mut v = serde_json::json!({
        "mode": splicer.name(),
        "active_flows": p.kernel.active() + p.splice.active() + p.uring.active() + p.copy.active(),
        "paths": {
            "kernel": path(&p.kernel),
            "splice": path(&p.splice),
            "uring": path(&p.uring),
            "copy": path(&p.copy),
        },
        "offloads": p.offloads.load(Relaxed),
        "pauses": p.pauses.load(Relaxed),
        "paused_now": p.paused_now.load(Relaxed),
        "undelivered_bytes": p.undelivered.load(Relaxed),
        "integrity_resets": p.integrity.load(Relaxed),
        "fallbacks": p.fallbacks().iter().map(|(r, n)| (r.to_string(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
    });
    if let Some(o) = splicer.offload() {
        v["offload"] = serde_json::json!({ "min_bytes": o.min_bytes, "min_chunk": o.min_chunk });
    }
    if let Some(p) = splicer.pipe() {
        v["pipes"] = serde_json::to_value(p.stats()).unwrap_or_default();
    }
    if let Some(k) = splicer.kernel() {
        let (peers, spliced, flows) = k.map_entries();
        v["budget"] = k.budget().into();
        v["kernel"] = serde_json::to_value(k.kernel_stats()).unwrap_or_default();
        v["maps"] = serde_json::json!({ "PEERS": peers, "SPLICED": spliced, "FLOWS": flows });
    }
    v
}

/// `POST /debug/splice/fault?redirect=fail|off`: makes the kernel refuse every redirect
/// (for the tests of the failure path).
fn splice_fault(gw: &Gateway, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let Some(k) = gw.splicer.kernel() else {
        return reply(
            StatusCode::CONFLICT,
            "text/plain",
            "the kernel splice is not in use\n".into(),
        );
    };
    let want = req
        .uri()
        .query()
        .and_then(|q| crate::plan::routing::query_value(Some(q), "redirect"));
    let on = match want {
        Some("fail") => true,
        Some("off") => false,
        _ => {
            return reply(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "usage: POST /debug/splice/fault?redirect=fail|off\n".into(),
            );
        }
    };
    match k.set_fail_redirects(on) {
        Ok(()) => {
            tracing::warn!(
                "splice fault injection: redirects {}",
                if on { "fail" } else { "normal" }
            );
            reply(
                StatusCode::OK,
                "text/plain",
                format!("redirect={}\n", if on { "fail" } else { "off" }),
            )
        }
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{e}\n"),
        ),
    }
}

fn kernel_log(gw: &Gateway, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let Some(k) = gw.splicer.kernel() else {
        return reply(
            StatusCode::CONFLICT,
            "text/plain",
            "the kernel splice is not in use (--splice splice or uring, or eBPF unavailable)\n"
                .into(),
        );
    };
    if req.method() == hyper::Method::POST {
        let want = req
            .uri()
            .query()
            .and_then(|q| crate::plan::routing::query_value(Some(q), "redirects"));
        let on = match want {
            Some("on" | "1" | "true") => true,
            Some("off" | "0" | "false") => false,
            _ => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    "usage: POST /debug/kernel_log?redirects=on|off\n".into(),
                );
            }
        };
        if let Err(e) = k.set_trace_redirects(on) {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{e}\n"),
            );
        }
        tracing::info!(
            "kernel log: per-redirect records {}",
            if on { "on" } else { "off" }
        );
    }
    match k.trace_redirects() {
        Ok(on) => reply(
            StatusCode::OK,
            "application/json",
            format!("{}\n", serde_json::json!({ "redirects": on })),
        ),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{e}\n"),
        ),
    }
}

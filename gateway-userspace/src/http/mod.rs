//! HTTP/1.1 and HTTP/2 virtual hosting (hyper) with TLS termination (rustls): Gateway
//! servers with protocol HTTP/HTTP2/GRPC, and HTTPS servers with SIMPLE/MUTUAL/
//! OPTIONAL_MUTUAL TLS.
//!
//! Rooms: [`routing`] pure host/route matching over tables built once per snapshot,
//! [`tls`] rustls configs per HTTPS server (certificate, client-cert policy, versions,
//! suites), [`proxy`] the hyper service (local replies, header policy), [`upstream`]
//! the pooled client with retries/timeouts, [`upgrade`] which upgrades are tunnelled
//! (and the tunnel), [`body`] bodies that
//! count bytes and write the access-log record; this file is the glue:
//! per-connection TLS handshake (SNI picks the server), HTTP/1.1 vs h2 choice, and the
//! connection limits that keep bad clients from hurting good ones.
use std::{
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use crate::{
    config::Listener,
    plan::{Plan, http::ListenerHttp, tls},
    server::Gateway,
};

pub mod body;
mod conn;
mod drain;
pub mod grpc;
pub mod h1;
pub mod mirror;
pub mod proxy;
pub mod replay;
mod stream;
pub mod upgrade;
pub mod upstream;
pub mod upstream_conn;
pub mod upstream_h2;
pub mod upstream_tls;

/// The record of one request (moved to `telemetry`, which reports it).
pub use crate::telemetry::{AccessRecord, ResponseFlag};
pub use stream::Prelude;
use stream::{Counted, detect_h2};

/// Envoy's default `max_request_headers_kb` (60 KiB); beyond it: 431.
pub const MAX_REQUEST_HEADERS_BYTES: usize = 60 * 1024;
/// Envoy's default `max_headers_count`.
pub const MAX_REQUEST_HEADERS_COUNT: usize = 100;
/// A client must send its request head (HTTP/1.1) or connection preface (h2c) within
/// this long: slowloris clients are closed instead of holding a connection forever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent streams per HTTP/2 connection (Envoy's default is 2^31-1; Istio's
/// gateways are usually tuned down, and a bound keeps one client from taking all).
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

pub use crate::server::options::{
    DEFAULT_HTTP2_KEEPALIVE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_STREAM_IDLE_TIMEOUT, HttpOptions,
};

/// Serves one connection on an HTTP port (`tls == false`), or a TLS connection to be
/// terminated (`tls == true`). `prelude` holds bytes already read from the client (the
/// ClientHello on a port shared with TLS passthrough); they come before the socket's.
pub async fn serve(
    gw: Arc<Gateway>,
    plan: Arc<Plan>,
    listener: Arc<Listener>,
    stream: TcpStream,
    peer: SocketAddr,
    prelude: Vec<u8>,
    tls: bool,
) {
    let port = listener.port;
    let drain = gw.ports.drain_of(port);
    let generation = plan.generation;
    let Some(lh) = plan.http.listener(port).cloned() else {
        tracing::warn!(target: "gateway::http", %peer, port, "no HTTP state for this port; closing");
        return;
    };
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    // Bytes the client sent before its request is served; a connection with none when
    // the drain starts is closed.
    let read = Arc::new(std::sync::atomic::AtomicU64::new(prelude.len() as u64));
    // Requests look the Plan up again; the connection does not hold it.
    drop(plan);
    let io = Prelude::new(prelude, stream);

    if !tls {
        let detected = tokio::select! {
            biased;
            d = detect_h2(io, &read) => d,
            () = drain::closes_unused(&drain, fd, &read) => {
                tracing::debug!(target: "gateway::http", %peer, port, "closing a connection without a request: draining");
                return;
            }
        };
        let (io, h2) = match detected {
            Ok(v) => v,
            Err(e) => {
                tracing::info!(target: "gateway::http", %peer, port, "connection closed before a request: {e}");
                return;
            }
        };
        let table = (generation, lh.merged.clone());
        let telemetry = gw.telemetry.clone();
        let mut conn = proxy::ConnCtx::new(peer, port, None, None, table, drain, telemetry);
        conn.local = local;
        let conn = Arc::new(conn);
        return serve_http(gw, conn, io, h2).await;
    }
    // Boxed: the handshake and the TLS stream are large, and a task's future is as big
    // as its largest state, so inline they would cost every plain connection too.
    let at = (peer, port, local);
    Box::pin(serve_tls(gw, (generation, lh), io, read, fd, at, drain)).await
}

/// An HTTPS connection: reads the ClientHello (prelude first), picks the server by SNI,
/// finishes the handshake with that server's config, then serves HTTP.
#[allow(clippy::too_many_arguments)]
async fn serve_tls(
    gw: Arc<Gateway>,
    (generation, lh): (u64, Arc<ListenerHttp>),
    io: Prelude<TcpStream>,
    read: Arc<std::sync::atomic::AtomicU64>,
    fd: std::os::fd::RawFd,
    (peer, port, local): (SocketAddr, u16, Option<SocketAddr>),
    drain: Arc<crate::sys::drain::Drain>,
) {
    let io = Counted {
        inner: io,
        count: read.clone(),
    };
    let handshake = async {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        let sni = start.client_hello().server_name().map(str::to_string);
        let Some(index) = lh.by_sni.get(sni.as_deref()) else {
            return Err(io::Error::other(match sni.as_deref() {
                Some(sni) => format!("no HTTPS server for SNI {sni:?}"),
                // Envoy: no filter chain matches, the connection is closed.
                None => "no SNI, and no HTTPS server on this port has host \"*\" (no filter chain matches: closed, as Envoy does)".to_string(),
            }));
        };
        let Some(server) = lh.servers.get(&index) else {
            return Err(io::Error::other("HTTPS server without a TLS config"));
        };
        let stream = start.into_stream(server.tls.clone()).await?;
        Ok((stream, sni, index))
    };
    let handshake = tokio::time::timeout(gw.opts.client_hello_timeout, handshake);
    let handshaken = tokio::select! {
        biased;
        h = handshake => h,
        () = drain::closes_unused(&drain, fd, &read) => {
            tracing::debug!(target: "gateway::http", %peer, port, "closing a connection without a ClientHello: draining");
            return;
        }
    };
    let (stream, sni, index) = match handshaken {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::info!(target: "gateway::http", %peer, port, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(target: "gateway::http", %peer, port, "TLS handshake timed out");
            return;
        }
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    if let Some(cert) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    {
        tracing::debug!(target: "gateway::http", %peer, subject = tls::subject(cert).unwrap_or_default(), "client certificate accepted");
    }
    let Some(server) = lh.servers.get(&index) else {
        return;
    };
    let mut conn = proxy::ConnCtx::new(
        peer,
        port,
        sni,
        Some((index, server.hosts.clone())),
        (generation, server.table.clone()),
        drain,
        gw.telemetry.clone(),
    );
    conn.local = local;
    conn.client_cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| tls::xfcc(c));
    let conn = Arc::new(conn);
    serve_http(gw, conn, stream, h2).await
}

/// Runs hyper on one connection until it ends, and logs why when a client misbehaved.
async fn serve_http<IO>(gw: Arc<Gateway>, conn: Arc<proxy::ConnCtx>, io: IO, h2: bool)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let port = conn.port;
    let opts = gw.opts.http.clone();
    // Each request holds a token until its response body is done or dropped: the
    // connection is quiet (HTTP/2 idle timeout, HTTP/1.1 parking) only while none is open.
    let svc = {
        let conn = conn.clone();
        let gw = gw.clone();
        service_fn(move |req| {
            let token = proxy::OpenStream::new(conn.clone());
            let handled = proxy::handle(gw.clone(), conn.clone(), req);
            async move {
                let resp = handled.await?;
                Ok::<_, std::convert::Infallible>(resp.map(|b| {
                    body::WithToken {
                        inner: b,
                        _token: token,
                    }
                    .boxed_unsync()
                }))
            }
        })
    };
    let result = if h2 {
        // Boxed: hyper's HTTP/2 connection is large, and HTTP/1.1 connections (parked
        // ones above all) should not carry its space in their task.
        match Box::pin(serve_h2(&conn, io, svc, &opts)).await {
            Some(r) => r,
            None => return,
        }
    } else {
        match h1::serve(&gw, &conn, io, svc, opts.idle_timeout).await {
            h1::Ended::Hyper(r) => r,
            h1::Ended::Dropped | h1::Ended::ClosedParked => return,
            h1::Ended::IdleParked => {
                tracing::debug!(target: "gateway::http", %peer, port, "closing idle keep-alive connection");
                return;
            }
        }
    };
    if let Err(e) = result {
        if e.is_timeout() && conn.idle() {
            // hyper's header timer also runs between keep-alive requests.
            tracing::debug!(target: "gateway::http", %peer, port, "closing idle keep-alive connection");
            return;
        }
        log_connection_error(&e, &conn, h2);
    }
}

/// Runs hyper's HTTP/2 server on one connection; None when we closed it (abusive
/// client, idle timeout, drain deadline), else how hyper ended.
async fn serve_h2<IO, S>(
    conn: &proxy::ConnCtx,
    io: IO,
    svc: S,
    opts: &HttpOptions,
) -> Option<Result<(), hyper::Error>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send + 'static,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (peer, port) = (conn.peer, conn.port);
    let io = TokioIo::new(Counted {
        inner: io,
        count: conn.bytes_in.clone(),
    });
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_REQUEST_HEADERS_BYTES as u32)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        // Rapid-reset (CVE-2023-44487) limits in h2 itself: streams reset by the
        // client before hyper accepted them, or by us for protocol errors.
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(256))
        // Envoy's `connection_keepalive`: a PING every interval, the connection
        // closed when one goes unanswered for the timeout (hyper: keep_alive_*).
        .keep_alive_interval(opts.http2_keepalive_interval)
        .keep_alive_timeout(opts.http2_keepalive_timeout)
        .serve_connection(io, svc);
    tokio::pin!(served);
    let idle = idle_watch(conn, opts.idle_timeout);
    tokio::pin!(idle);
    tokio::select! {
        biased;
        r = served.as_mut() => Some(r),
        () = conn.drain.draining() => {
            // GOAWAY; the open streams finish (or are cut at the drain deadline).
            tracing::debug!(target: "gateway::http", %peer, port, "draining: GOAWAY");
            served.as_mut().graceful_shutdown();
            tokio::select! {
                biased;
                r = served => Some(r),
                () = conn.drain.closing() => None,
            }
        }
        _ = conn.abusive.notified() => {
            // Accepted streams reset right away (rapid reset) cost us upstream work
            // each; Envoy closes such connections, so do we: GOAWAY, then drop.
            tracing::info!(
                target: "gateway::http",
                %peer,
                port,
                streams = conn.streams.load(std::sync::atomic::Ordering::Relaxed),
                resets = conn.resets.load(std::sync::atomic::Ordering::Relaxed),
                "closing HTTP/2 connection: too many streams reset by the client"
            );
            served.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), served).await;
            None
        }
        _ = &mut idle => {
            // Envoy: at idle_timeout an HTTP/2 downstream connection is drained
            // (GOAWAY, then closed once the drain time passes).
            tracing::debug!(target: "gateway::http", %peer, port, "closing idle HTTP/2 connection (idle timeout)");
            served.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(H2_DRAIN_TIMEOUT, served).await;
            None
        }
    }
}

/// Envoy's default `drain_timeout`: how long an idle HTTP/2 connection gets between
/// its GOAWAY and being closed.
const H2_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves once the connection has had no open stream for `idle` (never if None).
async fn idle_watch(conn: &proxy::ConnCtx, idle: Option<Duration>) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    loop {
        let wait = match conn.quiet_for() {
            Some(quiet) if quiet >= idle => return,
            Some(quiet) => idle - quiet,
            None => idle,
        };
        tokio::time::sleep(wait).await;
    }
}

/// hyper answers malformed HTTP/1.1 itself (400, 431) and closes; we only see the
/// error, so the access log line is written here.
fn log_connection_error(e: &hyper::Error, conn: &proxy::ConnCtx, h2: bool) {
    let (peer, port) = (conn.peer, conn.port);
    let (status, details) = if e.is_parse_too_large() {
        (431, "request_headers_too_large")
    } else if e.is_parse() {
        (400, "http1_codec_error")
    } else if e.is_timeout() {
        (408, "request_header_timeout")
    } else if h2 {
        // h2 protocol errors and its own rapid-reset limits (GOAWAY) end up here.
        tracing::info!(target: "gateway::http", %peer, port, "HTTP/2 connection closed: {}", error_chain(e));
        return;
    } else {
        tracing::debug!(target: "gateway::http", %peer, port, "connection ended: {e}");
        return;
    };
    let log = AccessRecord {
        method: "-".into(),
        path: "-".into(),
        protocol: Some(if h2 { "HTTP/2" } else { "HTTP/1.1" }),
        status,
        response_flags: ResponseFlag::DownstreamProtocolError.into(),
        details,
        downstream_local_port: port,
        downstream_local: conn.local,
        sni: conn.sni.clone(),
        ..AccessRecord::new(SystemTime::now(), peer)
    };
    tracing::info!(target: "gateway::http", %peer, port, "closing connection: {e}");
    log.emit(&conn.telemetry);
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests;

//! TLS termination for `tcp` routes: a Gateway server of protocol TLS with mode SIMPLE,
//! MUTUAL or OPTIONAL_MUTUAL. Istio gives such a server "TCP with TLS termination and
//! forwarding" (pilot/pkg/networking/core/gateway.go `createGatewayTCPFilterChainOpts`:
//! the server's TLS context, then the tcp_proxy of the first VirtualService `tcp` route
//! bound to it); a `tls` route only applies to PASSTHROUGH servers.
//!
//! The handshake uses the server's rustls config (built with the HTTPS servers', in
//! http::tls, so certificates, client verification and SNI selection are shared). The
//! kernel splice cannot carry TLS, so the decrypted stream is copied in userspace: two
//! 16 KiB buffers per flow, half-close passed on (a client's close_notify or FIN becomes
//! a FIN upstream; the upstream's FIN becomes close_notify + FIN), a reset on one side
//! resets the other, and the idle timeout and drain deadline end the flow as they end
//! spliced ones. Counters and the access log are the other TCP flows'
//! (`tcp::flow_closed`).
//!
//! Unlike Envoy, which connects upstream as soon as the TCP connection is accepted, the
//! upstream is connected only after the handshake: a client MUTUAL refuses never costs
//! an upstream connection.
use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rustls::ServerConfig;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::server::TlsStream;

use super::tcp::{FlowCtx, flow_closed, open_upstream, refused};
use crate::{
    config::Listener,
    kernel::splice::{FlowReport, Path, Termination},
    server::Gateway,
};

/// Serves a connection whose ClientHello selected the TLS-terminating server `index`
/// of `listener` (`cfg` its rustls config).
pub async fn serve(
    gw: Arc<Gateway>,
    listener: Arc<Listener>,
    down: TcpStream,
    peer: SocketAddr,
    sni: Option<String>,
    (index, cfg): (usize, Arc<ServerConfig>),
) {
    let started = Instant::now();
    let start_time = std::time::SystemTime::now();
    let port = listener.port;
    let ctx = FlowCtx {
        gw: &gw,
        peer,
        port,
        start: (start_time, started),
        local: down.local_addr().ok(),
        sni: sni.as_deref(),
    };
    // AuthorizationPolicy for a TCP/TLS flow, before anything is spent on it.
    if !gw.authz.allow_flow(peer, port, sni.as_deref()) {
        return;
    }
    let _ = down.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let handshake = tokio::time::timeout(gw.opts.client_hello_timeout, acceptor.accept(down));
    let tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(%peer, port, sni = sni.as_deref().unwrap_or("-"), "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, port, "TLS handshake timed out");
            return;
        }
    };
    let Some((_, route)) = listener.terminated_tcp.iter().find(|(i, _)| *i == index) else {
        if let Some(s) = gw.stats.listener(port) {
            s.no_route.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(%peer, port, "closing connection: no tcp route for this TLS server");
        refused(&gw, ctx.start, peer, ctx.local, ctx.sni, "NR", None);
        return close_tls(tls).await;
    };
    let Some(mut up) = open_upstream(&ctx, &route.name, &route.destinations).await else {
        return close_tls(tls).await;
    };
    let Some(stream) = up.stream.take() else {
        return;
    };
    let idle = gw.splicer.idle_timeout();
    let closing = gw.splicer.closing().clone();
    let span = tracing::debug_span!("flow", %peer);
    let copied =
        tracing::Instrument::instrument(copy(tls, stream, idle, closing.cancelled_owned()), span);
    let report = copied.await;
    flow_closed(&ctx, &up, &route.name, &report);
}

/// Ends a terminated connection that will not be routed: close_notify, then FIN.
async fn close_tls(mut tls: TlsStream<TcpStream>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
}

/// How one direction of the copy ended.
enum End {
    /// EOF (close_notify or FIN); the other side's write was shut.
    Fin(u64),
    /// The reader reset or failed: the writer's side must be reset.
    ReaderReset(u64),
    /// Writing failed (the peer went away): the reader's side must be reset.
    WriterFailed(u64),
}

impl End {
    fn bytes(&self) -> u64 {
        match *self {
            End::Fin(n) | End::ReaderReset(n) | End::WriterFailed(n) => n,
        }
    }
}

/// Per-flow activity for the idle timeout: milliseconds since `base` of the last byte.
struct Activity {
    base: Instant,
    last: AtomicU64,
    /// Bytes written, downstream→upstream and upstream→downstream.
    moved: [AtomicU64; 2],
}

impl Activity {
    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `idle` (never when None).
    async fn expired(&self, idle: Option<Duration>) {
        let Some(idle) = idle else {
            return std::future::pending().await;
        };
        loop {
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let quiet = self.base.elapsed().saturating_sub(last);
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    }
}

async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    activity: &Activity,
    dir: usize,
) -> End {
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                let _ = to.shutdown().await;
                return End::Fin(total);
            }
            Ok(n) => n,
            // A TCP FIN without close_notify: Envoy treats it as the end of the stream
            // (a half-close), not as a reset.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                let _ = to.shutdown().await;
                return End::Fin(total);
            }
            Err(_) => return End::ReaderReset(total),
        };
        activity.touch();
        if to.write_all(&buf[..n]).await.is_err() {
            return End::WriterFailed(total);
        }
        if to.flush().await.is_err() {
            return End::WriterFailed(total);
        }
        activity.moved[dir].fetch_add(n as u64, Ordering::Relaxed);
        total += n as u64;
    }
}

/// Resets a socket: close with SO_LINGER 0.
fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// Copies both ways between the decrypted client stream and the upstream until both
/// directions are done, a reset, `idle` without a byte, or `closing` (the drain
/// deadline).
async fn copy(
    tls: TlsStream<TcpStream>,
    mut up: TcpStream,
    idle: Option<Duration>,
    closing: impl std::future::Future<Output = ()>,
) -> FlowReport {
    let activity = Activity {
        base: Instant::now(),
        last: AtomicU64::new(0),
        moved: [AtomicU64::new(0), AtomicU64::new(0)],
    };
    let (mut dr, mut dw) = tokio::io::split(tls);
    tokio::pin!(closing);
    let ended = {
        let (ur, uw) = up.split();
        let (d2u, u2d) = (
            pipe(&mut dr, uw, &activity, 0),
            pipe(ur, &mut dw, &activity, 1),
        );
        tokio::pin!(d2u, u2d);
        let bad = |e: &End| !matches!(e, End::Fin(_));
        // A reset ends the flow at once; a FIN lets the other direction finish.
        tokio::select! {
            a = &mut d2u => {
                let b = if bad(&a) { End::Fin(0) } else { u2d.await };
                Ok((a, b))
            }
            b = &mut u2d => {
                let a = if bad(&b) { End::Fin(0) } else { d2u.await };
                Ok((a, b))
            }
            () = activity.expired(idle) => Err(Termination::IdleTimeout),
            () = &mut closing => Err(Termination::DrainTimeout),
        }
    };
    let tls = dr.unsplit(dw);
    let down = tls.get_ref().0;
    let (a, b) = match ended {
        Ok(ended) => ended,
        Err(why) => {
            // As the splices end an idle flow: FIN both ways.
            for s in [down, &up] {
                let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write);
            }
            tracing::debug!("tls flow: {why}");
            let moved = |i: usize| activity.moved[i].load(Ordering::Relaxed);
            return FlowReport {
                downstream_to_upstream: moved(0),
                upstream_to_downstream: moved(1),
                userspace_bytes: moved(0) + moved(1),
                path: Path::Copy,
                termination: why,
                ..Default::default()
            };
        }
    };
    // d2u reads the client: its reset, or u2d failing to write to it, resets the
    // upstream; the other way round resets the client.
    let termination = match (&a, &b) {
        (End::ReaderReset(_), _) | (_, End::WriterFailed(_)) => {
            reset(&up);
            Termination::DownstreamReset
        }
        (End::WriterFailed(_), _) | (_, End::ReaderReset(_)) => {
            reset(down);
            Termination::UpstreamReset
        }
        _ => Termination::Closed,
    };
    FlowReport {
        downstream_to_upstream: a.bytes(),
        upstream_to_downstream: b.bytes(),
        userspace_bytes: a.bytes() + b.bytes(),
        path: Path::Copy,
        termination,
        ..Default::default()
    }
}

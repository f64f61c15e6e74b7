//! TLS termination for `tcp` routes: a Gateway server of protocol TLS with mode SIMPLE,
//! MUTUAL or OPTIONAL_MUTUAL. Istio gives such a server "TCP with TLS termination and
//! forwarding" (pilot/pkg/networking/core/gateway.go `createGatewayTCPFilterChainOpts`:
//! the server's TLS context, then the tcp_proxy of the first VirtualService `tcp` route
//! bound to it); a `tls` route only applies to PASSTHROUGH servers.
//!
//! The handshake uses the server's rustls config (built with the HTTPS servers', in
//! http::tls, so certificates, client verification and SNI selection are shared). The
//! kernel splice cannot carry TLS, so the decrypted stream is copied in userspace
//! (proxy::l4_copy: a client's close_notify or FIN becomes a FIN upstream, the
//! upstream's FIN becomes close_notify + FIN). If the route's cluster originates TLS
//! (DestinationRule `tls`), so does this flow (proxy::tls_origin). Counters and the
//! access log are the other TCP flows' (`tcp::flow_closed`).
//!
//! Unlike Envoy, which connects upstream as soon as the TCP connection is accepted, the
//! upstream is connected only after the handshake: a client MUTUAL refuses never costs
//! an upstream connection.
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use rustls::ServerConfig;
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_rustls::server::TlsStream;

use super::{
    l4_copy::copy,
    tcp::{FlowCtx, flow_closed, open_upstream, refused},
    tls_origin::originate,
};
use crate::{config::Listener, plan::Plan, server::Gateway, telemetry::ResponseFlag};

/// Serves a connection whose ClientHello selected the TLS-terminating server `index`
/// of `listener` (`cfg` its rustls config).
pub async fn serve(
    gw: Arc<Gateway>,
    plan: Arc<Plan>,
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
    if !plan.authz.allow_flow(peer, port, sni.as_deref()) {
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
        refused(
            &gw,
            ctx.start,
            peer,
            ctx.local,
            ctx.sni,
            ResponseFlag::NoRouteFound,
            None,
        );
        return close_tls(tls).await;
    };
    let Some(mut up) = open_upstream(&ctx, &plan, &route.name, &route.destinations).await else {
        return close_tls(tls).await;
    };
    let Some(stream) = up.stream.take() else {
        return;
    };
    let limits = super::tcp::flow_limits(&gw, &plan, (port, &route.destinations), ctx.start.1);
    let closing = gw.splicer.closing().clone();
    let span = tracing::debug_span!("flow", %peer);
    // The flow lets go of the Plan before its copy (see tcp::serve).
    let origin = plan.tcp_tls.get(&up.cluster).cloned();
    drop(plan);
    let report = match origin.as_ref() {
        None => {
            let copied = copy(tls, stream, limits, closing.cancelled_owned());
            tracing::Instrument::instrument(copied, span).await
        }
        // The route's cluster originates TLS too (DestinationRule `tls`).
        Some(origin) => {
            let timeout = gw.opts.connect_timeout;
            let Some(up_tls) = originate(&ctx, &up, origin, stream, timeout).await else {
                return close_tls(tls).await;
            };
            let copied = copy(tls, up_tls, limits, closing.cancelled_owned());
            tracing::Instrument::instrument(copied, span).await
        }
    };
    flow_closed(&ctx, &up, &route.name, &report);
}

/// Ends a terminated connection that will not be routed: close_notify, then FIN.
async fn close_tls(mut tls: TlsStream<TcpStream>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
}

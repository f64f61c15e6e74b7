//! Binding the Gateway ports and accepting connections.
use std::{net::SocketAddr, sync::Arc, sync::atomic::Ordering, time::Duration};

use tokio::net::TcpListener;

use crate::{
    config::{Listener, ListenerProtocol},
    http, proxy,
    server::Gateway,
};

/// Binds every port first, so a port that can't be bound fails the start before any
/// traffic is served.
pub fn bind_all(gw: &Gateway) -> std::io::Result<Vec<(Arc<Listener>, TcpListener)>> {
    let mut out = vec![];
    for l in &gw.snapshot.listeners {
        let addr = SocketAddr::new(gw.opts.bind, l.port);
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        sock.set_reuse_address(true)?;
        sock.set_nonblocking(true)?;
        sock.bind(&addr.into())
            .map_err(|e| std::io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
        sock.listen(4096)?;
        out.push((Arc::new(l.clone()), TcpListener::from_std(sock.into())?));
    }
    Ok(out)
}

/// Accepts forever; each connection is served on its own task.
pub async fn accept_loop(gw: Arc<Gateway>, listener: Arc<Listener>, sock: TcpListener) {
    let port = listener.port;
    loop {
        let (conn, peer) = match sock.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning; the listener stays.
                tracing::warn!(port, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // AuthorizationPolicy address rules: closed before any byte is read.
        if !gw.authz.allow_accept(peer, port) {
            drop(conn);
            continue;
        }
        let gw = gw.clone();
        let listener = listener.clone();
        tokio::spawn(async move {
            let stats = gw.stats.listener(port);
            if let Some(s) = stats {
                s.accepted.fetch_add(1, Ordering::Relaxed);
                s.active.fetch_add(1, Ordering::Relaxed);
            }
            match listener.protocol {
                ListenerProtocol::Tcp | ListenerProtocol::Tls => {
                    proxy::tcp::serve(gw.clone(), listener, conn, peer).await
                }
                ListenerProtocol::Http => {
                    http::serve(gw.clone(), listener, conn, peer, vec![], false).await
                }
                ListenerProtocol::Https => {
                    http::serve(gw.clone(), listener, conn, peer, vec![], true).await
                }
            }
            if let Some(s) = gw.stats.listener(port) {
                s.active.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }
}

//! L4 flows: plain TCP routed by port, TLS passthrough routed by the ClientHello's SNI.
//! Userspace reads at most the ClientHello, picks the upstream, connects, writes what it
//! read, and hands both sockets to the splice; it never touches the rest of the payload.
use std::{net::SocketAddr, sync::Arc, sync::atomic::Ordering, time::Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    config::{Listener, WeightedCluster},
    server::Gateway,
    splice::Termination,
    telemetry::metrics::HelloOutcome,
    tls::sni::{MAX_CLIENT_HELLO, Sniff, sniff},
};

/// What the ClientHello inspection found.
struct Hello {
    outcome: HelloOutcome,
    sni: Option<String>,
    /// Everything read from the client so far; forwarded upstream before splicing.
    bytes: Vec<u8>,
}

/// Reads until a full ClientHello, a verdict that it isn't one, the size cap, or the
/// timeout (Envoy's tls_inspector: same outcomes, same 64 KiB cap).
async fn inspect(down: &mut TcpStream, gw: &Gateway) -> Hello {
    let mut buf = Vec::with_capacity(2048);
    let deadline = tokio::time::Instant::now() + gw.opts.client_hello_timeout;
    loop {
        let outcome = match sniff(&buf) {
            Sniff::ClientHello { sni, .. } => {
                let outcome = if sni.is_some() {
                    HelloOutcome::SniFound
                } else {
                    HelloOutcome::NoSni
                };
                return Hello {
                    outcome,
                    sni,
                    bytes: buf,
                };
            }
            Sniff::NotTls => Some(HelloOutcome::NotTls),
            Sniff::TooLarge => Some(HelloOutcome::TooLarge),
            Sniff::Incomplete if buf.len() >= MAX_CLIENT_HELLO => Some(HelloOutcome::TooLarge),
            Sniff::Incomplete => None,
        };
        if let Some(outcome) = outcome {
            return Hello {
                outcome,
                sni: None,
                bytes: buf,
            };
        }
        let room = MAX_CLIENT_HELLO + 1 - buf.len();
        let read =
            tokio::time::timeout_at(deadline, (&mut *down).take(room as u64).read_buf(&mut buf))
                .await;
        match read {
            Err(_) => {
                return Hello {
                    outcome: HelloOutcome::Timeout,
                    sni: None,
                    bytes: buf,
                };
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Hello {
                    outcome: HelloOutcome::ClientGone,
                    sni: None,
                    bytes: buf,
                };
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// Picks one destination by weight (Istio's weighted route).
fn pick(destinations: &[WeightedCluster]) -> Option<&WeightedCluster> {
    let total: u64 = destinations.iter().map(|d| d.weight as u64).sum();
    if total == 0 {
        return destinations.first();
    }
    let mut n = fastrand::u64(0..total);
    for d in destinations {
        if n < d.weight as u64 {
            return Some(d);
        }
        n -= d.weight as u64;
    }
    destinations.last()
}

/// Serves one accepted connection on an L4 listener.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: Arc<Listener>,
    mut down: TcpStream,
    peer: SocketAddr,
) {
    let started = Instant::now();
    let port = listener.port;
    let lstats = gw.stats.listener(port);
    // A port with only TCP routes never waits for client bytes: server-first protocols
    // (SMTP, MySQL) must work, so the flow is spliced at once.
    let (hello, route) = if listener.tls.is_empty() {
        (
            None,
            listener
                .tcp
                .as_ref()
                .map(|r| (r.name.as_str(), r.destinations.as_slice())),
        )
    } else {
        let hello = inspect(&mut down, &gw).await;
        gw.stats.hello(hello.outcome);
        // As in Envoy's filter-chain match: a ClientHello whose SNI matches a TLS route
        // takes it; anything else (other SNI, no SNI, not TLS, timeout) falls to the TCP
        // route of the port if there is one.
        let tls = hello.sni.as_deref().and_then(|s| listener.route_sni(s));
        let is_tls = matches!(hello.outcome, HelloOutcome::SniFound | HelloOutcome::NoSni);
        if tls.is_none() && is_tls && crate::http::terminates(&listener, hello.sni.as_deref()) {
            // An HTTPS server on this port terminates this SNI: hand over, ClientHello
            // included.
            return crate::http::serve(gw.clone(), listener.clone(), down, peer, hello.bytes, true)
                .await;
        }
        let route = match tls {
            Some(r) => Some((r.name.as_str(), r.destinations.as_slice())),
            None if hello.outcome == HelloOutcome::ClientGone => None,
            None => listener
                .tcp
                .as_ref()
                .map(|r| (r.name.as_str(), r.destinations.as_slice())),
        };
        (Some(hello), route)
    };
    let sni = hello.as_ref().and_then(|h| h.sni.clone());
    let Some((route_name, destinations)) = route else {
        if let Some(s) = lstats {
            s.no_route.fetch_add(1, Ordering::Relaxed);
        }
        let why = match &hello {
            Some(h) if h.outcome == HelloOutcome::ClientGone => {
                "client closed before a full ClientHello".to_string()
            }
            Some(h) => match &h.sni {
                Some(s) => format!("no route for SNI \"{s}\""),
                None => format!(
                    "no route for a connection without SNI ({})",
                    h.outcome.as_str()
                ),
            },
            None => "no TCP route".to_string(),
        };
        tracing::info!(%peer, port, "closing connection: {why}");
        return;
    };
    let Some(dest) = pick(destinations) else {
        tracing::info!(%peer, port, route = route_name, "closing connection: route has no destinations");
        return;
    };
    let Some(endpoint) = gw.next_endpoint(&dest.cluster) else {
        gw.stats
            .upstream_connect_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, port, cluster = %dest.cluster, "closing connection: cluster has no endpoints");
        return;
    };
    let up = match tokio::time::timeout(gw.opts.connect_timeout, TcpStream::connect(endpoint)).await
    {
        Ok(Ok(up)) => up,
        Ok(Err(e)) => {
            return connect_failed(&gw, peer, port, &dest.cluster, endpoint, &e.to_string());
        }
        Err(_) => {
            return connect_failed(&gw, peer, port, &dest.cluster, endpoint, "connect timeout");
        }
    };
    let _ = down.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let mut up = up;
    let prelude = hello.map(|h| h.bytes).unwrap_or_default();
    if !prelude.is_empty() {
        if let Err(e) = up.write_all(&prelude).await {
            tracing::info!(%peer, %endpoint, "closing connection: writing the ClientHello upstream failed: {e}");
            return;
        }
        gw.stats
            .prelude_bytes
            .fetch_add(prelude.len() as u64, Ordering::Relaxed);
    }
    let upstream_local = up.local_addr().ok();
    let downstream_local = down.local_addr().ok();
    let span = tracing::debug_span!("flow", %peer);
    let report = tracing::Instrument::instrument(gw.splicer.splice(down, up), span).await;

    let received = prelude.len() as u64 + report.downstream_to_upstream;
    let sent = report.upstream_to_downstream;
    let s = &gw.stats;
    s.bytes_downstream_to_upstream
        .fetch_add(received, Ordering::Relaxed);
    s.bytes_upstream_to_downstream
        .fetch_add(sent, Ordering::Relaxed);
    s.userspace_splice_bytes
        .fetch_add(report.userspace_bytes, Ordering::Relaxed);
    s.flows_closed.fetch_add(1, Ordering::Relaxed);
    if matches!(
        report.termination,
        Termination::DownstreamReset | Termination::UpstreamReset
    ) {
        s.flows_reset.fetch_add(1, Ordering::Relaxed);
    }
    tracing::info!(
        target: "gateway::flow",
        %peer,
        downstream_local = ?downstream_local,
        upstream = %endpoint,
        upstream_local = ?upstream_local,
        cluster = %dest.cluster,
        route = route_name,
        sni = sni.as_deref().unwrap_or("-"),
        bytes_received = received,
        bytes_sent = sent,
        in_kernel = report.in_kernel,
        duration_ms = started.elapsed().as_millis() as u64,
        termination = %report.termination,
        "flow closed"
    );
}

fn connect_failed(
    gw: &Gateway,
    peer: SocketAddr,
    port: u16,
    cluster: &str,
    endpoint: SocketAddr,
    why: &str,
) {
    gw.stats
        .upstream_connect_failures
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(%peer, port, cluster, %endpoint, "closing connection: upstream connect failed: {why}");
}

//! L4 flows: plain TCP routed by port, TLS passthrough routed by the ClientHello's SNI.
//! Userspace only *peeks* at the ClientHello, picks the upstream, connects, and hands
//! both sockets to the splice: every byte, the ClientHello included, is moved by the
//! splice, so the upstream receives the stream exactly as the client sent it.
//!
//! Peeking rather than reading matters for the kernel splice: once a socket enters a
//! sockmap the verdict program is handed whole skbs from the receive queue, including
//! the part of an skb userspace already read — reading the hello would duplicate bytes.
use std::{io, net::SocketAddr, sync::Arc, sync::atomic::Ordering, time::Instant};

use tokio::{io::Interest, net::TcpStream};

use crate::{
    config::{Listener, WeightedCluster},
    kernel::splice::{FlowLimits, FlowReport, Termination, sockopt},
    plan::Plan,
    server::Gateway,
    telemetry::{AccessRecord, ResponseFlag, metrics::HelloOutcome},
    tls::sni::{MAX_CLIENT_HELLO, Sniff, sniff},
};

/// What the ClientHello inspection found.
struct Hello {
    outcome: HelloOutcome,
    sni: Option<String>,
}

/// Peeks until a full ClientHello, a verdict that it isn't one, the size cap, or the
/// timeout (Envoy's tls_inspector: same outcomes, same 64 KiB cap).
async fn inspect(down: &TcpStream, gw: &Gateway) -> Hello {
    let done = |outcome, sni| Hello { outcome, sni };
    let mut buf = vec![0u8; MAX_CLIENT_HELLO + 1];
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + gw.opts.client_hello_timeout;
    loop {
        let closed = match tokio::time::timeout_at(deadline, down.ready(Interest::READABLE)).await {
            Err(_) => return done(HelloOutcome::Timeout, None),
            Ok(Err(_)) => return done(HelloOutcome::ClientGone, None),
            Ok(Ok(r)) => r.is_read_closed(),
        };
        // Clear the cached readiness *before* peeking: bytes that arrive after the peek
        // raise a new edge, so the next ready() can't miss them.
        let _ = down.try_io(Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
        let n = match sockopt::peek(down, &mut buf) {
            Ok(0) => return done(HelloOutcome::ClientGone, None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return done(HelloOutcome::ClientGone, None),
        };
        if n == seen {
            if closed {
                return done(HelloOutcome::ClientGone, None);
            }
            continue;
        }
        seen = n;
        match sniff(&buf[..n]) {
            Sniff::ClientHello { sni: Some(sni), .. } => {
                return done(HelloOutcome::SniFound, Some(sni));
            }
            Sniff::ClientHello { sni: None, .. } => return done(HelloOutcome::NoSni, None),
            Sniff::NotTls => return done(HelloOutcome::NotTls, None),
            Sniff::TooLarge => return done(HelloOutcome::TooLarge, None),
            Sniff::Incomplete if n > MAX_CLIENT_HELLO => return done(HelloOutcome::TooLarge, None),
            // A client that half-closed mid-hello will send no more.
            Sniff::Incomplete if closed => return done(HelloOutcome::ClientGone, None),
            Sniff::Incomplete => {}
        }
    }
}

/// Closes a connection we won't route with a FIN, not a RST: bytes the inspection only
/// peeked at are still queued, and closing a socket with unread data resets it.
async fn close_cleanly(down: TcpStream) {
    use std::io::Read as _;
    // A plain non-blocking read through the socket itself: tokio's try_read would answer
    // WouldBlock from its cached readiness without asking the kernel.
    let sock = socket2::SockRef::from(&down);
    let mut scratch = vec![0u8; 16 * 1024];
    for _ in 0..(MAX_CLIENT_HELLO / scratch.len() + 2) {
        match (&*sock).read(&mut scratch) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    drop(down);
}

/// Picks one destination by weight (Istio's weighted route).
fn pick(destinations: &[WeightedCluster]) -> Option<&WeightedCluster> {
    crate::lb::weighted::pick_random(destinations, |d| u64::from(d.weight))
}

/// Serves one accepted connection on an L4 listener.
/// `plan` is the Plan serving at accept and `listener` its config of the port; the flow
/// lets go of the Plan once its upstream is connected (a long flow must not keep every
/// config it outlived alive), and keeps its route's name.
pub async fn serve(
    gw: Arc<Gateway>,
    plan: Arc<Plan>,
    listener: Arc<Listener>,
    mut down: TcpStream,
    peer: SocketAddr,
) {
    let started = Instant::now();
    let start_time = std::time::SystemTime::now();
    let port = listener.port;
    let lstats = gw.stats.listener(port);
    // A port with only TCP routes never waits for client bytes: server-first protocols
    // (SMTP, MySQL) must work, so the flow is spliced at once.
    // An HTTPS server that terminates TLS on this port needs the ClientHello too.
    let terminating = listener
        .servers
        .iter()
        .any(|s| crate::plan::routing::terminating(s.kind));
    let (hello, route) = if listener.tls.is_empty() && !terminating {
        (
            None,
            listener
                .tcp
                .as_ref()
                .map(|r| (r.name.as_str(), r.destinations.as_slice())),
        )
    } else {
        let hello = inspect(&down, &gw).await;
        gw.stats.hello(hello.outcome);
        // The inspection cleared tokio's cached readiness while the peeked bytes are still
        // queued: whoever reads the socket next through tokio (rustls, a userspace copy)
        // would wait for an edge that already happened. Registering the socket again
        // makes epoll report what is queued.
        down = match down.into_std().and_then(TcpStream::from_std) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(%peer, "closing connection: re-registering the socket failed: {e}");
                return;
            }
        };
        // As in Envoy's filter-chain match: a ClientHello whose SNI matches a TLS route
        // takes it; anything else (other SNI, no SNI, not TLS, timeout) falls to the TCP
        // route of the port if there is one.
        let tls = hello
            .sni
            .as_deref()
            .and_then(|s| plan.sni_routes.route(&listener, s));
        let is_tls = matches!(hello.outcome, HelloOutcome::SniFound | HelloOutcome::NoSni);
        if tls.is_none() && is_tls && plan.http.terminates(&listener, hello.sni.as_deref()) {
            // An HTTPS server on this port terminates this SNI: hand over, ClientHello
            // included.
            let l = listener.clone();
            return crate::http::serve(gw.clone(), plan.clone(), l, down, peer, vec![], true).await;
        }
        if tls.is_none()
            && is_tls
            && let Some(server) = plan.http.terminates_tcp(&listener, hello.sni.as_deref())
        {
            // A TLS server with SIMPLE/MUTUAL: terminate, then its `tcp` route.
            let sni = hello.sni.clone();
            return super::tls_terminate::serve(
                gw.clone(),
                plan.clone(),
                listener.clone(),
                down,
                peer,
                sni,
                server,
            )
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
    // AuthorizationPolicy for a TCP/TLS flow: Istio's TCP rules, `connection.sni`.
    if !plan.authz.allow_flow(peer, port, sni.as_deref()) {
        return close_cleanly(down).await;
    }
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
        let sni = hello.as_ref().and_then(|h| h.sni.as_deref());
        let local = down.local_addr().ok();
        refused(
            &gw,
            (start_time, started),
            peer,
            local,
            sni,
            ResponseFlag::NoRouteFound,
            None,
        );
        return close_cleanly(down).await;
    };
    let ctx = FlowCtx {
        gw: &gw,
        peer,
        port,
        start: (start_time, started),
        local: down.local_addr().ok(),
        sni: sni.as_deref(),
    };
    let Some(mut up) = open_upstream(&ctx, &plan, route_name, destinations).await else {
        return close_cleanly(down).await;
    };
    let Some(stream) = up.stream.take() else {
        return;
    };
    let _ = down.set_nodelay(true);
    let span = tracing::debug_span!("flow", %peer);
    let limits = flow_limits(&gw, &plan, (port, destinations), started);
    let upstream = match plan.tcp_tls.get(&up.cluster) {
        None => UpstreamIo::Plain(stream),
        // The cluster originates TLS (DestinationRule `tls`): a userspace copy.
        Some(origin) => {
            let timeout = gw.opts.connect_timeout;
            let Some(tls) = super::tls_origin::originate(&ctx, &up, origin, stream, timeout).await
            else {
                return close_cleanly(down).await;
            };
            UpstreamIo::Tls(Box::new(tls))
        }
    };
    let route_name = route_name.to_owned();
    drop(plan);
    let report = match upstream {
        UpstreamIo::Plain(stream) => {
            let spliced = gw.splicer.splice_idle(down, stream, limits);
            tracing::Instrument::instrument(spliced, span).await
        }
        UpstreamIo::Tls(tls) => {
            let closing = gw.splicer.closing().clone();
            let copied = super::l4_copy::copy(down, *tls, limits, closing.cancelled_owned());
            tracing::Instrument::instrument(copied, span).await
        }
    };
    flow_closed(&ctx, &up, &route_name, &report);
}

/// A routed flow's upstream side once connected.
enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The idle timeout and deadline of a flow on a route to `destinations`, accepted at
/// `started`. Istio gives the tcp_proxy the DestinationRule of the route's first
/// destination (networkfilter.go `buildOutboundNetworkFilters`: one rule for the whole
/// route, weighted or not), its top-level `connectionPool.tcp`: `idleTimeout` (0s
/// disables it; unset: `--tcp-idle-timeout`) and `maxConnectionDuration` (Envoy's
/// `max_downstream_connection_duration`, counted from the downstream connection's
/// start; unset: none).
pub(super) fn flow_limits(
    gw: &Gateway,
    plan: &Plan,
    (port, destinations): (u16, &[WeightedCluster]),
    started: Instant,
) -> FlowLimits {
    let cluster = destinations
        .first()
        .and_then(|d| plan.snapshot.clusters.get(&d.cluster));
    FlowLimits {
        idle: cluster
            .and_then(|c| c.tcp_idle_timeout)
            .map_or(gw.splicer.idle_timeout(), |d| {
                Some(d).filter(|d| !d.is_zero())
            }),
        deadline: cluster
            .and_then(|c| c.tcp_max_duration)
            .map(|d| started + d),
        // A reload removing the listener closes the flow at its drain deadline.
        closing: Some(gw.ports.drain_of(port).closing_token()),
    }
}

/// What every L4 flow's refusals and access log need to know about it.
pub(super) struct FlowCtx<'a> {
    pub gw: &'a Gateway,
    pub peer: SocketAddr,
    pub port: u16,
    pub start: (std::time::SystemTime, Instant),
    /// The downstream socket's local address.
    pub local: Option<SocketAddr>,
    pub sni: Option<&'a str>,
}

/// The upstream connection of a routed flow, with what it holds for its life.
pub(super) struct Upstream {
    /// Taken by the copy.
    pub stream: Option<TcpStream>,
    pub endpoint: SocketAddr,
    pub cluster: String,
    pub local: Option<SocketAddr>,
    /// The cluster's `tcp.maxConnections` slot.
    _admission: Option<crate::lb::pool::Admission>,
    /// LEAST_REQUEST counts the connection as active while this lives.
    _picked: crate::lb::Picked,
}

/// Picks the destination and endpoint of a routed flow and connects to it. On a
/// refusal (UO, NC, UH, UF) writes its access-log line and returns None: the caller
/// closes the downstream.
pub(super) async fn open_upstream(
    ctx: &FlowCtx<'_>,
    plan: &Plan,
    route_name: &str,
    destinations: &[WeightedCluster],
) -> Option<Upstream> {
    let (gw, peer, port, sni) = (ctx.gw, ctx.peer, ctx.port, ctx.sni);
    let refuse = |flag: ResponseFlag, up: Option<(&String, Option<SocketAddr>, Option<String>)>| {
        refused(gw, ctx.start, peer, ctx.local, sni, flag, up)
    };
    let Some(dest) = pick(destinations) else {
        tracing::info!(%peer, port, route = route_name, "closing connection: route has no destinations");
        return None;
    };
    // Consistent hashing on L4 has only the source address (Envoy's tcp_proxy
    // `hash_policy.source_ip`); other keys hash nothing, so the pick is random.
    let hash = plan
        .balancers
        .get(&dest.cluster)
        .and_then(|b| b.policy.hash_key())
        .filter(|k| **k == crate::config::dest_rules::HashKey::SourceIp)
        .map(|_| crate::lb::hash(peer.ip().to_string().as_bytes()));
    // The cluster's `tcp.maxConnections` (DestinationRule connectionPool): Envoy's
    // tcp_proxy closes a connection beyond it with `UO` (upstream_cx_overflow).
    // Held for the connection's life.
    let admission = match plan
        .balancers
        .get(&dest.cluster)
        .and_then(|b| b.pool.clone())
    {
        None => None,
        Some(pool) => match pool.admit_connection() {
            Ok(a) => Some(a),
            Err(crate::lb::pool::Overflow) => {
                tracing::info!(%peer, port, cluster = %dest.cluster, "closing connection: circuit breaker maxConnections reached (UO)");
                refuse(
                    ResponseFlag::UpstreamOverflow,
                    Some((&dest.cluster, None, None)),
                );
                return None;
            }
        },
    };
    // Held for the connection's life: LEAST_REQUEST counts it as active.
    let picked = match plan.pick_endpoint(&dest.cluster, hash) {
        crate::lb::Pick::Endpoint(p) => p,
        miss => {
            let (flag, why) = match miss {
                crate::lb::Pick::NoCluster => (
                    ResponseFlag::NoClusterFound,
                    "cluster not found (a subset no DestinationRule defines)",
                ),
                _ => (ResponseFlag::NoHealthyUpstream, "cluster has no endpoints"),
            };
            gw.stats
                .upstream_connect_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, port, cluster = %dest.cluster, "closing connection: {why}");
            refuse(flag, Some((&dest.cluster, None, None)));
            return None;
        }
    };
    let endpoint = picked.addr;
    // The cluster's `tcp.connectTimeout` and `tcp.tcpKeepalive` (DestinationRule
    // connectionPool), as Envoy's cluster `connect_timeout` and upstream socket options.
    let conn = plan
        .snapshot
        .clusters
        .get(&dest.cluster)
        .map(|c| c.conn)
        .unwrap_or_default();
    let connect_timeout = conn.connect_timeout.unwrap_or(gw.opts.connect_timeout);
    let connected = tokio::time::timeout(connect_timeout, TcpStream::connect(endpoint)).await;
    // Outlier detection: Envoy's tcp_proxy reports the connect
    // (LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL), its failure or its timeout.
    picked.report(match &connected {
        Ok(Ok(_)) => crate::lb::outlier::Outcome::Connected,
        Ok(Err(_)) => crate::lb::outlier::Outcome::ConnectFailed,
        Err(_) => crate::lb::outlier::Outcome::Timeout,
    });
    let up = match connected {
        Ok(Ok(up)) => up,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "connect timeout".to_string(),
            };
            connect_failed(gw, peer, port, &dest.cluster, endpoint, &why);
            refuse(
                ResponseFlag::UpstreamConnectionFailure,
                Some((&dest.cluster, Some(endpoint), Some(why))),
            );
            return None;
        }
    };
    let _ = up.set_nodelay(true);
    if let Some(k) = conn.keepalive
        && let Err(e) = k.apply(socket2::SockRef::from(&up))
    {
        tracing::debug!(%peer, cluster = %dest.cluster, "upstream TCP keepalive not set: {e}");
    }
    gw.telemetry.tcp_opened(&dest.cluster, endpoint);
    Some(Upstream {
        local: up.local_addr().ok(),
        stream: Some(up),
        endpoint,
        cluster: dest.cluster.clone(),
        _admission: admission,
        _picked: picked,
    })
}

/// Counts a finished flow and writes its log line and access-log record.
pub(super) fn flow_closed(ctx: &FlowCtx<'_>, up: &Upstream, route_name: &str, report: &FlowReport) {
    let (gw, peer) = (ctx.gw, ctx.peer);
    let (start_time, started) = ctx.start;
    let received = report.downstream_to_upstream;
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
        downstream_local = ?ctx.local,
        upstream = %up.endpoint,
        upstream_local = ?up.local,
        cluster = %up.cluster,
        route = route_name,
        sni = ctx.sni.unwrap_or("-"),
        bytes_received = received,
        bytes_sent = sent,
        in_kernel = report.in_kernel(),
        path = report.path.as_str(),
        duration_ms = started.elapsed().as_millis() as u64,
        termination = %report.termination,
        "flow closed"
    );
    let mut record = AccessRecord {
        duration: started.elapsed(),
        downstream_local: ctx.local,
        upstream_host: Some(up.endpoint),
        upstream_local: up.local,
        upstream_cluster: Some(up.cluster.clone()),
        sni: ctx.sni.map(str::to_string),
        bytes_received: received,
        bytes_sent: sent,
        termination: Some(report.termination.clone()),
        ..AccessRecord::new(start_time, peer)
    };
    // Envoy's tcp_proxy sets DurationTimeout (DT) when it closes a flow at
    // `max_downstream_connection_duration`.
    if report.termination == Termination::MaxDuration {
        record.response_flags.insert(ResponseFlag::DurationTimeout);
    }
    gw.telemetry.report(&record);
}

/// The access-log line of a connection closed without being spliced (Envoy's NR for no
/// matching filter chain, UH/UF for the upstream): `upstream` is (cluster, endpoint,
/// failure reason).
#[allow(clippy::too_many_arguments)]
pub(super) fn refused(
    gw: &Gateway,
    (start, started): (std::time::SystemTime, Instant),
    peer: SocketAddr,
    local: Option<SocketAddr>,
    sni: Option<&str>,
    flag: ResponseFlag,
    upstream: Option<(&String, Option<SocketAddr>, Option<String>)>,
) {
    let (cluster, endpoint, failure) = match upstream {
        Some((c, e, f)) => (Some(c.clone()), e, f),
        None => (None, None, None),
    };
    gw.telemetry.report(&AccessRecord {
        duration: started.elapsed(),
        response_flags: flag.into(),
        downstream_local: local,
        upstream_host: endpoint,
        upstream_cluster: cluster,
        sni: sni.map(str::to_string),
        failure,
        ..AccessRecord::new(start, peer)
    });
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

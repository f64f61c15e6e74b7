//! HTTP/2 to the endpoints of a cluster whose port speaks it (ServiceEntry protocol
//! HTTP2, GRPC, GRPC-WEB): multiplexed connections per endpoint (one, unless
//! `http.maxConcurrentStreams` makes a busy one spill over to more), h2c with prior
//! knowledge on plain TCP, ALPN `h2` over TLS origination (Envoy's cluster with
//! `http2_protocol_options`). hyper's connection API rather than the pooled client, so
//! that `:authority` is the request's host while the connection goes to the endpoint
//! (Envoy turns `Host` into `:authority`). Also the clusters of an HTTP port with
//! `h2UpgradePolicy: UPGRADE`. The cluster's `connectionPool` connection settings
//! apply: connect timeout, TCP keepalive, streams per connection, concurrent streams,
//! idle timeout. Also a `useClientProtocol` cluster's requests from HTTP/2 clients.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::{Request, Response, body::Incoming, client::conn::http2::SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;

use super::body::Body;
use crate::config::upstream_policy::{ConnSettings, Keepalive};

/// Why a request did not get a response: `connect` for a connection (or TLS handshake)
/// that failed, else the stream or connection was reset.
pub struct SendError {
    pub connect: bool,
    pub message: String,
}

pub struct H2Pool {
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    keepalive: Option<Keepalive>,
    /// `http.maxRequestsPerConnection`: streams a connection carries before a new one
    /// is opened (the old one closes once its streams are done).
    max_requests: Option<u32>,
    /// `http.maxConcurrentStreams`: streams open at once on one connection; past it a
    /// request goes to another connection, opened if none has room (Envoy's upstream
    /// `http2_protocol_options.max_concurrent_streams`).
    max_concurrent: Option<u32>,
    /// `http.idleTimeout` (ZERO: never).
    idle_timeout: Duration,
    /// `tcp.maxConnectionDuration`: a connection that old takes no new stream; the pool
    /// lets it go and hyper closes it (GOAWAY) once its streams are done (Envoy's
    /// `max_connection_duration` drains it).
    max_duration: Option<Duration>,
    conns: Arc<Mutex<HashMap<SocketAddr, Vec<Pooled>>>>,
    /// One connect at a time per endpoint, so that requests waiting for room share the
    /// connection the first of them opens rather than each opening one.
    connecting: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
}

/// An endpoint's connection: its sender, streams sent on it, when it last sent one,
/// streams open on it now.
struct Pooled {
    sender: SendRequest<Body>,
    id: u64,
    streams: u32,
    last_used: Instant,
    born: Instant,
    active: Arc<AtomicU32>,
}

/// A stream open on a pooled connection, until the response carrying this (in its
/// extensions, then its body: `upstream::respond_upstream`) is done or dropped.
#[derive(Clone)]
pub struct OpenStream(#[allow(dead_code)] Arc<StreamSlot>);

struct StreamSlot(Arc<AtomicU32>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl H2Pool {
    /// `connect_timeout`: `--connect-timeout`, unless `conn` has `tcp.connectTimeout`.
    /// `stream_cap`: whether `http.maxConcurrentStreams` applies (Istio sets it on a
    /// cluster's explicit HTTP/2 options only, not with `useClientProtocol`).
    pub fn new(
        connect_timeout: Duration,
        conn: &ConnSettings,
        tls: Option<(rustls::ClientConfig, ServerName<'static>)>,
        stream_cap: bool,
    ) -> H2Pool {
        H2Pool {
            tls: tls.map(|(mut cfg, sni)| {
                cfg.alpn_protocols = vec![b"h2".to_vec()];
                (tokio_rustls::TlsConnector::from(Arc::new(cfg)), sni)
            }),
            connect_timeout: conn.connect_timeout.unwrap_or(connect_timeout),
            keepalive: conn.keepalive,
            max_requests: conn.max_requests_per_connection,
            max_concurrent: conn.max_concurrent_streams.filter(|_| stream_cap),
            idle_timeout: conn
                .idle_timeout
                .unwrap_or(super::upstream_tls::DEFAULT_IDLE_TIMEOUT),
            max_duration: conn.max_connection_duration,
            conns: Arc::new(Mutex::new(HashMap::new())),
            connecting: Mutex::new(HashMap::new()),
        }
    }

    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    pub async fn send(
        &self,
        endpoint: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        let (mut sender, open) = self.sender(endpoint).await?;
        let mut resp = sender.send_request(req).await.map_err(|e| SendError {
            connect: false,
            message: super::upstream::error_chain(&e),
        })?;
        resp.extensions_mut().insert(open);
        Ok(resp)
    }

    /// A connection of the endpoint with room for one more stream (taken), or a new one.
    async fn sender(
        &self,
        endpoint: SocketAddr,
    ) -> Result<(SendRequest<Body>, OpenStream), SendError> {
        if let Some(taken) = self.take_room(endpoint) {
            return Ok(taken);
        }
        let gate = self
            .connecting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(endpoint)
            .or_default()
            .clone();
        let _gate = gate.lock().await;
        // The connection another request just opened may have room.
        if let Some(taken) = self.take_room(endpoint) {
            return Ok(taken);
        }
        let sender = self.connect(endpoint).await?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let active = Arc::new(AtomicU32::new(1));
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(endpoint)
            .or_default()
            .push(Pooled {
                sender: sender.clone(),
                id,
                streams: 1,
                last_used: Instant::now(),
                born: Instant::now(),
                active: active.clone(),
            });
        // A zero (`tcp.idleTimeout: 0s`) is Envoy's "disabled": never reaped for idleness.
        if !self.idle_timeout.is_zero() {
            reap_when_idle(Arc::downgrade(&self.conns), endpoint, id, self.idle_timeout);
        }
        if let Some(max) = self.max_duration {
            retire_at(Arc::downgrade(&self.conns), endpoint, id, max);
        }
        Ok((sender, OpenStream(Arc::new(StreamSlot(active)))))
    }

    /// Drops the endpoint's closed and spent connections (dropping the pool's sender
    /// lets hyper close a connection once its streams are done), then takes a stream
    /// on the first one with room.
    fn take_room(&self, endpoint: SocketAddr) -> Option<(SendRequest<Body>, OpenStream)> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let list = conns.get_mut(&endpoint)?;
        list.retain(|p| {
            !p.sender.is_closed()
                && self.max_requests.is_none_or(|max| p.streams < max)
                && self.max_duration.is_none_or(|max| p.born.elapsed() < max)
        });
        let p = list.iter_mut().find(|p| {
            self.max_concurrent
                .is_none_or(|max| p.active.load(Ordering::Relaxed) < max)
        })?;
        p.streams += 1;
        p.last_used = Instant::now();
        p.active.fetch_add(1, Ordering::Relaxed);
        Some((
            p.sender.clone(),
            OpenStream(Arc::new(StreamSlot(p.active.clone()))),
        ))
    }

    async fn connect(&self, endpoint: SocketAddr) -> Result<SendRequest<Body>, SendError> {
        let fail = |message: String| SendError {
            connect: true,
            message,
        };
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(endpoint),
        )
        .await
        .map_err(|_| fail("connect timeout".into()))?
        .map_err(|e| fail(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        if let Some(k) = self.keepalive
            && let Err(e) = k.apply(socket2::SockRef::from(&tcp))
        {
            tracing::debug!(target: "gateway::http", "upstream TCP keepalive not set: {e}");
        }
        match &self.tls {
            None => handshake(TokioIo::new(tcp)).await,
            Some((connector, sni)) => {
                let tls =
                    tokio::time::timeout(self.connect_timeout, connector.connect(sni.clone(), tcp))
                        .await
                        .map_err(|_| fail("TLS handshake timeout".into()))?
                        .map_err(|e| fail(super::upstream::error_chain(&e)))?;
                handshake(TokioIo::new(tls)).await
            }
        }
        .map_err(|e| fail(super::upstream::error_chain(&e)))
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// `http.idleTimeout` for an HTTP/2 connection: once no stream has been started on it
/// for the idle time, the pool lets it go (hyper closes it when its last stream ends).
/// Envoy counts idleness from the end of the last stream; here it is from the start of
/// the last one, so a stream longer than the timeout lets a new connection open.
fn reap_when_idle(
    conns: std::sync::Weak<Mutex<HashMap<SocketAddr, Vec<Pooled>>>>,
    endpoint: SocketAddr,
    id: u64,
    idle: Duration,
) {
    tokio::spawn(async move {
        let mut at = Instant::now() + idle;
        loop {
            tokio::time::sleep_until(at.into()).await;
            let Some(conns) = conns.upgrade() else { return };
            let mut conns = conns.lock().unwrap_or_else(|p| p.into_inner());
            let Some(list) = conns.get_mut(&endpoint) else {
                return;
            };
            match list.iter().position(|p| p.id == id) {
                Some(i) if !list[i].sender.is_closed() => {
                    if list[i].last_used.elapsed() >= idle {
                        list.remove(i);
                        return;
                    }
                    at = list[i].last_used + idle;
                }
                _ => return,
            }
        }
    });
}

/// `tcp.maxConnectionDuration` for an HTTP/2 connection: at that age the pool lets it
/// go (no new stream goes to it; hyper sends GOAWAY and closes it once its streams are
/// done, or at once when it has none).
fn retire_at(
    conns: std::sync::Weak<Mutex<HashMap<SocketAddr, Vec<Pooled>>>>,
    endpoint: SocketAddr,
    id: u64,
    max: Duration,
) {
    tokio::spawn(async move {
        tokio::time::sleep(max).await;
        let Some(conns) = conns.upgrade() else { return };
        let mut conns = conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = conns.get_mut(&endpoint) {
            list.retain(|p| p.id != id);
        }
    });
}

async fn handshake<T>(io: T) -> hyper::Result<SendRequest<Body>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(target: "gateway::http", "upstream HTTP/2 connection ended: {e}");
        }
    });
    Ok(sender)
}

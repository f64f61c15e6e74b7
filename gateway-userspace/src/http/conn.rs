//! What a served HTTP connection carries for its requests ([`ConnCtx`]): who and where
//! the client is, the route table of its listener or HTTPS server and the Plan
//! generation it came from, the drain, the telemetry, and the HTTP/2 abuse counters.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::header::HeaderValue;

use crate::plan::{
    Plan,
    routing::{self, RouteTable},
};

/// What the service knows about the connection a request came on.
pub struct ConnCtx {
    pub peer: SocketAddr,
    pub port: u16,
    pub tls: bool,
    pub sni: Option<String>,
    /// On TLS ports, the server chosen by SNI (index in `Listener::servers`).
    pub server: Option<usize>,
    /// Host patterns of that server, for the 421 check.
    pub server_hosts: Option<Arc<routing::ServerHosts>>,
    /// The route table when the connection was accepted, and that Plan's generation:
    /// a request under a newer Plan looks its table up again ([`ConnCtx::table_in`]).
    pub table: Arc<RouteTable>,
    pub generation: u64,
    /// The listener's drain (SIGTERM's, or a reload removing the listener).
    pub drain: Arc<crate::sys::drain::Drain>,
    /// Requests seen on this connection, and those the client abandoned early.
    pub streams: AtomicU64,
    pub resets: AtomicU64,
    /// Notified when the client resets too many streams (see [`ConnCtx::premature_reset`]).
    pub abusive: tokio::sync::Notify,
    /// Bytes read from the client so far, and their count when the last response
    /// ended: equal means the connection sat idle between requests.
    pub bytes_in: Arc<AtomicU64>,
    idle_mark: AtomicU64,
    /// `x-forwarded-client-cert` for a verified client certificate (mTLS).
    pub client_cert: Option<HeaderValue>,
    /// The address the client connected to, for the access log.
    pub local: Option<SocketAddr>,
    /// Where the connection's requests are reported when they end (metrics, access
    /// logs): the gateway's.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// Requests open now, and when the last one ended (ms after `opened`).
    open_streams: AtomicU64,
    quiet_since_ms: AtomicU64,
    opened: Instant,
}

/// Held by a request (HTTP/1.1 or an HTTP/2 stream) until its response body is done or
/// dropped (see [`ConnCtx::quiet_for`]).
pub struct OpenStream(Arc<ConnCtx>);

impl OpenStream {
    pub fn new(conn: Arc<ConnCtx>) -> OpenStream {
        conn.open_streams.fetch_add(1, Ordering::Relaxed);
        OpenStream(conn)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let c = &self.0;
        c.quiet_since_ms
            .store(c.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
        c.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Envoy's premature-reset guard (CVE-2023-44487): once a connection has carried this
/// many streams and more than half were reset by the client before their response,
/// it is closed.
pub const PREMATURE_RESET_MIN_STREAMS: u64 = 500;

impl ConnCtx {
    /// The route table a request under `plan` uses: the connection's own while the Plan
    /// is the one it was accepted under, else the table of the same port and server in
    /// `plan` (Envoy's RDS update: open connections route their next request by the
    /// new routes), or the connection's own if `plan` no longer has that server.
    pub fn table_in(&self, plan: &Plan) -> Arc<RouteTable> {
        if plan.generation == self.generation {
            return self.table.clone();
        }
        plan.http
            .route_table(self.port, self.server)
            .unwrap_or_else(|| self.table.clone())
    }

    pub fn new(
        peer: SocketAddr,
        port: u16,
        sni: Option<String>,
        server: Option<(usize, Arc<routing::ServerHosts>)>,
        (generation, table): (u64, Arc<RouteTable>),
        drain: Arc<crate::sys::drain::Drain>,
        telemetry: Arc<crate::telemetry::Telemetry>,
    ) -> ConnCtx {
        let (server, server_hosts) = match server {
            Some((i, hosts)) => (Some(i), Some(hosts)),
            None => (None, None),
        };
        ConnCtx {
            peer,
            port,
            tls: server.is_some(),
            sni,
            server,
            server_hosts,
            table,
            generation,
            drain,
            streams: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            abusive: tokio::sync::Notify::new(),
            bytes_in: Arc::new(AtomicU64::new(0)),
            idle_mark: AtomicU64::new(0),
            client_cert: None,
            local: None,
            telemetry,
            open_streams: AtomicU64::new(0),
            quiet_since_ms: AtomicU64::new(0),
            opened: Instant::now(),
        }
    }

    /// How long no stream has been open (None while one is).
    pub fn quiet_for(&self) -> Option<Duration> {
        if self.open_streams.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.quiet_since_ms.load(Ordering::Relaxed));
        Some(self.opened.elapsed().saturating_sub(since))
    }

    /// At least one request on this connection has had its response completed.
    pub fn served_one(&self) -> bool {
        self.streams.load(Ordering::Relaxed) > 0 && self.open_streams.load(Ordering::Relaxed) == 0
    }

    pub(super) fn mark_idle(&self) {
        self.idle_mark
            .store(self.bytes_in.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// True if nothing arrived since the last response ended (or ever): a header
    /// timeout then is just an idle keep-alive connection being closed.
    pub fn idle(&self) -> bool {
        self.bytes_in.load(Ordering::Relaxed) == self.idle_mark.load(Ordering::Relaxed)
    }

    pub(super) fn premature_reset(&self) {
        let resets = self.resets.fetch_add(1, Ordering::Relaxed) + 1;
        let streams = self.streams.load(Ordering::Relaxed);
        if streams >= PREMATURE_RESET_MIN_STREAMS && resets * 2 > streams {
            self.abusive.notify_one();
        }
    }
}

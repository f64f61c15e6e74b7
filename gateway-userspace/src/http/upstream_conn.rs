//! The TCP connector of the HTTP/1.1 upstream clients (`http::upstream_tls`): a cluster's
//! `tcp.tcpKeepalive` on each new socket, and a request count carried by each
//! connection so that `http.maxRequestsPerConnection` can retire it
//! (Envoy's `max_requests_per_connection`: the connection is closed once it has served
//! that many requests, never reused for one more), and its birth so that
//! `tcp.maxConnectionDuration` can retire it (Envoy's `max_connection_duration`: past
//! it the connection takes no new request, and closes once the one in flight is done).
use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::{Request, Response, Uri, body::Incoming};
use hyper_util::{
    client::legacy::connect::{Connected, Connection, HttpConnector, capture_connection},
    rt::TokioIo,
};
use tokio::net::TcpStream;

use crate::config::upstream_policy::Keepalive;

/// HttpConnector, then the cluster's keepalive.
#[derive(Clone)]
pub struct Connector {
    pub http: HttpConnector,
    pub keepalive: Option<Keepalive>,
}

/// Requests sent on one upstream connection and when it was made (a `Connected` extra,
/// so that it reaches each response's extensions).
#[derive(Clone)]
pub struct Uses(Arc<ConnLife>);

struct ConnLife {
    requests: AtomicU32,
    born: Instant,
    /// Whether the `maxConnectionDuration` timer was started for this connection.
    timed: AtomicBool,
}

impl Default for Uses {
    fn default() -> Uses {
        Uses(Arc::new(ConnLife {
            requests: AtomicU32::new(0),
            born: Instant::now(),
            timed: AtomicBool::new(false),
        }))
    }
}

/// How long an upstream HTTP/1.1 connection serves: `http.maxRequestsPerConnection` and
/// `tcp.maxConnectionDuration` (None: no limit).
#[derive(Clone, Copy, Debug, Default)]
pub struct Reuse {
    pub max_requests: Option<u32>,
    pub max_duration: Option<Duration>,
}

pub struct Conn {
    io: TokioIo<TcpStream>,
    uses: Uses,
}

type ConnectError = Box<dyn std::error::Error + Send + Sync>;
type ConnectFuture = Pin<Box<dyn Future<Output = Result<Conn, ConnectError>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = ConnectError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        let keepalive = self.keepalive;
        Box::pin(async move {
            let io = connecting.await.map_err(ConnectError::from)?;
            if let Some(k) = keepalive
                && let Err(e) = k.apply(socket2::SockRef::from(io.inner()))
            {
                tracing::debug!(target: "gateway::http", "upstream TCP keepalive not set: {e}");
            }
            Ok(Conn {
                io,
                uses: Uses::default(),
            })
        })
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.uses.clone())
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// Sends `req` on `client`; with a request limit, the connection that reaches it is
/// poisoned as soon as it is picked for this request (before hyper can put it back in
/// the pool), so the pool closes it once this response is done. With a duration limit,
/// the first request on a connection starts a timer that poisons it once it is that
/// old: the pool then never hands it out again, and drops it when the request in flight
/// on it (if any) is done, or at its idle sweep (at most the duration later, see
/// `upstream_tls::build`).
pub async fn send_limited<C>(
    client: &hyper_util::client::legacy::Client<C, super::body::Body>,
    mut req: Request<super::body::Body>,
    reuse: Reuse,
) -> Result<Response<Incoming>, hyper_util::client::legacy::Error>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    if reuse.max_requests.is_none() && reuse.max_duration.is_none() {
        return client.request(req).await;
    }
    let mut captured = capture_connection(&mut req);
    let timer = captured.clone();
    let count = async {
        // None: no connection was had (the connect failed).
        let conn = captured.wait_for_connection_metadata().await;
        let Some(conn) = conn.as_ref() else { return };
        let mut extras = hyper::http::Extensions::new();
        conn.get_extras(&mut extras);
        let Some(life) = extras.get::<Uses>().map(|u| u.0.clone()) else {
            return;
        };
        if let Some(max) = reuse.max_requests
            && life.requests.fetch_add(1, Ordering::Relaxed) + 1 >= max
        {
            conn.poison();
        }
        if let Some(max) = reuse.max_duration {
            let at = life.born + max;
            if Instant::now() >= at {
                conn.poison();
            } else if !life.timed.swap(true, Ordering::Relaxed) {
                tokio::spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    if let Some(conn) = timer.connection_metadata().as_ref() {
                        conn.poison();
                    }
                });
            }
        }
    };
    let (resp, ()) = tokio::join!(client.request(req), count);
    resp
}

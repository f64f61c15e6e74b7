//! HTTP/1.1 connections: hyper serves a run of requests; a keep-alive connection that
//! sits idle is parked without hyper.
//!
//! A hyper HTTP/1.1 connection holds an 8 KiB read buffer and an 8 KiB header write
//! buffer for as long as it lives (hyper 1.x `proto/h1/io.rs`, `INIT_BUFFER_SIZE`), and
//! nothing shrinks them between requests: an idle keep-alive connection cost ~21 KiB of
//! RSS, where HAProxy and nginx show no measurable growth (issue 12). So once a served
//! connection has been quiet for [`PARK_AFTER`], hyper is asked to finish
//! (`graceful_shutdown`, which closes an idle HTTP/1.1 connection at once without writing
//! anything) with the socket's shutdown held back, and its parts are taken back: the
//! socket and whatever bytes hyper had read but not parsed. The parked connection is the
//! socket and a few words until the client sends again, when a new hyper connection
//! starts on it with those bytes first. To the client this is one keep-alive connection:
//! no byte is written, none lost, and the idle limit (`--http-idle-timeout`, Envoy's
//! `common_http_protocol_options.idle_timeout`, 1 h by default, counted from the end of
//! the last response) is kept by the parking wait.
//!
//! A busy connection never parks (the quiet check runs once per [`PARK_AFTER`], not per
//! request), so the hot keep-alive path is untouched.
//!
//! The drain ([`crate::sys::drain`]) sees a parked connection as the idle keep-alive
//! connection it is and closes it at once; a served one gets hyper's graceful shutdown
//! (the request in flight answered with `Connection: close`) as before.
use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes};
use hyper::{body::Incoming, service::HttpService};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::{
    Counted, HEADER_READ_TIMEOUT, MAX_REQUEST_HEADERS_BYTES, MAX_REQUEST_HEADERS_COUNT, proxy,
};
use crate::{server::Gateway, telemetry::metrics::Stats};

/// How long a keep-alive connection must sit quiet (no request open, no byte read since
/// the last response ended) before it is parked.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// How a connection served by [`serve`] ended.
pub enum Ended {
    /// hyper finished the connection (client closed, `Connection: close`, an upgrade
    /// handed the socket on) or failed with this error.
    Hyper(Result<(), hyper::Error>),
    /// Parked, and the client sent nothing more within `--http-idle-timeout`: closed.
    IdleParked,
    /// Parked, and the client closed or the socket failed, or the drain started.
    ClosedParked,
    /// Still open at the drain deadline: dropped.
    Dropped,
}

/// Serves HTTP/1.1 on `io` until the connection ends, parking it while idle; a
/// connection idle for `idle_timeout` since its last response is closed (None: never).
pub async fn serve<IO, S>(
    gw: &Gateway,
    conn: &proxy::ConnCtx,
    io: IO,
    svc: S,
    idle_timeout: Option<Duration>,
) -> Ended
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming> + Clone + Unpin + Send + 'static,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let drain = &conn.drain;
    let hold = Arc::new(AtomicBool::new(false));
    let mut io = ClientIo {
        inner: Counted {
            inner: io,
            count: conn.bytes_in.clone(),
        },
        pending: Bytes::new(),
        hold_shutdown: hold.clone(),
    };
    loop {
        let mut served = Box::pin(
            hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_headers(MAX_REQUEST_HEADERS_COUNT)
                .max_header_size(MAX_REQUEST_HEADERS_BYTES)
                .serve_connection(TokioIo::new(io), svc.clone())
                .with_upgrades(),
        );
        // The connection is polled first, so a request whose bytes are already read is
        // parsed before a drain that started meanwhile is seen (hyper closes a
        // connection it thinks idle at once).
        tokio::select! {
            biased;
            r = served.as_mut() => return Ended::Hyper(r),
            () = drain.draining() => {
                // The request in flight is answered with `Connection: close` (hyper turns
                // keep-alive off), an idle connection closes at once.
                served.as_mut().graceful_shutdown();
                return tokio::select! {
                    biased;
                    r = served => Ended::Hyper(r),
                    () = drain.closing() => Ended::Dropped,
                };
            }
            () = quiet(conn) => {}
        }
        // Quiet: hyper's keep-alive state is idle (it has sent a response and parsed
        // nothing since), so graceful_shutdown closes it without writing a byte; the
        // shutdown(2) it then calls on the socket is held back.
        hold.store(true, Ordering::Relaxed);
        served.as_mut().graceful_shutdown();
        if let Err(e) = served.as_mut().await {
            return Ended::Hyper(Err(e));
        }
        hold.store(false, Ordering::Relaxed);
        let Some(parts) = Pin::into_inner(served).into_parts() else {
            // Upgraded meanwhile: the socket went to the tunnel.
            return Ended::Hyper(Ok(()));
        };
        io = parts.io.into_inner();
        io.unread(parts.read_buf);
        drop(parts.service);
        if io.pending.is_empty() {
            let _parked = Parked::enter(&gw.stats);
            let quiet = conn.quiet_for().unwrap_or_default();
            let idle_left = idle_timeout.map(|t| t.saturating_sub(quiet));
            // A small first read: the rest of the request goes to hyper's own buffer.
            let mut first = [0u8; 128];
            let read = tokio::select! {
                r = io.inner.read(&mut first) => Ok(r),
                () = sleep_or_never(idle_left) => Err(()),
                () = drain.draining() => Ok(Ok(0)),
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), io.inner.shutdown()).await;
                    return Ended::ClosedParked;
                }
                Ok(Ok(n)) => io.unread(Bytes::copy_from_slice(&first[..n])),
                Err(_) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), io.inner.shutdown()).await;
                    return Ended::IdleParked;
                }
            }
        }
    }
}

/// Sleeps `d`, or forever when None.
async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Resolves once the connection is quiet enough to park: at least one response
/// completed, no request open, and not a byte read since the last response ended, for
/// [`PARK_AFTER`].
async fn quiet(conn: &proxy::ConnCtx) {
    loop {
        let wait = match conn.quiet_for() {
            Some(q) if q >= PARK_AFTER && conn.served_one() && conn.idle() => return,
            Some(q) if q < PARK_AFTER => PARK_AFTER - q,
            _ => PARK_AFTER,
        };
        tokio::time::sleep(wait).await;
    }
}

/// Counts a connection in `gateway_http_parked_connections` while it lives.
struct Parked<'a>(&'a Stats);

impl<'a> Parked<'a> {
    fn enter(stats: &'a Stats) -> Parked<'a> {
        stats.http_parked.fetch_add(1, Ordering::Relaxed);
        stats.http_parks.fetch_add(1, Ordering::Relaxed);
        Parked(stats)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.http_parked.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The client socket as hyper sees it on HTTP/1.1: bytes handed back by a finished hyper
/// connection are read first; reads are counted by [`Counted`] (for
/// [`proxy::ConnCtx::idle`]); while parking, shutdown is a no-op so the socket stays open.
struct ClientIo<IO> {
    inner: Counted<IO>,
    pending: Bytes,
    hold_shutdown: Arc<AtomicBool>,
}

impl<IO> ClientIo<IO> {
    /// Puts `bytes` before whatever is still pending.
    fn unread(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        if self.pending.is_empty() {
            self.pending = bytes;
        } else {
            let mut v = Vec::with_capacity(bytes.len() + self.pending.len());
            v.extend_from_slice(&bytes);
            v.extend_from_slice(&self.pending);
            self.pending = v.into();
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ClientIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() {
            let n = self.pending.len().min(buf.remaining());
            buf.put_slice(&self.pending[..n]);
            self.pending.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ClientIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.hold_shutdown.load(Ordering::Relaxed) {
            // Parking: flush what hyper wrote, keep the connection open.
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

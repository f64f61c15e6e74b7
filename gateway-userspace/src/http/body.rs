//! Response and request bodies that carry the gateway's bookkeeping: byte counts, the
//! access-log line written when a response ends (or is abandoned), and the route
//! timeout that still runs while a response streams.
use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint};

use super::{AccessRecord, ResponseFlag, proxy::ConnCtx};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of every request sent upstream and every response sent downstream.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

/// The downstream request body, counting bytes for the log, with Envoy's stream idle
/// timeout while it is read: no frame from the client for that long ends the body with
/// [`StreamIdleTimeout`] (a slow-POST client cannot hold the request, and its upstream
/// connection, open forever).
pub struct CountingBody {
    pub inner: Incoming,
    pub count: Arc<AtomicU64>,
    /// `--stream-idle-timeout` (None: off).
    pub idle: Option<Duration>,
    /// Armed while the client sends nothing; reset by every frame.
    pub timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Set when the timeout ended the body (the proxy answers 408 `SI` then).
    pub timed_out: Arc<AtomicBool>,
    /// A copy of the body for the mirrors (`super::mirror`), while one is wanted.
    pub tee: Option<Tee>,
}

/// Collects the request body as it streams to the primary upstream, up to `limit`
/// bytes, and hands it to the mirror task when the body has ended. Dropped (the
/// mirror task then gives up) when the body grows past `limit` or fails, as Envoy's
/// router abandons its shadows when the request overflows its buffer limit
/// (router.cc, decodeData: `retry_or_shadow_abandoned`).
pub struct Tee {
    pub buf: Vec<u8>,
    pub limit: usize,
    pub done: tokio::sync::oneshot::Sender<Bytes>,
}

impl CountingBody {
    /// Starts copying the body for the mirrors; the receiver gets the whole body, or
    /// an error if it is abandoned.
    pub fn tee(&mut self, limit: usize) -> tokio::sync::oneshot::Receiver<Bytes> {
        let (done, rx) = tokio::sync::oneshot::channel();
        if self.inner.is_end_stream() {
            let _ = done.send(Bytes::new());
        } else {
            self.tee = Some(Tee {
                buf: Vec::new(),
                limit,
                done,
            });
        }
        rx
    }

    fn copy(&mut self, polled: &Option<Result<Frame<Bytes>, hyper::Error>>) {
        let Some(tee) = self.tee.as_mut() else { return };
        match polled {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    if tee.buf.len() + d.len() > tee.limit {
                        self.tee = None;
                        return;
                    }
                    tee.buf.extend_from_slice(d);
                }
                // hyper stops polling a body that says it has ended.
                if !self.inner.is_end_stream() {
                    return;
                }
            }
            Some(Err(_)) => {
                self.tee = None;
                return;
            }
            None => {}
        }
        if let Some(tee) = self.tee.take() {
            let _ = tee.done.send(Bytes::from(tee.buf));
        }
    }
}

impl CountingBody {
    pub fn new(inner: Incoming, count: Arc<AtomicU64>, idle: Option<Duration>) -> Self {
        CountingBody {
            inner,
            count,
            idle,
            timer: None,
            timed_out: Arc::new(AtomicBool::new(false)),
            tee: None,
        }
    }
}

/// The request body's stream idle timeout fired (Envoy: `stream_idle_timeout`).
#[derive(Debug, thiserror::Error)]
#[error("no request body bytes from the client within the stream idle timeout")]
pub struct StreamIdleTimeout;

impl HttpBody for CountingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(polled) => {
                self.timer = None;
                self.copy(&polled);
                if let Some(Ok(f)) = &polled
                    && let Some(d) = f.data_ref()
                {
                    self.count.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(polled.map(|r| r.map_err(BoxError::from)))
            }
            Poll::Pending => {
                let Some(idle) = self.idle else {
                    return Poll::Pending;
                };
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    self.timed_out.store(true, Ordering::Relaxed);
                    self.tee = None;
                    return Poll::Ready(Some(Err(Box::new(StreamIdleTimeout))));
                }
                Poll::Pending
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps an HTTP/2 stream counted as open until it is done.
pub struct WithToken {
    pub inner: Body,
    pub _token: super::proxy::OpenStream,
}

impl HttpBody for WithToken {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `grpc-status` of a header or trailer block.
pub fn grpc_status(h: &hyper::HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

/// The response body: counts bytes and writes the request's log line when it ends,
/// fails, or is dropped early (the client went away: `DC`).
pub struct LoggedBody {
    pub inner: Body,
    pub log: Option<AccessRecord>,
    pub started: Instant,
    pub received: Arc<AtomicU64>,
    pub sent: u64,
    pub conn: Arc<ConnCtx>,
}

impl LoggedBody {
    fn emit(&mut self, extra_flag: Option<ResponseFlag>) {
        if let Some(mut log) = self.log.take() {
            if let Some(f) = extra_flag {
                log.response_flags.insert(f);
            }
            log.bytes_sent = self.sent;
            log.bytes_received = self.received.load(Ordering::Relaxed);
            log.duration = self.started.elapsed();
            log.emit(&self.conn.telemetry);
            self.conn.mark_idle();
        }
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.sent += d.len() as u64;
                }
                if let Some(code) = f.trailers_ref().and_then(grpc_status)
                    && let Some(log) = self.log.as_mut()
                {
                    log.grpc_status = Some(code);
                }
                if self.inner.is_end_stream() {
                    self.emit(None);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let flag = if e.is::<ResponseTimeout>() {
                    ResponseFlag::UpstreamRequestTimeout
                } else {
                    ResponseFlag::UpstreamProtocolError
                };
                self.emit(Some(flag))
            }
            Poll::Ready(None) => self.emit(None),
            Poll::Pending => {}
        }
        polled
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body cut off with an error (the stream is reset / the connection closed,
/// so the client can't mistake it for a complete one) when the route timeout passes.
pub struct DeadlineBody {
    pub inner: Body,
    pub sleep: Pin<Box<tokio::time::Sleep>>,
}

#[derive(Debug, thiserror::Error)]
#[error("route timeout reached while streaming the upstream response")]
pub struct ResponseTimeout;

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(ResponseTimeout)))),
            Poll::Pending => Poll::Pending,
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let flag =
            (!self.inner.is_end_stream()).then_some(ResponseFlag::DownstreamConnectionTermination);
        self.emit(flag);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A body that never yields: an upstream that stalls mid-response.
    struct Stalled;

    impl HttpBody for Stalled {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn route_timeout_cuts_a_stalled_response_body() {
        let at = tokio::time::Instant::now() + Duration::from_millis(50);
        let body = DeadlineBody {
            inner: Stalled.boxed_unsync(),
            sleep: Box::pin(tokio::time::sleep_until(at)),
        };
        let started = Instant::now();
        let err = body.collect().await.expect_err("cut off");
        assert!(err.is::<ResponseTimeout>(), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(45));
        // A body that ends in time is untouched.
        let body = DeadlineBody {
            inner: full("done"),
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(5))),
        };
        assert_eq!(body.collect().await.unwrap().to_bytes(), "done");
    }
}

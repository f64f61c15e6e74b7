//! A streamed request body kept for a retry, as Envoy's router keeps it: the body goes
//! upstream as it arrives (a gRPC or chunked request has no length to buffer it by, and
//! a streaming client may wait for the answer before it ends), while a copy is recorded
//! up to a limit. A retry can resend it only when the whole body was seen and fit:
//! Envoy's router stops retrying once the request exceeds its retry buffer
//! (`retry_shadow_buffer_limit`, router.cc "The request is larger than we should buffer
//! ... Disabling retries").

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::body::{Body as HttpBody, Bytes, Frame, SizeHint};

/// What a [`Tee`] has recorded.
#[derive(Default)]
struct Tape {
    data: Vec<u8>,
    /// More than the limit, or trailers (not recorded): not replayable.
    spoiled: bool,
    /// The body ended.
    done: bool,
}

/// The recorder's handle, kept by the retry loop.
#[derive(Clone, Default)]
pub struct Recording(Arc<Mutex<Tape>>);

impl Recording {
    /// The whole body, if it ended within the limit (a retry may resend it).
    pub fn replay(&self) -> Option<Bytes> {
        let tape = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (tape.done && !tape.spoiled).then(|| Bytes::copy_from_slice(&tape.data))
    }

    /// Whether [`replay`](Self::replay) has the body.
    pub fn replayable(&self) -> bool {
        let tape = self.0.lock().unwrap_or_else(|p| p.into_inner());
        tape.done && !tape.spoiled
    }
}

/// `inner`, recording its data frames into a [`Recording`] up to `limit` bytes.
pub struct Tee<B> {
    inner: B,
    tape: Recording,
    limit: usize,
}

/// Wraps `body` for recording.
pub fn tee<B>(body: B, limit: usize) -> (Tee<B>, Recording) {
    let tape = Recording::default();
    (
        Tee {
            inner: body,
            tape: tape.clone(),
            limit,
        },
        tape,
    )
}

impl<B> HttpBody for Tee<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let limit = self.limit;
        let mut tape = self.tape.0.lock().unwrap_or_else(|p| p.into_inner());
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    if !tape.spoiled && tape.data.len() + d.len() <= limit {
                        tape.data.extend_from_slice(d);
                    } else {
                        tape.spoiled = true;
                        tape.data = Vec::new();
                    }
                } else {
                    tape.spoiled = true;
                }
                // hyper stops polling a body that says it has ended: its last frame
                // is its end.
                if self.inner.is_end_stream() {
                    tape.done = true;
                }
            }
            Poll::Ready(None) => tape.done = true,
            // An error ends the body without its end: not replayable (done stays false).
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        drop(tape);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    /// Its chunks, one frame each, then the end.
    struct Chunks(VecDeque<&'static [u8]>);

    impl HttpBody for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|c| Ok(Frame::data(Bytes::from_static(c)))),
            )
        }

        /// As hyper's `Incoming`: ended once the last frame is out.
        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn body(chunks: &[&'static [u8]]) -> Chunks {
        Chunks(chunks.iter().copied().collect())
    }

    #[tokio::test]
    async fn a_whole_body_within_the_limit_replays() {
        let (t, rec) = tee(body(&[b"ab", b"cd"]), 4);
        assert_eq!(rec.replay(), None, "not ended yet");
        let got = t.collect().await.expect("body").to_bytes();
        assert_eq!(&got[..], b"abcd");
        assert_eq!(rec.replay().as_deref(), Some(&b"abcd"[..]));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_still_streams_but_does_not_replay() {
        let (t, rec) = tee(body(&[b"ab", b"cde"]), 4);
        let got = t.collect().await.expect("body").to_bytes();
        assert_eq!(&got[..], b"abcde");
        assert_eq!(rec.replay(), None);
    }

    #[tokio::test]
    async fn a_body_whose_last_frame_says_it_ended_replays_without_a_final_poll() {
        let (mut t, rec) = tee(body(&[b"ab", b"cd"]), 64);
        t.frame().await.expect("a frame").expect("ok");
        assert!(!rec.replayable());
        t.frame().await.expect("a frame").expect("ok");
        assert!(rec.replayable());
        assert_eq!(rec.replay().as_deref(), Some(&b"abcd"[..]));
    }

    #[tokio::test]
    async fn an_unfinished_body_does_not_replay() {
        let (mut t, rec) = tee(body(&[b"ab", b"cd"]), 64);
        let first = t.frame().await.expect("a frame").expect("ok");
        assert_eq!(first.data_ref().map(|d| &d[..]), Some(&b"ab"[..]));
        assert_eq!(rec.replay(), None);
    }
}

//! The byte streams under a served connection: [`Prelude`] gives back bytes already
//! read from the client (the ClientHello, the h2 preface probe), [`Counted`] counts what
//! the client sent (idle or slow?), and [`detect_h2`] tells h2c prior knowledge from
//! HTTP/1.1 on a plain port.
use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::HEADER_READ_TIMEOUT;

/// Counts the bytes read from the client (for telling idle from slow connections).
pub(super) struct Counted<IO> {
    pub(super) inner: IO,
    pub(super) count: Arc<std::sync::atomic::AtomicU64>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
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

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/2 with prior knowledge (h2c) or HTTP/1.1 on a plain port: reads until the
/// bytes are the full h2 preface or diverge from it, under [`HEADER_READ_TIMEOUT`].
/// The bytes read are kept in the prelude for hyper.
pub(super) async fn detect_h2(
    mut io: Prelude<TcpStream>,
    read: &std::sync::atomic::AtomicU64,
) -> io::Result<(Prelude<TcpStream>, bool)> {
    let mut buf = std::mem::take(&mut io.prelude);
    let read = async {
        loop {
            let n = buf.len().min(H2_PREFACE.len());
            if buf[..n] != H2_PREFACE[..n] {
                return Ok(false);
            }
            if n == H2_PREFACE.len() {
                return Ok(true);
            }
            let mut chunk = [0u8; 24];
            let got = io.inner.read(&mut chunk).await?;
            read.fetch_add(got as u64, std::sync::atomic::Ordering::Relaxed);
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client closed without a request",
                ));
            }
            buf.extend_from_slice(&chunk[..got]);
        }
    };
    let h2 = tokio::time::timeout(HEADER_READ_TIMEOUT, read)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request bytes in time"))??;
    io.prelude = buf;
    io.pos = 0;
    Ok((io, h2))
}

/// A stream whose first reads return bytes already taken from it.
pub struct Prelude<S> {
    pub(super) prelude: Vec<u8>,
    pub(super) pos: usize,
    pub(super) inner: S,
}

impl<S> Prelude<S> {
    pub fn new(prelude: Vec<u8>, inner: S) -> Self {
        Prelude {
            prelude,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prelude<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prelude.len() {
            let n = (self.prelude.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prelude[start..start + n]);
            self.pos += n;
            if self.pos == self.prelude.len() {
                self.prelude = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prelude<S> {
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

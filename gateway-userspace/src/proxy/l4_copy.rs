//! The userspace copy of L4 flows with TLS on either side (terminated downstream,
//! originated upstream, or both): the kernel splice cannot carry TLS. Same contract as
//! the splices' copies (kernel::splice::copy): two 16 KiB buffers per flow, a FIN (or
//! close_notify) passed on as a half-close, a reset on one side resets the other, and
//! `--tcp-idle-timeout` and the drain deadline end the flow.
use std::{
    io,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use crate::kernel::splice::{FlowLimits, FlowReport, Path, Termination};

/// A stream over one TCP socket: plain, or TLS (either side).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {
    fn socket(&self) -> &TcpStream;
}

impl Stream for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

impl Stream for tokio_rustls::server::TlsStream<TcpStream> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl Stream for tokio_rustls::client::TlsStream<TcpStream> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// How one direction of the copy ended.
enum End {
    /// EOF (close_notify or FIN); the other side's write was shut.
    Fin,
    /// The reader reset or failed: the writer's side must be reset.
    ReaderReset,
    /// Writing failed (the peer went away): the reader's side must be reset.
    WriterFailed,
}

/// Per-flow activity for the idle timeout: milliseconds since `base` of the last byte.
struct Activity {
    base: Instant,
    last: AtomicU64,
    /// Bytes written, downstream→upstream and upstream→downstream.
    moved: [AtomicU64; 2],
}

impl Activity {
    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `idle` (never when None).
    async fn expired(&self, idle: Option<Duration>) {
        let Some(idle) = idle else {
            return std::future::pending().await;
        };
        loop {
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let quiet = self.base.elapsed().saturating_sub(last);
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    }
}

async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    activity: &Activity,
    dir: usize,
) -> End {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                let _ = to.shutdown().await;
                return End::Fin;
            }
            Ok(n) => n,
            // A TCP FIN without close_notify: Envoy treats it as the end of the stream
            // (a half-close), not as a reset.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                let _ = to.shutdown().await;
                return End::Fin;
            }
            Err(_) => return End::ReaderReset,
        };
        activity.touch();
        if to.write_all(&buf[..n]).await.is_err() {
            return End::WriterFailed;
        }
        if to.flush().await.is_err() {
            return End::WriterFailed;
        }
        activity.moved[dir].fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Resets a socket: close with SO_LINGER 0.
fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// Copies both ways between the client's stream and the upstream's until both
/// directions are done, a reset, the idle timeout without a byte, the flow's deadline
/// (`maxConnectionDuration`), or `closing` (the drain deadline).
pub async fn copy(
    down: impl Stream,
    up: impl Stream,
    limits: FlowLimits,
    closing: impl std::future::Future<Output = ()>,
) -> FlowReport {
    let idle = limits.idle;
    let deadline = crate::kernel::splice::flow_deadline(limits.deadline);
    let activity = Activity {
        base: Instant::now(),
        last: AtomicU64::new(0),
        moved: [AtomicU64::new(0), AtomicU64::new(0)],
    };
    let (mut dr, mut dw) = tokio::io::split(down);
    let (mut ur, mut uw) = tokio::io::split(up);
    tokio::pin!(closing);
    let ended = {
        let (d2u, u2d) = (
            pipe(&mut dr, &mut uw, &activity, 0),
            pipe(&mut ur, &mut dw, &activity, 1),
        );
        tokio::pin!(d2u, u2d);
        let bad = |e: &End| !matches!(e, End::Fin);
        // A reset ends the flow at once; a FIN lets the other direction finish.
        tokio::select! {
            a = &mut d2u => {
                let b = if bad(&a) { End::Fin } else { u2d.await };
                Ok((a, b))
            }
            b = &mut u2d => {
                let a = if bad(&b) { End::Fin } else { d2u.await };
                Ok((a, b))
            }
            () = activity.expired(idle) => Err(Termination::IdleTimeout),
            () = deadline => Err(Termination::MaxDuration),
            () = &mut closing => Err(Termination::DrainTimeout),
            () = crate::kernel::splice::flow_closing(limits.closing.as_ref()) => Err(Termination::DrainTimeout),
        }
    };
    let (down, up) = (dr.unsplit(dw), ur.unsplit(uw));
    let (down, up) = (down.socket(), up.socket());
    let (a, b) = match ended {
        Ok(ended) => ended,
        Err(why) => {
            // As the splices end an idle flow: FIN both ways.
            for s in [down, up] {
                let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write);
            }
            tracing::debug!("tls flow: {why}");
            let moved = |i: usize| activity.moved[i].load(Ordering::Relaxed);
            return FlowReport {
                downstream_to_upstream: moved(0),
                upstream_to_downstream: moved(1),
                userspace_bytes: moved(0) + moved(1),
                path: Path::Copy,
                termination: why,
                ..Default::default()
            };
        }
    };
    // d2u reads the client: its reset, or u2d failing to write to it, resets the
    // upstream; the other way round resets the client.
    let termination = match (&a, &b) {
        (End::ReaderReset, _) | (_, End::WriterFailed) => {
            reset(up);
            Termination::DownstreamReset
        }
        (End::WriterFailed, _) | (_, End::ReaderReset) => {
            reset(down);
            Termination::UpstreamReset
        }
        _ => Termination::Closed,
    };
    // What was written each way (a direction cut short by a reset still counts).
    let moved = |i: usize| activity.moved[i].load(Ordering::Relaxed);
    FlowReport {
        downstream_to_upstream: moved(0),
        upstream_to_downstream: moved(1),
        userspace_bytes: moved(0) + moved(1),
        path: Path::Copy,
        termination,
        ..Default::default()
    }
}

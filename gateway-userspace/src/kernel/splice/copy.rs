//! A plain tokio copy for the rare flow the kernel splice can't take: a socket that is no
//! longer ESTABLISHED when the flow is routed (the client already sent its FIN), which
//! the kernel refuses to put in a SOCKHASH. Same contract as the other splices.
use std::time::Duration;

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

use super::{
    DirEnd, FlowReport, Termination, Victim, ending,
    idle::{Activity, FlowLimits, deadline, expired},
};

async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    activity: &Activity,
    d2u: bool,
) -> DirEnd {
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                let _ = to.shutdown().await;
                return DirEnd::Fin(total);
            }
            Ok(n) => n,
            Err(_) => return DirEnd::ReaderReset(total),
        };
        activity.read(n);
        if to.write_all(&buf[..n]).await.is_err() {
            return DirEnd::WriterFailed(total);
        }
        activity.written(d2u, n);
        total += n as u64;
    }
}

/// Copies both ways until both sides are done (or nothing moved for the idle timeout,
/// the flow's deadline passed, or `closing` is cancelled).
pub async fn copy(
    mut down: TcpStream,
    mut up: TcpStream,
    limits: impl Into<FlowLimits>,
    closing: &CancellationToken,
) -> FlowReport {
    let limits = limits.into();
    let activity = Activity::new();
    let ended = {
        let (dr, dw) = down.split();
        let (ur, uw) = up.split();
        let (d2u, u2d) = (
            pipe(dr, uw, &activity, true),
            pipe(ur, dw, &activity, false),
        );
        tokio::pin!(d2u, u2d);
        // A reset ends the flow at once; a FIN lets the other direction finish.
        tokio::select! {
            a = &mut d2u => {
                let b = if ending(true, &a).is_some() { DirEnd::Fin(0) } else { u2d.await };
                Ok((a, b))
            }
            b = &mut u2d => {
                let a = if ending(false, &b).is_some() { DirEnd::Fin(0) } else { d2u.await };
                Ok((a, b))
            }
            () = expired(&activity, limits.idle) => Err(Termination::IdleTimeout),
            () = deadline(limits.deadline) => Err(Termination::MaxDuration),
            () = closing.cancelled() => Err(Termination::DrainTimeout),
            () = super::idle::closing(limits.closing.as_ref()) => Err(Termination::DrainTimeout),
        }
    };
    let (a, b) = match ended {
        Ok(ended) => ended,
        Err(why) => return idle_close(down, up, &activity, super::Path::Copy, why),
    };
    let termination = match ending(true, &a).or_else(|| ending(false, &b)) {
        Some((victim, t)) => {
            let s = if victim == Victim::Down { &down } else { &up };
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
            t
        }
        None => Termination::Closed,
    };
    FlowReport {
        downstream_to_upstream: a.bytes(),
        upstream_to_downstream: b.bytes(),
        userspace_bytes: a.bytes() + b.bytes(),
        path: super::Path::Copy,
        termination,
        ..Default::default()
    }
}

/// Ends an idle flow (or one still open at the drain deadline: `why`): a FIN each way
/// when nothing read is left unwritten, else a reset each way (closing with a FIN would
/// hand the reader a clean but truncated stream).
pub(crate) fn idle_close(
    down: TcpStream,
    up: TcpStream,
    activity: &Activity,
    path: super::Path,
    why: Termination,
) -> FlowReport {
    let pending = activity.pending() || super::sockopt::unread(&down, &up);
    for s in [&down, &up] {
        let s = socket2::SockRef::from(s);
        if pending {
            let _ = s.set_linger(Some(Duration::ZERO));
        } else {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
    }
    tracing::debug!(pending, "splice: {why}");
    let (d2u, u2d) = activity.moved();
    FlowReport {
        downstream_to_upstream: d2u,
        upstream_to_downstream: u2d,
        userspace_bytes: d2u + u2d,
        path,
        termination: why,
        ..Default::default()
    }
}

//! A plain tokio copy for the rare flow the kernel splice can't take: a socket that is no
//! longer ESTABLISHED when the flow is routed (the client already sent its FIN), which
//! the kernel refuses to put in a SOCKHASH. Same contract as the other splices.
use std::time::Duration;

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use super::{DirEnd, FlowReport, Termination, Victim, ending};

async fn pipe(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) -> DirEnd {
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
        if to.write_all(&buf[..n]).await.is_err() {
            return DirEnd::WriterFailed(total);
        }
        total += n as u64;
    }
}

pub async fn copy(mut down: TcpStream, mut up: TcpStream) -> FlowReport {
    let (a, b) = {
        let (dr, dw) = down.split();
        let (ur, uw) = up.split();
        let (d2u, u2d) = (pipe(dr, uw), pipe(ur, dw));
        tokio::pin!(d2u, u2d);
        // A reset ends the flow at once; a FIN lets the other direction finish.
        tokio::select! {
            a = &mut d2u => {
                let b = if ending(true, &a).is_some() { DirEnd::Fin(0) } else { u2d.await };
                (a, b)
            }
            b = &mut u2d => {
                let a = if ending(false, &b).is_some() { DirEnd::Fin(0) } else { d2u.await };
                (a, b)
            }
        }
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

//! The HTTP side of the drain ([`crate::sys::drain`]): a connection that has sent
//! nothing when the drain starts is closed at once (as hyper closes an idle keep-alive
//! connection); one that is serving is asked to shut down gracefully (HTTP/1.1: the
//! request in flight is answered with `Connection: close`, see [`super::h1`]; HTTP/2:
//! GOAWAY, open streams finish) and dropped at the drain deadline if it is still open.
use std::{
    os::fd::{AsRawFd, RawFd},
    sync::atomic::{AtomicU64, Ordering},
};

use crate::sys::drain::Drain;

/// A socket's fd, borrowed for one ioctl while its owner is busy elsewhere.
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Completes when the drain starts while the client has sent nothing: no byte `read`
/// through the gateway and none queued in the socket `fd`. Never completes otherwise
/// (the connection then gets its request served).
pub(super) async fn closes_unused(drain: &Drain, fd: RawFd, read: &AtomicU64) {
    drain.draining().await;
    let queued = crate::kernel::splice::sockopt::inq(&Fd(fd)).unwrap_or(1);
    if read.load(Ordering::Relaxed) == 0 && queued == 0 {
        return;
    }
    std::future::pending().await
}

//! Where each socket of a flow stood when it entered the splice: the baseline of TCP's
//! own counters against which the driver measures what was received and written since.
use std::{io, os::fd::AsRawFd};

use crate::kernel::splice::sockopt;

/// Where a socket stood just before it entered the splice.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Start {
    pub(crate) cookie: u64,
    /// Sequence space received and already read by userspace (ClientHello, handover).
    pub(super) consumed: u64,
    /// What tcpi_bytes_acked + SIOCOUTQ said (includes an active open's SYN and what
    /// userspace wrote before the handover).
    pub(super) written: u64,
}

impl Start {
    /// Must run before the sockets enter a sockmap: FIONREAD is TCP's only until then.
    ///
    /// Each figure comes from two reads (TCP_INFO and an ioctl) that a segment or an ACK
    /// can fall between. Nobody reads or writes the sockets meanwhile, so the ioctl's
    /// value moves only when one does: it is read before and after, and the pair is kept
    /// only once it did not move. (An ACK between `acked` and SIOCOUTQ would make the
    /// baseline too low, and the FIN later wait for fewer bytes than it must.)
    pub(crate) fn pair(down: &impl AsRawFd, up: &impl AsRawFd) -> io::Result<[Start; 2]> {
        fn stable(
            read: impl Fn() -> io::Result<u64>,
            around: impl Fn() -> io::Result<u64>,
        ) -> io::Result<(u64, u64)> {
            for _ in 0..1000 {
                let before = around()?;
                let v = read()?;
                if around()? == before {
                    return Ok((v, before));
                }
            }
            Err(io::Error::other("TCP counters kept moving"))
        }
        let of = |s: &dyn AsRawFd| -> io::Result<Start> {
            let fd = SockFd(s.as_raw_fd());
            let (received, inq) = stable(|| sockopt::bytes_received(&fd), || sockopt::inq(&fd))?;
            let (acked, outq) = stable(|| sockopt::bytes_acked(&fd), || sockopt::outq(&fd))?;
            Ok(Start {
                cookie: sockopt::cookie(&fd)?,
                consumed: received.saturating_sub(inq),
                written: acked + outq,
            })
        };
        Ok([of(down)?, of(up)?])
    }
}

/// A borrowed raw fd, for the sockopt helpers.
struct SockFd(std::os::fd::RawFd);
impl AsRawFd for SockFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

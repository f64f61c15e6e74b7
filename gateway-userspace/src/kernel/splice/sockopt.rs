//! The few socket options the splice needs that std, tokio and socket2 don't expose.
//!
//! This is one of the two places with `unsafe` (the other is fd handoff to the kernel
//! maps): each call passes a correctly sized, initialised buffer to getsockopt/ioctl on a
//! file descriptor the caller borrows for the duration of the call.
use std::{io, mem, os::fd::AsRawFd};

/// The socket cookie (SO_COOKIE): a 64-bit id unique for the socket's lifetime in its
/// network namespace. It is the key the verdict program uses for the peer lookup.
pub fn cookie(sock: &impl AsRawFd) -> io::Result<u64> {
    let mut v: u64 = 0;
    let mut len = mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `v` is a valid u64 and `len` says exactly its size; the kernel writes at most
    // `len` bytes. The fd is borrowed from a live socket for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut v as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// Byte offsets in `struct tcp_info` (include/uapi/linux/tcp.h): 8 one-byte fields and
/// 24 u32 fields come first, then the pacing rates, then these.
const TCPI_BYTES_ACKED: usize = 120;
const TCPI_BYTES_RECEIVED: usize = 128;

/// Sequence space received on this socket: payload bytes plus 1 once a FIN arrived
/// (tcpi_bytes_received follows rcv_nxt, and a FIN takes one sequence number).
pub fn bytes_received(sock: &impl AsRawFd) -> io::Result<u64> {
    let info = tcp_info(sock)?;
    Ok(u64::from_ne_bytes(
        info[TCPI_BYTES_RECEIVED..TCPI_BYTES_RECEIVED + 8]
            .try_into()
            .expect("8 bytes"),
    ))
}

fn tcp_info(sock: &impl AsRawFd) -> io::Result<[u8; 256]> {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` is 256 writable bytes and `len` says so; the kernel copies at most
    // min(len, sizeof(tcp_info)) bytes and reports how many in `len`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < TCPI_BYTES_RECEIVED + 8 {
        return Err(io::Error::other(
            "kernel tcp_info too short for tcpi_bytes_received",
        ));
    }
    Ok(buf)
}

/// Bytes of this socket's stream the peer acknowledged (tcpi_bytes_acked; an active
/// open's SYN counts one).
pub fn bytes_acked(sock: &impl AsRawFd) -> io::Result<u64> {
    let info = tcp_info(sock)?;
    Ok(u64::from_ne_bytes(
        info[TCPI_BYTES_ACKED..TCPI_BYTES_ACKED + 8]
            .try_into()
            .expect("8 bytes"),
    ))
}

/// Payload bytes written into this socket so far: acknowledged + still in the send queue
/// (tcpi_bytes_acked + SIOCOUTQ = write_seq - iss - 1). Valid until this side sends FIN.
/// Two reads: an ACK between them moves bytes from the queue to `acked` after `acked`
/// was read, so the sum can come out low, never high — the safe side for "has
/// everything been written yet?".
pub fn bytes_written(sock: &impl AsRawFd) -> io::Result<u64> {
    let acked = bytes_acked(sock)?;
    Ok(acked + outq(sock)?)
}

/// Re-arms the socket's receive path: setting SO_RCVLOWAT makes TCP call
/// `sk_data_ready` when data is already queued (tcp_set_rcvlowat -> tcp_data_ready).
/// Once the socket is in the SOCKHASH, `sk_data_ready` is the psock's, so bytes that
/// arrived *before* the socket was inserted go through the verdict program in order
/// instead of being stranded in the receive queue until the next segment arrives.
pub fn kick_receive_queue(sock: &impl AsRawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: passes a valid c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&one as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unread payload bytes in TCP's receive queue (SIOCINQ; a received FIN is not counted).
/// Only meaningful before the socket enters a sockmap: from then on tcp_bpf answers
/// FIONREAD with the psock's queue instead.
pub fn inq(sock: &impl AsRawFd) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCINQ (FIONREAD) writes one c_int to a valid c_int.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as u64)
}

/// Whether either socket holds received bytes nobody has read yet (or can't say): a
/// flow closed now with a FIN would hand the peer a clean but truncated stream. The
/// userspace paths' idle and drain closes ask it besides their own in-flight bytes.
pub fn unread(a: &impl AsRawFd, b: &impl AsRawFd) -> bool {
    !matches!(inq(a), Ok(0)) || !matches!(inq(b), Ok(0))
}

/// True when the socket is in TCP_ESTABLISHED, the only state (besides LISTEN) in which
/// the kernel lets a socket into a SOCKHASH.
pub fn is_established(sock: &impl AsRawFd) -> bool {
    const TCP_ESTABLISHED: u8 = 1;
    tcp_info(sock).is_ok_and(|info| info[0] == TCP_ESTABLISHED)
}

/// True when the socket is in TCP_CLOSE: reset by its peer (tcp_reset -> tcp_done), or
/// done after both FINs once it passed through TIME_WAIT (tcp_time_wait -> tcp_done).
/// A peer's FIN alone leaves it in CLOSE_WAIT.
pub fn is_closed(sock: &impl AsRawFd) -> bool {
    const TCP_CLOSE: u8 = 7;
    tcp_info(sock).is_ok_and(|info| info[0] == TCP_CLOSE)
}

/// Copies up to `buf.len()` queued bytes without consuming them (MSG_PEEK), without
/// waiting (MSG_DONTWAIT). Ok(0) means the peer closed and nothing is queued.
pub fn peek(sock: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// SO_LINGER {on, 0}: the coming close() sends RST instead of FIN (tcp_close ->
/// tcp_disconnect) and drops whatever is unsent.
pub fn linger_zero(sock: &impl AsRawFd) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: passes a valid `linger` and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Resets the connection now, without closing the fd: connect(AF_UNSPEC) runs
/// tcp_disconnect, which sends RST (tcp_need_reset states: ESTABLISHED, CLOSE_WAIT,
/// FIN_WAIT*), purges both queues, sets sk_err and wakes every waiter, so reads and
/// writes in flight on the socket (io_uring ops included) complete with an error. An
/// io_uring op holds its own reference to the file, so close() alone would not end it.
pub fn disconnect(sock: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: sockaddr_storage is plain data for which all-zeroes is a valid value.
    let mut addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
    addr.ss_family = libc::AF_UNSPEC as libc::sa_family_t;
    // SAFETY: `addr` is a valid sockaddr_storage and the length we pass is its size.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_storage).cast(),
            mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unsent + unacknowledged bytes in the socket's send queue (SIOCOUTQ). tcp_bpf leaves
/// this ioctl to TCP, so it stays TCP's own figure for a socket in a sockmap.
pub fn outq(sock: &impl AsRawFd) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one c_int to a valid c_int.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as u64)
}

/// Sets the send buffer to `bytes` (the kernel doubles it, as for SO_SNDBUF) even above
/// `net.core.wmem_max` (SO_SNDBUFFORCE, CAP_NET_ADMIN), and so turns autotuning off.
pub fn set_sndbuf_force(sock: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let v: libc::c_int = bytes.min(i32::MAX as usize / 2) as libc::c_int;
    // SAFETY: passes a valid c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&v as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the receive buffer to `bytes` (doubled by the kernel) even above
/// `net.core.rmem_max` (SO_RCVBUFFORCE), and so turns autotuning off.
pub fn set_rcvbuf_force(sock: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let v: libc::c_int = bytes.min(i32::MAX as usize / 2) as libc::c_int;
    // SAFETY: passes a valid c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&v as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// recv(2) with MSG_PEEK, without waiting: the bytes stay queued.
pub fn peek_nowait(sock: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    peek(sock, buf)
}

/// recv(2) without waiting. For a socket in a sockmap with a verdict program this reads
/// the psock's queue (tcp_bpf_recvmsg_parser): the bytes the verdict kept (SK_PASS).
pub fn recv_nowait(sock: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// send(2) without waiting and without SIGPIPE.
pub fn send_nowait(sock: &impl AsRawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the whole call.
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The CPU that last processed this socket's incoming packets (SO_INCOMING_CPU: where
/// its softirq receive work runs — and so the kernel splice's verdict and psock backlog
/// for bytes arriving on it). None when the kernel doesn't know yet.
pub fn incoming_cpu(sock: &impl AsRawFd) -> Option<usize> {
    let mut v: libc::c_int = -1;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` is a valid c_int and `len` says exactly its size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_INCOMING_CPU,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0 && v >= 0).then_some(v as usize)
}

/// The CPUs this process may run on (sched_getaffinity), or None if unknown.
pub fn own_cpus() -> Option<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data for which all-zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed cpu_set_t of the size we pass.
    let rc = unsafe { libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return None;
    }
    // SAFETY: CPU_ISSET only reads the set.
    Some(
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect(),
    )
}

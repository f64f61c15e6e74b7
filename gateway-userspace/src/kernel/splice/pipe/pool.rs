//! The pipes and their bounded pool, and the splice(2) call that moves bytes through them.
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use super::PipeError;

pub(super) struct Pipe {
    pub(super) r: OwnedFd,
    pub(super) w: OwnedFd,
    /// Capacity in bytes (slots × page size).
    pub(super) cap: usize,
}

impl Pipe {
    pub(super) fn new(size: usize) -> Result<Pipe, PipeError> {
        let mut fds: [RawFd; 2] = [-1, -1];
        // SAFETY: pipe2 writes two fds into the two-element array we pass.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(PipeError::Create(io::Error::last_os_error()));
        }
        // SAFETY: pipe2 succeeded, so both are open fds that nothing else owns.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // F_SETPIPE_SZ fails over the per-user pipe limits (pipe-user-pages-soft) or
        // pipe-max-size for unprivileged users: keep the size the pipe has then.
        // SAFETY: fcntl on an fd we own, with an integer argument.
        let set = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
        let cap = if set > 0 {
            set
        } else {
            // SAFETY: as above; F_GETPIPE_SZ takes no argument.
            unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ) }
        };
        if cap <= 0 {
            return Err(PipeError::Size(io::Error::last_os_error()));
        }
        Ok(Pipe {
            r,
            w,
            cap: cap as usize,
        })
    }
}

/// splice(2), retried on EINTR. Into a socket whose peer is gone this fails with EPIPE
/// and raises SIGPIPE (`splice_to_socket` does not pass MSG_NOSIGNAL); Rust binaries
/// ignore SIGPIPE from the start, so only the error remains.
pub(super) fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: both fds are borrowed from live owners for the call; null offsets are
        // required for pipes and sockets (they have no file position).
        let n = unsafe {
            libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                to.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub(super) struct Pool {
    /// Size asked of new pipes, and the capacity the last one got.
    pub(super) size: usize,
    pub(super) cap: AtomicUsize,
    pub(super) max: usize,
    pub(super) pipes: Mutex<Vec<Pipe>>,
    pub(super) in_use: AtomicUsize,
    pub(super) created: AtomicU64,
    pub(super) closed: AtomicU64,
}

impl Pool {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pipe>> {
        // A panic while holding the lock can't leave the Vec inconsistent.
        self.pipes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn take(&self) -> Result<Pipe, PipeError> {
        let pooled = self.lock().pop();
        let p = match pooled {
            Some(p) => p,
            None => {
                let p = Pipe::new(self.size)?;
                self.cap.store(p.cap, Ordering::Relaxed);
                self.created.fetch_add(1, Ordering::Relaxed);
                p
            }
        };
        self.in_use.fetch_add(1, Ordering::Relaxed);
        Ok(p)
    }

    /// Takes a pipe back: pooled if `empty` and there is room, else closed.
    pub(super) fn give(&self, p: Pipe, empty: bool) {
        self.in_use.fetch_sub(1, Ordering::Relaxed);
        if empty {
            let mut pipes = self.lock();
            if pipes.len() < self.max {
                pipes.push(p);
                return;
            }
        }
        self.closed.fetch_add(1, Ordering::Relaxed);
        drop(p);
    }
}

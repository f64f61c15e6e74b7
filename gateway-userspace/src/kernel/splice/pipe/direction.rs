//! One direction of a flow on the pipe path: splice(2) from the source socket into a
//! pipe taken from the pool and out into the destination socket, the pipe given back
//! when idle, and the half-close (the destination's write side shut) once EOF has been
//! read and the pipe flushed.
use std::{io, net::Shutdown, os::fd::AsFd};

use tokio::{io::Interest, net::TcpStream};

use super::pool::{Pipe, Pool, splice};
use crate::kernel::splice::sockopt;

/// How one direction stopped.
pub(super) enum Stop {
    /// EOF read and everything before it written; the writer's write side is shut.
    Fin,
    Reader,
    Writer,
    Local(String),
}

/// One direction: src -> pipe -> dst.
pub(super) struct Dir<'a> {
    pool: &'a Pool,
    /// Only for Drop: a dst whose bytes are dropped with the pipe must not see a clean
    /// close.
    dst: &'a TcpStream,
    pipe: Option<Pipe>,
    /// Bytes in the pipe.
    pub(super) in_pipe: usize,
    /// Bytes written to dst.
    pub(super) moved: u64,
    /// Read wake-ups that found data (a wake-up ends at EAGAIN).
    pub(super) wakeups: u64,
    in_wakeup: bool,
    /// src may have data: readiness seen and no EAGAIN since.
    pub(super) can_read: bool,
    /// dst may take data.
    pub(super) can_write: bool,
    /// Don't read until the pipe has been written from (full, or maybe full).
    pipe_full: bool,
    /// No partially read skb can be at the head of src's receive queue: src was never
    /// read, or its last read returned EAGAIN into an empty pipe.
    clean: bool,
    /// src returned EOF.
    pub(super) eof: bool,
    /// EOF passed on (dst's write side shut), or the direction failed.
    pub(super) done: bool,
}

impl<'a> Dir<'a> {
    pub(super) fn new(pool: &'a Pool, dst: &'a TcpStream) -> Self {
        Dir {
            pool,
            dst,
            pipe: None,
            in_pipe: 0,
            moved: 0,
            wakeups: 0,
            in_wakeup: false,
            can_read: false,
            can_write: true,
            pipe_full: false,
            clean: true,
            eof: false,
            done: false,
        }
    }

    pub(super) fn wants_read(&self) -> bool {
        !self.done && !self.eof && !self.can_read && !self.pipe_full
    }

    pub(super) fn wants_write(&self) -> bool {
        !self.done && self.in_pipe > 0 && !self.can_write
    }

    pub(super) fn quiet(&self) -> bool {
        !self.done && !self.eof && self.in_pipe == 0 && self.clean
    }

    /// One read and one write, each if possible. Ok(true) when bytes moved or EOF came.
    pub(super) fn step(&mut self, src: &TcpStream, dst: &TcpStream) -> Result<bool, Stop> {
        let mut progress = false;
        if !self.eof && self.can_read && !self.pipe_full {
            if self.pipe.is_none() {
                let p = self.pool.take().map_err(|e| Stop::Local(e.to_string()))?;
                self.pipe = Some(p);
            }
            let Some(pipe) = &self.pipe else {
                return Ok(progress);
            };
            let had = self.in_pipe;
            let room = pipe.cap - had;
            let mut drained = false;
            let r = src.try_io(Interest::READABLE, || {
                match splice(src.as_fd(), pipe.w.as_fd(), room) {
                    // Into a pipe that holds bytes, EAGAIN may mean the pipe ran out of
                    // slots (splice_to_pipe) while the socket still has data: not a
                    // readiness change, so keep tokio's readiness; the write side drains.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && had > 0 => Ok(None),
                    // Into an empty pipe, EAGAIN comes from tcp_splice_read finding no skb
                    // left in the receive queue.
                    Err(e) => {
                        drained = e.kind() == io::ErrorKind::WouldBlock;
                        Err(e)
                    }
                    Ok(n) => Ok(Some(n)),
                }
            });
            match r {
                Ok(Some(0)) => {
                    self.eof = true;
                    progress = true;
                }
                Ok(Some(n)) => {
                    self.in_pipe += n;
                    self.clean = false;
                    if !self.in_wakeup {
                        self.in_wakeup = true;
                        self.wakeups += 1;
                    }
                    self.pipe_full = self.in_pipe >= pipe.cap;
                    progress = true;
                }
                Ok(None) => self.pipe_full = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.can_read = false;
                    self.in_wakeup = false;
                    if drained {
                        self.clean = true;
                    }
                }
                Err(_) => {
                    self.done = true;
                    return Err(Stop::Reader);
                }
            }
        }
        if self.in_pipe > 0
            && self.can_write
            && let Some(pipe) = &self.pipe
        {
            let n = self.in_pipe;
            match dst.try_io(Interest::WRITABLE, || {
                splice(pipe.r.as_fd(), dst.as_fd(), n)
            }) {
                Ok(k) if k > 0 => {
                    self.in_pipe -= k.min(n);
                    self.moved += k.min(n) as u64;
                    self.pipe_full = false;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.can_write = false,
                // Ok(0) can't happen with bytes in the pipe; treat it as the failure it
                // would be rather than spin.
                _ => {
                    self.done = true;
                    return Err(Stop::Writer);
                }
            }
        }
        if self.in_pipe == 0 {
            if self.eof {
                self.release();
                self.done = true;
                let _ = socket2::SockRef::from(dst).shutdown(Shutdown::Write);
                return Err(Stop::Fin);
            }
            if !self.can_read {
                // Empty and waiting for the socket: an idle flow holds no pipe.
                self.release();
            }
        }
        Ok(progress)
    }

    fn release(&mut self) {
        if let Some(p) = self.pipe.take() {
            self.pool.give(p, self.in_pipe == 0);
        }
    }
}

impl Drop for Dir<'_> {
    /// Also runs when the flow's future is dropped midway: the sockets close after the
    /// directions (they outlive them), so bytes lost with a pipe turn dst's close into
    /// a reset.
    fn drop(&mut self) {
        if self.in_pipe > 0 {
            let _ = sockopt::linger_zero(self.dst);
        }
        self.release();
    }
}

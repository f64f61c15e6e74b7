//! Whole-stream checks for the splice tests: a sender writes stream `seed` (see
//! [`crate::data`]) and hashes what it wrote; a receiver checks every byte against the
//! same stream and hashes what it read. Both sides' SHA-256 must agree.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::data::{Checker, fill};

/// Writes `len` bytes of stream `seed`, then shuts the write side down. `written` (if
/// given) counts bytes as each write returns. Returns the SHA-256 of what was written.
pub async fn send(
    w: &mut (impl AsyncWrite + Unpin),
    seed: u64,
    len: u64,
    written: Option<&AtomicU64>,
) -> std::io::Result<[u8; 32]> {
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(buf.len());
        fill(seed, off, &mut buf[..n]);
        w.write_all(&buf[..n]).await?;
        sha.update(&buf[..n]);
        off += n as u64;
        if let Some(c) = written {
            c.store(off, Ordering::Relaxed);
        }
    }
    w.shutdown().await?;
    Ok(sha.finalize().into())
}

/// Reads to EOF, checking every byte against stream `seed` (panics at the first
/// mismatch, naming its offset). `read` (if given) counts bytes as they arrive; `rate`
/// (bytes/s) paces the reader. Returns (bytes, SHA-256).
pub async fn recv(
    r: &mut (impl AsyncRead + Unpin),
    seed: u64,
    read: Option<&AtomicU64>,
    rate: Option<u64>,
) -> std::io::Result<(u64, [u8; 32])> {
    let mut sha = Sha256::new();
    let mut check = Checker::new(seed);
    let chunk = match rate {
        Some(r) => (r / 100).clamp(1, 256 * 1024) as usize,
        None => 256 * 1024,
    };
    let mut buf = vec![0u8; chunk];
    let started = tokio::time::Instant::now();
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        check.check(&buf[..n]);
        sha.update(&buf[..n]);
        if let Some(c) = read {
            c.store(check.offset, Ordering::Relaxed);
        }
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(check.offset as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
    }
    Ok((check.offset, sha.finalize().into()))
}

/// The SHA-256 of the first `len` bytes of stream `seed`.
pub fn digest(seed: u64, len: u64) -> [u8; 32] {
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = ((len - off) as usize).min(buf.len());
        fill(seed, off, &mut buf[..n]);
        sha.update(&buf[..n]);
        off += n as u64;
    }
    sha.finalize().into()
}

/// Shared progress counters of one direction: bytes the sender has written and bytes
/// the receiver has read.
#[derive(Default, Clone)]
pub struct Progress {
    pub written: Arc<AtomicU64>,
    pub read: Arc<AtomicU64>,
}

impl Progress {
    /// How far the sender is ahead of the reader right now.
    pub fn lead(&self) -> u64 {
        self.written
            .load(Ordering::Relaxed)
            .saturating_sub(self.read.load(Ordering::Relaxed))
    }
}

/// MemAvailable from /proc/meminfo, in bytes.
pub fn mem_available() -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemAvailable in /proc/meminfo");
    kb * 1024
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// tcpi_bytes_received of a TCP socket: the payload received, plus 1 once a FIN arrived
/// (a FIN takes a sequence number). A reader that read `n` bytes and sees
/// `bytes_received == n + 1` got a FIN; `== n`, no FIN (a reset ended it).
pub fn tcp_bytes_received(sock: &impl std::os::fd::AsRawFd) -> u64 {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` is 256 writable bytes and `len` says so; the kernel copies at most
    // that many bytes of struct tcp_info.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    // struct tcp_info: tcpi_bytes_received is the u64 at byte offset 128.
    u64::from_ne_bytes(buf[128..136].try_into().unwrap())
}

/// Runs the calling test once more in a process of its own, so that /proc/self/fd holds
/// only its own fds (the harness runs tests as threads of one process). True in that
/// child; in the parent, waits for it and fails if it failed.
pub fn alone(test: &str) -> bool {
    const VAR: &str = "GATEWAY_SPLICE_TEST_ALONE";
    if std::env::var(VAR).as_deref() == Ok(test) {
        return true;
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(VAR, test)
        .status()
        .expect("spawn the test binary");
    assert!(status.success(), "{test} failed in its own process");
    false
}

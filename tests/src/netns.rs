//! Throwaway network namespaces for privileged tests (aya's `NetNsGuard`, by hand):
//! every test gets its own namespace with `lo` up, so traffic never leaves it and tests
//! can run in parallel. Dropping the guard deletes the namespace.
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// True when this process may create namespaces and load eBPF.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// For privileged tests: returns false (after saying why) when the test must be skipped.
/// When GATEWAY_TESTS_REQUIRE_ROOT=1 (set by `cargo xtask test` as root, and so in CI)
/// a skip is a failure instead.
pub fn privileged(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("GATEWAY_TESTS_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("{test}: needs root (network namespaces, eBPF) but runs as uid != 0");
    }
    // Straight to fd 2, in one write: the harness captures eprintln! of a passing test,
    // and `cargo xtask test` counts these lines (a skipped test is "passed" to libtest).
    let line = format!("SKIPPED {test}: needs root for network namespaces and eBPF\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    false
}

/// Runs `cmd` and panics with its output when it fails.
pub fn sh(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "gwt-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        NetNs { name }
    }

    /// Moves the *calling thread* into this namespace (setns only affects one thread).
    /// Sockets the thread creates afterwards live in the namespace.
    pub fn enter(&self) {
        let f = File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        // SAFETY: setns on a valid namespace fd we own; CLONE_NEWNET only changes this
        // thread's network namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }

    /// Runs `f` on a fresh thread inside the namespace and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let f_ns = File::open(path).expect("open netns");
            // SAFETY: as in `enter`.
            let rc = unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// A tokio runtime whose threads all live in this namespace: sockets opened by tasks
    /// spawned on it (see [`NetNs::block_on`]) are the namespace's.
    pub fn runtime(&self) -> tokio::runtime::Runtime {
        let path = format!("/run/netns/{}", self.name);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .on_thread_start(move || {
                let f = File::open(&path).expect("open netns");
                // SAFETY: as in `enter`; runs once on each new runtime thread.
                let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            })
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Runs `fut` as a task on `rt` (so on a namespace thread, never on the caller's) and
    /// waits for it; a panic in the task is re-raised here.
    pub fn block_on<F>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        rt.block_on(async move {
            tokio::spawn(fut)
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        })
    }

    /// Joins this namespace to `other` with a veth pair: `addr_here` (CIDR) on this side,
    /// every address of `addrs_there` (CIDRs) on the other.
    pub fn link(&self, other: &NetNs, addr_here: &str, addrs_there: &[&str]) {
        let (a, b) = ("veth-gw", "veth-cl");
        sh(&[
            "ip",
            "link",
            "add",
            a,
            "netns",
            &self.name,
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            &other.name,
        ]);
        sh(&["ip", "-n", &self.name, "addr", "add", addr_here, "dev", a]);
        sh(&["ip", "-n", &self.name, "link", "set", a, "up"]);
        for addr in addrs_there {
            sh(&["ip", "-n", &other.name, "addr", "add", addr, "dev", b]);
        }
        sh(&["ip", "-n", &other.name, "link", "set", b, "up"]);
    }

    /// Adds an IPv6 address (CIDR) to `dev` in this namespace, usable at once (`nodad`:
    /// no duplicate-address detection delay).
    pub fn add_addr6(&self, dev: &str, cidr: &str) {
        sh(&[
            "ip", "-n", &self.name, "addr", "add", cidr, "dev", dev, "nodad",
        ]);
    }

    /// The MAC address of `dev` in this namespace.
    pub fn mac(&self, dev: &str) -> [u8; 6] {
        let out = sh(&["ip", "-n", &self.name, "-br", "link", "show", "dev", dev]);
        let text = out
            .split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string();
        let bytes: Vec<u8> = text
            .split(':')
            .filter_map(|b| u8::from_str_radix(b, 16).ok())
            .collect();
        bytes
            .try_into()
            .unwrap_or_else(|_| panic!("no MAC for {dev} in {}: {out}", self.name))
    }

    /// A command prefixed with `ip netns exec <name>`.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

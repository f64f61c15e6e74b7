//! Runs the real `gateway` binary inside a test's network namespace and talks to its
//! admin API, the way an operator would.
use std::{
    io::Read,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::netns::NetNs;

/// `$GATEWAY_BIN`, else `target/<profile>/gateway`, next to this test binary's `deps/` folder. `cargo test`
/// builds it (gateway-userspace has integration tests), and so does `cargo xtask test`.
pub fn gateway_bin() -> PathBuf {
    // Callers outside `cargo test` (the xtask bench) say where the binary is.
    if let Some(bin) = std::env::var_os("GATEWAY_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("gateway");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build -p gateway-userspace` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// Has the kernel SIGKILL the child when the thread that spawned it exits, so a test
/// binary killed mid-test (SIGKILL, a timeout) leaves no gateway behind holding its BPF
/// programs and namespace. `ip netns exec` execs the gateway in the same process, and a
/// plain exec keeps the parent-death signal. It follows the spawning *thread*: spawn on
/// a thread that outlives the child (a test's own thread, as every caller does).
pub fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it calls prctl and getppid (plain system
    // calls), and builds its errors from errno values, which allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then no signal will come,
            // so don't start at all.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// `gateway run` arguments that turn off Istio's status (15021) and Prometheus (15090)
/// ports. Tests start many gateways at once, each in its own namespace, but one
/// namespace can hold several (and `--bind` narrows only the Gateway ports' addresses),
/// so [`GatewayProc::start`] adds these unless the arguments name `--status-port` /
/// `--prometheus-port` themselves (a test of those ports picks free ones).
pub const NO_ISTIO_PORTS: [&str; 4] = ["--status-port", "off", "--prometheus-port", "off"];

/// A free TCP port on 127.0.0.1 of the calling namespace (bound once, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A gateway process in a namespace; killed (and its log kept for panics) on drop.
pub struct GatewayProc {
    child: Option<Child>,
    ns: String,
    log: PathBuf,
    pub admin: String,
}

impl GatewayProc {
    /// Starts `gateway run --config <config...> <args...>` in `ns` and waits until its
    /// admin API answers /ready. Panics with the gateway's log if it exits or hangs.
    pub fn start(ns: &NetNs, config: &[&Path], args: &[&str]) -> GatewayProc {
        Self::start_with_nofile(ns, config, args, None)
    }

    /// As [`start`](Self::start), with the gateway's soft open-file limit set to
    /// `nofile` (as a shell's `ulimit -n` would) when given.
    pub fn start_with_nofile(
        ns: &NetNs,
        config: &[&Path],
        args: &[&str],
        nofile: Option<u64>,
    ) -> GatewayProc {
        let log = std::env::temp_dir().join(format!("{}-gateway.log", ns.name));
        let out = std::fs::File::create(&log).expect("create log");
        let admin = "127.0.0.1:15000".to_string();
        let mut cmd = ns.cmd(gateway_bin().to_str().expect("utf-8 path"));
        cmd.arg("run").arg("--admin-addr").arg(&admin);
        for c in config {
            cmd.arg("--config").arg(c);
        }
        if !args.contains(&"--status-port") {
            cmd.args(&NO_ISTIO_PORTS[..2]);
        }
        if !args.contains(&"--prometheus-port") {
            cmd.args(&NO_ISTIO_PORTS[2..]);
        }
        cmd.args(args)
            .env(
                "RUST_LOG",
                std::env::var("GATEWAY_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out);
        die_with_parent(&mut cmd);
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: between fork and exec only async-signal-safe calls run here:
            // getrlimit/setrlimit on this (child) process, no allocation, no locks.
            unsafe {
                cmd.pre_exec(move || {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    lim.rlim_cur = n.min(lim.rlim_max);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("spawn gateway");
        let mut gw = GatewayProc {
            child: Some(child),
            ns: ns.name.clone(),
            log,
            admin,
        };
        gw.wait_ready(Duration::from_secs(20));
        gw
    }

    fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("gateway exited early ({status}):\n{}", self.log());
            }
            if self.try_admin("/ready").is_some_and(|b| b.contains("LIVE")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gateway not ready within {within:?}:\n{}", self.log());
    }

    fn try_admin(&self, path: &str) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "curl", "-sS", "--max-time", "5"])
            .arg(format!("http://{}{path}", self.admin))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// GET an admin path; panics if it fails.
    pub fn admin_get(&self, path: &str) -> String {
        self.try_admin(path)
            .unwrap_or_else(|| panic!("admin GET {path} failed:\n{}", self.log()))
    }

    /// GET an admin path that returns JSON.
    pub fn admin_json(&self, path: &str) -> serde_json::Value {
        let body = self.admin_get(path);
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("admin {path}: not JSON ({e}): {body}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `sig` (libc::SIGTERM, SIGINT...) to the gateway process.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid; the child is not yet reaped (we hold
        // it), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits up to `within` for the gateway to exit; its status, or None if it still
    /// runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Open file descriptors of the gateway process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The gateway's fd count once it has stopped changing (the same three reads in a
    /// row, 100 ms apart, within 5 s): a baseline taken right after start-up or an admin
    /// request can include a connection that is just closing.
    pub fn settled_fd_count(&self) -> usize {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let (mut last, mut same) = (self.fd_count(), 0);
        while same < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let now = self.fd_count();
            same = if now == last { same + 1 } else { 0 };
            last = now;
        }
        last
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The log once `cond` holds for it, polled until `within` has passed (the gateway
    /// writes its log from a background thread, so a line can land a moment after the
    /// event it reports); the last log either way, for the caller's assertion.
    pub fn wait_log(&self, within: Duration, cond: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let log = self.log();
            if cond(&log) || std::time::Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `cond(admin /debug/splice JSON)` holds, or panics after `within`.
    pub fn wait_splice(
        &self,
        within: Duration,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let v = self.admin_json("/debug/splice");
            if cond(&v) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not reached within {within:?}; /debug/splice = {v:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `gateway validate --config <paths>`; returns (exit code, stdout+stderr).
pub fn validate(paths: &[&Path]) -> (i32, String) {
    let mut cmd = Command::new(gateway_bin());
    cmd.arg("validate");
    for p in paths {
        cmd.arg("--config").arg(p);
    }
    let out = cmd.output().expect("run gateway validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

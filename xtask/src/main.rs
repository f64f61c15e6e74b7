//! `cargo xtask setup | build-ebpf | run | test | bench | fuzz | soak` — the project's own build and
//! test driver. Every step prints `==> <step>` and how long it took.
use std::{
    env,
    ffi::OsStr,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicI32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod fuzz;
mod soak;

/// Debian packages the tests and the demo use (clients, load generators, netns tools).
const DEB_PACKAGES: &[&str] = &[
    "curl",
    "openssl",
    "iperf3",
    "wrk",
    "iproute2",
    "nghttp2-client",
    "procps",
    "netcat-openbsd",
    "nftables",
    "bpftool",
    // A real gRPC client and server (the C-core) for tests/grpc/echo.py.
    "python3-grpcio",
];
/// Installed when the configured apt sources have them, skipped with a note otherwise.
const OPTIONAL_DEB_PACKAGES: &[&str] = &["bpftool"];
const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run and test the gateway",
    bin_name = "cargo xtask"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what this machine lacks: Debian packages for the tests and the demo, and
    /// the eBPF toolchain (rust-src for build-std, bpf-linker). Idempotent; needs root.
    Setup,
    /// Build the kernel programs (gateway-ebpf, through gateway-userspace's build.rs).
    BuildEbpf {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Setup, build (release), start the demo backends and run the gateway on config/.
    Run {
        /// Extra arguments for `gateway run`, e.g. `-- --splice userspace`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, build the eBPF object and run `cargo test` on the whole workspace.
    Test {
        /// Extra arguments for `cargo test`, e.g. `-- -p gateway-tests -- --nocapture`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, build (release), then iperf3/wrk/h2load through the gateway and through
    /// HAProxy, nginx and Envoy in one run (bench/peers.sh); writes bench/results.{json,md,svg}.
    Bench {
        /// One pass of 1 s tests (~3 min; CI's smoke test). Writes to target/bench-quick/.
        #[arg(long)]
        quick: bool,
        /// Where results.{json,md,svg} go (default: bench/, or target/bench-quick/ with --quick).
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Only these rows (comma-separated): `peers` (bench/peers.sh and its report),
        /// `xdp` (the XDP guard), `scale` (routing with N VirtualServices). Default: all.
        #[arg(long, value_delimiter = ',', value_enum)]
        rows: Vec<bench::RowSet>,
        /// Extra arguments for bench/peers.sh, e.g. `-- --peers "nginx gateway_ebpf" --tests http`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the cargo-fuzz targets (gateway-userspace/fuzz) and run each for N seconds;
    /// one summary line per target, fails on any crash.
    Fuzz(fuzz::FuzzArgs),
    /// Build (release), then hold idle spliced flows and HTTP keep-alive connections for
    /// N minutes under churn, a slow reader, an upstream restart and a burst past
    /// --max-connections; checks RSS, fds, MemAvailable and kernel map bounds and the
    /// return to baseline; writes soak.{json,md,svg} (default target/soak/).
    Soak(soak::SoakArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::BuildEbpf { release } => build_ebpf(release),
        Cmd::Run { args } => run(&args),
        Cmd::Test { args } => test(&args),
        Cmd::Bench {
            quick,
            out_dir,
            rows,
            args,
        } => bench::bench(quick, out_dir, &rows, &args),
        Cmd::Fuzz(args) => fuzz::fuzz(args),
        Cmd::Soak(args) => soak::soak(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------
// helpers

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_relative() { root().join(p) } else { p })
        .unwrap_or_else(|| root().join("target"))
}

/// Removes the variables the outer `cargo run` set for xtask itself. Build scripts
/// (ring's, for one) watch e.g. CARGO_MANIFEST_DIR, so leaking it into a nested cargo
/// would make every `cargo xtask` build and every plain `cargo build` rebuild each other.
fn strip_cargo_run_env(c: &mut Command) -> &mut Command {
    for (k, _) in env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        if k.starts_with("CARGO_PKG_")
            || matches!(
                k,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_RUSTC_CURRENT_DIR"
            )
        {
            c.env_remove(k);
        }
    }
    c
}

/// A nested cargo (the one that runs xtask), in the workspace root.
fn cargo() -> Command {
    let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    strip_cargo_run_env(&mut c);
    c
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs one step: prints `==> name`, then its duration (or that it failed).
fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("==> {name}");
    let t = Instant::now();
    let r = f();
    let secs = t.elapsed().as_secs_f64();
    match &r {
        Ok(_) => println!("==> {name}: done in {secs:.1}s"),
        Err(_) => println!("==> {name}: FAILED after {secs:.1}s"),
    }
    r
}

fn show(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s += &format!("{}={} ", k.to_string_lossy(), v.to_string_lossy());
        }
    }
    s += &cmd.get_program().to_string_lossy();
    for a in cmd.get_args() {
        s.push(' ');
        s += &a.to_string_lossy();
    }
    s
}

/// Runs a command to completion with inherited stdio; error unless it exits 0.
fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = show(cmd);
    println!("    $ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its stdout, or None if it could not run or failed.
fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------------------
// setup

fn setup() -> Result<()> {
    let mut missing = Vec::new();
    step("setup: Debian packages", || debian_packages(&mut missing))?;
    step("setup: eBPF toolchain", || ebpf_toolchain(&mut missing))?;
    if !missing.is_empty() {
        bail!(
            "not root, so nothing was installed; missing: {}. Run `sudo -E cargo xtask setup` \
             (or as root) to install them",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Packages among `pkgs` that dpkg does not report as installed.
fn missing_debs(pkgs: &[&str]) -> Vec<String> {
    // dpkg-query exits 1 when some package is unknown but still lists the known ones.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(pkgs)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    pkgs.iter()
        .filter(|p| {
            !out.lines().any(|l| {
                l.split_once(' ')
                    .is_some_and(|(name, status)| name == **p && status.ends_with(" installed"))
            })
        })
        .map(|p| p.to_string())
        .collect()
}

fn apt_has_candidate(pkg: &str) -> bool {
    output(Command::new("apt-cache").args(["policy", pkg])).is_some_and(|s| {
        s.lines().any(|l| {
            l.trim()
                .strip_prefix("Candidate:")
                .is_some_and(|c| c.trim() != "(none)")
        })
    })
}

fn debian_packages(missing_out: &mut Vec<String>) -> Result<()> {
    if Command::new("dpkg-query")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("    dpkg-query not found: not a Debian system, skipping Debian packages");
        println!("    the tests and the demo use: {}", DEB_PACKAGES.join(" "));
        return Ok(());
    }
    let mut missing = missing_debs(DEB_PACKAGES);
    if missing.is_empty() {
        println!("    already installed: {}", DEB_PACKAGES.join(" "));
        return Ok(());
    }
    println!("    missing: {}", missing.join(" "));
    if !is_root() {
        println!(
            "    install with: sudo apt-get update && sudo apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        );
        missing_out.extend(missing);
        return Ok(());
    }
    run_cmd(
        Command::new("apt-get")
            .args(["-qq", "update"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get update failed (is the Debian mirror reachable?)")?;
    missing.retain(|p| {
        let keep = !OPTIONAL_DEB_PACKAGES.contains(&p.as_str()) || apt_has_candidate(p);
        if !keep {
            println!("    note: {p} is not available from the configured apt sources; skipping it");
        }
        keep
    });
    if missing.is_empty() {
        return Ok(());
    }
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("could not install Debian packages {}", missing.join(" ")))?;
    let still = missing_debs(&missing.iter().map(String::as_str).collect::<Vec<_>>());
    if !still.is_empty() {
        bail!(
            "apt-get succeeded but these are still not installed: {}",
            still.join(" ")
        );
    }
    println!("    installed: {}", missing.join(" "));
    Ok(())
}

fn ebpf_toolchain_name() -> String {
    env::var("GATEWAY_EBPF_TOOLCHAIN").unwrap_or_else(|_| "stable".into())
}

/// What the eBPF build lacks (empty when ready): the same checks as
/// gateway-userspace's build.rs, plus the bpf-linker version.
fn ebpf_toolchain_gaps() -> Vec<String> {
    let mut gaps = Vec::new();
    let tc = format!("+{}", ebpf_toolchain_name());
    let sysroot = output(Command::new("rustc").args([tc.as_str(), "--print", "sysroot"]))
        .or_else(|| output(Command::new("rustc").args(["--print", "sysroot"])));
    match sysroot {
        Some(s) => {
            let core = Path::new(s.trim()).join("lib/rustlib/src/rust/library/core/src/lib.rs");
            if !core.exists() {
                gaps.push(format!("rust-src ({} not found)", core.display()));
            }
        }
        None => gaps.push("rustc (could not run `rustc --print sysroot`)".into()),
    }
    let want = format!("bpf-linker {BPF_LINKER_VERSION}");
    match output(Command::new("bpf-linker").arg("--version")) {
        Some(v) if v.trim() == want => {}
        Some(v) => gaps.push(format!("{want} (found {})", v.trim())),
        None => gaps.push(format!("{want} (`bpf-linker --version` did not run)")),
    }
    gaps
}

fn ebpf_toolchain(missing_out: &mut Vec<String>) -> Result<()> {
    let gaps = ebpf_toolchain_gaps();
    if gaps.is_empty() {
        println!(
            "    already there: rust-src for rustc +{} and bpf-linker {BPF_LINKER_VERSION}",
            ebpf_toolchain_name()
        );
        return Ok(());
    }
    let script = root().join("xtask/scripts/ebpf-toolchain.sh");
    println!("    missing: {}", gaps.join("; "));
    if !is_root() {
        println!("    install with: sudo bash {}", script.display());
        missing_out.extend(gaps);
        return Ok(());
    }
    run_cmd(strip_cargo_run_env(Command::new("bash").arg(&script)))
        .context("installing the eBPF toolchain failed (see the script's output above)")?;
    let gaps = ebpf_toolchain_gaps();
    if !gaps.is_empty() {
        bail!(
            "the eBPF toolchain script ran but still missing: {}",
            gaps.join("; ")
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// build-ebpf

fn build_ebpf(release: bool) -> Result<()> {
    step("build-ebpf", || {
        let mut c = cargo();
        c.args(["build", "-p", "gateway-userspace"]);
        if release {
            c.arg("--release");
        }
        run_cmd(c.env("GATEWAY_REQUIRE_EBPF", "1")).context(
            "building gateway-userspace (and its eBPF object) failed; did `cargo xtask setup` run?",
        )?;
        let obj = ebpf_object(if release { "release" } else { "debug" })?;
        let len = fs::metadata(&obj).map(|m| m.len()).unwrap_or(0);
        println!("    kernel object: {} ({len} bytes)", obj.display());
        Ok(())
    })
}

/// The newest `target/<profile>/build/gateway-userspace-*/out/gateway`.
fn ebpf_object(profile: &str) -> Result<PathBuf> {
    let build = target_dir().join(profile).join("build");
    let mut best: Option<(SystemTime, PathBuf)> = None;
    for entry in fs::read_dir(&build).with_context(|| format!("reading {}", build.display()))? {
        let dir = entry?.path();
        let is_ours = dir
            .file_name()
            .and_then(OsStr::to_str)
            .is_some_and(|n| n.starts_with("gateway-userspace-"));
        let obj = dir.join("out/gateway");
        if let (true, Ok(meta)) = (is_ours, fs::metadata(&obj))
            && meta.len() > 0
        {
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if best.as_ref().is_none_or(|(t, _)| mtime > *t) {
                best = Some((mtime, obj));
            }
        }
    }
    best.map(|(_, p)| p).with_context(|| {
        format!(
            "no non-empty gateway-userspace-*/out/gateway under {}",
            build.display()
        )
    })
}

// ---------------------------------------------------------------------------------------
// run

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// Catch SIGINT/SIGTERM so the backends are stopped. A handler (unlike SIG_IGN) is
/// reset to the default in exec'd children, so the gateway still gets Ctrl-C.
fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
struct ChildGuard {
    name: &'static str,
    child: Child,
}

impl ChildGuard {
    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Waits for exit up to `timeout`.
    fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                _ => return None,
            }
        }
    }

    fn stop(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Some(st);
        }
        self.signal(libc::SIGTERM);
        if let Some(st) = self.wait_for(Duration::from_secs(5)) {
            return Some(st);
        }
        eprintln!("    {} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            println!("==> stopping {}", self.name);
        }
        self.stop();
    }
}

/// `cargo build --release` of the gateway (with its eBPF object) and one binary of the
/// tests crate (`demo-backends`, `soak`).
fn build_release_with(tests_bin: &str) -> Result<()> {
    run_cmd(
        cargo()
            .args([
                "build",
                "--release",
                "-p",
                "gateway-userspace",
                "-p",
                "gateway-tests",
            ])
            .args(["--bin", "gateway", "--bin", tests_bin])
            .env("GATEWAY_REQUIRE_EBPF", "1"),
    )
    .with_context(|| format!("release build of the gateway and {tests_bin} failed"))
}

fn run(args: &[String]) -> Result<()> {
    setup()?;
    step("build (release): gateway + demo-backends", || {
        build_release_with("demo-backends")
    })?;
    let bin = target_dir().join("release");
    let config = root().join("config");

    // From here on, Ctrl-C must stop the children we start, not kill xtask outright.
    catch_signals();
    let mut backends = step("start demo backends", || {
        let mut cmd = Command::new(bin.join("demo-backends"));
        cmd.arg("--config-dir").arg(&config).current_dir(root());
        println!("    $ {}", show(&cmd));
        let child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .context("could not start demo-backends")?;
        let mut guard = ChildGuard {
            name: "demo backends",
            child,
        };
        // Forward its stdout; ready once it prints `demo-backends: ready` (all bound).
        let stdout = guard.child.stdout.take().expect("stdout is piped");
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("{line}");
                if line == "demo-backends: ready" {
                    let _ = ready_tx.send(());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(st)) = guard.child.try_wait() {
                bail!("demo-backends exited early ({st}); is one of its ports already in use?");
            }
            if ready_rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                return Ok(guard);
            }
            if Instant::now() > deadline {
                bail!("demo-backends did not report ready within 15s");
            }
        }
    })?;

    println!("==> gateway (Ctrl-C to stop; the backends stop with it)");
    let mut cmd = Command::new(bin.join("gateway"));
    cmd.arg("run").arg("--config").arg(&config).args(args);
    cmd.current_dir(root());
    println!("    $ {}", show(&cmd));
    let t = Instant::now();
    let child = cmd.spawn().context("could not start the gateway")?;
    let mut gateway = ChildGuard {
        name: "gateway",
        child,
    };
    let status = loop {
        if let Some(st) = gateway
            .child
            .try_wait()
            .context("waiting for the gateway")?
        {
            break st;
        }
        if SIGNAL.load(Ordering::SeqCst) != 0 {
            // Ctrl-C in a terminal reaches the gateway too; a signal sent to xtask alone
            // does not, so forward SIGTERM if it is still running a moment later.
            if gateway.wait_for(Duration::from_secs(1)).is_none() {
                gateway.stop();
            }
            println!(
                "==> gateway stopped after {:.1}s",
                t.elapsed().as_secs_f64()
            );
            return Ok(()); // the guards stop the gateway (if needed), then the backends
        }
        if let Ok(Some(st)) = backends.child.try_wait() {
            eprintln!("demo-backends exited unexpectedly ({st}); stopping the gateway");
            gateway.stop();
            bail!("demo-backends exited unexpectedly ({st})");
        }
        thread::sleep(Duration::from_millis(100));
    };
    println!(
        "==> gateway exited ({status}) after {:.1}s",
        t.elapsed().as_secs_f64()
    );
    drop(backends);
    if !status.success() && SIGNAL.load(Ordering::SeqCst) == 0 {
        bail!("the gateway exited with {status}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// test

fn test(args: &[String]) -> Result<()> {
    step("sweep stale test namespaces", sweep_stale_netns)?;
    setup()?;
    step("build gateway-userspace with the eBPF object", || {
        run_cmd(
            cargo()
                .args(["build", "-p", "gateway-userspace"])
                .env("GATEWAY_REQUIRE_EBPF", "1"),
        )
        .context("building gateway-userspace (and its eBPF object) failed")
    })?;
    let root = is_root();
    let ci_not_root = ci_requires_root(env::var_os("CI").as_deref(), root);
    let status = step("cargo test", || {
        let mut c = cargo();
        c.arg("test");
        // gateway-ebpf is bpfel-only (no_std, no_main): never build it for the host.
        // An explicit package selection from the caller replaces the workspace one.
        let selects = args
            .iter()
            .take_while(|a| *a != "--")
            .any(|a| a == "-p" || a.starts_with("--package") || a.starts_with("-p"));
        if !selects {
            c.args(["--workspace", "--exclude", "gateway-ebpf"]);
        }
        // Every suite runs even when one fails, so the summary counts the whole run.
        c.arg("--no-fail-fast");
        c.args(args).env("GATEWAY_REQUIRE_EBPF", "1");
        if root {
            c.env("GATEWAY_TESTS_REQUIRE_ROOT", "1");
        } else if ci_not_root {
            println!(
                "    CI is set but this run is not root: privileged tests will be skipped and the run will fail"
            );
        } else {
            println!("    not root: privileged tests will be skipped");
        }
        // cargo's stderr is read through a pipe (to count skips): keep its colours.
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            c.env("CARGO_TERM_COLOR", "always");
        }
        let shown = show(&c);
        println!("    $ {shown}");
        run_counting(&mut c).with_context(|| format!("could not start `{shown}`"))
    })?;
    let (status, tally) = status;
    // One closing line for the whole run: cargo's own last line is the doc-test
    // harness's, which usually ran nothing.
    println!("{}", tally.summary());
    if !status.success() {
        eprintln!("cargo test failed ({status})");
    }
    if ci_not_root {
        eprintln!(
            "error: CI is set and the run is not root: {} privileged test(s) skipped, and CI must run them",
            tally.skipped
        );
        std::process::exit(1);
    }
    std::process::exit(status.code().unwrap_or(1));
}

/// True when `CI` is set (to anything but empty, `0` or `false`) and the run is not
/// root: privileged tests would skip, and in CI a skipped test must not look passed.
fn ci_requires_root(ci: Option<&OsStr>, root: bool) -> bool {
    let ci = ci.is_some_and(|v| !v.is_empty() && v != "0" && v != "false");
    ci && !root
}

/// What a `cargo test` run adds up to, from its output lines.
#[derive(Debug, Default, PartialEq)]
struct Tally {
    /// As libtest counts them: a privileged test that skipped itself counts as passed.
    passed: u64,
    failed: u64,
    /// `SKIPPED <test>: ...` lines (gateway_tests::netns::privileged, on stderr).
    skipped: u64,
}

impl Tally {
    /// Counts one line of output (stdout or stderr).
    fn line(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |what: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(what)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            self.passed += count(" passed");
            self.failed += count(" failed");
        } else if line.trim_start().starts_with("SKIPPED ") {
            self.skipped += 1;
        }
    }

    fn add(&mut self, other: &Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }

    /// The closing line (`.ci/run` greps `^summary: `); skipped tests are not passed.
    fn summary(&self) -> String {
        format!(
            "summary: {} passed, {} failed, {} skipped",
            self.passed.saturating_sub(self.skipped),
            self.failed,
            self.skipped
        )
    }
}

/// Runs a `cargo test`, echoing its stdout and stderr, and adds up its `test result:`
/// and `SKIPPED` lines.
fn run_counting(c: &mut Command) -> std::io::Result<(ExitStatus, Tally)> {
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let out = child.stdout.take().expect("piped stdout");
    let err = child.stderr.take().expect("piped stderr");
    // stderr on its own thread: cargo writes both, and an unread pipe would stall it.
    let errs = thread::spawn(move || {
        let mut tally = Tally::default();
        each_line(err, |l| {
            eprintln!("{l}");
            tally.line(l);
        })
        .map(|()| tally)
    });
    let mut tally = Tally::default();
    each_line(out, |l| {
        println!("{l}");
        tally.line(l);
    })?;
    let from_stderr = errs.join().expect("stderr reader thread")?;
    tally.add(&from_stderr);
    Ok((child.wait()?, tally))
}

/// Calls `f` with each line of `r` (without its line ending; invalid UTF-8 replaced).
fn each_line(r: impl std::io::Read, mut f: impl FnMut(&str)) -> std::io::Result<()> {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if r.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        let line = String::from_utf8_lossy(&buf);
        f(line.trim_end_matches(['\n', '\r']));
    }
}

/// Deletes the `gwt-*` network namespaces whose creating test process is gone: a test
/// binary killed mid-test leaves its namespaces behind (its gateways die with it, see
/// gateway_tests::gateway::die_with_parent). Namespaces of running tests are kept.
fn sweep_stale_netns() -> Result<()> {
    let names: Vec<String> = match fs::read_dir("/run/netns") {
        Ok(d) => d
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect(),
        Err(_) => return Ok(()), // no named namespace at all
    };
    let stale = stale_netns(&names, |pid| Path::new(&format!("/proc/{pid}")).exists());
    if stale.is_empty() {
        return Ok(());
    }
    if !is_root() {
        println!(
            "    not root: {} stale namespace(s) left: {stale:?}",
            stale.len()
        );
        return Ok(());
    }
    for name in &stale {
        let out = Command::new("ip").args(["netns", "del", name]).output();
        match out {
            Ok(o) if o.status.success() => println!("    deleted {name}"),
            Ok(o) => println!(
                "    could not delete {name}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => println!("    could not run `ip netns del {name}`: {e}"),
        }
    }
    Ok(())
}

/// The test namespaces in `names` whose creator is not `alive`: `NetNs::new` names them
/// `gwt-<tag>-<pid>-<n>` (the tag may contain dashes; pid and n are the last two fields).
fn stale_netns(names: &[String], alive: impl Fn(u32) -> bool) -> Vec<String> {
    names
        .iter()
        .filter(|name| {
            let Some(rest) = name.strip_prefix("gwt-") else {
                return false;
            };
            let mut fields = rest.rsplitn(3, '-');
            let (n, pid, tag) = (fields.next(), fields.next(), fields.next());
            let n_ok = n.is_some_and(|n| n.parse::<u32>().is_ok());
            match (tag, pid.and_then(|p| p.parse::<u32>().ok())) {
                (Some(tag), Some(pid)) if n_ok && !tag.is_empty() => !alive(pid),
                _ => false,
            }
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_results_and_skips() {
        let mut t = Tally::default();
        for line in [
            "test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.2s",
            "SKIPPED tcp_echo_64mib_both_modes: needs root for network namespaces and eBPF",
            "test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.1s",
            "SKIPPED config_errors_are_reported_with_file_line_col (run binds nothing): needs root",
            "test tcp_echo_64mib_both_modes ... ok",
            "   Compiling gateway-tests v0.1.0",
        ] {
            t.line(line);
        }
        assert_eq!(
            t,
            Tally {
                passed: 15,
                failed: 2,
                skipped: 2
            }
        );
        assert_eq!(t.summary(), "summary: 13 passed, 2 failed, 2 skipped");
    }

    #[test]
    fn ci_without_root_fails() {
        let v = |s: &str| Some(OsStr::new(s).to_owned());
        assert!(ci_requires_root(v("true").as_deref(), false));
        assert!(ci_requires_root(v("1").as_deref(), false));
        assert!(!ci_requires_root(v("true").as_deref(), true));
        assert!(!ci_requires_root(None, false));
        assert!(!ci_requires_root(v("").as_deref(), false));
        assert!(!ci_requires_root(v("false").as_deref(), false));
    }

    #[test]
    fn stale_netns_by_creator_pid() {
        let names: Vec<String> = [
            "gwt-http-bad-4242-0",
            "gwt-tcp64-4242-3",
            "gwt-cl500-77-1",
            "gwt-tcp64-x-1",
            "gwt-4242-0",
            "other-4242-0",
            "gwt-http-bad-4242",
        ]
        .map(String::from)
        .to_vec();
        // 77 is alive, 4242 is gone.
        let stale = stale_netns(&names, |pid| pid == 77);
        assert_eq!(stale, ["gwt-http-bad-4242-0", "gwt-tcp64-4242-3"]);
    }
}

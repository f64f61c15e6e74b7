//! Shared by the `http_*` integration tests: a namespace with demo backends and a real
//! gateway, and a curl that parses what it got.
#![allow(dead_code)]
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Output,
    sync::mpsc,
    time::{Duration, Instant},
};

use gateway_tests::{
    backends::{self, Backend},
    gateway::GatewayProc,
    netns::NetNs,
};

/// `tests/fixtures/http/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/http")
        .join(name)
}

/// The repository's `config/<name>`.
pub fn config(name: &str) -> PathBuf {
    backends::config_dir().join(name)
}

/// A scratch directory for one test (certificates, generated YAML).
pub fn scratch(ns: &NetNs) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{}-files", ns.name));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

pub enum App {
    /// `backends::http_app(127.0.0.1:port, name)`.
    Http(u16, &'static str),
    /// `backends::tls_app` with the demo certificate of `host`.
    Tls(u16, &'static str, &'static str),
    /// Answers any request with `101 Switching Protocols` (`Upgrade` echoed) when it
    /// asks for an upgrade, then echoes bytes; 400 otherwise.
    Upgrade(u16),
}

/// Backends running on a thread inside the namespace until dropped.
pub struct Backends {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Backends {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn start_backends(ns: &NetNs, apps: Vec<App>) -> Backends {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let name = ns.name.clone();
    let thread = std::thread::spawn(move || {
        enter_ns(&name);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut running: Vec<Backend> = Vec::new();
            let mut tasks = Vec::new();
            for app in apps {
                let b = match app {
                    App::Upgrade(port) => {
                        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
                            .await
                            .expect("bind upgrade echo");
                        tasks.push(tokio::spawn(upgrade_echo(l)));
                        continue;
                    }
                    App::Http(port, name) => {
                        backends::http_app(SocketAddr::from(([127, 0, 0, 1], port)), name).await
                    }
                    App::Tls(port, name, host) => {
                        let (c, k) = backends::demo_cert(host);
                        backends::tls_app(SocketAddr::from(([127, 0, 0, 1], port)), name, &c, &k)
                            .await
                    }
                };
                running.push(b.expect("start backend"));
            }
            ready_tx.send(()).unwrap();
            let _ = stop_rx.await;
            drop(running);
            for t in tasks {
                t.abort();
            }
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("backends did not start");
    Backends {
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

async fn upgrade_echo(l: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut b).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(b[0]);
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let proto = head
                .lines()
                .find_map(|l| l.strip_prefix("upgrade:"))
                .map(|p| p.trim().to_string());
            let Some(proto) = proto.filter(|_| head.contains("connection: upgrade")) else {
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
                return;
            };
            let reply = format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {proto}\r\nx-backend: upgrade-echo\r\n\r\n"
            );
            if s.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// Moves the calling thread into the namespace `name` (the test's NetNs owns it).
fn enter_ns(name: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
    // SAFETY: setns on a valid namespace fd; CLONE_NEWNET only affects this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// The gateway with `--internal-address 127.0.0.0/8`: the tests' clients (curl on the
/// namespace's loopback, no X-Forwarded-For) are internal, so the `x-request-id` each
/// request brings is kept and its log line can be found by it. Without it the gateway
/// replaces every client's id, as Envoy does at an edge (tests/tests/http_upgrade.rs).
pub fn start_gateway(ns: &NetNs, configs: &[&Path]) -> GatewayProc {
    start_gateway_with(ns, configs, &[])
}

/// [`start_gateway`] with more `gateway run` arguments.
pub fn start_gateway_with(ns: &NetNs, configs: &[&Path], extra: &[&str]) -> GatewayProc {
    let mut args = vec!["--splice", "userspace", "--internal-address", "127.0.0.0/8"];
    args.extend_from_slice(extra);
    GatewayProc::start(ns, configs, &args)
}

/// What curl got.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// curl's stderr (with -v: the handshake, certificate subject, ALPN...).
    pub verbose: String,
    pub exit: i32,
    /// Wall clock around the curl process, its spawn and the machine's load included:
    /// too noisy for a limit (check `duration()` instead).
    pub elapsed: Duration,
    /// The gateway's DURATION for the request, once the test has read its log line.
    pub logged_duration: Option<Duration>,
}

impl Resp {
    /// The gateway's own DURATION for this request (its log line's `duration_ms`).
    pub fn duration(&self) -> Duration {
        self.logged_duration
            .unwrap_or_else(|| panic!("the test has not read the log line of {self:?}"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The echo backend's JSON line (second line of the body).
    pub fn echo(&self) -> serde_json::Value {
        let line = self
            .body
            .lines()
            .nth(1)
            .unwrap_or_else(|| panic!("no echo JSON in {self:?}"));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }
}

/// Runs `curl -sS -i <args>` in the namespace and parses the (last) response.
pub fn curl(ns: &NetNs, args: &[&str]) -> Resp {
    let started = Instant::now();
    let out: Output = ns
        .cmd("curl")
        .args(["-sS", "-i", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl");
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let verbose = String::from_utf8_lossy(&out.stderr).into_owned();
    let exit = out.status.code().unwrap_or(-1);
    // The last header block: after a 1xx or with several, keep the final one.
    let (mut head, mut body) = match text.split_once("\r\n\r\n") {
        Some((h, b)) => (h.to_string(), b.to_string()),
        None => (text.clone(), String::new()),
    };
    while body.starts_with("HTTP/") {
        match body.clone().split_once("\r\n\r\n") {
            Some((h, b)) => {
                head = h.to_string();
                body = b.to_string();
            }
            None => break,
        }
    }
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body,
        verbose,
        exit,
        elapsed,
        logged_duration: None,
    }
}

/// The gateway's `gateway::http` log line for a request id (waits for it briefly: the
/// line is written when the response body ends).
pub fn log_line(gw: &GatewayProc, request_id: &str) -> String {
    log_line_with(gw, &format!("request_id={request_id}"))
}

/// The first `gateway::http` log line containing `needle` (waits up to 5 s for it).
pub fn log_line_with(gw: &GatewayProc, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = gw.log();
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("gateway::http") && l.contains(needle))
        {
            return l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no gateway::http log line with {needle}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a shell command in the namespace (for openssl).
pub fn sh_in(ns: &NetNs, script: &str) -> Output {
    ns.cmd("bash").args(["-c", script]).output().expect("bash")
}

/// Mints a leaf certificate signed by `ca_cert`/`ca_key` with `subjectAltName=san`,
/// for clientAuth and serverAuth. Returns (cert, key) paths.
pub fn mint_cert(
    dir: &Path,
    name: &str,
    san: &str,
    ca_cert: &Path,
    ca_key: &Path,
) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.cert.pem"));
    let key = dir.join(format!("{name}.key.pem"));
    let csr = dir.join(format!("{name}.csr.pem"));
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth,serverAuth\nsubjectAltName={san}\n"
        ),
    )
    .unwrap();
    run(&[
        "openssl",
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        key.to_str().unwrap(),
    ]);
    run(&[
        "openssl",
        "req",
        "-new",
        "-key",
        key.to_str().unwrap(),
        "-subj",
        &format!("/CN={name}"),
        "-out",
        csr.to_str().unwrap(),
    ]);
    run(&[
        "openssl",
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        ca_cert.to_str().unwrap(),
        "-CAkey",
        ca_key.to_str().unwrap(),
        "-CAcreateserial",
        "-CAserial",
        dir.join("ca.srl").to_str().unwrap(),
        "-sha256",
        "-days",
        "2",
        "-out",
        cert.to_str().unwrap(),
        "-extfile",
        ext.to_str().unwrap(),
    ]);
    (cert, key)
}

/// A fresh self-signed CA in `dir`: (cert, key).
pub fn mint_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.cert.pem"));
    let key = dir.join(format!("{name}.key.pem"));
    run(&[
        "openssl",
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        key.to_str().unwrap(),
    ]);
    run(&[
        "openssl",
        "req",
        "-x509",
        "-new",
        "-key",
        key.to_str().unwrap(),
        "-sha256",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        cert.to_str().unwrap(),
    ]);
    (cert, key)
}

fn run(cmd: &[&str]) {
    let out = std::process::Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `kubernetes.io/tls` Secret in istio-system as YAML, from PEM files.
pub fn tls_secret_yaml(name: &str, cert: &Path, key: &Path, ca: Option<&Path>) -> String {
    let indent = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let mut y = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: istio-system\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert),
        indent(key)
    );
    if let Some(ca) = ca {
        y += &format!("  ca.crt: |\n{}", indent(ca));
    }
    y
}

/// The `duration_ms=` of a gateway `gateway::http` log line: the gateway's own DURATION
/// for the request, untouched by how long the client took to start or connect.
pub fn duration_of(line: &str) -> Duration {
    let ms = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("duration_ms="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no duration_ms in log line {line:?}"));
    Duration::from_millis(ms)
}

/// A well-behaved HTTP/1.1 client running beside an abusive one: a fresh connection and
/// a GET every 50 ms (each with its own request id), recording failures and the slowest
/// answer. Stopped (its thread joined) on drop, also when a test fails before `finish`.
pub struct GoodClient {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<GoodStats>>,
}

#[derive(Debug, Default)]
pub struct GoodStats {
    pub ok: usize,
    pub failures: Vec<String>,
    /// As the client saw it (connect to EOF), spawn and scheduling delays included.
    pub slowest: Duration,
    /// Request ids of the answered requests.
    pub ids: Vec<String>,
    /// The longest DURATION the gateway logged for them.
    pub gateway_slowest: Duration,
}

impl GoodClient {
    pub fn start(ns: &NetNs, host: &'static str) -> GoodClient {
        use std::io::{Read, Write};
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let name = ns.name.clone();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            enter_ns(&name);
            let mut stats = GoodStats::default();
            let mut n = 0u32;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                // Zero-padded: no id is a prefix of another in the log.
                let id = format!("good-{n:06}");
                n += 1;
                let t = Instant::now();
                let got = (|| -> std::io::Result<String> {
                    let mut s = std::net::TcpStream::connect("127.0.0.1:80")?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    write!(
                        s,
                        "GET /good HTTP/1.1\r\nHost: {host}\r\nx-request-id: {id}\r\nConnection: close\r\n\r\n"
                    )?;
                    let mut out = String::new();
                    s.read_to_string(&mut out)?;
                    Ok(out)
                })();
                let took = t.elapsed();
                stats.slowest = stats.slowest.max(took);
                match got {
                    Ok(text) if text.starts_with("HTTP/1.1 200") => {
                        stats.ok += 1;
                        stats.ids.push(id);
                    }
                    Ok(text) => stats
                        .failures
                        .push(text.lines().next().unwrap_or("").into()),
                    Err(e) => stats.failures.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            stats
        });
        GoodClient {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and asserts it was never refused and the gateway never took a second over
    /// one of its requests. The time is the gateway's own (its log line's DURATION): a
    /// wall clock around the client also counts the scheduling of a loaded machine.
    pub fn finish(mut self, gw: &GatewayProc) -> GoodStats {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut stats = self.thread.take().unwrap().join().unwrap();
        assert!(stats.failures.is_empty(), "good client failed: {stats:?}");
        assert!(stats.ok >= 5, "good client barely ran: {stats:?}");
        // Every answered request has its line (written as the response ends: wait).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = gw.log();
            let logged: std::collections::HashMap<&str, &str> = log
                .lines()
                .filter(|l| l.contains("gateway::http"))
                .filter_map(|l| {
                    let id = l
                        .split_whitespace()
                        .find_map(|f| f.strip_prefix("request_id="))?;
                    Some((id, l))
                })
                .collect();
            let missing: Vec<&String> = stats
                .ids
                .iter()
                .filter(|id| !logged.contains_key(id.as_str()))
                .collect();
            if missing.is_empty() {
                stats.gateway_slowest = stats
                    .ids
                    .iter()
                    .map(|id| duration_of(logged[id.as_str()]))
                    .max()
                    .unwrap_or_default();
                break;
            }
            assert!(
                Instant::now() < deadline,
                "good requests without a log line: {missing:?}\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            stats.gateway_slowest < Duration::from_secs(1),
            "good client slowed down: {stats:?}"
        );
        stats
    }
}

impl Drop for GoodClient {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connections established in `ns` to a backend on `port`: requests the gateway has
/// forwarded there and not yet seen answered (the tests' slow requests).
pub fn upstream_conns(ns: &NetNs, port: u16) -> usize {
    let out = ns
        .cmd("ss")
        .args(["-Htn", "state", "established"])
        .arg(format!("( dport = :{port} )"))
        .output()
        .expect("run ss");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Replaces the file as editors and `kubectl` do: a new file renamed over the old one.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// `series` in the gateway's `/stats/prometheus`, if there.
pub fn metric(gw: &GatewayProc, series: &str) -> Option<u64> {
    gateway_tests::xdpbench::prom_value_opt(&gw.admin_get("/stats/prometheus"), series)
}

/// Polls `series` until it is `want` (10 s).
pub fn wait_metric(gw: &GatewayProc, series: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = metric(gw, series);
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {got:?}, not {want}:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

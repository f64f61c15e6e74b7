//! The soak (issue 10, `cargo xtask soak --minutes N`): one gateway in its own network
//! namespace holds idle spliced flows and HTTP keep-alive connections for N minutes
//! while short flows churn, a slow reader pushes against a slow upstream, one upstream
//! is killed and restarted, and a burst goes past `--max-connections`. Every second it
//! samples the gateway's RSS and fd count, MemAvailable and the kernel map sizes; at the
//! end it closes everything and polls until the gateway is back at its baseline.
//!
//! usage: soak --minutes N [--flows F] [--http H] [--splice MODE] [--out-dir D]
//! (the gateway binary is `$GATEWAY_BIN`). Writes `soak.json`, `soak.md` and `soak.svg`
//! to the out dir and exits 1 when any bound is broken. Needs root.
//!
//! What is expected of each phase, precisely:
//! - held spliced flows (port 31400, whose upstream is never killed): every one echoes
//!   after the ramp, after the burst and at the end;
//! - held HTTP/1.1 keep-alive connections (port 8080): the gateway closes an HTTP/1.1
//!   connection idle for 10 s (README), so each sends one request every 5 s and is idle
//!   in between; every request gets a 200 and no connection is closed;
//! - churn (port 31401): short echo flows, ~100/s; every one succeeds except while its
//!   upstream is down (from the kill until a new flow echoes again);
//! - upstream killed (port 31401's echo: its listener and every connection): the flows
//!   held to it are closed by the gateway (EOF or reset) within 10 s; after the restart
//!   on the same port a new flow echoes within 10 s;
//! - the slow reader (port 31402): a client sends as fast as it can to an upstream that
//!   reads 256 KiB/s; the connection stays up and what is in flight stays bounded;
//! - the burst (port 31400, churn paused): connections past the cap are refused (reset
//!   at accept: no echo), each counted in gateway_downstream_cx_overflow_total; no held
//!   connection is harmed;
//! - the end: every connection closed; active flows, downstream connections and the
//!   kernel maps at 0, fds and RSS back within their bounds, polled until a deadline.
use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use gateway_tests::{
    backends::{http_app, tcp_echo},
    gateway::GatewayProc,
    netns::{NetNs, is_root, sh},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};

const HELD: &str = "127.0.0.1:31400";
const CHURN: &str = "127.0.0.1:31401";
const SLOW: &str = "127.0.0.1:31402";
const HTTP: &str = "127.0.0.1:8080";
/// Connections the cap leaves above the held ones (churn, victims, slow reader, burst).
const HEADROOM: u64 = 1_000;
/// Connections the burst opens: HEADROOM + 500, so at least 500 must be refused.
const BURST: u64 = HEADROOM + 500;
/// Flows held to the upstream that gets killed.
const VICTIMS: usize = 100;
/// Hold-and-close cycles (the soak's own is the first) for the leak check.
const CYCLES: usize = 4;
/// The slow upstream's read rate.
const SLOW_RATE: u64 = 256 * 1024;
const MIB: f64 = 1024.0 * 1024.0;
const KIB: u64 = 1024;

struct Args {
    minutes: f64,
    /// None: the 10,000, scaled down to what the hard open-file limit allows.
    flows: Option<usize>,
    http: Option<usize>,
    splice: String,
    out_dir: PathBuf,
}

fn parse_args() -> Args {
    let mut a = Args {
        minutes: 1.0,
        flows: None,
        http: None,
        splice: "ebpf".into(),
        out_dir: PathBuf::from("target/soak"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--minutes" => a.minutes = v().parse().expect("--minutes N"),
            "--flows" => a.flows = Some(v().parse().expect("--flows N")),
            "--http" => a.http = Some(v().parse().expect("--http N")),
            "--splice" => a.splice = v(),
            "--out-dir" => a.out_dir = PathBuf::from(v()),
            _ => panic!(
                "unknown argument {k}; usage: soak --minutes N [--flows F] [--http H] [--splice MODE] [--out-dir D]"
            ),
        }
    }
    a
}

// === sampling ===

#[derive(Clone, Copy, Default)]
struct Sample {
    t: f64,
    rss: u64,
    fds: u64,
    mem_available: u64,
    active_flows: u64,
    /// PEERS, SPLICED, FLOWS entries (0 without the eBPF splice).
    maps: [u64; 3],
    /// The slow reader's bytes sent and not yet read by its upstream.
    slow_in_flight: u64,
}

impl Sample {
    fn json(&self) -> Value {
        json!({
            "t": (self.t * 10.0).round() / 10.0,
            "rss": self.rss,
            "fds": self.fds,
            "mem_available": self.mem_available,
            "active_flows": self.active_flows,
            "maps": {"PEERS": self.maps[0], "SPLICED": self.maps[1], "FLOWS": self.maps[2]},
            "slow_in_flight": self.slow_in_flight,
        })
    }
}

struct Probe {
    pid: u32,
    ns: String,
    t0: Instant,
    samples: Mutex<Vec<Sample>>,
    events: Mutex<Vec<(f64, String)>>,
    counters: Arc<Counters>,
}

impl Probe {
    fn secs(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn event(&self, what: impl Into<String>) {
        let what = what.into();
        let t = self.secs();
        println!("[{t:7.1}s] {what}");
        self.events.lock().unwrap().push((t, what));
    }

    /// GET an admin path through curl in the namespace; None when it fails.
    fn admin(&self, path: &str) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "curl", "-sS", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:15000{path}"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sum of every series of a Prometheus counter/gauge (all labels); None when the
    /// metric is missing (a missing series is a failure, never a 0).
    fn prom_sum(&self, name: &str) -> Option<u64> {
        let text = self.admin("/stats/prometheus")?;
        let mut found = false;
        let mut sum = 0.0;
        for l in text.lines() {
            let Some(rest) = l.strip_prefix(name) else {
                continue;
            };
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                continue;
            }
            if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                found = true;
                sum += v;
            }
        }
        found.then_some(sum as u64)
    }

    fn sample(&self) -> Sample {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let kib = |text: &str, key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
                * KIB
        };
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        let splice: Value = self
            .admin("/debug/splice")
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or(Value::Null);
        let map = |m: &str| splice["maps"][m].as_u64().unwrap_or(0);
        Sample {
            t: self.secs(),
            rss: kib(&status, "VmRSS:"),
            fds,
            mem_available: kib(&meminfo, "MemAvailable:"),
            active_flows: splice["active_flows"].as_u64().unwrap_or(u64::MAX),
            maps: [map("PEERS"), map("SPLICED"), map("FLOWS")],
            slow_in_flight: self
                .counters
                .slow_sent
                .load(Relaxed)
                .saturating_sub(self.counters.slow_read.load(Relaxed)),
        }
    }

    fn record(&self) -> Sample {
        let s = self.sample();
        self.samples.lock().unwrap().push(s);
        s
    }
}

// === traffic ===

/// Opens `n` connections to `to`, each sending a line and reading its echo; keeps them.
async fn hold(to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut set = JoinSet::new();
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        set.spawn(async move {
            let mut c = TcpStream::connect(to)
                .await
                .unwrap_or_else(|e| panic!("held flow {i}: {e}"));
            echo_once(&mut c, b"hold\n", Duration::from_secs(30))
                .await
                .unwrap_or_else(|e| panic!("held flow {i}: {e}"));
            c
        });
        while set.len() >= 256 {
            held.push(set.join_next().await.unwrap().unwrap());
        }
    }
    while let Some(c) = set.join_next().await {
        held.push(c.unwrap());
    }
    held
}

async fn echo_once(c: &mut TcpStream, line: &[u8], within: Duration) -> Result<(), String> {
    c.write_all(line).await.map_err(|e| format!("write: {e}"))?;
    let mut echo = vec![0u8; line.len()];
    match tokio::time::timeout(within, c.read_exact(&mut echo)).await {
        Err(_) => Err(format!("no echo within {within:?}")),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Ok(Ok(_)) if echo != line => Err("wrong echo".into()),
        Ok(Ok(_)) => Ok(()),
    }
}

/// How many of `held` fail to echo a line (each within 10 s).
async fn echo_failures(held: &mut [TcpStream]) -> u64 {
    let mut failed = 0;
    for c in held.iter_mut() {
        if echo_once(c, b"again\n", Duration::from_secs(10))
            .await
            .is_err()
        {
            failed += 1;
        }
    }
    failed
}

/// Opens `n` keep-alive connections with one GET each (256 at a time); returns them and
/// how many failed.
async fn http_hold(to: SocketAddr, n: usize) -> (Vec<TcpStream>, u64) {
    let gate = Arc::new(Semaphore::new(256));
    let mut set = JoinSet::new();
    for _ in 0..n {
        let gate = gate.clone();
        set.spawn(async move {
            let _p = gate.acquire().await.unwrap();
            let mut s = TcpStream::connect(to).await.ok()?;
            let mut buf = Vec::new();
            matches!(http_get(&mut s, &mut buf).await, Ok(200)).then_some(s)
        });
    }
    let (mut open, mut failed) = (Vec::with_capacity(n), 0);
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Some(s) => open.push(s),
            None => failed += 1,
        }
    }
    (open, failed)
}

/// Polls (30 s at most) until no flow, kernel map entry or downstream connection is
/// left; returns the last sample and the downstream connection count.
fn wait_closed(p: &Probe) -> (Sample, Option<u64>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = p.record();
        let cx = p.prom_sum("gateway_downstream_cx_active");
        if (s.active_flows == 0 && s.maps == [0, 0, 0] && cx == Some(0))
            || Instant::now() > deadline
        {
            return (s, cx);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Polls (20 s at most: the gateway trims its heap every 5 s) until the gateway's RSS is
/// within `bound`; returns the last sample.
fn settle_rss(p: &Probe, bound: u64) -> Sample {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = p.record();
        if s.rss <= bound || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One short flow: connect, one line echoed, close.
async fn short_flow(to: SocketAddr) -> Result<(), String> {
    let mut c = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(to))
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    echo_once(&mut c, b"churn\n", Duration::from_secs(5)).await
}

/// One GET on a keep-alive connection; Ok(status).
async fn http_get(c: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16, String> {
    c.write_all(b"GET /soak HTTP/1.1\r\nHost: soak.example\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    buf.clear();
    let read = async {
        let mut chunk = [0u8; 2048];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let status: u16 = head
                    .get(9..12)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("bad status line: {head:.40}"))?;
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or("no content-length")?;
                if buf.len() >= end + 4 + len {
                    return Ok(status);
                }
            }
            let n = c.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed by the gateway".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| "no response within 10 s".to_string())?
}

#[derive(Default)]
struct Counters {
    http_open: AtomicU64,
    http_ok: AtomicU64,
    http_failed: AtomicU64,
    churn_ok: AtomicU64,
    churn_failed_expected: AtomicU64,
    churn_failed: AtomicU64,
    churn_inflight: AtomicU64,
    slow_sent: AtomicU64,
    slow_read: AtomicU64,
    slow_failed: AtomicU64,
    slow_lead_max: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl Counters {
    fn error(&self, what: String) {
        let mut e = self.first_errors.lock().unwrap();
        if e.len() < 20 {
            eprintln!("soak: {what}");
            e.push(what);
        }
    }
}

#[derive(Default)]
struct Flags {
    stop: AtomicBool,
    churn_paused: AtomicBool,
    outage: AtomicBool,
}

/// A keep-alive connection: one request at once, then one every 5 s (first at
/// `offset`), until stop. A failed request ends it and is counted.
async fn keepalive(
    to: SocketAddr,
    offset: Duration,
    gate: Arc<Semaphore>,
    c: Arc<Counters>,
    f: Arc<Flags>,
) {
    let mut buf = Vec::with_capacity(4096);
    let conn = {
        let _permit = gate.acquire().await.unwrap();
        match TcpStream::connect(to).await {
            Ok(mut s) => match http_get(&mut s, &mut buf).await {
                Ok(200) => Ok(s),
                Ok(st) => Err(format!("status {st}")),
                Err(e) => Err(e),
            },
            Err(e) => Err(format!("connect: {e}")),
        }
    };
    let mut s = match conn {
        Ok(s) => s,
        Err(e) => {
            c.http_failed.fetch_add(1, Relaxed);
            c.error(format!("keep-alive connection: {e}"));
            return;
        }
    };
    c.http_open.fetch_add(1, Relaxed);
    c.http_ok.fetch_add(1, Relaxed);
    let mut next = tokio::time::Instant::now() + offset;
    loop {
        while tokio::time::Instant::now() < next {
            if f.stop.load(Relaxed) {
                c.http_open.fetch_sub(1, Relaxed);
                return;
            }
            tokio::time::sleep(Duration::from_millis(500).min(next - tokio::time::Instant::now()))
                .await;
        }
        next += Duration::from_secs(5);
        match http_get(&mut s, &mut buf).await {
            Ok(200) => {
                c.http_ok.fetch_add(1, Relaxed);
            }
            other => {
                c.http_failed.fetch_add(1, Relaxed);
                c.http_open.fetch_sub(1, Relaxed);
                c.error(format!("keep-alive request: {other:?}"));
                return;
            }
        }
    }
}

/// A churn loop: short flows to `to` until stop, ~25/s, holding off while paused.
async fn churn(to: SocketAddr, c: Arc<Counters>, f: Arc<Flags>) {
    while !f.stop.load(Relaxed) {
        if f.churn_paused.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        c.churn_inflight.fetch_add(1, Relaxed);
        if f.churn_paused.load(Relaxed) {
            c.churn_inflight.fetch_sub(1, Relaxed);
            continue;
        }
        let outage_at_start = f.outage.load(Relaxed);
        let r = short_flow(to).await;
        c.churn_inflight.fetch_sub(1, Relaxed);
        match r {
            Ok(()) => {
                c.churn_ok.fetch_add(1, Relaxed);
            }
            Err(_) if outage_at_start || f.outage.load(Relaxed) => {
                c.churn_failed_expected.fetch_add(1, Relaxed);
            }
            Err(e) => {
                c.churn_failed.fetch_add(1, Relaxed);
                c.error(format!("churn flow: {e}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

/// The slow upstream: accepts connections and reads each at SLOW_RATE.
async fn slow_upstream(addr: SocketAddr, c: Arc<Counters>) -> tokio::task::JoinHandle<()> {
    let l = TcpListener::bind(addr)
        .await
        .expect("bind the slow upstream");
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let c = c.clone();
            conns.spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let tick = Duration::from_secs_f64(buf.len() as f64 / SLOW_RATE as f64);
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            c.slow_read.fetch_add(n as u64, Relaxed);
                        }
                    }
                    tokio::time::sleep(tick).await;
                }
            });
        }
    })
}

/// The slow reader's client: sends as fast as the socket takes it until stop.
async fn slow_sender(to: SocketAddr, c: Arc<Counters>, f: Arc<Flags>) {
    let mut s = match TcpStream::connect(to).await {
        Ok(s) => s,
        Err(e) => {
            c.slow_failed.fetch_add(1, Relaxed);
            c.error(format!("slow reader connect: {e}"));
            return;
        }
    };
    let chunk = vec![0x5au8; 64 * 1024];
    while !f.stop.load(Relaxed) {
        match tokio::time::timeout(Duration::from_millis(500), s.write(&chunk)).await {
            Err(_) => {} // blocked: backpressure, as it should be
            Ok(Ok(n)) => {
                c.slow_sent.fetch_add(n as u64, Relaxed);
            }
            Ok(Err(e)) => {
                c.slow_failed.fetch_add(1, Relaxed);
                c.error(format!("slow reader write: {e}"));
                return;
            }
        }
        let lead = c
            .slow_sent
            .load(Relaxed)
            .saturating_sub(c.slow_read.load(Relaxed));
        c.slow_lead_max.fetch_max(lead, Relaxed);
    }
    // Abort rather than close: a FIN would wait behind tens of MiB still in flight to an
    // upstream that reads 256 KiB/s.
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
}

/// Opens BURST connections to HELD at once (64 in flight); returns (accepted, refused).
async fn burst() -> (Vec<TcpStream>, u64) {
    let to: SocketAddr = HELD.parse().unwrap();
    let gate = Arc::new(Semaphore::new(64));
    let mut set = JoinSet::new();
    for _ in 0..BURST {
        let gate = gate.clone();
        set.spawn(async move {
            let _p = gate.acquire().await.unwrap();
            let mut c = TcpStream::connect(to).await.ok()?;
            echo_once(&mut c, b"burst\n", Duration::from_secs(5))
                .await
                .ok()?;
            Some(c)
        });
    }
    let (mut accepted, mut refused) = (Vec::new(), 0);
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Some(c) => accepted.push(c),
            None => refused += 1,
        }
    }
    (accepted, refused)
}

// === bounds and report ===

struct Check {
    name: String,
    bound: String,
    measured: String,
    ok: bool,
}

fn check(checks: &mut Vec<Check>, name: &str, bound: String, measured: String, ok: bool) {
    println!(
        "{} {name}: {measured} (bound: {bound})",
        if ok { "ok  " } else { "FAIL" }
    );
    checks.push(Check {
        name: name.into(),
        bound,
        measured,
        ok,
    });
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / MIB)
}

/// A two-panel SVG: gateway RSS over time (top), fds, active flows and kernel map
/// entries over time (bottom), with the soak's events as vertical lines.
fn svg(samples: &[Sample], events: &[(f64, String)], title: &str) -> String {
    let (w, ph, left, top) = (900.0, 220.0, 70.0, 40.0);
    let gap = 50.0;
    let h = top + 2.0 * ph + gap + 40.0 + 13.0 * events.len() as f64;
    let tmax = samples.iter().map(|s| s.t).fold(1.0, f64::max);
    let x = |t: f64| left + (t / tmax) * (w - left - 20.0);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"20\" font-size=\"14\">{title}</text>\n"
    );
    let mut panel = |y0: f64, label: &str, series: &[(&str, &str, Vec<f64>)]| {
        let vmax = series
            .iter()
            .flat_map(|(_, _, v)| v.iter().copied())
            .fold(1.0, f64::max)
            * 1.1;
        let y = |v: f64| y0 + ph - (v / vmax) * ph;
        let _ = writeln!(
            out,
            "<rect x=\"{left}\" y=\"{y0}\" width=\"{}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>",
            w - left - 20.0
        );
        for i in 0..=4 {
            let v = vmax * i as f64 / 4.0;
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}</text>",
                left - 4.0,
                y(v) + 4.0,
                v
            );
        }
        let _ = writeln!(
            out,
            "<text x=\"12\" y=\"{:.1}\" transform=\"rotate(-90 12 {:.1})\" text-anchor=\"middle\">{label}</text>",
            y0 + ph / 2.0,
            y0 + ph / 2.0
        );
        for (k, (name, color, v)) in series.iter().enumerate() {
            let pts: Vec<String> = samples
                .iter()
                .zip(v)
                .map(|(s, v)| format!("{:.1},{:.1}", x(s.t), y(*v)))
                .collect();
            let _ = writeln!(
                out,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
                pts.join(" ")
            );
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">{name}</text>",
                left + 10.0 + 150.0 * k as f64,
                y0 + 14.0
            );
        }
        for (t, what) in events {
            let _ = writeln!(
                out,
                "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{y0}\" y2=\"{1}\" stroke=\"#ccc\" stroke-dasharray=\"3,3\"><title>{2}</title></line>",
                x(*t),
                y0 + ph,
                xml(what)
            );
        }
    };
    let col = |f: fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<_>>();
    panel(
        top,
        "MiB",
        &[
            ("gateway RSS", "#d62728", col(|s| s.rss as f64 / MIB)),
            (
                "slow reader in flight",
                "#17becf",
                col(|s| s.slow_in_flight as f64 / MIB),
            ),
        ],
    );
    panel(
        top + ph + gap,
        "count",
        &[
            ("fds", "#1f77b4", col(|s| s.fds as f64)),
            (
                "active flows",
                "#2ca02c",
                col(|s| s.active_flows.min(1 << 40) as f64),
            ),
            ("PEERS", "#9467bd", col(|s| s.maps[0] as f64)),
            ("SPLICED", "#ff7f0e", col(|s| s.maps[1] as f64)),
            ("FLOWS", "#8c564b", col(|s| s.maps[2] as f64)),
        ],
    );
    let axis_y = top + 2.0 * ph + gap;
    for i in 0..=6 {
        let t = tmax * i as f64 / 6.0;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t:.0}s</text>",
            x(t),
            axis_y + 14.0
        );
    }
    for (i, (t, what)) in events.iter().enumerate() {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" fill=\"#666\">{}</text>",
            x(*t) + 2.0,
            top + 26.0 + 10.0 * (i % 4) as f64,
            i + 1
        );
        let _ = writeln!(
            out,
            "<text x=\"{left}\" y=\"{:.1}\" font-size=\"10\" fill=\"#444\">{}. {:.0}s: {}</text>",
            axis_y + 32.0 + 13.0 * i as f64,
            i + 1,
            t,
            xml(what)
        );
    }
    out.push_str("</svg>\n");
    out
}

// === the soak ===

fn main() {
    let a = parse_args();
    assert!(is_root(), "the soak needs root (network namespace, eBPF)");
    let hold_secs = a.minutes * 60.0;
    let nofile = gateway_tests::raise_nofile();
    // Each process (the gateway; this one, which holds both ends) needs 2 fds per spliced
    // flow, 1 per HTTP connection, 2 per burst connection it accepts and per victim.
    let fixed = 2 * HEADROOM + 2 * VICTIMS as u64 + 512;
    let need = |flows: usize, http: usize| 2 * flows as u64 + http as u64 + fixed;
    let fits = (nofile.saturating_sub(fixed) / 3) as usize;
    let scaled = a.flows.is_none() && a.http.is_none() && need(10_000, 10_000) > nofile;
    let (flows, http) = if scaled {
        println!(
            "soak: the hard open-file limit is {nofile} (raising it needs CAP_SYS_RESOURCE): \
             holding {fits} flows + {fits} HTTP connections instead of 10,000 + 10,000"
        );
        (fits, fits)
    } else {
        (a.flows.unwrap_or(10_000), a.http.unwrap_or(10_000))
    };
    assert!(
        need(flows, http) <= nofile,
        "{flows} flows + {http} HTTP connections need ~{} fds per process but the hard \
         open-file limit is {nofile}: pass smaller --flows/--http (e.g. {fits} each)",
        need(flows, http)
    );
    let cap = (flows + http) as u64 + HEADROOM;
    std::fs::create_dir_all(&a.out_dir).expect("create the out dir");

    let ns = NetNs::new("soak");
    // Room for ~40,000 client ports plus the churn's TIME_WAITs, inside the namespace.
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns.name,
        "sysctl",
        "-qw",
        "net.ipv4.ip_local_port_range=1024 65000",
    ]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns.name,
        "sysctl",
        "-qw",
        "net.ipv4.tcp_tw_reuse=1",
    ]);
    let rt = ns.runtime();
    let c = Arc::new(Counters::default());
    let f = Arc::new(Flags::default());
    let held_echo = NetNs::block_on(&rt, tcp_echo("127.0.0.1:2701".parse().unwrap())).unwrap();
    let mut churn_echo =
        Some(NetNs::block_on(&rt, tcp_echo("127.0.0.1:2702".parse().unwrap())).unwrap());
    let app = NetNs::block_on(
        &rt,
        http_app("127.0.0.1:18080".parse().unwrap(), "soak-app"),
    )
    .unwrap();
    let slow_up = NetNs::block_on(
        &rt,
        slow_upstream("127.0.0.1:2703".parse().unwrap(), c.clone()),
    );

    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/soak/soak.yaml");
    let cap_s = cap.to_string();
    let gw = GatewayProc::start(
        &ns,
        &[&fixture],
        &["--splice", &a.splice, "--max-connections", &cap_s],
    );
    let p = Arc::new(Probe {
        pid: gw.pid(),
        ns: ns.name.clone(),
        t0: Instant::now(),
        samples: Mutex::new(Vec::new()),
        events: Mutex::new(Vec::new()),
        counters: c.clone(),
    });

    // Baseline: fds settled, then 3 samples a second apart.
    let fd_base = gw.settled_fd_count() as u64;
    let mut base = Vec::new();
    for _ in 0..3 {
        base.push(p.record());
        std::thread::sleep(Duration::from_secs(1));
    }
    let rss_base = base.iter().map(|s| s.rss).max().unwrap();
    let mem_base = base.iter().map(|s| s.mem_available).min().unwrap();
    p.event(format!(
        "baseline: RSS {}, {fd_base} fds, MemAvailable {}",
        mib(rss_base),
        mib(mem_base)
    ));

    // The sampler: one sample a second until told to stop.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (p, on) = (p.clone(), sampling.clone());
        std::thread::spawn(move || {
            while on.load(Relaxed) {
                let next = Instant::now() + Duration::from_secs(1);
                p.record();
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };

    // Ramp: held flows, victims, HTTP keep-alive connections, slow reader, churn.
    p.event(format!(
        "ramp: {flows} spliced flows, {http} HTTP keep-alive connections"
    ));
    let mut held = NetNs::block_on(&rt, hold(HELD.parse().unwrap(), flows));
    let victims = NetNs::block_on(&rt, hold(CHURN.parse().unwrap(), VICTIMS));
    let mut bg = Vec::new();
    let gate = Arc::new(Semaphore::new(256));
    for i in 0..http {
        let offset = Duration::from_millis((i as u64 * 5_000) / http.max(1) as u64);
        bg.push(rt.spawn(keepalive(
            HTTP.parse().unwrap(),
            offset,
            gate.clone(),
            c.clone(),
            f.clone(),
        )));
    }
    let ramp_deadline = Instant::now() + Duration::from_secs(120);
    while c.http_open.load(Relaxed) + c.http_failed.load(Relaxed) < http as u64
        && Instant::now() < ramp_deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    bg.push(rt.spawn(slow_sender(SLOW.parse().unwrap(), c.clone(), f.clone())));
    for _ in 0..4 {
        bg.push(rt.spawn(churn(CHURN.parse().unwrap(), c.clone(), f.clone())));
    }
    let hold_start = Instant::now();
    let rss_hold_start = p.record().rss;
    p.event(format!(
        "held: {} flows, {} keep-alive connections open; churn and slow reader running",
        held.len(),
        c.http_open.load(Relaxed)
    ));
    let at = |frac: f64| hold_start + Duration::from_secs_f64(hold_secs * frac);
    let sleep_until = |t: Instant| std::thread::sleep(t.saturating_duration_since(Instant::now()));

    // Kill the churn upstream (listener and connections), restart it 3 s later.
    sleep_until(at(0.3));
    f.outage.store(true, Relaxed);
    drop(churn_echo.take());
    p.event("upstream :2702 killed");
    let victims_closed = NetNs::block_on(&rt, async move {
        let mut closed = 0u64;
        for mut v in victims {
            let mut b = [0u8; 16];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_secs(10), v.read(&mut b)).await
            {
                closed += 1;
            }
        }
        closed
    });
    p.event(format!(
        "{victims_closed}/{VICTIMS} flows to the killed upstream closed"
    ));
    std::thread::sleep(Duration::from_secs(3));
    churn_echo = Some(NetNs::block_on(&rt, tcp_echo("127.0.0.1:2702".parse().unwrap())).unwrap());
    let restarted = Instant::now();
    let recovered = NetNs::block_on(&rt, async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if short_flow(CHURN.parse().unwrap()).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    let recovery_secs = restarted.elapsed().as_secs_f64();
    f.outage.store(false, Relaxed);
    p.event(format!(
        "upstream :2702 restarted; new flow echoes: {recovered} after {recovery_secs:.2}s"
    ));

    // The burst past --max-connections, churn paused so the count is exact.
    sleep_until(at(0.6));
    f.churn_paused.store(true, Relaxed);
    while c.churn_inflight.load(Relaxed) > 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let overflow_before = p.prom_sum("gateway_downstream_cx_overflow_total");
    let active_before = p.prom_sum("gateway_downstream_cx_active");
    p.event(format!(
        "burst: {BURST} connections, cap {cap}, {active_before:?} active"
    ));
    let (accepted, refused) = NetNs::block_on(&rt, burst());
    let overflow_after = p.prom_sum("gateway_downstream_cx_overflow_total");
    let accepted_n = accepted.len();
    NetNs::block_on(&rt, async move { drop(accepted) });
    f.churn_paused.store(false, Relaxed);
    p.event(format!("burst: {accepted_n} accepted, {refused} refused"));
    let (burst_held_failed, h) = NetNs::block_on(&rt, async move {
        let n = echo_failures(&mut held).await;
        (n, held)
    });
    held = h;
    p.event(format!(
        "after the burst: {burst_held_failed} held flows failed to echo"
    ));

    // The end of the hold: stop the background traffic, check the held flows, close all.
    sleep_until(at(1.0));
    let rss_hold_end = p.record().rss;
    f.stop.store(true, Relaxed);
    let (end_held_failed, h) = NetNs::block_on(&rt, async move {
        let n = echo_failures(&mut held).await;
        (n, held)
    });
    held = h;
    NetNs::block_on(&rt, async move {
        for t in bg {
            let _ = t.await;
        }
        drop(held);
    });
    p.event(format!(
        "end: {end_held_failed} held flows failed to echo; everything closed"
    ));

    slow_up.abort();

    // Back to baseline, polled: first every connection and flow gone (the gateway's
    // own state), then, with the upstreams stopped too, fds and RSS. The gateway keeps
    // idle pooled HTTP upstream connections for 60 s by design (pool idle timeout);
    // stopping the upstreams closes them instead of waiting out that timer.
    let closed_at = Instant::now();
    let (closed, cx_active_end) = wait_closed(&p);
    let close_secs = closed_at.elapsed().as_secs_f64();
    p.event(format!(
        "connections closed after {close_secs:.1}s: active flows {}, downstream cx {cx_active_end:?}, {} fds (with the idle upstream pool)",
        closed.active_flows, closed.fds
    ));

    // More cycles of the same connections, opened and closed: a leak grows cycle over
    // cycle; allocator fragmentation levels off. The first extra cycle warms up (it opens
    // everything at once, unlike the ramp); the last two are compared.
    // The gateway gives freed heap back to the kernel (`--heap-trim-interval`, 5 s):
    // after every close its RSS must come back to the baseline + 16 MiB.
    let rss_settled_bound = rss_base + 16 * 1024 * KIB;
    let mut rss_cycles = vec![settle_rss(&p, rss_settled_bound).rss];
    let (mut closed2, mut cx2, mut cycle2_failed) = (closed, cx_active_end, 0);
    for cycle in 2..=CYCLES {
        cycle2_failed += NetNs::block_on(&rt, async move {
            let flows2 = hold(HELD.parse().unwrap(), flows).await;
            let (http2, failed) = http_hold(HTTP.parse().unwrap(), http).await;
            drop((flows2, http2));
            failed
        });
        (closed2, cx2) = wait_closed(&p);
        rss_cycles.push(settle_rss(&p, rss_settled_bound).rss);
        p.event(format!(
            "cycle {cycle} ({flows} flows + {http} HTTP connections opened and closed): RSS {}",
            mib(*rss_cycles.last().unwrap())
        ));
    }
    NetNs::block_on(&rt, async move {
        drop(held_echo);
        drop(churn_echo);
        drop(app);
    });
    // Back to the baseline + 16 MiB: what closed connections freed is given back.
    let rss_end_bound = rss_settled_bound;
    let fd_end_bound = fd_base + 8;
    let stopped_at = Instant::now();
    let deadline = stopped_at + Duration::from_secs(30);
    let last = loop {
        let s = p.record();
        if (s.fds <= fd_end_bound && s.rss <= rss_end_bound) || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let settle_secs = stopped_at.elapsed().as_secs_f64();
    p.event(format!(
        "upstreams stopped; fds {} and RSS {} after {settle_secs:.1}s",
        last.fds,
        mib(last.rss)
    ));
    sampling.store(false, Relaxed);
    sampler.join().unwrap();

    // === bounds ===
    let samples = p.samples.lock().unwrap().clone();
    let events = p.events.lock().unwrap().clone();
    let rss_peak = samples.iter().map(|s| s.rss).max().unwrap_or(0);
    let fds_peak = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let mem_min = samples.iter().map(|s| s.mem_available).min().unwrap_or(0);
    let map_peak = [0, 1, 2].map(|i| samples.iter().map(|s| s.maps[i]).max().unwrap_or(0));
    let flows_peak = samples
        .iter()
        .map(|s| s.active_flows)
        .filter(|&v| v != u64::MAX)
        .max()
        .unwrap_or(0);
    let (flows64, http64) = (flows as u64, http as u64);
    let mut ck = Vec::new();
    let rss_bound = rss_base + 16 * KIB * flows64 + 64 * KIB * http64 + 64 * 1024 * KIB;
    check(
        &mut ck,
        "peak RSS",
        format!(
            "≤ baseline + 16 KiB/flow + 64 KiB/HTTP conn + 64 MiB = {}",
            mib(rss_bound)
        ),
        format!("{} (baseline {})", mib(rss_peak), mib(rss_base)),
        rss_peak <= rss_bound,
    );
    let drift = rss_hold_end as i64 - rss_hold_start as i64;
    check(
        &mut ck,
        "RSS drift over the hold (churn, kill, burst)",
        "≤ +32 MiB".into(),
        format!(
            "{:+.1} MiB ({} → {})",
            drift as f64 / MIB,
            mib(rss_hold_start),
            mib(rss_hold_end)
        ),
        drift <= 32 * 1024 * 1024,
    );
    check(
        &mut ck,
        "RSS after each open-and-close cycle (leak)",
        format!("≤ baseline + 16 MiB = {}", mib(rss_settled_bound)),
        format!(
            "after each cycle: {}",
            rss_cycles
                .iter()
                .map(|&r| mib(r))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        rss_cycles.iter().all(|&r| r <= rss_settled_bound),
    );
    check(
        &mut ck,
        "RSS after close, back to baseline",
        format!("≤ baseline + 16 MiB = {}", mib(rss_end_bound)),
        format!(
            "{} (baseline {}, {:+.1} MiB)",
            mib(last.rss),
            mib(rss_base),
            (last.rss as f64 - rss_base as f64) / MIB
        ),
        last.rss <= rss_end_bound,
    );
    check(
        &mut ck,
        "extra cycles: connections failed, all closed",
        "0 failed; flows, maps, downstream cx at 0".into(),
        format!(
            "{cycle2_failed} failed; active {}, maps {:?}, downstream cx {cx2:?}",
            closed2.active_flows, closed2.maps
        ),
        cycle2_failed == 0
            && closed2.active_flows == 0
            && closed2.maps == [0, 0, 0]
            && cx2 == Some(0),
    );
    let fd_bound = fd_base + 2 * cap + 64;
    check(
        &mut ck,
        "peak fds",
        format!("≤ baseline + 2 per connection under the cap + 64 = {fd_bound}"),
        format!("{fds_peak} (baseline {fd_base})"),
        fds_peak <= fd_bound,
    );
    check(
        &mut ck,
        "fds after close",
        format!("≤ baseline + 8 = {fd_end_bound}"),
        last.fds.to_string(),
        last.fds <= fd_end_bound,
    );
    let mem_floor = mem_base.saturating_sub(4 << 30);
    check(
        &mut ck,
        "MemAvailable, lowest (machine-wide)",
        format!("≥ baseline − 4 GiB = {}", mib(mem_floor)),
        format!(
            "{} (baseline {}, drop {})",
            mib(mem_min),
            mib(mem_base),
            mib(mem_base.saturating_sub(mem_min))
        ),
        mem_min >= mem_floor,
    );
    // MemAvailable is the whole machine's, shared with whatever else runs there (other
    // builds swing it by ±0.5 GiB): after close it may be lower by what the gateway
    // keeps (its RSS growth) plus 1 GiB of that noise.
    let kept = last.rss.saturating_sub(rss_base);
    let mem_end_floor = mem_base.saturating_sub(kept + (1 << 30));
    check(
        &mut ck,
        "MemAvailable after close (machine-wide)",
        format!(
            "≥ baseline − gateway RSS growth − 1 GiB = {}",
            mib(mem_end_floor)
        ),
        mib(last.mem_available),
        last.mem_available >= mem_end_floor,
    );
    let map_bound = 2 * cap;
    for (i, name) in ["PEERS", "SPLICED", "FLOWS"].iter().enumerate() {
        check(
            &mut ck,
            &format!("kernel map {name}, peak"),
            format!("≤ 2 per connection under the cap = {map_bound}"),
            map_peak[i].to_string(),
            map_peak[i] <= map_bound,
        );
    }
    check(
        &mut ck,
        "active flows and kernel maps after close",
        "0".into(),
        format!(
            "active {}, PEERS {}, SPLICED {}, FLOWS {}, downstream cx {:?}, after {close_secs:.1} s",
            closed.active_flows, closed.maps[0], closed.maps[1], closed.maps[2], cx_active_end
        ),
        closed.active_flows == 0 && closed.maps == [0, 0, 0] && cx_active_end == Some(0),
    );
    check(
        &mut ck,
        "held spliced flows harmed (after burst, at end)",
        "0".into(),
        format!("{burst_held_failed}, {end_held_failed} of {flows}"),
        burst_held_failed == 0 && end_held_failed == 0,
    );
    let (hok, hfail) = (c.http_ok.load(Relaxed), c.http_failed.load(Relaxed));
    check(
        &mut ck,
        "HTTP keep-alive requests failed / connections closed",
        "0".into(),
        format!("{hfail} failed, {hok} ok on {http} connections"),
        hfail == 0 && hok >= http64,
    );
    let (cok, cexp, cfail) = (
        c.churn_ok.load(Relaxed),
        c.churn_failed_expected.load(Relaxed),
        c.churn_failed.load(Relaxed),
    );
    check(
        &mut ck,
        "churn flows failed outside the upstream outage",
        "0".into(),
        format!("{cfail} ({cok} ok, {cexp} failed while the upstream was down)"),
        cfail == 0 && cok > 0,
    );
    check(
        &mut ck,
        "flows to the killed upstream closed",
        format!("{VICTIMS} within 10 s"),
        victims_closed.to_string(),
        victims_closed == VICTIMS as u64,
    );
    check(
        &mut ck,
        "new flow after the upstream restart",
        "echoes within 10 s".into(),
        format!("{recovered} after {recovery_secs:.2} s"),
        recovered,
    );
    let overflow_delta = overflow_after.zip(overflow_before).map(|(a, b)| a - b);
    check(
        &mut ck,
        "burst past --max-connections refused and counted",
        format!(
            "≥ {} refused, overflow counter += refused",
            BURST - HEADROOM
        ),
        format!("{refused} refused, {accepted_n} accepted, overflow +{overflow_delta:?}"),
        refused >= BURST - HEADROOM && overflow_delta == Some(refused),
    );
    let (sent, read, lead, sfail) = (
        c.slow_sent.load(Relaxed),
        c.slow_read.load(Relaxed),
        c.slow_lead_max.load(Relaxed),
        c.slow_failed.load(Relaxed),
    );
    check(
        &mut ck,
        "slow reader: connection up, in flight bounded",
        "no error, ≤ 64 MiB in flight".into(),
        format!(
            "{sfail} errors, sent {}, read {}, max in flight {}",
            mib(sent),
            mib(read),
            mib(lead)
        ),
        sfail == 0 && read > 0 && lead <= 64 << 20,
    );
    let all_ok = ck.iter().all(|c| c.ok);

    // === report ===
    let params = json!({
        "minutes": a.minutes, "flows": flows, "http": http, "splice": a.splice,
        "max_connections": cap, "burst": BURST, "hard_nofile": nofile, "scaled_to_nofile": scaled, "victims": VICTIMS,
        "slow_reader_rate": SLOW_RATE, "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    let report = json!({
        "ok": all_ok,
        "params": params,
        "baseline": {"rss": rss_base, "fds": fd_base, "mem_available": mem_base},
        "peak": {"rss": rss_peak, "fds": fds_peak, "active_flows": flows_peak,
                 "maps": {"PEERS": map_peak[0], "SPLICED": map_peak[1], "FLOWS": map_peak[2]},
                 "mem_available_min": mem_min},
        "after_close": last.json(),
        "close_secs": close_secs, "rss_after_close_per_cycle": rss_cycles, "settle_secs": settle_secs, "after_connections_closed": closed.json(),
        "checks": ck.iter().map(|c| json!({"name": c.name, "bound": c.bound, "measured": c.measured, "ok": c.ok})).collect::<Vec<_>>(),
        "events": events.iter().map(|(t, w)| json!({"t": (t * 10.0).round() / 10.0, "what": w})).collect::<Vec<_>>(),
        "first_errors": *c.first_errors.lock().unwrap(),
        "samples": samples.iter().map(Sample::json).collect::<Vec<_>>(),
    });
    let out = &a.out_dir;
    std::fs::write(out.join("soak.json"), format!("{report:#}\n")).expect("write soak.json");
    let mut md = format!(
        "# Soak: {} min, {flows} idle spliced flows + {http} HTTP keep-alive connections\n\n\
         `--splice {}`, `--max-connections {cap}`, {} CPUs. Result: **{}**.\n\n\
         | check | bound | measured | |\n|---|---|---|---|\n",
        a.minutes,
        a.splice,
        params["nproc"],
        if all_ok {
            "all bounds held"
        } else {
            "BOUNDS BROKEN"
        }
    );
    for c in &ck {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            c.name,
            c.bound,
            c.measured,
            if c.ok { "ok" } else { "**FAIL**" }
        );
    }
    md.push_str("\nTimeline:\n\n");
    for (t, w) in &events {
        let _ = writeln!(md, "- {t:.1} s: {w}");
    }
    std::fs::write(out.join("soak.md"), md).expect("write soak.md");
    let title = format!(
        "gateway soak: {} min, {flows} spliced + {http} HTTP keep-alive held (--splice {})",
        a.minutes, a.splice
    );
    std::fs::write(out.join("soak.svg"), svg(&samples, &events, &title)).expect("write soak.svg");
    println!(
        "soak: {} — {}/soak.{{json,md,svg}}",
        if all_ok {
            "all bounds held"
        } else {
            "BOUNDS BROKEN"
        },
        out.display()
    );
    if !all_ok {
        eprintln!("gateway log tail:\n{}", tail(&gw.log(), 30));
    }
    // exit() runs no destructors: stop the gateway and delete the namespace first.
    drop(gw);
    drop(rt);
    drop(ns);
    if !all_ok {
        std::process::exit(1);
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

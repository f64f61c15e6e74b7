//! The routing-scale benchmark rows (issue 17), one [`Kind`] per run: HTTP rps and p99
//! through the gateway with N VirtualServices ([`crate::scale`]) for the first, a middle,
//! the last and an unknown host; new TLS connections per second with N HTTPS servers
//! (each its own certificate) or N TLS passthrough routes by SNI, for the first, a middle
//! and the last host; plus the gateway's RSS, its start-up time and `gateway validate`'s
//! time and peak RSS for the same file.
//!
//! Topology (as bench/peers.sh pins it): everything in a namespace of its own; nginx
//! (one worker, a 128-byte file) and wrk (2 threads, 64 connections) on CPU 0, the
//! gateways (one per N, all running, each on its own loopback address, one tokio
//! worker each) on CPU 1. The same host is measured for every N in a row, then the
//! next host, and the whole again per pass, so that load from other processes on the
//! machine falls on every N alike; each cell is the median of its passes.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{gateway::die_with_parent, netns::NetNs, scale};

const UPSTREAM: &str = "127.0.0.1:8081";
/// nginx terminating TLS itself: the passthrough row's upstream.
const TLS_UPSTREAM: &str = "127.0.0.1:8443";
/// Concurrent clients of the TLS rows (as wrk's `-c64` in the HTTP row).
const TLS_CONNS: &str = "64";
const LOAD_CPU: &str = "0";
const PROXY_CPU: &str = "1";

/// Which row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// N VirtualServices on one HTTP port: keep-alive requests (wrk).
    Http,
    /// N HTTPS servers on port 443, each with its own certificate: a new TLS
    /// connection (full handshake) per request.
    Https,
    /// N TLS passthrough routes by SNI on port 443 to a TLS upstream: a new
    /// connection (a resumed TLS 1.2 handshake with the upstream, through the gateway)
    /// per request.
    Passthrough,
    /// [`Kind::Http`]'s configuration and 2N AuthorizationPolicies (an ALLOW and a DENY
    /// per host): keep-alive requests (wrk); a host no policy names is a 403.
    Authz,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "http" => Kind::Http,
            "https" => Kind::Https,
            "passthrough" => Kind::Passthrough,
            "authz" => Kind::Authz,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Https => "https",
            Kind::Passthrough => "passthrough",
            Kind::Authz => "authz",
        }
    }
    /// The hosts measured.
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            Kind::Http | Kind::Authz => &LABELS,
            Kind::Https | Kind::Passthrough => &LABELS[..3],
        }
    }
}

pub struct Settings {
    pub kind: Kind,
    pub gateway_bin: PathBuf,
    /// The TLS rows' load generator (tests/src/bin/tls-load.rs).
    pub tls_load_bin: PathBuf,
    /// Where generated certificates are kept between runs.
    pub cache_dir: PathBuf,
    pub counts: Vec<usize>,
    pub secs: u64,
    pub runs: usize,
    pub work_dir: PathBuf,
}

/// One wrk measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wrk {
    pub rps: f64,
    pub p99_us: f64,
    pub non_2xx_or_err: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Row {
    pub n: usize,
    /// (label, host, per pass)
    pub hosts: Vec<(String, String, Vec<Wrk>)>,
    pub validate_secs: Vec<f64>,
    pub validate_peak_kib: Vec<u64>,
    pub start_secs: Vec<f64>,
    pub rss_kib: Vec<u64>,
    pub config_bytes: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

impl Row {
    pub fn rps(&self, label: &str) -> f64 {
        self.cell(label, |w| w.rps)
    }
    pub fn p99_us(&self, label: &str) -> f64 {
        self.cell(label, |w| w.p99_us)
    }
    fn cell(&self, label: &str, f: impl Fn(&Wrk) -> f64) -> f64 {
        self.hosts
            .iter()
            .find(|(l, _, _)| l == label)
            .map(|(_, _, w)| median(w.iter().map(&f).collect()))
            .unwrap_or(0.0)
    }
    /// rps as a share of `base`'s for the same host: the median over passes of the
    /// ratio within each pass (measured seconds apart, so less exposed to the
    /// machine's other load than a ratio of medians).
    pub fn ratio(&self, base: &Row, label: &str) -> f64 {
        median(self.ratios(base, label))
    }

    /// The in-pass ratios to `base`'s rate for the same host, one per pass.
    pub fn ratios(&self, base: &Row, label: &str) -> Vec<f64> {
        let passes = |r: &Row| -> Vec<f64> {
            r.hosts
                .iter()
                .find(|(l, _, _)| l == label)
                .map(|(_, _, w)| w.iter().map(|w| w.rps).collect())
                .unwrap_or_default()
        };
        passes(self)
            .iter()
            .zip(passes(base))
            .filter(|(_, b)| *b > 0.0)
            .map(|(a, b)| a / b)
            .collect()
    }

    /// min–max of [`Row::ratios`].
    pub fn ratio_spread(&self, base: &Row, label: &str) -> (f64, f64) {
        let r = self.ratios(base, label);
        (
            r.iter().copied().fold(f64::INFINITY, f64::min),
            r.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    }

    pub fn validate_secs(&self) -> f64 {
        median(self.validate_secs.clone())
    }
    pub fn validate_peak_mib(&self) -> f64 {
        median(self.validate_peak_kib.iter().map(|k| *k as f64).collect()) / 1024.0
    }
    pub fn start_secs(&self) -> f64 {
        median(self.start_secs.clone())
    }
    pub fn rss_mib(&self) -> f64 {
        median(self.rss_kib.iter().map(|k| *k as f64).collect()) / 1024.0
    }
}

pub const LABELS: [&str; 4] = ["first", "middle", "last", "unknown"];

fn targets(n: usize, kind: Kind) -> Vec<(String, String)> {
    let mut t = vec![
        ("first".into(), scale::host(0)),
        ("middle".into(), scale::host(n / 2)),
        ("last".into(), scale::host(n.saturating_sub(1))),
        ("unknown".into(), scale::UNKNOWN_HOST.into()),
    ];
    t.truncate(kind.labels().len());
    t
}

/// The row's configuration for N.
fn write_config(s: &Settings, n: usize) -> PathBuf {
    let path = s.work_dir.join(format!("scale-{n}.yaml"));
    let text = match s.kind {
        Kind::Http => scale::config(n, UPSTREAM.parse().expect("addr")),
        Kind::Https => scale::config_https(
            &scale::Certs::cached(&s.cache_dir, n),
            UPSTREAM.parse().expect("addr"),
        ),
        Kind::Passthrough => scale::config_passthrough(n, TLS_UPSTREAM.parse().expect("addr")),
        Kind::Authz => scale::config_authz(n, UPSTREAM.parse().expect("addr")),
    };
    fs::write(&path, text).expect("write config");
    path
}

/// Runs the whole row; panics (with context) if the test bed does not work.
pub fn run(s: &Settings) -> Vec<Row> {
    fs::create_dir_all(s.work_dir.join("www")).expect("work dir");
    fs::create_dir_all(s.work_dir.join("tmp")).expect("work dir");
    fs::write(
        s.work_dir.join("www/hello.txt"),
        format!("{:<127}\n", "hello from the scale upstream"),
    )
    .expect("hello.txt");
    fs::write(s.work_dir.join("report.lua"), REPORT_LUA).expect("report.lua");
    // The TLS upstream's certificate: one for *.scale.test.
    let upstream_cert = scale::Certs::cached(&s.cache_dir, 1);
    fs::write(
        s.work_dir.join("upstream.crt"),
        format!("{}{}", upstream_cert.leaves[0].0, upstream_cert.ca_pem),
    )
    .expect("upstream.crt");
    fs::write(s.work_dir.join("upstream.key"), &upstream_cert.leaves[0].1).expect("upstream.key");
    let ns = NetNs::new("scale");
    // New connections by the thousand per second: every ephemeral port, and reuse of
    // those in TIME_WAIT (both per namespace).
    let _ = ns
        .cmd("sysctl")
        .args([
            "-qw",
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        ])
        .output();
    let _nginx = Proc(start_nginx(&ns, &s.work_dir));
    wait_http(&ns, &format!("http://{UPSTREAM}/hello.txt"), None, 200);

    let mut rows: Vec<Row> = s
        .counts
        .iter()
        .map(|&n| {
            let path = write_config(s, n);
            Row {
                n,
                hosts: targets(n, s.kind)
                    .into_iter()
                    .map(|(l, h)| (l, h, Vec::new()))
                    .collect(),
                config_bytes: fs::metadata(path).map(|m| m.len()).unwrap_or(0),
                ..Row::default()
            }
        })
        .collect();
    // `gateway validate` first, each N on its own (its peak RSS is the process's).
    for row in rows.iter_mut() {
        let config = s.work_dir.join(format!("scale-{}.yaml", row.n));
        for _ in 0..s.runs {
            let (secs, kib) = validate(&s.gateway_bin, &config);
            row.validate_secs.push(secs);
            row.validate_peak_kib.push(kib);
        }
    }
    // One gateway per N, all running, each on its own loopback address: measurements
    // of the same host for every N then follow each other within seconds, so a
    // neighbour's build slows them alike (ratios within a pass are what counts).
    let mut gateways = Vec::new();
    for (k, row) in rows.iter_mut().enumerate() {
        let config = s.work_dir.join(format!("scale-{}.yaml", row.n));
        let addr = format!("127.0.0.{}", 10 + k);
        let started = Instant::now();
        let gw = Proc(start_gateway(
            &ns,
            &s.gateway_bin,
            &config,
            &s.work_dir,
            &addr,
        ));
        wait_http(&ns, &format!("http://{addr}:15000/ready"), Some(&gw), 200);
        row.start_secs.push(started.elapsed().as_secs_f64());
        // Functional checks before measuring: the hosts route, the unknown one is 404.
        for (label, host, _) in &row.hosts {
            let want = match (label.as_str(), s.kind) {
                ("unknown", Kind::Authz) => 403,
                ("unknown", _) => 404,
                _ => 200,
            };
            let got = curl_code(&ns, s.kind, &addr, host);
            assert_eq!(
                got, want,
                "N={}: {host} answered {got}, wanted {want}",
                row.n
            );
        }
        gateways.push((gw, addr));
    }
    for pass in 0..s.runs {
        eprintln!("scale-bench: pass {}/{}", pass + 1, s.runs);
        for h in 0..s.kind.labels().len() {
            // Every other pass in the opposite order, so that a drift in the machine's
            // load does not always favour the same N.
            let mut order: Vec<usize> = (0..rows.len()).collect();
            if pass % 2 == 1 {
                order.reverse();
            }
            for k in order {
                let (row, addr) = (&mut rows[k], &gateways[k].1);
                let (_, host, results) = &mut row.hosts[h];
                // Warm-up (not measured): connections, pools, caches.
                if matches!(s.kind, Kind::Http | Kind::Authz) {
                    wrk(&ns, &s.work_dir, addr, host, 1);
                    results.push(wrk(&ns, &s.work_dir, addr, host, s.secs));
                } else {
                    tls_load(&ns, s, addr, host, 1);
                    results.push(tls_load(&ns, s, addr, host, s.secs));
                }
            }
        }
        for (row, (gw, _)) in rows.iter_mut().zip(&gateways) {
            row.rss_kib.push(rss_kib(gw.0.id()));
        }
    }
    rows
}

/// (wall seconds, peak RSS KiB) of `gateway validate --config <file>`.
fn validate(bin: &Path, config: &Path) -> (f64, u64) {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "SCALE_TIME %e %M"])
        .arg(bin)
        .arg("validate")
        .arg("--config")
        .arg(config)
        .output()
        .expect("run /usr/bin/time gateway validate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "gateway validate {} failed:\n{}{err}",
        config.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    let line = err
        .lines()
        .find_map(|l| l.strip_prefix("SCALE_TIME "))
        .unwrap_or_else(|| panic!("no time line in {err}"));
    let mut it = line.split_whitespace();
    let secs = it.next().and_then(|v| v.parse().ok()).expect("elapsed");
    let kib = it.next().and_then(|v| v.parse().ok()).expect("max rss");
    (secs, kib)
}

fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Kills its process on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pinned(ns: &NetNs, cpu: &str, program: &str) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", cpu, "ip", "netns", "exec", &ns.name, program]);
    c
}

/// One nginx process serving (`master_process off`): killed with the bench, it leaves no
/// worker behind (a master killed with SIGKILL orphans its workers).
fn start_nginx(ns: &NetNs, dir: &Path) -> Child {
    let d = dir.display();
    let conf = format!(
        "master_process off;\nuser root;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  default_type text/plain;\n  keepalive_requests 10000000;\n  keepalive_timeout 120s;\n\
           client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fcgi;\n\
           uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
           server {{ listen {UPSTREAM} backlog=4096; root {d}/www; }}\n\
           server {{ listen {TLS_UPSTREAM} ssl backlog=4096; root {d}/www;\n\
             ssl_certificate {d}/upstream.crt; ssl_certificate_key {d}/upstream.key;\n\
             ssl_session_cache shared:scale:16m; ssl_session_tickets on; }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    fs::write(&path, conf).expect("nginx.conf");
    let mut c = pinned(ns, LOAD_CPU, "nginx");
    c.arg("-c").arg(&path).arg("-p").arg(dir);
    c.stdin(Stdio::null()).stdout(Stdio::null());
    die_with_parent(&mut c);
    c.spawn().expect("spawn nginx (apt-get install nginx)")
}

fn start_gateway(ns: &NetNs, bin: &Path, config: &Path, dir: &Path, addr: &str) -> Child {
    let log = fs::File::create(dir.join(format!("gateway-{addr}.log"))).expect("gateway log");
    let mut c = pinned(ns, PROXY_CPU, bin.to_str().expect("utf-8 path"));
    c.arg("run")
        .arg("--config")
        .arg(config)
        .args(["--bind", addr, "--admin-addr", &format!("{addr}:15000")])
        .args(["--workers", "1"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log);
    die_with_parent(&mut c);
    c.spawn().expect("spawn gateway")
}

/// Polls `url` until it answers `code` (60 s at most; the gateway may have a big file
/// to load). Panics with the gateway's log if it died.
fn wait_http(ns: &NetNs, url: &str, gw: Option<&Proc>, code: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = ns
            .cmd("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
                url,
            ])
            .output()
            .expect("curl");
        if String::from_utf8_lossy(&out.stdout).trim() == code.to_string() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} not answering {code} within 60 s"
        );
        if gw.is_some() {
            std::thread::sleep(Duration::from_millis(20));
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn curl_code(ns: &NetNs, kind: Kind, addr: &str, host: &str) -> u16 {
    let mut c = ns.cmd("curl");
    c.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
    ]);
    match kind {
        Kind::Http | Kind::Authz => {
            c.arg("-H")
                .arg(format!("Host: {host}"))
                .arg(format!("http://{addr}:80/hello.txt"));
        }
        // The certificates are the bench's own: -k (tls-load does not check them either).
        Kind::Https | Kind::Passthrough => {
            c.arg("-k")
                .arg("--resolve")
                .arg(format!("{host}:443:{addr}"))
                .arg(format!("https://{host}/hello.txt"));
        }
    }
    let out = c.output().expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

const REPORT_LUA: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"err":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(99)))
end
"#;

fn wrk(ns: &NetNs, dir: &Path, addr: &str, host: &str, secs: u64) -> Wrk {
    let out = pinned(ns, LOAD_CPU, "wrk")
        .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency", "-s"])
        .arg(dir.join("report.lua"))
        .arg("-H")
        .arg(format!("Host: {host}"))
        .arg(format!("http://{addr}:80/hello.txt"))
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("WRKJSON "))
        .unwrap_or_else(|| {
            panic!(
                "no wrk result: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let v: serde_json::Value = serde_json::from_str(json).expect("wrk json");
    let requests = v["requests"].as_f64().unwrap_or(0.0);
    let secs = v["duration_us"].as_f64().unwrap_or(1.0) / 1e6;
    Wrk {
        rps: requests / secs,
        p99_us: v["p99_us"].as_f64().unwrap_or(0.0),
        non_2xx_or_err: v["err"].as_u64().unwrap_or(0),
    }
}

/// New TLS connections per second (tests/src/bin/tls-load.rs), one request each.
fn tls_load(ns: &NetNs, s: &Settings, addr: &str, host: &str, secs: u64) -> Wrk {
    let out = pinned(ns, LOAD_CPU, s.tls_load_bin.to_str().expect("utf-8 path"))
        .arg(format!("{addr}:443"))
        .arg(host)
        .args([TLS_CONNS, &secs.to_string()])
        // Passthrough: the handshake is nginx's; resumed TLS 1.2 sessions leave the
        // gateway's own per-connection work as what limits the rate.
        .args((s.kind == Kind::Passthrough).then_some("resume"))
        .output()
        .expect("run tls-load");
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("TLSLOAD "))
        .unwrap_or_else(|| {
            panic!(
                "no tls-load result: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let v: serde_json::Value = serde_json::from_str(json).expect("tls-load json");
    let ok = v["ok"].as_f64().unwrap_or(0.0);
    let errors = v["errors"].as_u64().unwrap_or(0);
    if errors > 0 {
        eprintln!(
            "scale-bench: {host} via {addr}: {errors} failed connections, first: {}",
            v["first_error"]
        );
    }
    Wrk {
        rps: ok / v["secs"].as_f64().unwrap_or(1.0).max(1e-3),
        p99_us: v["p99_us"].as_f64().unwrap_or(0.0),
        non_2xx_or_err: errors,
    }
}

/// The row as JSON (medians, and every pass).
pub fn to_json(rows: &[Row], s: &Settings) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let hosts: serde_json::Map<String, serde_json::Value> = r
                .hosts
                .iter()
                .map(|(l, h, w)| {
                    (
                        l.clone(),
                        serde_json::json!({
                            "host": h,
                            "rps": r.rps(l),
                            "ratio_to_smallest_n": rows.first().map(|b| r.ratio(b, l)),
                            "ratio_passes": rows.first().map(|b| r.ratios(b, l)),
                            "p99_us": r.p99_us(l),
                            "passes_rps": w.iter().map(|w| w.rps).collect::<Vec<_>>(),
                            "passes_p99_us": w.iter().map(|w| w.p99_us).collect::<Vec<_>>(),
                            "non_2xx_or_errors": w.iter().map(|w| w.non_2xx_or_err).collect::<Vec<_>>(),
                        }),
                    )
                })
                .collect();
            serde_json::json!({
                "n": r.n,
                "virtual_services": r.n,
                "config_bytes": r.config_bytes,
                "hosts": hosts,
                "gateway_rss_mib": r.rss_mib(),
                "gateway_start_secs": r.start_secs(),
                "validate_secs": r.validate_secs(),
                "validate_peak_mib": r.validate_peak_mib(),
            })
        })
        .collect();
    let (load, unit) = match s.kind {
        Kind::Http | Kind::Authz => ("wrk -t2 -c64", "requests/s (keep-alive)"),
        Kind::Https => (
            "tls-load, 64 clients",
            "new TLS connections/s (full handshake at the gateway, one request each)",
        ),
        Kind::Passthrough => (
            "tls-load, 64 clients",
            "new TLS connections/s (passthrough; the upstream nginx does the handshake, TLS 1.2 resumed)",
        ),
    };
    serde_json::json!({
        "kind": s.kind.name(),
        "unit": unit,
        "secs": s.secs,
        "runs": s.runs,
        "topology": format!("netns; nginx + {load} on CPU 0, gateway (--workers 1) on CPU 1"),
        "rows": rows,
    })
}

/// The row as a Markdown table, with each rps as a share of the smallest N's.
pub fn to_markdown(rows: &[Row], s: &Settings) -> String {
    let (title, what, n_col, unit) = match s.kind {
        Kind::Http => (
            "Routing scale: N VirtualServices (one host, two routes each)",
            "wrk -t2 -c64 (keep-alive)",
            "N VS",
            "rps",
        ),
        Kind::Https => (
            "HTTPS scale: N HTTPS servers on one port, each with its own certificate (new TLS handshakes)",
            "tests/src/bin/tls-load.rs, 64 clients, a new connection and full handshake (ECDSA P-256, no resumption) per request",
            "N servers",
            "conn/s",
        ),
        Kind::Authz => (
            "AuthorizationPolicy scale: N VirtualServices and 2N policies (an ALLOW and a DENY per host)",
            "wrk -t2 -c64 (keep-alive); the unknown host is denied (403)",
            "N hosts",
            "rps",
        ),
        Kind::Passthrough => (
            "TLS passthrough scale: N SNI routes on one port (new connections)",
            "tests/src/bin/tls-load.rs, 64 clients, a new connection per request, TLS terminated by the nginx upstream (TLS 1.2 sessions resumed, so that nginx's handshakes do not limit the rate)",
            "N routes",
            "conn/s",
        ),
    };
    let labels = s.kind.labels();
    let mut md = format!(
        "\n### {title}\n\n\
         {what} for {}s per host, {} passes: median {unit}, and (**×**) the median over passes of {unit} / {unit} at the smallest N in the same pass, then the lowest–highest of those per-pass ratios (a host is measured for every N back to back, in alternating order). nginx upstream; every gateway with one tokio worker, all on the same CPU.\n\n",
        s.secs, s.runs
    );
    md.push_str(&format!("| {n_col} |"));
    for l in labels {
        let l = match (*l, s.kind) {
            ("unknown", Kind::Authz) => "unknown (403)",
            ("unknown", _) => "unknown (404)",
            _ => l,
        };
        md.push_str(&format!(" {unit} {l} |"));
    }
    md.push_str(" p99 first / last | gateway RSS | start to ready | `gateway validate` |\n|---:|");
    for _ in labels {
        md.push_str("---:|");
    }
    md.push_str("---:|---:|---:|---:|\n");
    let base = rows.first();
    for r in rows {
        let cell = |l: &str| {
            let rps = r.rps(l);
            match base {
                Some(b) if !std::ptr::eq(b, r) => {
                    let (lo, hi) = r.ratio_spread(b, l);
                    format!("{:.0} (**{:.2}×**, {lo:.2}–{hi:.2})", rps, r.ratio(b, l))
                }
                _ => format!("{rps:.0}"),
            }
        };
        md.push_str(&format!("| {} |", r.n));
        for l in labels {
            md.push_str(&format!(" {} |", cell(l)));
        }
        md.push_str(&format!(
            " {:.2} / {:.2} ms | {:.1} MiB | {:.2} s | {:.2} s, {:.0} MiB peak |\n",
            r.p99_us("first") / 1000.0,
            r.p99_us("last") / 1000.0,
            r.rss_mib(),
            r.start_secs(),
            r.validate_secs(),
            r.validate_peak_mib(),
        ));
    }
    md
}

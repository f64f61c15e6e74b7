//! Access logs end to end, against the real binary: the walkthrough's Telemetry resource
//! (TEXT and JSON, one request -> one line, parsed back field by field), selection by
//! the gateway's labels, filters, spliced TCP flows logged with the kernel's byte
//! counts, a sink that can't keep up, and aya-log records from the kernel program.
mod http_common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use gateway_tests::{
    backends::{demo_ca, tls_app},
    gateway::GatewayProc,
    netns::{NetNs, privileged},
};
use http_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tele(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/telemetry")
        .join(name)
}

fn walkthrough_configs() -> Vec<PathBuf> {
    vec![
        config("coolstore-gateway.yaml"),
        config("secrets.yaml"),
        config("service-entries.yaml"),
    ]
}

/// Starts the gateway with `args` and `--internal-address 127.0.0.0/8`: curl on the
/// namespace's loopback is then internal and keeps the `x-request-id` the tests look
/// their lines up by (an external client's id is replaced, as Envoy does at an edge).
fn start(ns: &NetNs, configs: &[PathBuf], args: &[&str]) -> GatewayProc {
    let refs: Vec<&Path> = configs.iter().map(PathBuf::as_path).collect();
    let mut args = args.to_vec();
    args.extend_from_slice(&["--internal-address", "127.0.0.0/8"]);
    GatewayProc::start(ns, &refs, &args)
}

/// What one curl did, from curl's own point of view.
struct Fetched {
    status: u16,
    /// curl's `local_ip:local_port`: the gateway's DOWNSTREAM_REMOTE_ADDRESS.
    local: String,
    /// Body bytes received: the gateway's BYTES_SENT.
    size: u64,
    headers: String,
    body: String,
}

fn fetch(ns: &NetNs, args: &[&str]) -> Fetched {
    let dir = std::env::temp_dir().join(format!("{}-curl", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let (h, b) = (dir.join("headers"), dir.join("body"));
    let out = ns
        .cmd("curl")
        .args(["-sS", "--max-time", "20", "-D"])
        .arg(&h)
        .arg("-o")
        .arg(&b)
        .args([
            "-w",
            "%{http_code} %{local_ip}:%{local_port} %{size_download}",
        ])
        .args(args)
        .output()
        .expect("curl");
    let w = String::from_utf8_lossy(&out.stdout).to_string();
    let parts: Vec<&str> = w.split_whitespace().collect();
    assert_eq!(
        parts.len(),
        3,
        "curl -w: {w:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Fetched {
        status: parts[0].parse().unwrap(),
        local: parts[1].to_string(),
        size: parts[2].parse().unwrap(),
        headers: std::fs::read_to_string(&h).unwrap_or_default(),
        body: std::fs::read_to_string(&b).unwrap_or_default(),
    }
}

impl Fetched {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// The gateway's log lines that `is_line` accepts and that contain `needle`; waits up
/// to 5 s for at least `min` of them.
fn lines_with(
    gw: &GatewayProc,
    needle: &str,
    min: usize,
    is_line: fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found: Vec<String> = gw
            .log()
            .lines()
            .filter(|l| is_line(l) && l.contains(needle))
            .map(str::to_string)
            .collect();
        if found.len() >= min || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_text(l: &str) -> bool {
    l.starts_with("[20")
}

fn is_json(l: &str) -> bool {
    l.starts_with('{')
}

/// Splits Istio's TEXT line into its 24 fields: `[..]` and `".."` are one field each;
/// the quoted request line is split into method, path, protocol.
fn text_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line.trim_end_matches('\n');
    while !rest.is_empty() {
        rest = rest.trim_start();
        let (field, tail) = if let Some(r) = rest.strip_prefix('[') {
            let i = r.find(']').expect("]");
            (r[..i].to_string(), &r[i + 1..])
        } else if let Some(r) = rest.strip_prefix('"') {
            let i = r.find('"').expect("closing quote");
            (r[..i].to_string(), &r[i + 1..])
        } else {
            let i = rest.find(' ').unwrap_or(rest.len());
            (rest[..i].to_string(), &rest[i..])
        };
        out.push(field);
        rest = tail;
    }
    // The request line "%REQ(:METHOD)% %REQ(..PATH)% %PROTOCOL%" is one quoted field.
    let req: Vec<String> = out[1].split(' ').map(str::to_string).collect();
    assert_eq!(req.len(), 3, "request line {:?} in {line}", out[1]);
    out.splice(1..2, req);
    out
}

const TEXT_KEYS: [&str; 24] = [
    "start_time",
    "method",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "response_code_details",
    "connection_termination_details",
    "upstream_transport_failure_reason",
    "bytes_received",
    "bytes_sent",
    "duration",
    "upstream_service_time",
    "x_forwarded_for",
    "user_agent",
    "request_id",
    "authority",
    "upstream_host",
    "upstream_cluster",
    "upstream_local_address",
    "downstream_local_address",
    "downstream_remote_address",
    "requested_server_name",
    "route_name",
];

/// A TEXT line as key -> value (the JSON keys), `-` kept as written.
fn parse_text(line: &str) -> serde_json::Map<String, serde_json::Value> {
    let f = text_fields(line);
    assert_eq!(f.len(), TEXT_KEYS.len(), "fields of {line:?}: {f:?}");
    TEXT_KEYS
        .iter()
        .zip(f)
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v)))
        .collect()
}

fn rfc3339_millis(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Checks one logged HTTP request against what the client saw. `s(key)` is the field
/// as a string (`-` for absent in TEXT, null in JSON is mapped to `-` too).
fn check_http_fields(
    rec: &serde_json::Map<String, serde_json::Value>,
    f: &Fetched,
    id: &str,
    before: SystemTime,
    after: SystemTime,
    port: u16,
) {
    let s = |k: &str| match &rec[k] {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let start = s("start_time");
    assert!(
        start.len() == 24 && start.ends_with('Z') && &start[10..11] == "T" && &start[19..20] == ".",
        "START_TIME {start}"
    );
    // ISO-8601 UTC with a fixed width sorts like the instants it names.
    assert!(
        rfc3339_millis(before)[..23] <= start[..23] && start[..23] <= rfc3339_millis(after)[..23],
        "{start} not within the request"
    );
    assert_eq!(s("method"), "GET");
    assert_eq!(s("path"), "/api/catalog?tele=1");
    assert_eq!(s("protocol"), "HTTP/1.1");
    assert_eq!(s("response_code"), f.status.to_string());
    assert_eq!(s("response_code"), "200");
    assert_eq!(s("response_flags"), "-");
    assert_eq!(s("response_code_details"), "via_upstream");
    assert_eq!(s("connection_termination_details"), "-");
    assert_eq!(s("upstream_transport_failure_reason"), "-");
    assert_eq!(s("bytes_received"), "0");
    assert_eq!(s("bytes_sent"), f.size.to_string());
    assert!(s("duration").parse::<u64>().is_ok(), "{rec:?}");
    assert_eq!(
        Some(s("upstream_service_time")),
        f.header("x-envoy-upstream-service-time"),
        "upstream service time in the log and the header"
    );
    // Envoy logs the x-forwarded-for it sends: the client's address appended.
    assert_eq!(s("x_forwarded_for"), "127.0.0.1");
    assert_eq!(s("user_agent"), "tele-agent/1.0");
    assert_eq!(s("request_id"), id);
    assert_eq!(s("authority"), "webapp.istioinaction.io");
    assert_eq!(s("upstream_host"), "127.0.0.1:18080");
    assert_eq!(
        s("upstream_cluster"),
        "outbound|80||webapp.default.svc.cluster.local"
    );
    // The backend echoes the peer it saw: the gateway's end of the upstream connection.
    let echo: serde_json::Value =
        serde_json::from_str(f.body.lines().nth(1).expect("echo JSON")).expect("echo JSON");
    assert_eq!(s("upstream_local_address"), echo["peer"].as_str().unwrap());
    assert_eq!(s("downstream_local_address"), format!("127.0.0.1:{port}"));
    assert_eq!(s("downstream_remote_address"), f.local);
    // The walkthrough's VirtualServices name no route: Envoy logs `-`.
    assert_eq!(s("route_name"), "-");
}

#[test]
fn telemetry_walkthrough_access_log_text_and_json() {
    if !privileged("telemetry_walkthrough_access_log_text_and_json") {
        return;
    }
    let ns = NetNs::new("tele-log");
    let _b = start_backends(
        &ns,
        vec![App::Http(18080, "webapp"), App::Http(18081, "catalog")],
    );
    let mut configs = walkthrough_configs();
    configs.push(config("telemetry.yaml"));
    let req = |id: &str| {
        vec![
            "http://localhost/api/catalog?tele=1".to_string(),
            "-H".into(),
            "Host: webapp.istioinaction.io".into(),
            "-H".into(),
            format!("x-request-id: {id}"),
            "-A".into(),
            "tele-agent/1.0".into(),
        ]
    };
    let run = |args: &[String]| {
        let before = SystemTime::now();
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let f = fetch(&ns, &a);
        (f, before, SystemTime::now())
    };

    // TEXT (Istio's default format), turned on by the walkthrough's Telemetry alone.
    {
        let gw = start(&ns, &configs, &["--splice", "userspace"]);
        assert!(
            gw.log()
                .contains("access log on (Telemetry istio-system/ingress-gateway)"),
            "{}",
            gw.log()
        );
        let (f, before, after) = run(&req("tele-text-1"));
        assert_eq!(f.status, 200);
        let lines = lines_with(&gw, "tele-text-1", 1, is_text);
        assert_eq!(lines.len(), 1, "exactly one access-log line:\n{}", gw.log());
        check_http_fields(&parse_text(&lines[0]), &f, "tele-text-1", before, after, 80);
        // Another request, another line; an unknown host is logged with NR.
        let f = fetch(
            &ns,
            &[
                "http://localhost/x",
                "-H",
                "Host: nope.example",
                "-H",
                "x-request-id: tele-text-nr",
            ],
        );
        assert_eq!(f.status, 404);
        let nr = lines_with(&gw, "tele-text-nr", 1, is_text);
        assert_eq!(nr.len(), 1, "{}", gw.log());
        let rec = parse_text(&nr[0]);
        assert_eq!(
            (
                rec["response_code"].as_str(),
                rec["response_flags"].as_str()
            ),
            (Some("404"), Some("NR"))
        );
        assert_eq!(rec["upstream_cluster"], "-");
        assert_eq!(rec["response_code_details"], "route_not_found");
    }

    // JSON (MeshConfig accessLogEncoding), same Telemetry; and HTTPS shows the SNI.
    {
        let gw = start(
            &ns,
            &configs,
            &[
                "--splice",
                "userspace",
                "--mesh-config",
                tele("mesh-json.yaml").to_str().unwrap(),
            ],
        );
        let (f, before, after) = run(&req("tele-json-1"));
        assert_eq!(f.status, 200);
        let lines = lines_with(&gw, "tele-json-1", 1, is_json);
        assert_eq!(lines.len(), 1, "exactly one access-log line:\n{}", gw.log());
        let v: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
        let rec = v.as_object().unwrap();
        let mut keys: Vec<&str> = rec.keys().map(String::as_str).collect();
        keys.sort();
        let mut want = TEXT_KEYS.to_vec();
        want.sort();
        assert_eq!(keys, want, "Istio's JSON keys");
        // Envoy's JSON keeps numbers numbers and absent values null.
        assert_eq!(rec["response_code"], 200);
        assert_eq!(rec["bytes_sent"], f.size);
        assert_eq!(rec["requested_server_name"], serde_json::Value::Null);
        check_http_fields(rec, &f, "tele-json-1", before, after, 80);

        let ca = demo_ca();
        let f = fetch(
            &ns,
            &[
                "--cacert",
                ca.to_str().unwrap(),
                "--resolve",
                "webapp.istioinaction.io:443:127.0.0.1",
                "https://webapp.istioinaction.io/api/catalog",
                "-H",
                "x-request-id: tele-json-tls",
            ],
        );
        assert_eq!(f.status, 200);
        let lines = lines_with(&gw, "tele-json-tls", 1, is_json);
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["requested_server_name"], "webapp.istioinaction.io");
        assert_eq!(v["downstream_local_address"], "127.0.0.1:443");
    }

    // The Telemetry selects app=istio-ingressgateway: a gateway with other labels (still
    // selected by the Gateway's `istio: ingressgateway`) logs nothing.
    {
        let gw = start(
            &ns,
            &configs,
            &[
                "--splice",
                "userspace",
                "--label",
                "istio=ingressgateway",
                "--label",
                "app=edge",
            ],
        );
        let (f, _, _) = run(&req("tele-other-1"));
        assert_eq!(f.status, 200);
        std::thread::sleep(Duration::from_millis(300));
        let log = gw.log();
        assert!(log.contains("access logs off"), "{log}");
        assert!(
            lines_with(&gw, "tele-other-1", 1, is_text).is_empty(),
            "{log}"
        );
    }

    // A mesh-wide Telemetry with a filter: only responses >= 400 are logged.
    {
        let mut c = walkthrough_configs();
        c.push(tele("telemetry-errors-only.yaml"));
        let gw = start(&ns, &c, &["--splice", "userspace"]);
        let (ok, _, _) = run(&req("tele-filter-ok"));
        assert_eq!(ok.status, 200);
        let nr = fetch(
            &ns,
            &[
                "http://localhost/",
                "-H",
                "Host: nope.example",
                "-H",
                "x-request-id: tele-filter-nr",
            ],
        );
        assert_eq!(nr.status, 404);
        assert_eq!(
            lines_with(&gw, "tele-filter-nr", 1, is_text).len(),
            1,
            "{}",
            gw.log()
        );
        assert!(
            lines_with(&gw, "tele-filter-ok", 0, is_text).is_empty(),
            "{}",
            gw.log()
        );
    }
}

/// An upstream that reads everything the client sends, then answers with `reply` bytes
/// and closes: the two directions carry different amounts, so a swap would show.
async fn sink_then_reply(addr: SocketAddr, reply: usize) -> tokio::task::JoinHandle<()> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind upstream");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let out = vec![7u8; reply];
                let _ = s.write_all(&out).await;
                let _ = s.shutdown().await;
            });
        }
    })
}

/// Sends `len` bytes, half-closes, reads to EOF; returns the bytes received.
async fn send_and_drain(to: SocketAddr, len: usize) -> u64 {
    let s = tokio::net::TcpStream::connect(to).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![1u8; 256 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            w.write_all(&chunk[..n]).await.expect("write");
            left -= n;
        }
        w.shutdown().await.expect("shutdown");
        w
    });
    let mut got = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), r.read(&mut buf))
            .await
            .expect("reply in time")
            .expect("read");
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    drop(writer.await.expect("writer"));
    got
}

fn metric(prom: &str, name: &str) -> u64 {
    prom.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.trim().parse::<u64>().ok())
        })
        .unwrap_or_else(|| panic!("{name} missing in\n{prom}"))
}

#[test]
fn telemetry_spliced_tcp_flow_logs_kernel_byte_counts() {
    if !privileged("telemetry_spliced_tcp_flow_logs_kernel_byte_counts") {
        return;
    }
    let ns = NetNs::new("tele-tcp");
    let rt = ns.runtime();
    const SENT: usize = 32 << 20;
    const REPLY: usize = (1 << 20) + 7;
    let _up = NetNs::block_on(
        &rt,
        sink_then_reply("127.0.0.1:2701".parse().unwrap(), REPLY),
    );
    let _sni = NetNs::block_on(&rt, async {
        let (cert, key) = gateway_tests::backends::demo_cert("simple-sni-1.istioinaction.io");
        tls_app("127.0.0.1:18443".parse().unwrap(), "sni-1", &cert, &key).await
    });
    let gw = GatewayProc::start(
        &ns,
        &[
            &config("tcp-echo.yaml"),
            &config("sni-passthrough.yaml"),
            &config("service-entries.yaml"),
        ],
        &[
            "--splice",
            "ebpf",
            "--mesh-config",
            tele("mesh-stdout.yaml").to_str().unwrap(),
        ],
    );
    let got = NetNs::block_on(
        &rt,
        send_and_drain("127.0.0.1:31400".parse().unwrap(), SENT),
    );
    assert_eq!(got, REPLY as u64);
    let lines = lines_with(&gw, "outbound|2701||", 1, is_text);
    assert_eq!(lines.len(), 1, "one line for the flow:\n{}", gw.log());
    let rec = parse_text(&lines[0]);
    assert_eq!(
        (
            rec["method"].as_str(),
            rec["path"].as_str(),
            rec["protocol"].as_str()
        ),
        (Some("-"), Some("-"), Some("-"))
    );
    assert!(lines[0].contains("\"- - -\""), "{}", lines[0]);
    assert_eq!(rec["response_code"], "0");
    assert_eq!(
        rec["bytes_received"],
        SENT.to_string(),
        "what the client sent"
    );
    assert_eq!(
        rec["bytes_sent"],
        REPLY.to_string(),
        "what the client received"
    );
    assert_eq!(rec["upstream_host"], "127.0.0.1:2701");
    assert_eq!(
        rec["upstream_cluster"],
        "outbound|2701||tcp-echo-service.default.svc.cluster.local"
    );
    assert_eq!(rec["downstream_local_address"], "127.0.0.1:31400");
    assert_eq!(rec["requested_server_name"], "-");
    // Spliced in the kernel: the counts above are the kernel's per-flow counters, plus
    // what userspace moved while a direction was paused (its reader a budget behind):
    // every byte exactly once.
    let prom = gw.admin_get("/stats/prometheus");
    assert_eq!(
        metric(&prom, "gateway_splice_userspace_bytes_total")
            + metric(&prom, "gateway_splice_redirected_bytes_total"),
        (SENT + REPLY) as u64
    );
    assert!(metric(&prom, "gateway_splice_redirected_bytes_total") >= SENT as u64 / 2);

    // TLS passthrough: the SNI is the REQUESTED_SERVER_NAME.
    let ca = demo_ca();
    let out = ns
        .cmd("curl")
        .args(["-sS", "--max-time", "10", "--cacert", ca.to_str().unwrap()])
        .args(["--resolve", "simple-sni-1.istioinaction.io:31400:127.0.0.1"])
        .arg("https://simple-sni-1.istioinaction.io:31400/")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = lines_with(&gw, "simple-sni-1.istioinaction.io", 1, is_text);
    assert_eq!(lines.len(), 1, "{}", gw.log());
    let rec = parse_text(&lines[0]);
    assert_eq!(
        rec["requested_server_name"],
        "simple-sni-1.istioinaction.io"
    );
    assert!(
        rec["bytes_received"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 200,
        "the ClientHello at least"
    );
    assert!(rec["bytes_sent"].as_str().unwrap().parse::<u64>().unwrap() > 0);
}

#[test]
fn telemetry_slow_sink_drops_lines_not_traffic() {
    if !privileged("telemetry_slow_sink_drops_lines_not_traffic") {
        return;
    }
    let ns = NetNs::new("tele-slow");
    let _b = start_backends(
        &ns,
        vec![App::Http(18080, "webapp"), App::Http(18081, "catalog")],
    );
    // A FIFO nobody opens for reading: the writer blocks forever opening it.
    let dir = scratch(&ns);
    let fifo = dir.join("access.fifo");
    let _ = std::fs::remove_file(&fifo);
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    let mesh = dir.join("mesh.yaml");
    std::fs::write(&mesh, format!("accessLogFile: {}\n", fifo.display())).unwrap();
    let gw = start(
        &ns,
        &walkthrough_configs(),
        &[
            "--splice",
            "userspace",
            "--mesh-config",
            mesh.to_str().unwrap(),
            "--access-log-buffer",
            "8",
        ],
    );
    let t = Instant::now();
    for _ in 0..40 {
        let r = curl(
            &ns,
            &["http://localhost/", "-H", "Host: webapp.istioinaction.io"],
        );
        assert_eq!(r.status, 200);
    }
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "traffic was slowed: {:?}",
        t.elapsed()
    );
    let prom = gw.admin_get("/stats/prometheus");
    let file = fifo.display().to_string();
    assert_eq!(
        metric(
            &prom,
            &format!("gateway_access_log_dropped_total{{file=\"{file}\"}}")
        ),
        32,
        "{prom}"
    );
    assert_eq!(
        metric(
            &prom,
            &format!("gateway_access_log_written_total{{file=\"{file}\"}}")
        ),
        0
    );
}

/// Writes `n` bytes and reads them back before half-closing: the client's FIN comes
/// only after the flow is in the sockhash, so it is spliced in the kernel.
async fn echo_in_kernel(to: SocketAddr, n: usize) {
    let mut s = tokio::net::TcpStream::connect(to).await.expect("connect");
    s.write_all(&vec![3u8; n]).await.expect("write");
    let mut got = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("read");
    s.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.expect("eof");
    assert!(rest.is_empty());
}

#[test]
fn telemetry_kernel_aya_log_reaches_the_gateway_log() {
    if !privileged("telemetry_kernel_aya_log_reaches_the_gateway_log") {
        return;
    }
    let ns = NetNs::new("tele-ayalog");
    let rt = ns.runtime();
    let _echo = NetNs::block_on(
        &rt,
        gateway_tests::backends::tcp_echo("127.0.0.1:2701".parse().unwrap()),
    )
    .expect("echo backend");
    let gw = GatewayProc::start(
        &ns,
        &[&config("tcp-echo.yaml"), &config("service-entries.yaml")],
        &["--splice", "ebpf"],
    );
    let post_to = |path: &str, q: &str| {
        let out = ns
            .cmd("curl")
            .args(["-sS", "-X", "POST"])
            .arg(format!("http://{}{path}?{q}", gw.admin))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let post = |q: &str| post_to("/debug/kernel_log", q);
    let to: SocketAddr = "127.0.0.1:31400".parse().unwrap();
    // The flow's closing line is written just after the client saw its EOF: poll for it.
    let flows_in_kernel = |n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let log = gw.log();
            if log.matches("in_kernel=true").count() >= n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "flow not spliced in the kernel:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Off by default: a spliced flow leaves no per-redirect record.
    NetNs::block_on(&rt, echo_in_kernel(to, 1000));
    flows_in_kernel(1);
    // "No record" is only worth checking once a record made after that flow has come
    // through the same ring buffer (read in order): a redirect the kernel is made to
    // refuse always logs a warning. So: a flow spliced in the kernel, redirects made to
    // fail, one more write (the flow is reset), and that warning in the log.
    let marker = NetNs::block_on(&rt, async move {
        let mut s = tokio::net::TcpStream::connect(to).await.expect("connect");
        s.write_all(b"before\n").await.expect("write");
        let mut echo = [0u8; 7];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut echo))
            .await
            .expect("echo in time")
            .expect("read");
        s
    });
    assert!(post_to("/debug/splice/fault", "redirect=fail").contains("redirect=fail"));
    let reset = NetNs::block_on(&rt, async move {
        let mut s = marker;
        let _ = s.write_all(b"after\n").await;
        let mut one = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), s.read(&mut one))
            .await
            .map(|r| r.map_err(|e| e.kind()))
    });
    assert!(post_to("/debug/splice/fault", "redirect=off").contains("redirect=off"));
    assert_eq!(
        reset,
        Ok(Err(std::io::ErrorKind::ConnectionReset)),
        "the refused redirect resets the flow"
    );
    let warned = lines_with(&gw, "splice: redirect failed cookie=", 1, |l| {
        l.contains(" WARN ")
    });
    assert!(
        !warned.is_empty(),
        "no record of the refused redirect:\n{}",
        gw.log()
    );
    assert!(!gw.log().contains("splice: redirected"), "{}", gw.log());
    // On: the kernel program's aya-log record appears in the gateway's log, with its level.
    assert!(post("redirects=on").contains("\"redirects\":true"));
    let in_kernel_before = gw.log().matches("in_kernel=true").count();
    NetNs::block_on(&rt, echo_in_kernel(to, 1000));
    let found = lines_with(&gw, "splice: redirected cookie=", 1, |l| {
        l.contains(" INFO ")
    });
    flows_in_kernel(in_kernel_before + 1);
    assert!(
        !found.is_empty(),
        "no aya-log record in the gateway log:\n{}",
        gw.log()
    );
    assert!(found[0].contains("len="), "{}", found[0]);
    assert!(post("redirects=off").contains("\"redirects\":false"));
    assert!(post("redirects=maybe").contains("usage"));
}

/// `%ROUTE_NAME%` as Istio sets it (`TranslateRoute`, pilot/pkg/networking/core/route/
/// route.go): the VirtualService's `http[].name`, plus `.<match name>` when the match
/// block that matched is named, `-` for an unnamed route; and the same names on the
/// routes of `/config_dump` (what `proxy-config route -o json` prints). Before: every
/// route was logged as an invented `<vs>.<index>`.
#[test]
fn telemetry_route_name_as_istio_sets_it() {
    if !privileged("telemetry_route_name_as_istio_sets_it") {
        return;
    }
    let ns = NetNs::new("tele-route");
    let _b = start_backends(&ns, vec![App::Http(18080, "webapp")]);
    let configs = vec![tele("named-routes.yaml"), config("telemetry.yaml")];
    let gw = start(&ns, &configs, &["--splice", "userspace"]);
    for (path, id, want) in [
        ("/v1/a", "route-v1", "api.v1"),
        ("/v2/a", "route-v2", "api"),
        ("/m", "route-m", ".only-match"),
        ("/anon", "route-anon", "-"),
    ] {
        let f = fetch(
            &ns,
            &[
                &format!("http://localhost:8088{path}"),
                "-H",
                "Host: named.example",
                "-H",
                &format!("x-request-id: {id}"),
            ],
        );
        assert_eq!(f.status, 200, "{path}");
        let lines = lines_with(&gw, id, 1, is_text);
        assert_eq!(lines.len(), 1, "{id}:\n{}", gw.log());
        assert_eq!(
            parse_text(&lines[0])["route_name"],
            want,
            "{path}: {}",
            lines[0]
        );
    }
    let dump = gw.admin_json("/config_dump");
    let routes = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["@type"]
                .as_str()
                .unwrap_or_default()
                .ends_with("RoutesConfigDump")
        })
        .expect("RoutesConfigDump");
    let rc = routes["dynamic_route_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route_config"]["name"] == "http.8088")
        .expect("http.8088");
    let names: Vec<serde_json::Value> = rc["route_config"]["virtual_hosts"][0]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(
        names,
        [
            serde_json::json!("api.v1"),
            serde_json::json!("api"),
            serde_json::json!(".only-match"),
            serde_json::Value::Null
        ],
        "{rc:#}"
    );
}

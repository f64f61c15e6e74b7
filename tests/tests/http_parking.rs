//! Idle HTTP/1.1 keep-alive connections are parked without hyper's buffers (issue 12:
//! idle keep-alive memory ≤ 4 KiB per connection), and a parked connection is still
//! the same keep-alive connection to its client: the next request, a pipelined pair and
//! a request sent a byte at a time are answered on it, in order, nothing lost.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::GatewayProc,
    netns::{NetNs, privileged},
    xdpbench::prom_value,
};

const CONFIG: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*\"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hello, namespace: istio-system}
spec:
  hosts: [\"*\"]
  gateways: [gw]
  http:
  - directResponse: {status: 200, body: {string: \"hello\\n\"}}
";

/// Connections held idle for the memory check.
const IDLE: usize = 500;

/// The config in a file of this test's own (`tag`): tests run in parallel.
fn config_file(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("gw-parking-{tag}-{}.yaml", std::process::id()));
    std::fs::write(&p, CONFIG).expect("write config");
    p
}

/// Reads one `200 hello\n` response (head and its 6-byte body) from `s`.
fn read_response(s: &mut TcpStream) -> String {
    read_responses(s, 1).remove(0)
}

/// Reads `k` `200 hello\n` responses from `s` (pipelined answers may come in one
/// segment); no byte may follow the last one.
fn read_responses(s: &mut TcpStream, k: usize) -> Vec<String> {
    let mut got = Vec::new();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        while out.len() < k
            && let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
            && got.len() >= end + 4 + 6
        {
            let rest = got.split_off(end + 4 + 6);
            out.push(String::from_utf8_lossy(&got).into_owned());
            got = rest;
        }
        if out.len() == k {
            assert!(got.is_empty(), "bytes past {k} response(s): {got:?}");
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "no {k} full response(s) in 10 s: {out:?} {got:?}"
        );
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

/// One request in one write (a request written in pieces would wait on the client's
/// Nagle for the gateway's delayed ACK), then its response.
fn ask(s: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: parking.test\r\n\r\n");
    s.write_all(req.as_bytes()).expect("write");
    read_response(s)
}

fn metric(gw: &GatewayProc, series: &str) -> u64 {
    prom_value(&gw.admin_get("/stats/prometheus"), series)
}

/// Polls until `series` reads `want`, or fails after `within`.
fn wait_metric(gw: &GatewayProc, series: &str, want: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let v = metric(gw, series);
        if v == want {
            return;
        }
        assert!(Instant::now() < deadline, "{series} = {v}, want {want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn idle_keepalive_connections_park_small_and_resume() {
    if !privileged("idle_keepalive_connections_park_small_and_resume") {
        return;
    }
    let ns = NetNs::new("park");
    let cfg = config_file("park");
    let gw = GatewayProc::start(
        &ns,
        &[&cfg],
        &["--status-port", "off", "--prometheus-port", "off"],
    );
    // Warm up (allocator arenas, runtime, the route) with connections that come and go.
    ns.run(|| {
        for _ in 0..100 {
            let mut s = TcpStream::connect("127.0.0.1:80").unwrap();
            assert!(ask(&mut s, "/warm").starts_with("HTTP/1.1 200"));
        }
    });
    wait_metric(
        &gw,
        "gateway_downstream_cx_active{listener=\"0.0.0.0_80\"}",
        0,
        Duration::from_secs(10),
    );
    let before = metric(&gw, "gateway_heap_in_use_bytes");

    // IDLE connections, one request each, then held: each is parked about a second
    // after its response.
    // (Sockets made in the namespace stay in it whichever thread uses them.)
    let t = Instant::now();
    let mut conns = ns.run(|| {
        (0..IDLE)
            .map(|i| {
                let mut s = TcpStream::connect("127.0.0.1:80").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.set_nodelay(true).unwrap();
                let r = ask(&mut s, &format!("/first/{i}"));
                assert!(r.starts_with("HTTP/1.1 200"), "{r}");
                s
            })
            .collect::<Vec<_>>()
    });
    wait_metric(
        &gw,
        "gateway_http_parked_connections",
        IDLE as u64,
        Duration::from_secs(15),
    );
    let after = metric(&gw, "gateway_heap_in_use_bytes");
    eprintln!("opened and parked in {:?}", t.elapsed());
    let per_conn = after.saturating_sub(before) / IDLE as u64;
    eprintln!(
        "{IDLE} parked keep-alive connections: {per_conn} B of heap each ({before} -> {after})"
    );
    assert!(
        per_conn <= 4096,
        "a parked keep-alive connection holds {per_conn} B of heap (want <= 4 KiB)"
    );

    // Every parked connection answers its next request.
    eprintln!("second round at {:?}", t.elapsed());
    for (i, s) in conns.iter_mut().enumerate() {
        let r = ask(s, &format!("/second/{i}"));
        assert!(r.starts_with("HTTP/1.1 200"), "connection {i}: {r}");
        assert!(!r.to_ascii_lowercase().contains("connection: close"), "{r}");
    }
    assert!(metric(&gw, "gateway_http_parks_total") >= IDLE as u64);

    eprintln!("second round done at {:?}", t.elapsed());
    // Once parked again: a pipelined pair in one write, both answered in order.
    wait_metric(
        &gw,
        "gateway_http_parked_connections",
        IDLE as u64,
        Duration::from_secs(15),
    );
    eprintln!("pipelined at {:?}", t.elapsed());
    let s = &mut conns[0];
    s.write_all(
        b"GET /p1 HTTP/1.1\r\nHost: parking.test\r\n\r\nGET /p2 HTTP/1.1\r\nHost: parking.test\r\n\r\n",
    )
    .unwrap();
    for r in read_responses(s, 2) {
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    // And a request trickled in a byte at a time into a parked connection.
    wait_metric(
        &gw,
        "gateway_http_parked_connections",
        IDLE as u64,
        Duration::from_secs(15),
    );
    let s = &mut conns[1];
    for b in b"GET /slow HTTP/1.1\r\nHost: parking.test\r\n\r\n" {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(read_response(s).starts_with("HTTP/1.1 200"));
    let log = gw.wait_log(Duration::from_secs(5), |l| l.contains("path=/slow"));
    for path in ["/p1 ", "/p2 ", "/slow "] {
        assert!(
            log.contains(&format!("path={path}")),
            "no {path} in:\n{log}"
        );
    }
    drop(conns);
    wait_metric(
        &gw,
        "gateway_http_parked_connections",
        0,
        Duration::from_secs(10),
    );
    let _ = std::fs::remove_file(cfg);
}

/// The keep-alive idle limit is `--http-idle-timeout` (Envoy's `idle_timeout`, 1 h by
/// default), counted from the last response: a parked connection with the default is
/// still answered after 12 s of silence (it closed at 10 s before), and one under
/// `--http-idle-timeout 3s` is closed ~3 s after its response, with a FIN.
#[test]
fn keepalive_idle_limit_is_http_idle_timeout() {
    if !privileged("keepalive_idle_limit_is_http_idle_timeout") {
        return;
    }
    let cfg = config_file("idle");
    let ns = NetNs::new("parkidle");
    let gw = GatewayProc::start(
        &ns,
        &[&cfg],
        &["--status-port", "off", "--prometheus-port", "off"],
    );
    ns.run(|| {
        let mut s = TcpStream::connect("127.0.0.1:80").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(ask(&mut s, "/before").starts_with("HTTP/1.1 200"));
        std::thread::sleep(Duration::from_secs(12));
        let r = ask(&mut s, "/after-12s");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    });
    drop(gw);

    let ns = NetNs::new("parkidle3");
    let _gw = GatewayProc::start(
        &ns,
        &[&cfg],
        &[
            "--status-port",
            "off",
            "--prometheus-port",
            "off",
            "--http-idle-timeout",
            "3s",
        ],
    );
    let took = ns.run(|| {
        let mut s = TcpStream::connect("127.0.0.1:80").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        assert!(ask(&mut s, "/once").starts_with("HTTP/1.1 200"));
        let t = Instant::now();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).expect("a FIN, not a reset or a timeout");
        assert_eq!(n, 0, "bytes instead of a close: {:?}", &buf[..n]);
        t.elapsed()
    });
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(8),
        "closed {took:?} after the response (want ~3 s)"
    );
    let _ = std::fs::remove_file(cfg);
}

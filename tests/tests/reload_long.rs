//! Issue 11, must-show 1: a 60 s spliced iperf3 stream, a 60 s spliced echo stream
//! checked byte for byte, a 60 s WebSocket echo and a 60 s HTTP/2 stream all stay up
//! across 20 reloads that each change an unrelated route: no reset, nothing lost.
//! Its own test binary: it runs beside the others for its minute.
mod http_common;

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use bytes::Bytes;
use gateway_tests::{
    backends::tcp_echo,
    data,
    gateway::GatewayProc,
    netns::{NetNs, privileged},
    xdpbench::prom_value_opt,
};
use http_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RUN: Duration = Duration::from_secs(60);
const RELOADS: u64 = 20;

/// Port 80 (app.test → v1, ws.test → the upgrade echo, other.test → `other`), 31400
/// (TCP → iperf3 on :5201), 31401 (TCP → the echo on :19000).
fn config(other: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: 31400, name: tcp-iperf, protocol: TCP}}
    hosts: ["*"]
  - port: {{number: 31401, name: tcp-echo, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: istio-system}}
spec:
  hosts: [app.test]
  gateways: [edge]
  http: [{{route: [{{destination: {{host: 127.0.0.1, port: {{number: 18080}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ws, namespace: istio-system}}
spec:
  hosts: [ws.test]
  gateways: [edge]
  http: [{{route: [{{destination: {{host: 127.0.0.1, port: {{number: 18082}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: unrelated, namespace: istio-system}}
spec:
  hosts: [other.test]
  gateways: [edge]
  http: [{{route: [{{destination: {{host: 127.0.0.1, port: {{number: {other}}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: l4, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [edge]
  tcp:
  - match: [{{port: 31400}}]
    route: [{{destination: {{host: 127.0.0.1, port: {{number: 5201}}}}}}]
  - match: [{{port: 31401}}]
    route: [{{destination: {{host: 127.0.0.1, port: {{number: 19000}}}}}}]
"#
    )
}

/// A spliced echo flow for `RUN`: 256 KiB out and back every 200 ms, compared byte for
/// byte; then a half-close, and EOF (not a reset). Returns the bytes checked.
async fn echo_flow() -> u64 {
    let s = tokio::net::TcpStream::connect("127.0.0.1:31401")
        .await
        .expect("connect the echo flow");
    let (mut rd, mut wr) = s.into_split();
    let start = Instant::now();
    let mut offset = 0u64;
    let mut chunk = vec![0u8; 256 << 10];
    let mut back = vec![0u8; 256 << 10];
    let mut want = vec![0u8; 256 << 10];
    while start.elapsed() < RUN {
        data::fill(11, offset, &mut chunk);
        let send = async {
            wr.write_all(&chunk).await.expect("send on the echo flow");
        };
        let recv = async {
            rd.read_exact(&mut back)
                .await
                .expect("the echo comes back (no reset)");
        };
        tokio::join!(send, recv);
        data::fill(11, offset, &mut want);
        assert!(back == want, "echo differs at offset {offset}");
        offset += chunk.len() as u64;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wr.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    rd.read_to_end(&mut rest).await.expect("EOF, not a reset");
    assert!(rest.is_empty());
    offset
}

/// A WebSocket through port 80 for `RUN`: 1 KiB echoed every 200 ms. Returns the bytes
/// echoed.
async fn websocket() -> u64 {
    let mut s = tokio::net::TcpStream::connect("127.0.0.1:80")
        .await
        .expect("connect");
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("write the upgrade");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).await.expect("read the 101"),
            1,
            "EOF in the head"
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let start = Instant::now();
    let (mut offset, mut msg, mut back) = (0u64, vec![0u8; 1024], vec![0u8; 1024]);
    while start.elapsed() < RUN {
        data::fill(12, offset, &mut msg);
        s.write_all(&msg).await.expect("WebSocket send (no reset)");
        s.read_exact(&mut back)
            .await
            .expect("WebSocket echo (no reset)");
        assert!(back == msg, "WebSocket echo differs at {offset}");
        offset += 1024;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    offset
}

/// One HTTP/2 (h2c) stream for `RUN`: a POST whose body goes out 4 KiB every 200 ms;
/// the backend answers with the body size it got. Returns (status, sent, received).
async fn h2_stream() -> (u16, u64, u64) {
    let tcp = tokio::net::TcpStream::connect("127.0.0.1:80")
        .await
        .expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.expect("h2 ready");
    let req = hyper::Request::post("http://app.test/upload")
        .body(())
        .unwrap();
    let (resp, mut body) = client.send_request(req, false).expect("send_request");
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < RUN {
        body.reserve_capacity(4096);
        body.send_data(Bytes::from(vec![b'x'; 4096]), false)
            .expect("the stream is open (no RST_STREAM, no GOAWAY)");
        sent += 4096;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    body.send_data(Bytes::new(), true).expect("end the stream");
    let resp = resp.await.expect("the response");
    let status = resp.status().as_u16();
    let mut rb = resp.into_body();
    let mut text = Vec::new();
    while let Some(c) = rb.data().await {
        let c = c.expect("response body");
        let _ = rb.flow_control().release_capacity(c.len());
        text.extend_from_slice(&c);
    }
    drop(client);
    conn.abort();
    let text = String::from_utf8_lossy(&text);
    let got = text
        .split("\"body_bytes\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no body_bytes in {text}"));
    (status, sent, got)
}

#[test]
fn long_lived_connections_survive_20_reloads() {
    if !privileged("long_lived_connections_survive_20_reloads") {
        return;
    }
    let ns = NetNs::new("reload-long");
    let _b = start_backends(&ns, vec![App::Http(18080, "v1"), App::Upgrade(18082)]);
    let rt = ns.runtime();
    let _echo = NetNs::block_on(&rt, async {
        tcp_echo("127.0.0.1:19000".parse().unwrap())
            .await
            .expect("echo")
    });
    let mut iperf_server = ns
        .cmd("iperf3")
        .args(["-s", "-1", "-B", "127.0.0.1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    let dir = scratch(&ns);
    let file = dir.join("gateway.yaml");
    std::fs::write(&file, config(18080)).unwrap();
    let gw = GatewayProc::start(&ns, &[&file], &["--splice", "ebpf"]);

    let iperf = ns
        .cmd("iperf3")
        .args([
            "-c",
            "127.0.0.1",
            "-p",
            "31400",
            "-t",
            "60",
            "-b",
            "4G",
            "-J",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iperf3 client");
    let echo = rt.spawn(echo_flow());
    let ws = rt.spawn(websocket());
    let h2 = rt.spawn(h2_stream());

    // 20 reloads over the minute, each moving only the other.test route.
    let started = Instant::now();
    for n in 1..=RELOADS {
        let at = started + RUN.mul_f64(n as f64 / (RELOADS as f64 + 1.0));
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let tmp = dir.join("gateway.tmp");
        std::fs::write(&tmp, config(if n % 2 == 1 { 18083 } else { 18080 })).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let prom = gw.admin_get("/stats/prometheus");
            if prom_value_opt(&prom, "gateway_config_generation") == Some(n + 1) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "reload {n} not applied:\n{}",
                gw.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    let out = iperf.wait_with_output().expect("iperf3 client");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("iperf3 -J: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        report.get("error").is_none() && out.status.success(),
        "iperf3 failed: {}\n{}",
        report["error"],
        gw.log()
    );
    let sent = report["end"]["sum_sent"]["bytes"].as_f64().unwrap_or(0.0);
    let received = report["end"]["sum_received"]["bytes"]
        .as_f64()
        .unwrap_or(0.0);
    let secs = report["end"]["sum_received"]["seconds"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(secs >= 59.0, "the iperf3 stream lasted {secs} s");
    assert!(
        received > 0.0 && received >= sent * 0.99,
        "iperf3 sent {sent} bytes, {received} arrived"
    );
    let _ = iperf_server.wait();
    let echoed = NetNs::block_on(&rt, async move { echo.await.expect("echo flow") });
    let ws_bytes = NetNs::block_on(&rt, async move { ws.await.expect("websocket") });
    let (status, h2_sent, h2_got) = NetNs::block_on(&rt, async move { h2.await.expect("h2") });
    eprintln!(
        "through {RELOADS} reloads: iperf3 {:.2} GB at {:.2} Gbit/s, echo {echoed} bytes exact, WebSocket {ws_bytes} bytes, HTTP/2 stream {h2_sent} bytes",
        received / 1e9,
        received * 8.0 / secs / 1e9
    );
    assert_eq!((status, h2_got), (200, h2_sent), "the HTTP/2 stream");
    let prom = gw.admin_get("/stats/prometheus");
    assert_eq!(
        prom_value_opt(&prom, "gateway_config_reloads_total{result=\"applied\"}"),
        Some(RELOADS)
    );
    // No flow was reset by a reload. The one reset allowed is iperf3's own at the end:
    // its server closes the data socket with bytes still unread when the test ends, and
    // TCP answers that with a reset (RFC 2525 §2.17).
    let log = gw.log();
    for line in log.lines().filter(|l| l.contains("flow closed")) {
        if line.contains("reset") {
            let ms: u64 = line
                .split("duration_ms=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            assert!(
                line.contains("upstream=127.0.0.1:5201") && ms >= 59_000,
                "a flow was reset before its end: {line}"
            );
        }
    }
}

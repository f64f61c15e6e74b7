//! Issue 11, SIGTERM/SIGINT drain: readiness fails at once, the listeners close, HTTP
//! requests in flight complete (HTTP/1.1 with `Connection: close`, HTTP/2 after a
//! GOAWAY), L4 flows run until the drain deadline and are then closed with
//! `drain_timeout` in the flow log and the access log, and the gateway exits 0. A
//! second signal exits at once. Real gateway, real clients (curl, h2, raw sockets).
mod http_common;

use std::{
    io::ErrorKind,
    net::SocketAddr,
    time::{Duration, Instant},
};

use gateway_tests::{
    backends::{config_dir, tcp_echo},
    gateway::GatewayProc,
    netns::{NetNs, privileged},
};
use http_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WEB: &str = "webapp.istioinaction.io";

/// The walkthrough's HTTP config (port 80 → the webapp backend on :18080).
fn http_gateway(ns: &NetNs, extra: &[&str]) -> (Backends, GatewayProc) {
    let b = start_backends(ns, vec![App::Http(18080, "webapp")]);
    let gw = start_gateway_with(
        ns,
        &[
            &config("coolstore-gateway.yaml"),
            &config("secrets.yaml"),
            &config("service-entries.yaml"),
        ],
        extra,
    );
    (b, gw)
}

/// Waits until `n` requests are at the backend on :18080 (polled, 10 s).
fn wait_upstream(ns: &NetNs, gw: &GatewayProc, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = upstream_conns(ns, 18080);
        if got >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {got} of {n} requests reached the backend:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The gateway exits 0 within `within`; returns how long it took.
fn exits_zero(gw: &mut GatewayProc, within: Duration) -> Duration {
    let t = Instant::now();
    let status = gw.wait_exit(within);
    match status {
        Some(s) => assert!(s.success(), "gateway exited with {s}:\n{}", gw.log()),
        None => panic!("gateway still running after {within:?}:\n{}", gw.log()),
    }
    t.elapsed()
}

/// Whether a TCP connect to 127.0.0.1:`port` in `ns` is refused.
fn connect_refused(ns: &NetNs, port: u16) -> bool {
    ns.run(move || {
        match std::net::TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(2),
        ) {
            Err(e) => e.kind() == ErrorKind::ConnectionRefused,
            Ok(_) => false,
        }
    })
}

/// 1. SIGTERM with 50 HTTP/1.1 requests in flight (each answered 1.5 s after it reached
///    the backend): every one completes with 200 and its body, carries `Connection:
///    close`, and the gateway exits 0 well before the drain deadline.
#[test]
fn sigterm_completes_50_requests_in_flight() {
    if !privileged("sigterm_completes_50_requests_in_flight") {
        return;
    }
    let ns = NetNs::new("drain-50");
    let (_b, mut gw) = http_gateway(&ns, &["--drain-duration", "30s"]);
    const N: usize = 50;
    let (resps, exit_after) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..N)
            .map(|i| {
                let ns = &ns;
                s.spawn(move || {
                    curl(
                        ns,
                        &[
                            "-H",
                            &format!("Host: {WEB}"),
                            &format!("http://127.0.0.1:80/delay/1500?n={i}"),
                        ],
                    )
                })
            })
            .collect();
        wait_upstream(&ns, &gw, N);
        gw.signal(libc::SIGTERM);
        let exit_after = exits_zero(&mut gw, Duration::from_secs(20));
        let resps: Vec<Resp> = clients
            .into_iter()
            .map(|c| c.join().expect("curl thread"))
            .collect();
        (resps, exit_after)
    });
    for (i, r) in resps.iter().enumerate() {
        assert_eq!((r.status, r.exit), (200, 0), "request {i}: {r:?}");
        let first = r.body.lines().next().unwrap_or_default();
        assert_eq!(first, "webapp: GET /delay/1500", "request {i}: {r:?}");
        assert_eq!(r.echo()["query"], format!("n={i}"), "request {i}: {r:?}");
        assert_eq!(r.header("connection"), Some("close"), "request {i}: {r:?}");
    }
    assert!(
        exit_after < Duration::from_secs(10),
        "exit took {exit_after:?}"
    );
    let log = gw.log();
    for phase in [
        "drain started",
        "drain: listeners closed",
        "drain complete: no connection left",
    ] {
        assert!(log.contains(phase), "no {phase:?} in the log:\n{log}");
    }
    eprintln!("50 in-flight requests drained; exited {exit_after:?} after SIGTERM");
}

/// 1b. The same over HTTPS (TLS terminated, the walkthrough's per-host certificate):
///     10 requests in flight on HTTP/1.1 and 10 on HTTP/2 (ALPN h2) complete with 200
///     after SIGTERM (the HTTP/1.1 ones with `Connection: close`), and the gateway
///     exits 0.
#[test]
fn sigterm_completes_https_requests_in_flight() {
    if !privileged("sigterm_completes_https_requests_in_flight") {
        return;
    }
    let ns = NetNs::new("drain-tls");
    let (_b, mut gw) = http_gateway(&ns, &["--drain-duration", "30s"]);
    let ca = gateway_tests::backends::demo_ca();
    let ca = ca.to_str().unwrap();
    let resolve = format!("{WEB}:443:127.0.0.1");
    let resps = std::thread::scope(|s| {
        let clients: Vec<_> = (0..20)
            .map(|i| {
                let (ns, resolve) = (&ns, &resolve);
                let version = if i % 2 == 0 { "--http1.1" } else { "--http2" };
                s.spawn(move || {
                    let url = format!("https://{WEB}:443/delay/1500?n={i}");
                    (
                        version,
                        curl(ns, &[version, "--cacert", ca, "--resolve", resolve, &url]),
                    )
                })
            })
            .collect();
        wait_upstream(&ns, &gw, 20);
        gw.signal(libc::SIGTERM);
        exits_zero(&mut gw, Duration::from_secs(20));
        clients
            .into_iter()
            .map(|c| c.join().expect("curl thread"))
            .collect::<Vec<_>>()
    });
    for (i, (version, r)) in resps.iter().enumerate() {
        assert_eq!((r.status, r.exit), (200, 0), "{version} request {i}: {r:?}");
        assert_eq!(
            r.echo()["query"],
            format!("n={i}"),
            "{version} request {i}: {r:?}"
        );
        if *version == "--http1.1" {
            assert_eq!(r.header("connection"), Some("close"), "request {i}: {r:?}");
        }
    }
}

/// 2. After SIGTERM `/healthz/ready` answers 503 (it was 200) while a request in flight
///    keeps the gateway draining, a new connect to the Gateway port is refused, the log
///    says readiness failed before the listeners closed, and the held request still
///    completes.
#[test]
fn readiness_fails_before_the_listeners_close() {
    if !privileged("readiness_fails_before_the_listeners_close") {
        return;
    }
    let ns = NetNs::new("drain-ready");
    let (_b, mut gw) = http_gateway(&ns, &["--drain-duration", "30s", "--status-port", "15021"]);
    let ready = || curl(&ns, &["http://127.0.0.1:15021/healthz/ready"]).status;
    assert_eq!(ready(), 200);
    assert!(!connect_refused(&ns, 80));
    assert!(
        gw.admin_get("/stats/prometheus")
            .contains("\ngateway_server_state 0\n")
    );
    std::thread::scope(|s| {
        let held = s.spawn(|| {
            curl(
                &ns,
                &[
                    "-H",
                    &format!("Host: {WEB}"),
                    "http://127.0.0.1:80/delay/3000",
                ],
            )
        });
        wait_upstream(&ns, &gw, 1);
        gw.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while ready() != 503 {
            assert!(
                Instant::now() < deadline,
                "readiness never failed:\n{}",
                gw.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Still draining: the held request has not been answered yet.
        assert!(!held.is_finished(), "the held request ended too early");
        // The admin API says so too, Envoy's way.
        assert_eq!(gw.admin_get("/ready"), "DRAINING\n");
        let prom = gw.admin_get("/stats/prometheus");
        assert!(prom.contains("\ngateway_server_state 1\n"), "{prom}");
        assert!(
            prom.contains("gateway_downstream_cx_active{listener=\"0.0.0.0_80\"} 1\n"),
            "{prom}"
        );
        let log = gw.wait_log(Duration::from_secs(5), |l| {
            l.contains("drain: listeners closed")
        });
        assert!(connect_refused(&ns, 80), "port 80 still accepts:\n{log}");
        let started = log.find("drain started").expect("drain started logged");
        let closed = log
            .find("drain: listeners closed")
            .expect("listeners closed logged");
        assert!(
            started < closed,
            "readiness after the listeners closed:\n{log}"
        );
        let r = held.join().expect("curl thread");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    });
    exits_zero(&mut gw, Duration::from_secs(10));
}

/// 3. An HTTP/2 (h2c) connection with a stream in flight gets GOAWAY: the stream
///    completes with its body, a new stream on the connection is refused, and the
///    gateway then closes the connection cleanly and exits 0.
#[test]
fn h2_gets_goaway_and_its_stream_completes() {
    if !privileged("h2_gets_goaway_and_its_stream_completes") {
        return;
    }
    let ns = NetNs::new("drain-h2");
    let (_b, mut gw) = http_gateway(&ns, &["--drain-duration", "30s"]);
    let pid = gw.pid();
    let name = ns.name.clone();
    let (status, body, second, conn_end) = ns.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let tcp = tokio::net::TcpStream::connect("127.0.0.1:80")
                    .await
                    .unwrap();
                let (client, conn) = h2::client::handshake(tcp).await.unwrap();
                let conn = tokio::spawn(conn);
                let mut client = client.ready().await.unwrap();
                let req = hyper::Request::get(format!("http://{WEB}/delay/2000"))
                    .body(())
                    .unwrap();
                let (resp, _) = client.send_request(req, true).unwrap();
                // The request is at the backend: then SIGTERM.
                let deadline = Instant::now() + Duration::from_secs(10);
                while upstream_conns_in(&name, 18080) < 1 {
                    assert!(
                        Instant::now() < deadline,
                        "the h2 request never reached the backend"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // SAFETY: kill(2) on the gateway child the test holds (not reaped).
                assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
                let resp = resp.await.expect("the stream in flight completes");
                let status = resp.status().as_u16();
                let mut body = resp.into_body();
                let mut text = Vec::new();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.unwrap();
                    let _ = body.flow_control().release_capacity(chunk.len());
                    text.extend_from_slice(&chunk);
                }
                // After the GOAWAY the connection takes no new stream.
                let second = match client.ready().await {
                    Err(e) => format!("refused: {e}"),
                    Ok(mut c) => {
                        let req = hyper::Request::get(format!("http://{WEB}/"))
                            .body(())
                            .unwrap();
                        match c.send_request(req, true) {
                            Err(e) => format!("refused: {e}"),
                            Ok((r, _)) => match r.await {
                                Err(e) => format!("refused: {e}"),
                                Ok(r) => format!("answered {}", r.status()),
                            },
                        }
                    }
                };
                let conn_end = tokio::time::timeout(Duration::from_secs(10), conn)
                    .await
                    .map(|j| j.expect("h2 connection task").map_err(|e| e.to_string()));
                (
                    status,
                    String::from_utf8_lossy(&text).into_owned(),
                    second,
                    conn_end,
                )
            })
    });
    assert_eq!(status, 200);
    assert!(body.starts_with("webapp: GET /delay/2000"), "{body}");
    assert!(
        second.starts_with("refused"),
        "a new stream after GOAWAY: {second}"
    );
    assert!(
        matches!(conn_end, Ok(Ok(()))),
        "the connection did not end cleanly after GOAWAY: {conn_end:?}"
    );
    exits_zero(&mut gw, Duration::from_secs(10));
}

/// `ss` in the namespace named `ns` (for code running inside it already).
fn upstream_conns_in(ns: &str, port: u16) -> usize {
    let out = std::process::Command::new("ss")
        .args(["-Htn", "state", "established"])
        .arg(format!("( dport = :{port} )"))
        .output()
        .unwrap_or_else(|e| panic!("ss in {ns}: {e}"));
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Echoes `chunk` bytes of a pattern every 100 ms until the flow ends; returns
/// (time of the last full echo, time the flow ended, how it ended, bytes echoed).
async fn echo_until_closed(
    mut s: tokio::net::TcpStream,
    echoing: std::sync::mpsc::Sender<()>,
    t0_rx: std::sync::mpsc::Receiver<Instant>,
) -> (Duration, Duration, String, u64) {
    let mut off = 0u64;
    let mut t0: Option<Instant> = None;
    let mut last_ok = Duration::ZERO;
    let chunk = 16 * 1024;
    loop {
        if t0.is_none() {
            t0 = t0_rx.try_recv().ok();
        }
        let since = |t0: Option<Instant>| t0.map(|t| t.elapsed()).unwrap_or_default();
        assert!(
            since(t0) < Duration::from_secs(30),
            "the flow was never closed"
        );
        let out: Vec<u8> = (off..off + chunk).map(|i| (i * 31 % 251) as u8).collect();
        if let Err(e) = s.write_all(&out).await {
            return (last_ok, since(t0), format!("write: {e}"), off);
        }
        let mut back = vec![0u8; chunk as usize];
        let mut got = 0;
        while got < back.len() {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut back[got..])).await {
                Err(_) => panic!("no echo for 10 s at offset {}", off + got as u64),
                Ok(Ok(0)) => return (last_ok, since(t0), "eof".into(), off),
                Ok(Ok(n)) => got += n,
                Ok(Err(e)) => return (last_ok, since(t0), format!("read: {e}"), off),
            }
        }
        assert_eq!(back, out, "echo differs at offset {off}");
        off += chunk;
        let _ = echoing.send(());
        if t0.is_some() {
            last_ok = since(t0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 4. A spliced TCP flow (the walkthrough's 31400 echo route) keeps echoing byte-exact
///    after SIGTERM until `--drain-duration 3s`, is then closed, and the flow log and the
///    access log say `drain_timeout`; the gateway exits 0. Every splice mode.
#[test]
fn tcp_flow_drains_until_the_deadline_every_mode() {
    if !privileged("tcp_flow_drains_until_the_deadline_every_mode") {
        return;
    }
    for mode in ["auto", "ebpf", "splice", "uring"] {
        let ns = NetNs::new(&format!("drain-l4-{mode}"));
        let rt = ns.runtime();
        let _echo = NetNs::block_on(&rt, tcp_echo("127.0.0.1:2701".parse().unwrap()))
            .expect("echo backend");
        let mesh = config_dir().join("mesh/mesh-config.yaml");
        let mut gw = GatewayProc::start(
            &ns,
            &[
                &config_dir().join("tcp-echo.yaml"),
                &config_dir().join("service-entries.yaml"),
            ],
            &[
                "--splice",
                mode,
                "--drain-duration",
                "3s",
                "--mesh-config",
                mesh.to_str().unwrap(),
            ],
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let (echoing_tx, echoing) = std::sync::mpsc::channel();
        let client = rt.spawn(async move {
            let s = tokio::net::TcpStream::connect("127.0.0.1:31400")
                .await
                .expect("connect");
            echo_until_closed(s, echoing_tx, rx).await
        });
        // A few echoes before the signal (the flow is spliced and moving).
        for _ in 0..3 {
            echoing
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("{mode}: no echo:\n{}", gw.log()));
        }
        tx.send(Instant::now()).unwrap();
        gw.signal(libc::SIGTERM);
        let (last_ok, ended, how, bytes) = NetNs::block_on(&rt, client).expect("echo client");
        eprintln!(
            "{mode}: echoed {bytes} bytes, last echo {last_ok:?} and {how} {ended:?} after SIGTERM"
        );
        assert!(
            last_ok >= Duration::from_millis(2500),
            "{mode}: the flow stopped echoing {last_ok:?} after SIGTERM ({how}):\n{}",
            gw.log()
        );
        assert!(
            ended >= Duration::from_secs(3) && ended < Duration::from_secs(8),
            "{mode}: the flow ended {ended:?} after SIGTERM ({how})"
        );
        exits_zero(&mut gw, Duration::from_secs(10));
        let log = gw.log();
        let flow = log
            .lines()
            .find(|l| l.contains("flow closed"))
            .unwrap_or_else(|| panic!("{mode}: no flow closed line:\n{log}"));
        assert!(flow.contains("termination=drain_timeout"), "{mode}: {flow}");
        // The access log (MeshConfig accessLogFile /dev/stdout, JSON).
        assert!(
            log.lines()
                .any(|l| l.contains("\"connection_termination_details\":\"drain_timeout\"")),
            "{mode}: no access-log line with drain_timeout:\n{log}"
        );
        assert!(log.contains("drain deadline reached"), "{mode}:\n{log}");
    }
}

/// 5. A second signal while draining exits at once (exit 0), without waiting for the
///    request in flight or the drain deadline.
#[test]
fn second_signal_exits_at_once() {
    if !privileged("second_signal_exits_at_once") {
        return;
    }
    let ns = NetNs::new("drain-twice");
    let (_b, mut gw) = http_gateway(&ns, &["--drain-duration", "60s"]);
    std::thread::scope(|s| {
        let held = s.spawn(|| {
            curl(
                &ns,
                &[
                    "-H",
                    &format!("Host: {WEB}"),
                    "http://127.0.0.1:80/delay/20000",
                ],
            )
        });
        wait_upstream(&ns, &gw, 1);
        gw.signal(libc::SIGTERM);
        let log = gw.wait_log(Duration::from_secs(5), |l| {
            l.contains("drain: listeners closed")
        });
        assert!(log.contains("drain: listeners closed"), "{log}");
        gw.signal(libc::SIGINT);
        let took = exits_zero(&mut gw, Duration::from_secs(3));
        eprintln!("exited {took:?} after the second signal");
        assert!(
            gw.log().contains("second signal: exiting now"),
            "{}",
            gw.log()
        );
        let r = held.join().expect("curl thread");
        assert_ne!(r.status, 200, "the held request was cut: {r:?}");
    });
}

/// 6. A WebSocket (an upgraded HTTP/1.1 connection in its tunnel) counts as a connection
///    to drain: it keeps echoing after SIGTERM until `--drain-duration 2s`, is then
///    closed (logged as `drain_timeout`), and the gateway exits 0.
#[test]
fn websocket_drains_until_the_deadline() {
    if !privileged("websocket_drains_until_the_deadline") {
        return;
    }
    let ns = NetNs::new("drain-ws");
    let _b = start_backends(&ns, vec![App::Upgrade(18082)]);
    let mut gw = start_gateway_with(
        &ns,
        &[&fixture("routing.yaml")],
        &["--drain-duration", "2s"],
    );
    let rt = ns.runtime();
    let (tx, rx) = std::sync::mpsc::channel();
    let (echoing_tx, echoing) = std::sync::mpsc::channel();
    let client = rt.spawn(async move {
        let mut s = tokio::net::TcpStream::connect("127.0.0.1:80")
            .await
            .expect("connect");
        s.write_all(
            b"GET /chat HTTP/1.1\r\nHost: ws.routing.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .expect("write the upgrade");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).await.expect("read the 101"), 1, "EOF in the head");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        echo_until_closed(s, echoing_tx, rx).await
    });
    for _ in 0..3 {
        echoing
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no WebSocket echo:\n{}", gw.log()));
    }
    tx.send(Instant::now()).unwrap();
    gw.signal(libc::SIGTERM);
    let (last_ok, ended, how, bytes) = NetNs::block_on(&rt, client).expect("ws client");
    eprintln!("ws: echoed {bytes} bytes, last echo {last_ok:?} and {how} {ended:?} after SIGTERM");
    assert!(
        last_ok >= Duration::from_millis(1500),
        "the WebSocket stopped echoing {last_ok:?} after SIGTERM ({how}):\n{}",
        gw.log()
    );
    assert!(
        ended >= Duration::from_secs(2) && ended < Duration::from_secs(6),
        "the WebSocket ended {ended:?} after SIGTERM ({how})"
    );
    exits_zero(&mut gw, Duration::from_secs(10));
    let log = gw.log();
    assert!(
        log.contains("upgraded connection closed: drain_timeout"),
        "{log}"
    );
}

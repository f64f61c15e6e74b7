//! `--workers N` (issue 12): N event-loop threads, each accepting on its own
//! SO_REUSEPORT socket of every Gateway port and serving what it accepted. New
//! connections spread over the workers (the kernel hashes their addresses), every one is
//! served, and `--workers 1` runs on the main thread alone.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::GatewayProc,
    netns::{NetNs, privileged},
    xdpbench::{prom_value, prom_value_opt},
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

/// New connections made (one request each).
const CONNS: u64 = 200;

fn config_file(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("gw-workers-{tag}-{}.yaml", std::process::id()));
    std::fs::write(&p, CONFIG).expect("write config");
    p
}

/// Thread names of the gateway process.
fn threads(gw: &GatewayProc) -> Vec<String> {
    let dir = format!("/proc/{}/task", gw.pid());
    std::fs::read_dir(dir)
        .expect("task dir")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect()
}

/// `CONNS` new connections, one request each, every one answered 200.
fn connect_and_ask(ns: &NetNs) {
    ns.run(|| {
        for i in 0..CONNS {
            let mut s = TcpStream::connect("127.0.0.1:80").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(
                s,
                "GET /{i} HTTP/1.1\r\nHost: w.test\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).unwrap();
            assert!(got.starts_with("HTTP/1.1 200"), "connection {i}: {got}");
        }
    });
}

/// Polls until the per-worker counters add up to `CONNS`; returns them.
fn per_worker(gw: &GatewayProc, workers: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let prom = gw.admin_get("/stats/prometheus");
        let counts: Vec<u64> = (0..workers)
            .map(|w| {
                prom_value(
                    &prom,
                    &format!("gateway_worker_downstream_cx_total{{worker=\"{w}\"}}"),
                )
            })
            .collect();
        assert_eq!(
            prom_value_opt(
                &prom,
                &format!("gateway_worker_downstream_cx_total{{worker=\"{workers}\"}}")
            ),
            None,
            "a worker past --workers {workers}:\n{prom}"
        );
        if counts.iter().sum::<u64>() == CONNS {
            return counts;
        }
        assert!(Instant::now() < deadline, "{counts:?} of {CONNS}:\n{prom}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_workers_share_the_connections() {
    if !privileged("two_workers_share_the_connections") {
        return;
    }
    let cfg = config_file("two");
    let ns = NetNs::new("workers2");
    let gw = GatewayProc::start(
        &ns,
        &[&cfg],
        &[
            "--workers",
            "2",
            "--status-port",
            "off",
            "--prometheus-port",
            "off",
        ],
    );
    assert!(
        gw.log().contains("workers=2"),
        "the ready line names the workers:\n{}",
        gw.log()
    );
    let names = threads(&gw);
    assert!(
        names.iter().any(|n| n == "gw-worker-1"),
        "no worker thread: {names:?}"
    );
    connect_and_ask(&ns);
    let counts = per_worker(&gw, 2);
    eprintln!("{CONNS} connections over 2 workers: {counts:?}");
    // The kernel picks a socket by the connection's address hash: with 200 source
    // ports, each worker gets its share (a worker under 20 is a 1-in-10^20 event).
    assert!(
        counts.iter().all(|&c| c >= 20),
        "connections not spread over the workers: {counts:?}"
    );
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn one_worker_is_the_main_thread() {
    if !privileged("one_worker_is_the_main_thread") {
        return;
    }
    let cfg = config_file("one");
    let ns = NetNs::new("workers1");
    let gw = GatewayProc::start(
        &ns,
        &[&cfg],
        &[
            "--workers",
            "1",
            "--status-port",
            "off",
            "--prometheus-port",
            "off",
        ],
    );
    let names = threads(&gw);
    assert!(
        !names.iter().any(|n| n.starts_with("gw-worker")),
        "--workers 1 started worker threads: {names:?}"
    );
    connect_and_ask(&ns);
    assert_eq!(per_worker(&gw, 1), vec![CONNS]);
    let _ = std::fs::remove_file(cfg);
}

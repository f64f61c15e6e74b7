//! DestinationRule `connectionPool` connection settings through a real gateway and
//! real backends (issue 13):
//! - `tcp.connectTimeout: 500ms` to an endpoint whose SYNs vanish (an address on
//!   the namespace's loopback, dropped by nftables in the namespace): 503 `UF` after about 0.5 s, not the
//!   gateway's `--connect-timeout` (10 s);
//! - `http.maxRequestsPerConnection: 2`: six sequential requests open exactly three
//!   upstream connections (a cluster without it: one);
//! - `http.idleTimeout: 1s`: the backend sees its pooled connection closed within a few
//!   seconds (the default, 60 s, keeps it);
//! - `tcp.tcpKeepalive`: the pooled upstream socket has a keepalive timer (`ss -o`);
//! - `http.h2UpgradePolicy: UPGRADE`: an HTTP port's h2c-only backend is reached over
//!   HTTP/2, where `maxRequestsPerConnection: 2` makes four requests take two
//!   connections and `idleTimeout: 1s` closes the last;
//! - on TCP routes: the connect timeout closes the client's connection after ~0.5 s,
//!   and the upstream socket has the keepalive timer;
//! - `http.maxConcurrentStreams: 2` on an HTTP/2 cluster: four concurrent slow
//!   requests take two upstream connections (without it: one);
//! - `http.useClientProtocol: true`: an HTTP/2 client's request reaches a backend that
//!   speaks both as HTTP/2, an HTTP/1.1 client's as HTTP/1.1 (without it: HTTP/1.1).
//!
//! (`tcp.idleTimeout` on TCP routes: `upstream_pool_tcp.rs`.)
mod http_common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gateway_tests::netns::{NetNs, privileged};
use http_body_util::Full;
use http_common::*;
use hyper::body::Bytes;

/// Connections a backend accepted and saw end.
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    closed: AtomicUsize,
}

/// An HTTP/1.1 backend counting its connections.
async fn counting_backend(addr: SocketAddr) -> Arc<Counts> {
    let counts = Arc::new(Counts::default());
    let l = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            c.accepted.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"ok\n"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
                c.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    counts
}

/// An h2c-only backend (prior knowledge) answering with the request's version,
/// counting its connections.
async fn h2c_backend(addr: SocketAddr) -> Arc<Counts> {
    h2c_backend_slow(addr, Duration::ZERO).await
}

/// As [`h2c_backend`], answering each request after `delay`.
async fn h2c_backend_slow(addr: SocketAddr, delay: Duration) -> Arc<Counts> {
    let counts = Arc::new(Counts::default());
    let l = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            c.accepted.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<_>| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        format!("version={:?}\n", req.version()),
                    ))))
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                c.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    counts
}

/// ServiceEntry `host` on `endpoint`, routed from port 80 without retries, with a
/// DestinationRule whose `connectionPool` is `pool` (none if empty).
fn service(host: &str, endpoint: &str, port: u16, pool: &str) -> String {
    let mut y = format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {endpoint}, ports: {{http: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {host}, namespace: istio-system}}
spec:
  hosts: [{host}]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: {host}}}}}], retries: {{attempts: 0}}}}]
"
    );
    if !pool.is_empty() {
        y += &format!(
            "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {host}}}
spec:
  host: {host}
  trafficPolicy:
    connectionPool: {pool}
"
        );
    }
    y
}

fn get(ns: &NetNs, host: &str, id: &str) -> Resp {
    curl(
        ns,
        &[
            "-H",
            &format!("Host: {host}"),
            "-H",
            &format!("x-request-id: {id}"),
            "http://127.0.0.1/x",
        ],
    )
}

/// Polls `f` until true or `within` passes; returns how long it took.
fn poll(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn connection_pool_connection_settings() {
    if !privileged("connection_pool_connection_settings") {
        return;
    }
    let ns = NetNs::new("uppool");
    // 10.99.0.2 is on the namespace's loopback, and nftables drops what is sent to it:
    // a SYN to it is never answered.
    let out = sh_in(
        &ns,
        "ip addr add 10.99.0.1/24 dev lo && nft add table inet bh \
         && nft add chain inet bh out '{ type filter hook output priority 0; }' \
         && nft add rule inet bh out ip daddr 10.99.0.2 drop",
    );
    assert!(out.status.success(), "{out:?}");
    let dir = scratch(&ns);
    let rt = ns.runtime();
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let (limited, reused, idle, _keepalive, h2) = NetNs::block_on(&rt, async move {
        let limited = counting_backend(at(18301)).await;
        let reused = counting_backend(at(18302)).await;
        let idle = counting_backend(at(18303)).await;
        let keepalive = counting_backend(at(18304)).await;
        let h2 = h2c_backend(at(18305)).await;
        (limited, reused, idle, keepalive, h2)
    });
    let mut yaml = String::from(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*\"]
  - port: {number: 9000, name: tcp-bh, protocol: TCP}
    hosts: [\"*\"]
  - port: {number: 9001, name: tcp-ka, protocol: TCP}
    hosts: [\"*\"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp, namespace: istio-system}
spec:
  hosts: [\"*\"]
  gateways: [gw]
  tcp:
  - match: [{port: 9000}]
    route: [{destination: {host: blackhole.test, port: {number: 80}}}]
  - match: [{port: 9001}]
    route: [{destination: {host: keepalive.test, port: {number: 80}}}]
",
    );
    yaml += &service(
        "blackhole.test",
        "10.99.0.2",
        80,
        "{tcp: {connectTimeout: 500ms}}",
    );
    yaml += &service(
        "limited.test",
        "127.0.0.1",
        18301,
        "{http: {maxRequestsPerConnection: 2}}",
    );
    yaml += &service("reused.test", "127.0.0.1", 18302, "");
    yaml += &service("idle.test", "127.0.0.1", 18303, "{http: {idleTimeout: 1s}}");
    yaml += &service(
        "keepalive.test",
        "127.0.0.1",
        18304,
        "{tcp: {tcpKeepalive: {time: 7s, interval: 3s, probes: 2}}}",
    );
    yaml += &service(
        "h2.test",
        "127.0.0.1",
        18305,
        "{http: {h2UpgradePolicy: UPGRADE, maxRequestsPerConnection: 2, idleTimeout: 1s}}",
    );
    let cfg = dir.join("upstream-pool.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let gw = start_gateway(&ns, &[&cfg]);
    assert!(
        !gw.log().contains("GW106"),
        "the settings are not warned:\n{}",
        gw.log()
    );

    // /config_dump shows the settings as Istio writes them for Envoy.
    let dump: serde_json::Value =
        serde_json::from_str(&gw.admin_get("/config_dump")).expect("config_dump JSON");
    let cluster = |name: &str| {
        dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["dynamic_active_clusters"].as_array())
            .flatten()
            .map(|c| &c["cluster"])
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no cluster {name} in {dump}"))
            .clone()
    };
    assert_eq!(
        cluster("outbound|80||blackhole.test")["connect_timeout"],
        "0.500s"
    );
    let http_opts = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    assert_eq!(
        cluster("outbound|80||limited.test")["typed_extension_protocol_options"][http_opts]["common_http_protocol_options"]
            ["max_requests_per_connection"],
        2
    );
    assert_eq!(
        cluster("outbound|80||idle.test")["typed_extension_protocol_options"][http_opts]["common_http_protocol_options"]
            ["idle_timeout"],
        "1s"
    );
    assert_eq!(
        cluster("outbound|80||keepalive.test")["upstream_connection_options"]["tcp_keepalive"],
        serde_json::json!({"keepalive_time": 7, "keepalive_interval": 3, "keepalive_probes": 2})
    );

    // connectTimeout: UF after the cluster's 500 ms, not --connect-timeout's 10 s.
    let r = get(&ns, "blackhole.test", "ct-1");
    assert_eq!(r.status, 503, "{r:?}\n{}", gw.log());
    let line = log_line(&gw, "ct-1");
    assert!(line.contains("response_flags=UF "), "{line}");
    let took = duration_of(&line);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(3000),
        "{line}"
    );

    // maxRequestsPerConnection: 2 -> six requests, three connections; without: one.
    for i in 0..6 {
        for host in ["limited.test", "reused.test"] {
            let r = get(&ns, host, &format!("mr-{host}-{i}"));
            assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
        }
    }
    assert_eq!(reused.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(limited.accepted.load(Ordering::SeqCst), 3);
    // The retired connections are closed, not left open.
    assert!(
        poll(Duration::from_secs(5), || limited
            .closed
            .load(Ordering::SeqCst)
            >= 3)
        .is_some(),
        "closed: {}",
        limited.closed.load(Ordering::SeqCst)
    );
    assert_eq!(reused.closed.load(Ordering::SeqCst), 0);

    // idleTimeout: 1s -> the pooled connection is closed by the gateway.
    let r = get(&ns, "idle.test", "idle-1");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(idle.closed.load(Ordering::SeqCst), 0);
    let closed_after = poll(Duration::from_secs(6), || {
        idle.closed.load(Ordering::SeqCst) == 1
    });
    let closed_after = closed_after.expect("the idle upstream connection is closed");
    assert!(
        closed_after >= Duration::from_millis(500),
        "{closed_after:?}"
    );
    eprintln!(
        "measured: UF after {took:?} (connectTimeout 500ms); idle connection closed {closed_after:?} after its response (idleTimeout 1s)"
    );
    // The default (60 s) kept reused.test's connection all along.
    assert_eq!(reused.closed.load(Ordering::SeqCst), 0);

    // tcpKeepalive: the pooled socket to the backend has a keepalive timer.
    let r = get(&ns, "keepalive.test", "ka-1");
    assert_eq!(r.status, 200, "{r:?}");
    let ss = |port: u16| {
        let out = sh_in(
            &ns,
            &format!("ss -tno state established '( dport = :{port} )'"),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ka = ss(18304);
    assert!(ka.contains("timer:(keepalive,"), "{ka}");
    // Without the setting, no keepalive timer.
    let plain = ss(18302);
    assert!(plain.contains("127.0.0.1:18302"), "{plain}");
    assert!(!plain.contains("keepalive"), "{plain}");

    // TCP routes: the cluster's connectTimeout closes the client's connection after
    // ~0.5 s (UF); the upstream socket of a spliced connection has the keepalive timer.
    let tcp_closed_after = NetNs::block_on(&rt, async {
        use tokio::io::AsyncReadExt;
        let start = Instant::now();
        let mut c = tokio::net::TcpStream::connect("127.0.0.1:9000")
            .await
            .expect("connect 9000");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
        start.elapsed()
    });
    assert!(
        tcp_closed_after >= Duration::from_millis(450) && tcp_closed_after < Duration::from_secs(3),
        "{tcp_closed_after:?}"
    );
    let log = gw.wait_log(Duration::from_secs(5), |l| {
        l.lines()
            .any(|l| l.contains("blackhole.test") && l.contains("connect timeout"))
    });
    assert!(
        log.lines()
            .any(|l| l.contains("blackhole.test") && l.contains("connect timeout")),
        "{log}"
    );
    let held = NetNs::block_on(&rt, async {
        tokio::net::TcpStream::connect("127.0.0.1:9001")
            .await
            .expect("connect 9001")
    });
    // The pooled HTTP connection and the TCP route's, both with keepalive.
    let both = poll(Duration::from_secs(5), || {
        ss(18304).matches("timer:(keepalive,").count() == 2
    });
    assert!(both.is_some(), "{}", ss(18304));
    drop(held);

    // h2UpgradePolicy: UPGRADE -> HTTP/2 to the h2c-only backend.
    // With maxRequestsPerConnection: 2, four requests take two HTTP/2 connections; the
    // spent one is closed, the other once idle for 1 s.
    for i in 0..4 {
        let r = get(&ns, "h2.test", &format!("h2-{i}"));
        assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
        assert_eq!(r.body.trim(), "version=HTTP/2.0");
    }
    assert_eq!(h2.accepted.load(Ordering::SeqCst), 2);
    assert!(
        poll(Duration::from_secs(6), || h2.closed.load(Ordering::SeqCst)
            == 2)
        .is_some(),
        "closed: {}",
        h2.closed.load(Ordering::SeqCst)
    );
    drop(rt);
}

/// A backend speaking HTTP/1.1 and h2c (prior knowledge) on one port, answering with
/// the request's version.
async fn h1_and_h2c_backend(addr: SocketAddr) {
    let l = tokio::net::TcpListener::bind(addr).await.expect("bind");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        format!("version={:?}\n", req.version()),
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
}

#[test]
fn connection_pool_streams_and_client_protocol() {
    if !privileged("connection_pool_streams_and_client_protocol") {
        return;
    }
    let ns = NetNs::new("uppool2");
    let dir = scratch(&ns);
    let rt = ns.runtime();
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    const SLOW: Duration = Duration::from_secs(2);
    let (capped, uncapped) = NetNs::block_on(&rt, async move {
        let capped = h2c_backend_slow(at(18311), SLOW).await;
        let uncapped = h2c_backend_slow(at(18312), SLOW).await;
        h1_and_h2c_backend(at(18313)).await;
        h1_and_h2c_backend(at(18314)).await;
        (capped, uncapped)
    });
    let mut yaml = String::from(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*\"]
",
    );
    yaml += &service(
        "capped.test",
        "127.0.0.1",
        18311,
        "{http: {h2UpgradePolicy: UPGRADE, maxConcurrentStreams: 2}}",
    );
    yaml += &service(
        "uncapped.test",
        "127.0.0.1",
        18312,
        "{http: {h2UpgradePolicy: UPGRADE}}",
    );
    yaml += &service(
        "client.test",
        "127.0.0.1",
        18313,
        "{http: {useClientProtocol: true}}",
    );
    yaml += &service("port.test", "127.0.0.1", 18314, "");
    let cfg = dir.join("upstream-pool-2.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let gw = start_gateway(&ns, &[&cfg]);
    assert!(
        !gw.log().contains("GW106"),
        "the settings are not warned:\n{}",
        gw.log()
    );
    let dump: serde_json::Value =
        serde_json::from_str(&gw.admin_get("/config_dump")).expect("config_dump JSON");
    let opts = |name: &str| {
        dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["dynamic_active_clusters"].as_array())
            .flatten()
            .map(|c| &c["cluster"])
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no cluster {name} in {dump}"))
            ["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            .clone()
    };
    assert_eq!(
        opts("outbound|80||capped.test")["explicit_http_config"]["http2_protocol_options"]["max_concurrent_streams"],
        2
    );
    assert!(
        opts("outbound|80||client.test")["use_downstream_protocol_config"].is_object(),
        "{}",
        opts("outbound|80||client.test")
    );

    // maxConcurrentStreams: 2 -> four concurrent slow requests, two HTTP/2 connections;
    // without the cap all four share one.
    for (host, counts, want) in [("capped.test", &capped, 2), ("uncapped.test", &uncapped, 1)] {
        let rs: Vec<Resp> = std::thread::scope(|s| {
            let ns = &ns;
            let hs: Vec<_> = (0..4)
                .map(|i| s.spawn(move || get(ns, host, &format!("{host}-{i}"))))
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("curl thread"))
                .collect()
        });
        for r in &rs {
            assert_eq!(r.status, 200, "{host}: {r:?}\n{}", gw.log());
            assert_eq!(r.body.trim(), "version=HTTP/2.0", "{host}");
        }
        assert_eq!(counts.accepted.load(Ordering::SeqCst), want, "{host}");
    }

    // useClientProtocol: the client's protocol upstream; without it, the port's (HTTP/1.1).
    for (host, h2_client, want) in [
        ("client.test", true, "version=HTTP/2.0"),
        ("client.test", false, "version=HTTP/1.1"),
        ("port.test", true, "version=HTTP/1.1"),
    ] {
        let host_h = format!("Host: {host}");
        let mut args = vec!["-H", host_h.as_str(), "http://127.0.0.1/x"];
        if h2_client {
            args.insert(0, "--http2-prior-knowledge");
        }
        let r = curl(&ns, &args);
        assert_eq!(r.status, 200, "{host} h2={h2_client}: {r:?}\n{}", gw.log());
        assert_eq!(r.body.trim(), want, "{host} h2={h2_client}");
    }
    drop(rt);
}

//! DestinationRule `connectionPool.tcp.maxConnectionDuration` (issue 13) through a real
//! gateway and real backends:
//! - HTTP/1.1 cluster, `1s`: sequential requests for 2.5 s all succeed and the backend
//!   sees at least two connections, the old ones closed; a 1.5 s request on a
//!   connection that passes its 1 s completes (200), and the next request opens a new
//!   connection (Envoy's `max_connection_duration`: drain, then close);
//! - the same on an HTTP/2 (h2c, `h2UpgradePolicy: UPGRADE`) cluster;
//! - TCP routes, every `--splice` mode: a flow with steady traffic is closed about 1 s
//!   after it opened (`auto`: after 4 MiB handed it to the kernel), the flow log saying
//!   `termination=max_connection_duration_reached` and the access log
//!   `connection_termination_details` the same with flag `DT` (Envoy's tcp_proxy
//!   `max_downstream_connection_duration`); a flow on a route without the setting
//!   outlives it; a TLS-terminated flow (the userspace copy) is closed the same way;
//! - `/config_dump`: the cluster's `common_http_protocol_options.max_connection_duration`
//!   and the tcp_proxy's `max_downstream_connection_duration`.
mod http_common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gateway_tests::{
    backends::{config_dir, tcp_echo},
    gateway::GatewayProc,
    netns::{NetNs, privileged},
};
use http_body_util::Full;
use http_common::*;
use hyper::body::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Connections a backend accepted and saw end.
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    closed: AtomicUsize,
}

/// A backend counting its connections (HTTP/1.1, or h2c with prior knowledge), which
/// answers `/slow` after 1.5 s and anything else at once.
async fn backend(addr: SocketAddr, h2: bool) -> Arc<Counts> {
    let counts = Arc::new(Counts::default());
    let l = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            c.accepted.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                    if req.uri().path() == "/slow" {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                    }
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"ok\n"),
                    )))
                });
                let io = hyper_util::rt::TokioIo::new(s);
                let _ = if h2 {
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await
                } else {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await
                };
                c.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    counts
}

/// ServiceEntry `host` (HTTP port 80) on 127.0.0.1:`port`, routed without retries,
/// with a DestinationRule whose `connectionPool` is `pool`.
fn http_service(host: &str, port: u16, pool: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {host}, namespace: istio-system}}
spec:
  hosts: [{host}]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: {host}}}}}], retries: {{attempts: 0}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {host}}}
spec:
  host: {host}
  trafficPolicy:
    connectionPool: {pool}
"
    )
}

fn get(ns: &NetNs, host: &str, path: &str) -> Resp {
    curl(
        ns,
        &[
            "-H",
            &format!("Host: {host}"),
            &format!("http://127.0.0.1{path}"),
        ],
    )
}

/// Polls `f` until true or `within` passes.
fn poll(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn max_connection_duration_http() {
    if !privileged("max_connection_duration_http") {
        return;
    }
    let ns = NetNs::new("maxdur-http");
    let dir = scratch(&ns);
    let rt = ns.runtime();
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let (h1, h2) = NetNs::block_on(&rt, async move {
        (
            backend(at(18401), false).await,
            backend(at(18402), true).await,
        )
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
    yaml += &http_service("h1.test", 18401, "{tcp: {maxConnectionDuration: 1s}}");
    yaml += &http_service(
        "h2.test",
        18402,
        "{tcp: {maxConnectionDuration: 1s}, http: {h2UpgradePolicy: UPGRADE}}",
    );
    let cfg = dir.join("maxdur.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let gw = start_gateway(&ns, &[&cfg]);
    assert!(
        !gw.log().contains("GW106"),
        "the setting is not warned:\n{}",
        gw.log()
    );

    // /config_dump: Envoy's cluster field, as Istio's applyConnectionPool writes it.
    let dump = gw.admin_json("/config_dump");
    let http_opts = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    for host in ["h1.test", "h2.test"] {
        let name = format!("outbound|80||{host}");
        let cluster = dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["dynamic_active_clusters"].as_array())
            .flatten()
            .map(|c| &c["cluster"])
            .find(|c| c["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no cluster {name} in {dump}"));
        assert_eq!(
            cluster["typed_extension_protocol_options"][http_opts]["common_http_protocol_options"]
                ["max_connection_duration"],
            "1s",
            "{cluster:#}"
        );
    }

    for (host, counts) in [("h1.test", &h1), ("h2.test", &h2)] {
        // Sequential requests for 2.5 s: every one answered, over at least two
        // upstream connections (a 1 s connection cannot carry them all).
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < Duration::from_millis(2500) && n < 200 {
            let r = get(&ns, host, "/x");
            assert_eq!(r.status, 200, "{host}: request {n}: {r:?}\n{}", gw.log());
            n += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        let accepted = counts.accepted.load(Ordering::SeqCst);
        eprintln!("{host}: {n} requests in 2.5 s over {accepted} upstream connections");
        assert!(
            accepted >= 2,
            "{host}: {n} requests, {accepted} connection(s)"
        );
        // The retired connections are closed (the last one may still be young).
        assert!(
            poll(Duration::from_secs(5), || counts
                .closed
                .load(Ordering::SeqCst)
                >= accepted - 1),
            "{host}: {accepted} connections, {} closed",
            counts.closed.load(Ordering::SeqCst)
        );

        // A 1.5 s request on a fresh connection that passes its 1 s meanwhile: it
        // completes, and the next request goes to a new connection.
        std::thread::sleep(Duration::from_millis(1200));
        let before = counts.accepted.load(Ordering::SeqCst);
        let r = get(&ns, host, "/slow");
        assert_eq!(
            r.status,
            200,
            "{host}: the in-flight request: {r:?}\n{}",
            gw.log()
        );
        let on = counts.accepted.load(Ordering::SeqCst);
        assert_eq!(
            on,
            before + 1,
            "{host}: the slow request's connection is new"
        );
        let r = get(&ns, host, "/x");
        assert_eq!(r.status, 200, "{host}: {r:?}");
        let after = counts.accepted.load(Ordering::SeqCst);
        assert_eq!(
            after,
            on + 1,
            "{host}: the request after the slow one reused the connection past its 1 s"
        );
    }
}

const TCP_CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: l4, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 9000, name: tcp-dur, protocol: TCP}
    hosts: ["*"]
  - port: {number: 9001, name: tcp-plain, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dur}
spec:
  hosts: [dur.test]
  ports: [{number: 2702, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: plain}
spec:
  hosts: [plain.test]
  ports: [{number: 2702, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: l4, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [l4]
  tcp:
  - match: [{port: 9000}]
    route: [{destination: {host: dur.test, port: {number: 2702}}}]
  - match: [{port: 9001}]
    route: [{destination: {host: plain.test, port: {number: 2702}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dur}
spec:
  host: dur.test
  trafficPolicy:
    connectionPool:
      tcp: {maxConnectionDuration: 1s}
"#;

/// Sends `n` bytes and reads their echo back, within 30 s; false when the flow ended.
async fn exchange(s: &mut TcpStream, n: usize) -> bool {
    let (mut r, mut w) = s.split();
    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    let send = async { w.write_all(&data).await.is_ok() };
    let recv = async {
        let mut got = vec![0u8; n];
        r.read_exact(&mut got).await.is_ok() && got == data
    };
    tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(send, recv) })
        .await
        .map(|(a, b)| a && b)
        .unwrap_or(false)
}

/// A byte each way every 50 ms until the flow ends (or 10 s); how long after `opened`
/// it ended (None: still open after 10 s).
async fn steady_until_closed(s: &mut TcpStream, opened: Instant) -> Option<Duration> {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if !exchange(s, 1).await {
            return Some(opened.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[test]
fn max_connection_duration_tcp_every_mode() {
    if !privileged("max_connection_duration_tcp_every_mode") {
        return;
    }
    for mode in ["ebpf", "splice", "uring", "auto"] {
        let ns = NetNs::new(&format!("maxdur-{mode}"));
        let rt = ns.runtime();
        let _echo = NetNs::block_on(&rt, tcp_echo("127.0.0.1:2702".parse().unwrap()))
            .expect("echo backend");
        let dir = scratch(&ns);
        let cfg = dir.join("l4.yaml");
        std::fs::write(&cfg, TCP_CONFIG).unwrap();
        let mesh = config_dir().join("mesh/mesh-config.yaml");
        let gw = GatewayProc::start(
            &ns,
            &[&cfg],
            &["--splice", mode, "--mesh-config", mesh.to_str().unwrap()],
        );
        let dump = gw.admin_json("/config_dump");
        let tcp_proxy = |port: u16| {
            dump["configs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["dynamic_listeners"].as_array())
                .flatten()
                .map(|l| &l["active_state"]["listener"])
                .find(|l| l["address"]["socket_address"]["port_value"] == port)
                .and_then(|l| l["filter_chains"][0]["filters"][0].get("typed_config"))
                .cloned()
                .unwrap_or_else(|| panic!("{mode}: no tcp_proxy for port {port} in {dump}"))
        };
        assert_eq!(
            tcp_proxy(9000)["max_downstream_connection_duration"],
            "1s",
            "{mode}"
        );
        assert!(
            tcp_proxy(9001)
                .get("max_downstream_connection_duration")
                .is_none(),
            "{mode}"
        );
        let (opened, s) = NetNs::block_on(&rt, async move {
            let opened = Instant::now();
            let mut s = TcpStream::connect("127.0.0.1:9000").await.expect("connect");
            if mode == "auto" {
                // Bulk first, so that the flow goes to the kernel (as l4.rs).
                assert!(exchange(&mut s, 4 << 20).await, "auto: the bulk echo");
            }
            (opened, s)
        });
        if mode == "auto" {
            gw.wait_splice(Duration::from_secs(1), "the bulk flow offloaded", |v| {
                v["offloads"] == 1
            });
        }
        let (ended, plain_ok) = NetNs::block_on(&rt, async move {
            let mut s = s;
            let ended = steady_until_closed(&mut s, opened);
            // Another service, no rule: steady traffic for 2 s, never cut.
            let plain = async {
                let mut p = TcpStream::connect("127.0.0.1:9001").await.expect("connect");
                let start = Instant::now();
                let mut ok = true;
                while ok && start.elapsed() < Duration::from_secs(2) {
                    ok = exchange(&mut p, 1).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                ok
            };
            tokio::join!(ended, plain)
        });
        eprintln!("{mode}: the steady flow ended {ended:?} after it opened");
        let Some(t) = ended else {
            panic!("{mode}: the flow is still open after 10 s\n{}", gw.log());
        };
        // The kernel path's sweep runs on its 250 ms tick: 1 to 1.25 s; allow for load.
        assert!(
            t >= Duration::from_millis(950) && t < Duration::from_secs(3),
            "{mode}: closed {t:?} after it opened, not ~1 s"
        );
        assert!(plain_ok, "{mode}: the flow without the setting was cut");
        let log = gw.wait_log(Duration::from_secs(10), |l| {
            l.matches("flow closed").count() >= 2
        });
        let flows: Vec<&str> = log.lines().filter(|l| l.contains("flow closed")).collect();
        let cut: Vec<&&str> = flows
            .iter()
            .filter(|l| l.contains("termination=max_connection_duration_reached"))
            .collect();
        assert_eq!(cut.len(), 1, "{mode}: {flows:#?}");
        assert!(
            log.lines().any(|l| l.contains(
                "\"connection_termination_details\":\"max_connection_duration_reached\""
            ) && l.contains("\"response_flags\":\"DT\"")
                && l.contains("outbound|2702||dur.test")),
            "{mode}: no access-log line with DT for dur.test:\n{log}"
        );
        if mode == "auto" {
            gw.wait_splice(Duration::from_secs(1), "offloaded before the cut", |v| {
                v["offloads"] == 1
            });
        }
    }
}

/// The TLS-terminated flows' userspace copy (`proxy/l4_copy.rs`) honours the deadline
/// too: a SIMPLE TLS server's tcp route to a service with `maxConnectionDuration: 1s`.
#[test]
fn max_connection_duration_tls_terminated() {
    use rustls::{
        ClientConfig, RootCertStore,
        pki_types::{CertificateDer, ServerName, pem::PemObject},
    };
    if !privileged("max_connection_duration_tls_terminated") {
        return;
    }
    const HOST: &str = "webapp.istioinaction.io";
    let ns = NetNs::new("maxdur-tls");
    let dir = scratch(&ns);
    let rt = ns.runtime();
    let _echo =
        NetNs::block_on(&rt, tcp_echo("127.0.0.1:2703".parse().unwrap())).expect("echo backend");
    let (cert, key) = gateway_tests::backends::demo_cert(HOST);
    let mut yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: tls-gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 31400, name: tls-simple, protocol: TLS}}
    tls: {{mode: SIMPLE, credentialName: webapp-cred}}
    hosts: [{HOST}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: dur}}
spec:
  hosts: [dur.test]
  ports: [{{number: 2703, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tls-dur, namespace: istio-system}}
spec:
  hosts: [{HOST}]
  gateways: [tls-gw]
  tcp: [{{route: [{{destination: {{host: dur.test, port: {{number: 2703}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: dur}}
spec:
  host: dur.test
  trafficPolicy: {{connectionPool: {{tcp: {{maxConnectionDuration: 1s}}}}}}
"
    );
    yaml += &tls_secret_yaml("webapp-cred", &cert, &key, None);
    let cfg = dir.join("tls-dur.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let gw = start_gateway(&ns, &[&cfg]);

    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(gateway_tests::backends::demo_ca()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let ended = NetNs::block_on(&rt, async move {
        let opened = Instant::now();
        let tcp = TcpStream::connect("127.0.0.1:31400")
            .await
            .expect("connect");
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(ServerName::try_from(HOST).unwrap(), tcp)
            .await
            .expect("TLS handshake");
        // A byte each way every 50 ms until the gateway ends the flow (at most 10 s).
        let mut one = [0u8; 1];
        while opened.elapsed() < Duration::from_secs(10) {
            let ok = tls.write_all(b"x").await.is_ok()
                && matches!(
                    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut one)).await,
                    Ok(Ok(_))
                );
            if !ok {
                return Some(opened.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    });
    eprintln!("tls: the steady terminated flow ended {ended:?} after it opened");
    let t = ended.unwrap_or_else(|| panic!("still open after 10 s\n{}", gw.log()));
    assert!(
        t >= Duration::from_millis(950) && t < Duration::from_secs(3),
        "closed {t:?} after it opened, not ~1 s"
    );
    let log = gw.wait_log(Duration::from_secs(5), |l| {
        l.contains("termination=max_connection_duration_reached")
    });
    assert!(
        log.lines().any(|l| l.contains("flow closed")
            && l.contains("termination=max_connection_duration_reached")
            && l.contains("dur.test")),
        "{log}"
    );
}

//! gRPC clients get the gateway's own answers as gRPC (issue 13): a request no route
//! takes, or one that times out, comes back as Envoy sends it to a gRPC client, a
//! trailers-only response (HTTP 200, `grpc-status`, `grpc-message`); and the client's
//! `grpc-timeout` is the request's timeout.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use gateway_tests::{
    gateway::GatewayProc,
    netns::{NetNs, privileged},
};
use http_body_util::{BodyExt, Full};

const BACKEND: u16 = 18460;

const CONFIG: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"grpc.test\"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: grpc, namespace: istio-system}
spec:
  hosts: [grpc.test]
  ports: [{number: 80, name: grpc, protocol: GRPC}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {grpc: 18460}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: grpc, namespace: istio-system}
spec:
  hosts: [grpc.test]
  gateways: [gw]
  http:
  - route: [{destination: {host: grpc.test}}]
    timeout: 5s
";

/// An h2c gRPC backend that answers every call after 3 s (`grpc-status: 0`).
async fn slow_grpc_backend(addr: SocketAddr) {
    let l = tokio::net::TcpListener::bind(addr).await.expect("bind");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    let resp = hyper::Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "0")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
            });
        }
    });
}

struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: Bytes,
    took: Duration,
}

/// One gRPC call over h2c (prior knowledge) to the gateway.
async fn call(authority: &str, grpc_timeout: Option<&str>) -> Answer {
    let tcp = tokio::net::TcpStream::connect("127.0.0.1:80")
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::post(format!("http://{authority}/echo.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = grpc_timeout {
        req = req.header("grpc-timeout", t);
    }
    let req = req
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x02hi")))
        .unwrap();
    let t = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("no answer in 10 s")
        .expect("call");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Answer {
        status,
        headers,
        body,
        took: t.elapsed(),
    }
}

#[test]
fn grpc_clients_get_trailers_only_local_replies_and_their_deadline() {
    if !privileged("grpc_clients_get_trailers_only_local_replies_and_their_deadline") {
        return;
    }
    let ns = NetNs::new("grpcl");
    let rt = ns.runtime();
    NetNs::block_on(&rt, slow_grpc_backend(([127, 0, 0, 1], BACKEND).into()));
    let cfg = std::env::temp_dir().join(format!("gw-grpc-local-{}.yaml", std::process::id()));
    std::fs::write(&cfg, CONFIG).unwrap();
    let gw = GatewayProc::start(
        &ns,
        &[&cfg],
        &["--status-port", "off", "--prometheus-port", "off"],
    );

    // No route for the host: Envoy's 404 NR, as gRPC UNIMPLEMENTED (12), no body.
    let a = NetNs::block_on(&rt, call("unknown.test", None));
    assert_eq!(a.status, 200, "{:?}", a.headers);
    assert_eq!(a.headers["content-type"], "application/grpc");
    assert_eq!(a.headers["grpc-status"], "12");
    assert!(a.body.is_empty(), "{:?}", a.body);

    // The client's deadline (300 ms) beats the route's 5 s timeout and the backend's 3 s:
    // 504 UT as gRPC UNAVAILABLE (14) with Envoy's message.
    let a = NetNs::block_on(&rt, call("grpc.test", Some("300m")));
    assert_eq!(a.status, 200, "{:?}", a.headers);
    assert_eq!(a.headers["grpc-status"], "14", "{:?}", a.headers);
    assert_eq!(a.headers["grpc-message"], "upstream request timeout");
    assert!(a.took < Duration::from_millis(2500), "took {:?}", a.took);
    let log = gw.wait_log(Duration::from_secs(5), |l| {
        l.contains("response_flags=UT") && l.contains("response_flags=NR")
    });
    let line = log
        .lines()
        .find(|l| l.contains("response_flags=UT"))
        .unwrap_or_else(|| panic!("no UT line:\n{log}"));
    let ms: u64 = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("duration_ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {line}"));
    assert!(
        (300..2500).contains(&ms),
        "timed out after {ms} ms, not at the client's 300 ms: {line}"
    );
    assert!(line.contains("status=200"), "{line}");

    // Without grpc-timeout the route's own timeout holds: the backend's answer (3 s)
    // arrives, grpc-status 0.
    let a = NetNs::block_on(&rt, call("grpc.test", None));
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["grpc-status"], "0", "{:?}", a.headers);
    assert!(a.took >= Duration::from_secs(3), "took {:?}", a.took);
    let _ = std::fs::remove_file(cfg);
}

//! TLS origination to upstreams (DestinationRule `tls`) through a real gateway to real
//! rustls backends with a test CA: SIMPLE verifying the SNI (the destination host by
//! default) or `subjectAltNames`, a wrong SAN failing closed (503 `UF` and a log line
//! saying why), `insecureSkipVerify`, MUTUAL with the client certificate from a
//! `credentialName` Secret or from files, and a backend that requires a client
//! certificate refusing SIMPLE. The backends answer with the SNI they were sent and
//! whether a client certificate was presented.
mod http_common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use gateway_tests::netns::{NetNs, privileged};
use http_body_util::Full;
use http_common::*;
use hyper::body::Bytes;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// SIMPLE backend (any client) and MUTUAL backend (a client certificate of the CA).
const SIMPLE_PORT: u16 = 18443;
const MUTUAL_PORT: u16 = 18444;

/// A TLS backend (HTTP/1.1) answering `sni=<sni> client_cert=<bool>`; with `client_ca`
/// it requires a client certificate signed by it.
async fn tls_backend(addr: SocketAddr, cert: &Path, key: &Path, client_ca: Option<&Path>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            b.with_client_cert_verifier(v)
        }
        None => b.with_no_client_auth(),
    };
    let mut cfg = b.with_single_cert(chain, key).unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind(addr).await.expect("bind");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(std::time::Duration::from_secs(5), acceptor.accept(s))
                        .await
                else {
                    return;
                };
                let (_, conn) = tls.get_ref();
                let text = format!(
                    "sni={} client_cert={}\n",
                    conn.server_name().unwrap_or("-"),
                    conn.peer_certificates().is_some_and(|c| !c.is_empty())
                );
                let svc = hyper::service::service_fn(move |_req| {
                    let text = text.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(text),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
}

/// A ServiceEntry `host` (port 80, HTTP) on one endpoint, routed from the gateway's
/// port 80 by that host, with a DestinationRule whose `trafficPolicy.tls` is `tls`.
fn service(host: &str, port: u16, tls: &str) -> String {
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
  gateways: [tls-gw]
  http: [{{route: [{{destination: {{host: {host}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {host}}}
spec:
  host: {host}
  trafficPolicy:
    tls: {tls}
"
    )
}

#[test]
fn tls_origination_simple_mutual_and_san_failures() {
    if !privileged("tls_origination_simple_mutual_and_san_failures") {
        return;
    }
    let ns = NetNs::new("uptls");
    let dir = scratch(&ns);
    let (ca, ca_key) = mint_ca(&dir, "upstream-ca");
    let (srv, srv_key) = mint_cert(&dir, "upstream", "DNS:upstream.test", &ca, &ca_key);
    let (cli, cli_key) = mint_cert(&dir, "gateway-client", "DNS:gateway.test", &ca, &ca_key);
    let rt = ns.runtime();
    let (srv2, srv_key2, ca2) = (srv.clone(), srv_key.clone(), ca.clone());
    NetNs::block_on(&rt, async move {
        tls_backend(([127, 0, 0, 1], SIMPLE_PORT).into(), &srv2, &srv_key2, None).await;
        tls_backend(
            ([127, 0, 0, 1], MUTUAL_PORT).into(),
            &srv2,
            &srv_key2,
            Some(&ca2),
        )
        .await;
    });
    let (ca_s, cli_s, cli_key_s) = (
        ca.display().to_string(),
        cli.display().to_string(),
        cli_key.display().to_string(),
    );
    let mut yaml = String::from(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: tls-gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*\"]
",
    );
    yaml += &tls_secret_yaml("upstream-client", &cli, &cli_key, Some(&ca));
    // SNI and the name verified: the destination host.
    yaml += &service(
        "upstream.test",
        SIMPLE_PORT,
        &format!("{{mode: SIMPLE, caCertificates: {ca_s}}}"),
    );
    yaml += &service(
        "sans.test",
        SIMPLE_PORT,
        &format!(
            "{{mode: SIMPLE, caCertificates: {ca_s}, sni: upstream.test, subjectAltNames: [nope.test, upstream.test]}}"
        ),
    );
    yaml += &service(
        "wrong-san.test",
        SIMPLE_PORT,
        &format!(
            "{{mode: SIMPLE, caCertificates: {ca_s}, sni: upstream.test, subjectAltNames: [other.test]}}"
        ),
    );
    // No SANs: the certificate must match the SNI, here the destination host.
    yaml += &service(
        "wrong-host.test",
        SIMPLE_PORT,
        &format!("{{mode: SIMPLE, caCertificates: {ca_s}}}"),
    );
    yaml += &service(
        "insecure.test",
        SIMPLE_PORT,
        "{mode: SIMPLE, insecureSkipVerify: true, sni: whatever.test}",
    );
    yaml += &service(
        "mutual-secret.test",
        MUTUAL_PORT,
        "{mode: MUTUAL, credentialName: upstream-client, sni: upstream.test}",
    );
    yaml += &service(
        "mutual-files.test",
        MUTUAL_PORT,
        &format!(
            "{{mode: MUTUAL, clientCertificate: {cli_s}, privateKey: {cli_key_s}, caCertificates: {ca_s}, subjectAltNames: [upstream.test]}}"
        ),
    );
    yaml += &service(
        "no-client-cert.test",
        MUTUAL_PORT,
        &format!("{{mode: SIMPLE, caCertificates: {ca_s}, sni: upstream.test}}"),
    );
    yaml += &service(
        "missing-secret.test",
        MUTUAL_PORT,
        "{mode: MUTUAL, credentialName: nope, sni: upstream.test}",
    );
    let cfg = dir.join("upstream-tls.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let gw = start_gateway(&ns, &[&cfg]);

    let get = |host: &str, id: &str| {
        curl(
            &ns,
            &[
                "-H",
                &format!("Host: {host}"),
                "-H",
                &format!("x-request-id: {id}"),
                "http://127.0.0.1:80/",
            ],
        )
    };
    for (host, want) in [
        ("upstream.test", "sni=upstream.test client_cert=false"),
        ("sans.test", "sni=upstream.test client_cert=false"),
        ("insecure.test", "sni=whatever.test client_cert=false"),
        ("mutual-secret.test", "sni=upstream.test client_cert=true"),
        (
            "mutual-files.test",
            "sni=mutual-files.test client_cert=true",
        ),
    ] {
        let id = format!("ok-{host}");
        let r = get(host, &id);
        assert_eq!(r.status, 200, "{host}: {r:?}\n{}", gw.log());
        assert_eq!(r.body.trim(), want, "{host}");
        let line = log_line(&gw, &id);
        assert!(line.contains("response_flags=- "), "{line}");
    }
    for (host, why) in [
        (
            "wrong-san.test",
            "matches none of subjectAltNames [\"other.test\"]",
        ),
        ("wrong-host.test", "certificate not valid for name"),
    ] {
        let id = format!("fail-{host}");
        let r = get(host, &id);
        assert_eq!(r.status, 503, "{host}: {r:?}");
        let line = log_line(&gw, &id);
        assert!(line.contains("response_flags=UF"), "{line}");
        let said = |log: &str| {
            log.lines().any(|l| {
                l.contains("upstream TLS connection failed") && l.contains(host) && l.contains(why)
            })
        };
        let log = gw.wait_log(std::time::Duration::from_secs(5), said);
        assert!(said(&log), "{host}: no log line with {why:?}:\n{log}");
    }
    // SIMPLE to a backend that requires a client certificate: with TLS 1.3 the client's
    // side of the handshake completes before the server checks for a certificate, so
    // the refusal (an alert) arrives as the request is sent: 503 `UC`, as Envoy.
    let r = get("no-client-cert.test", "no-client-cert");
    assert_eq!(r.status, 503, "{r:?}");
    let line = log_line(&gw, "no-client-cert");
    assert!(line.contains("response_flags=UC "), "{line}");
    // A credentialName Secret that does not exist: the cluster fails closed, and says
    // why at start and on each request.
    let r = get("missing-secret.test", "missing-secret");
    assert_eq!(r.status, 503, "{r:?}");
    let line = log_line(&gw, "missing-secret");
    assert!(line.contains("response_flags=UF "), "{line}");
    let why = "credentialName \"nope\": no Secret \"nope\" in namespace \"istio-system\"";
    let log = gw.log();
    for what in [
        "TLS origination cannot be set up; requests to this cluster fail (503 UF)",
        "upstream TLS origination is not set up",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(what) && l.contains(why) && l.contains("missing-secret.test")),
            "no line with {what:?} and {why:?}:\n{log}"
        );
    }
    // TLS connections are pooled: a second request to a verified upstream works too.
    assert_eq!(get("upstream.test", "again").status, 200);
}

/// A response body of the frames sent on a channel (data, then trailers).
struct Frames(tokio::sync::mpsc::Receiver<hyper::body::Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// The server-streaming call sends its second message only once the test has received
/// the first through the gateway (so a gateway that buffered would never finish).
static SECOND_MESSAGE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// A gRPC message: uncompressed flag, length, bytes.
fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(msg);
    Bytes::from(framed)
}

fn grpc_ok_trailers() -> hyper::body::Frame<Bytes> {
    let mut t = hyper::HeaderMap::new();
    t.insert("grpc-status", "0".parse().unwrap());
    t.insert("grpc-message", "echoed".parse().unwrap());
    hyper::body::Frame::trailers(t)
}

/// An HTTP/2-only backend (h2c prior knowledge, or TLS with ALPN h2). A gRPC request
/// (`application/grpc`, one length-prefixed message) gets `echo:<message>` back with
/// trailers `grpc-status: 0`, `grpc-message: echoed`; anything else gets
/// `version=<v> authority=<:authority> te=<te>`. `.../Stream` (server streaming)
/// answers `one`, then `two` once [`SECOND_MESSAGE`] is notified, then the trailers.
async fn h2_backend(addr: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) {
    use http_body_util::BodyExt;
    let l = tokio::net::TcpListener::bind(addr).await.expect("bind h2");
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let path = req.uri().path().to_string();
                        let grpc = req
                            .headers()
                            .get("content-type")
                            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                        let seen = format!(
                            "version={:?} authority={} te={}",
                            req.version(),
                            req.uri().authority().map(|a| a.as_str()).unwrap_or("-"),
                            req.headers()
                                .get("te")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-"),
                        );
                        let (frames, rx) = tokio::sync::mpsc::channel(4);
                        let mut resp = hyper::Response::builder().header("x-seen", seen.clone());
                        if grpc {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let msg = body.get(5..).unwrap_or_default();
                            let mut out = b"echo:".to_vec();
                            out.extend_from_slice(msg);
                            resp = resp.header("content-type", "application/grpc");
                            if path.ends_with("/Stream") {
                                tokio::spawn(async move {
                                    let one = hyper::body::Frame::data(grpc_frame(b"one"));
                                    let _ = frames.send(one).await;
                                    SECOND_MESSAGE.notified().await;
                                    let two = hyper::body::Frame::data(grpc_frame(b"two"));
                                    let _ = frames.send(two).await;
                                    let _ = frames.send(grpc_ok_trailers()).await;
                                });
                            } else {
                                let _ = frames.try_send(hyper::body::Frame::data(grpc_frame(&out)));
                                let _ = frames.try_send(grpc_ok_trailers());
                            }
                        } else {
                            let _ =
                                frames.try_send(hyper::body::Frame::data(Bytes::from(seen + "\n")));
                        }
                        Ok::<_, std::convert::Infallible>(resp.body(Frames(rx)).unwrap())
                    },
                );
                let h2 =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                let _ = match acceptor {
                    None => {
                        h2.serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                            .await
                    }
                    Some(a) => match a.accept(s).await {
                        Ok(t) => {
                            h2.serve_connection(hyper_util::rt::TokioIo::new(t), svc)
                                .await
                        }
                        Err(_) => return,
                    },
                };
            });
        }
    });
}

const H2C_PORT: u16 = 18450;
const H2_TLS_PORT: u16 = 18451;

/// A ServiceEntry `host` whose port 80 has `protocol`, routed from the gateway by host.
fn h2_service(host: &str, port: u16, protocol: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: p, protocol: {protocol}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{p: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {host}, namespace: istio-system}}
spec:
  hosts: [{host}]
  gateways: [tls-gw]
  http: [{{route: [{{destination: {{host: {host}}}}}]}}]
"
    )
}

#[test]
fn http2_and_grpc_upstreams() {
    if !privileged("http2_and_grpc_upstreams") {
        return;
    }
    let ns = NetNs::new("uph2");
    let dir = scratch(&ns);
    let (ca, ca_key) = mint_ca(&dir, "upstream-ca");
    let (srv, srv_key) = mint_cert(&dir, "upstream", "DNS:upstream.test", &ca, &ca_key);
    let rt = ns.runtime();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            CertificateDer::pem_file_iter(&srv)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap(),
            PrivateKeyDer::from_pem_file(&srv_key).unwrap(),
        )
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    NetNs::block_on(&rt, async move {
        h2_backend(([127, 0, 0, 1], H2C_PORT).into(), None).await;
        h2_backend(([127, 0, 0, 1], H2_TLS_PORT).into(), Some(Arc::new(tls))).await;
    });
    let mut yaml = String::from(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: tls-gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*\"]
",
    );
    yaml += &h2_service("h2c.test", H2C_PORT, "HTTP2");
    yaml += &h2_service("grpc.test", H2C_PORT, "GRPC");
    yaml += &h2_service("h2tls.test", H2_TLS_PORT, "HTTP2");
    yaml += &format!(
        "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: h2tls}}
spec:
  host: h2tls.test
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {}, sni: upstream.test}}
",
        ca.display()
    );
    let cfg = dir.join("upstream-h2.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let access_log = dir.join("access.log");
    let _ = std::fs::remove_file(&access_log);
    let mesh = dir.join("mesh.yaml");
    std::fs::write(
        &mesh,
        format!(
            "accessLogFile: {}\naccessLogFormat: \"%REQ(:AUTHORITY)% %GRPC_STATUS% %GRPC_STATUS(NUMBER)%\\n\"\n",
            access_log.display()
        ),
    )
    .unwrap();
    let gw = start_gateway_with(&ns, &[&cfg], &["--mesh-config", mesh.to_str().unwrap()]);

    // An HTTP/1.1 client; the upstream sees HTTP/2 with `:authority` the request's host.
    for host in ["h2c.test", "h2tls.test"] {
        let r = curl(
            &ns,
            &[
                "--http1.1",
                "-H",
                &format!("Host: {host}"),
                "http://127.0.0.1:80/",
            ],
        );
        assert_eq!(r.status, 200, "{host}: {r:?}\n{}", gw.log());
        assert_eq!(
            r.body.trim(),
            format!("version=HTTP/2.0 authority={host} te=-"),
            "{host}"
        );
    }

    // A gRPC unary call from an HTTP/2 client: the message, status and trailers pass
    // through both HTTP/2 hops.
    let (status, headers, body, trailers) = NetNs::block_on(&rt, async {
        use http_body_util::BodyExt;
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
        let mut msg = vec![0u8, 0, 0, 0, 5];
        msg.extend_from_slice(b"hello");
        let req = hyper::Request::post("http://grpc.test/echo.Echo/Say")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from(msg)))
            .unwrap();
        let resp = tokio::time::timeout(std::time::Duration::from_secs(10), send.send_request(req))
            .await
            .expect("gRPC call timed out")
            .expect("gRPC call");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let collected = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            resp.into_body().collect(),
        )
        .await
        .expect("body timed out")
        .expect("body");
        let trailers = collected.trailers().cloned();
        (status, headers, collected.to_bytes(), trailers)
    });
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("x-seen").and_then(|v| v.to_str().ok()),
        Some("version=HTTP/2.0 authority=grpc.test te=trailers"),
        "{headers:?}"
    );
    assert_eq!(&body[..], b"\0\0\0\0\x0aecho:hello");
    let trailers = trailers.expect("no trailers");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(
        trailers.get("grpc-message").map(|v| v.as_bytes()),
        Some(&b"echoed"[..])
    );
    // A server-streaming call: the first message arrives before the backend sends the
    // second (it waits for this side to have it), then the second, then the trailers.
    let frames = NetNs::block_on(&rt, async {
        use http_body_util::BodyExt;
        let wait = std::time::Duration::from_secs(10);
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
        let req = hyper::Request::post("http://grpc.test/echo.Echo/Stream")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(grpc_frame(b"hi")))
            .unwrap();
        let resp = tokio::time::timeout(wait, send.send_request(req))
            .await
            .expect("stream call timed out")
            .expect("stream call");
        let mut body = resp.into_body();
        let mut got = Vec::new();
        for i in 0..3 {
            let f = tokio::time::timeout(wait, body.frame())
                .await
                .unwrap_or_else(|_| panic!("frame {i} did not arrive (buffered?) after {got:?}"))
                .expect("a frame")
                .expect("frame ok");
            match f.into_data() {
                Ok(d) => got.push(format!("data {:?}", &d[..])),
                Err(f) => got.push(format!(
                    "trailers grpc-status={:?}",
                    f.into_trailers()
                        .ok()
                        .and_then(|t| t.get("grpc-status").cloned())
                )),
            }
            if i == 0 {
                SECOND_MESSAGE.notify_one();
            }
        }
        got
    });
    assert_eq!(
        frames,
        [
            "data [0, 0, 0, 0, 3, 111, 110, 101]",
            "data [0, 0, 0, 0, 3, 116, 119, 111]",
            "trailers grpc-status=Some(\"0\")",
        ]
    );
    // %GRPC_STATUS% from the trailers; `-` for a response without one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let want = [
        "h2c.test - -",
        "h2tls.test - -",
        "grpc.test OK 0",
        "grpc.test OK 0",
    ];
    loop {
        let log = std::fs::read_to_string(&access_log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        if lines == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "access log {lines:?}, want {want:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

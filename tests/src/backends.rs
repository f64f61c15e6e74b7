//! Demo backends: the upstream services of the walkthrough, for the integration tests
//! and for `cargo xtask run` (through the `demo-backends` binary).
//!
//! - [`tcp_echo`]: echoes bytes; half-close aware (on the client's FIN it finishes
//!   echoing, then sends its own FIN).
//! - [`http_app`]: HTTP/1.1 and h2c (prior knowledge) on one port. Every response has
//!   `x-backend: <name>` and a text body: first line `<name>: <METHOD> <path>`, second
//!   line a JSON object describing the request (method, path, query, version,
//!   authority, peer, tls, body_bytes, headers). Paths `/status/<code>` answer with that
//!   status and `/delay/<ms>` wait that long (at most 60 s) before answering.
//! - [`tls_app`]: the same app behind rustls (ALPN h2 and http/1.1); the JSON's `tls`
//!   says which SNI, ALPN and TLS version the client used.
//!
//! Each returns a [`Backend`]: its bound address (bind port 0 and read `addr`) and a
//! handle that stops the listener and all its connections when dropped. Accept loops
//! log client errors to stderr and carry on.
use std::{
    convert::Infallible,
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Response, StatusCode,
    body::Incoming,
    header::{CONTENT_TYPE, HOST, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};
use tokio_rustls::TlsAcceptor;

/// Ports of the demo backends (what `config/service-entries.yaml` points at).
pub mod demo {
    pub const WEBAPP_PORT: u16 = 18080;
    pub const CATALOG_PORT: u16 = 18081;
    pub const TCP_ECHO_PORT: u16 = 2701;
    pub const SIMPLE_TLS_1_PORT: u16 = 18443;
    pub const SIMPLE_TLS_2_PORT: u16 = 18444;
}

/// A running backend. Dropping it stops the listener and every open connection.
pub struct Backend {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Backend {
    /// Stops the backend (same as dropping it).
    pub fn stop(self) {}
}

impl Drop for Backend {
    fn drop(&mut self) {
        // The accept task owns the listener and a JoinSet of the connection tasks;
        // aborting it drops both, which aborts every connection.
        self.task.abort();
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("addr", &self.addr).finish()
    }
}

/// The repository's `config/` directory (example YAML, `certs/`).
pub fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

/// `(cert, key)` PEM paths of a demo host in `config/certs`, e.g.
/// `demo_cert("simple-sni-1.istioinaction.io")`.
pub fn demo_cert(host: &str) -> (PathBuf, PathBuf) {
    let certs = config_dir().join("certs");
    (
        certs.join(format!("{host}.cert.pem")),
        certs.join(format!("{host}.key.pem")),
    )
}

/// The demo CA (`config/certs/ca-chain.cert.pem`).
pub fn demo_ca() -> PathBuf {
    config_dir().join("certs/ca-chain.cert.pem")
}

fn log(what: &str, msg: impl std::fmt::Display) {
    eprintln!("[demo-backends] {what}: {msg}");
}

/// Binds `addr` and serves every connection with `handle` on its own task, until the
/// returned Backend is dropped. Errors of one connection are logged, never fatal.
async fn spawn_server<F, Fut>(addr: SocketAddr, what: String, handle: F) -> io::Result<Backend>
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("{what}: cannot bind {addr}: {e}")))?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let fut = handle(stream, peer);
                        let what = what.clone();
                        conns.spawn(async move {
                            if let Err(e) = fut.await {
                                log(&what, format_args!("connection from {peer}: {e}"));
                            }
                        });
                    }
                    Err(e) => {
                        // e.g. EMFILE, ECONNABORTED: keep serving.
                        log(&what, format_args!("accept: {e}"));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
                Some(joined) = conns.join_next(), if !conns.is_empty() => {
                    if let Err(e) = joined
                        && e.is_panic()
                    {
                        log(&what, "connection task panicked");
                    }
                }
            }
        }
    });
    Ok(Backend { addr, task })
}

// ---------------------------------------------------------------------------------------
// TCP echo

/// A TCP echo server. On EOF from the client it finishes echoing, then shuts down its
/// write side (so the client reads everything, then EOF), then closes.
pub async fn tcp_echo(addr: SocketAddr) -> io::Result<Backend> {
    spawn_server(addr, format!("tcp-echo {addr}"), |stream, _peer| {
        echo(stream)
    })
    .await
}

async fn echo(mut stream: TcpStream) -> io::Result<()> {
    let (mut rd, mut wr) = stream.split();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        wr.write_all(&buf[..n]).await?;
    }
    wr.shutdown().await
}

// ---------------------------------------------------------------------------------------
// HTTP app

/// What the app knows about the connection a request came on.
struct ConnInfo {
    name: Arc<str>,
    peer: SocketAddr,
    tls: Option<serde_json::Value>,
}

/// The HTTP app (HTTP/1.1 and h2c prior knowledge) named `name`.
pub async fn http_app(addr: SocketAddr, name: &str) -> io::Result<Backend> {
    let name: Arc<str> = name.into();
    spawn_server(addr, format!("{name} {addr}"), move |stream, peer| {
        let info = Arc::new(ConnInfo {
            name: name.clone(),
            peer,
            tls: None,
        });
        serve_http(stream, info)
    })
    .await
}

/// The HTTP app over TLS (rustls, ring provider; ALPN h2 and http/1.1).
pub async fn tls_app(
    addr: SocketAddr,
    name: &str,
    cert_pem: &Path,
    key_pem: &Path,
) -> io::Result<Backend> {
    let acceptor = TlsAcceptor::from(tls_server_config(cert_pem, key_pem)?);
    let name: Arc<str> = name.into();
    spawn_server(addr, format!("{name} {addr}"), move |stream, peer| {
        let acceptor = acceptor.clone();
        let name = name.clone();
        async move {
            let tls = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
                .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
            let conn = tls.get_ref().1;
            let tls_info = serde_json::json!({
                "sni": conn.server_name(),
                "alpn": conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
                "version": conn.protocol_version().map(|v| format!("{v:?}")),
            });
            let info = Arc::new(ConnInfo {
                name,
                peer,
                tls: Some(tls_info),
            });
            serve_http(tls, info).await
        }
    })
    .await
}

async fn serve_http<IO>(io: IO, info: Arc<ConnInfo>) -> io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| respond(info.clone(), req));
    auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await
        .map_err(|e| io::Error::other(format!("HTTP: {e}")))
}

async fn respond(
    info: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body_bytes = match body.collect().await {
        Ok(b) => serde_json::Value::from(b.to_bytes().len()),
        Err(_) => serde_json::Value::Null,
    };
    let path = parts.uri.path().to_owned();

    let mut status = StatusCode::OK;
    if let Some(code) = path.strip_prefix("/status/") {
        status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
    }
    if let Some(ms) = path
        .strip_prefix("/delay/")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }

    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<String> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        headers.insert(name.as_str().to_owned(), values.join(",").into());
    }
    let authority = parts.uri.authority().map(|a| a.to_string()).or_else(|| {
        parts
            .headers
            .get(HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
    });
    let echo = serde_json::json!({
        "backend": &*info.name,
        "method": parts.method.as_str(),
        "path": path,
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "authority": authority,
        "peer": info.peer.to_string(),
        "tls": info.tls,
        "body_bytes": body_bytes,
        "headers": headers,
    });
    let text = format!("{}: {} {}\n{}\n", info.name, parts.method, path, echo);

    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&info.name) {
        h.insert("x-backend", v);
    }
    Ok(resp)
}

// ---------------------------------------------------------------------------------------
// TLS configuration

fn pem_error(path: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {e}", path.display()),
    )
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server config for one certificate chain + key (PEM files), ALPN h2 and
/// http/1.1, TLS 1.2 and 1.3.
pub fn tls_server_config(cert_pem: &Path, key_pem: &Path) -> io::Result<Arc<ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert_pem)
        .map_err(|e| pem_error(cert_pem, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert_pem, e))?;
    if certs.is_empty() {
        return Err(pem_error(cert_pem, "no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_file(key_pem).map_err(|e| pem_error(key_pem, e))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| pem_error(cert_pem, e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A rustls client config that trusts only the CA(s) in `ca_pem` and offers `alpn`.
pub fn tls_client_config(ca_pem: &Path, alpn: &[&[u8]]) -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).map_err(|e| pem_error(ca_pem, e))? {
        roots
            .add(cert.map_err(|e| pem_error(ca_pem, e))?)
            .map_err(|e| pem_error(ca_pem, e))?;
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

// ---------------------------------------------------------------------------------------
// The demo set

/// Starts the walkthrough's backends on `ip` (what `demo-backends` runs on 127.0.0.1):
/// webapp :18080, catalog :18081, tcp-echo :2701, simple-tls-service-1 :18443 and
/// simple-tls-service-2 :18444 (certificates from `config_dir/certs`). Returns
/// `(name, description, backend)` for each.
pub async fn start_demo(
    ip: IpAddr,
    config_dir: &Path,
) -> io::Result<Vec<(&'static str, &'static str, Backend)>> {
    let at = |port| SocketAddr::new(ip, port);
    let certs = config_dir.join("certs");
    let pem = |host: &str| {
        (
            certs.join(format!("{host}.cert.pem")),
            certs.join(format!("{host}.key.pem")),
        )
    };
    let (c1, k1) = pem("simple-sni-1.istioinaction.io");
    let (c2, k2) = pem("simple-sni-2.istioinaction.io");
    Ok(vec![
        (
            "webapp",
            "HTTP/1.1 + h2c",
            http_app(at(demo::WEBAPP_PORT), "webapp").await?,
        ),
        (
            "catalog",
            "HTTP/1.1 + h2c",
            http_app(at(demo::CATALOG_PORT), "catalog").await?,
        ),
        (
            "tcp-echo",
            "TCP echo",
            tcp_echo(at(demo::TCP_ECHO_PORT)).await?,
        ),
        (
            "simple-tls-service-1",
            "TLS (simple-sni-1.istioinaction.io), HTTP/1.1 + h2",
            tls_app(
                at(demo::SIMPLE_TLS_1_PORT),
                "simple-tls-service-1",
                &c1,
                &k1,
            )
            .await?,
        ),
        (
            "simple-tls-service-2",
            "TLS (simple-sni-2.istioinaction.io), HTTP/1.1 + h2",
            tls_app(
                at(demo::SIMPLE_TLS_2_PORT),
                "simple-tls-service-2",
                &c2,
                &k2,
            )
            .await?,
        ),
    ])
}

/// 127.0.0.1 port 0: what tests usually bind.
pub fn any_local_port() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::client::conn::{http1, http2};
    use rustls::pki_types::ServerName;
    use tokio_rustls::TlsConnector;

    async fn get<IO>(io: IO, h2: bool, host: &str, path: &str) -> (StatusCode, String, String)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        let req = |uri: String| {
            Request::get(uri)
                .header(HOST, host)
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap()
        };
        let resp = if h2 {
            let (mut send, conn) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            // HTTP/2 wants an absolute URI (it becomes :scheme/:authority/:path).
            send.send_request(req(format!("http://{host}{path}")))
                .await
                .unwrap()
        } else {
            let (mut send, conn) = http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            send.send_request(req(path.to_owned())).await.unwrap()
        };
        let status = resp.status();
        let backend = resp.headers()["x-backend"].to_str().unwrap().to_owned();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, backend, String::from_utf8(body.to_vec()).unwrap())
    }

    fn json_line(body: &str) -> serde_json::Value {
        serde_json::from_str(body.lines().nth(1).expect("JSON line")).unwrap()
    }

    #[tokio::test]
    async fn echo_round_trip_with_half_close() {
        let b = tcp_echo(any_local_port()).await.unwrap();
        let mut s = TcpStream::connect(b.addr).await.unwrap();
        let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let (mut rd, mut wr) = s.split();
        let write = async {
            wr.write_all(&payload).await.unwrap();
            wr.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let read = rd.read_to_end(&mut got);
        let (_, n) = tokio::join!(write, read);
        assert_eq!(n.unwrap(), payload.len());
        assert_eq!(got, payload);
    }

    #[tokio::test]
    async fn http1_and_h2c_get() {
        let b = http_app(any_local_port(), "webapp").await.unwrap();
        for h2 in [false, true] {
            let s = TcpStream::connect(b.addr).await.unwrap();
            let (status, backend, body) =
                get(s, h2, "webapp.istioinaction.io", "/api/catalog?x=1").await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(backend, "webapp");
            assert!(body.starts_with("webapp: GET /api/catalog\n"), "{body}");
            let j = json_line(&body);
            assert_eq!(j["authority"], "webapp.istioinaction.io");
            assert_eq!(j["query"], "x=1");
            assert_eq!(j["version"], if h2 { "HTTP/2.0" } else { "HTTP/1.1" });
        }
        let s = TcpStream::connect(b.addr).await.unwrap();
        let (status, _, _) = get(s, false, "x", "/status/503").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn tls_get_trusting_the_demo_ca() {
        let host = "simple-sni-1.istioinaction.io";
        let (cert, key) = demo_cert(host);
        let b = tls_app(any_local_port(), "simple-tls-service-1", &cert, &key)
            .await
            .unwrap();
        for (alpn, h2) in [(&b"http/1.1"[..], false), (&b"h2"[..], true)] {
            let connector = TlsConnector::from(tls_client_config(&demo_ca(), &[alpn]).unwrap());
            let s = TcpStream::connect(b.addr).await.unwrap();
            let tls = connector
                .connect(ServerName::try_from(host).unwrap(), s)
                .await
                .unwrap();
            let (status, backend, body) = get(tls, h2, host, "/").await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(backend, "simple-tls-service-1");
            assert!(body.starts_with("simple-tls-service-1: GET /\n"), "{body}");
            let j = json_line(&body);
            assert_eq!(j["tls"]["sni"], host);
            assert_eq!(j["tls"]["alpn"], std::str::from_utf8(alpn).unwrap());
        }
        // A name the certificate does not cover fails verification, and the server
        // keeps serving afterwards.
        let connector = TlsConnector::from(tls_client_config(&demo_ca(), &[]).unwrap());
        let s = TcpStream::connect(b.addr).await.unwrap();
        let wrong = ServerName::try_from("simple-sni-2.istioinaction.io").unwrap();
        assert!(connector.connect(wrong, s).await.is_err());
        let s = TcpStream::connect(b.addr).await.unwrap();
        let ok = connector.connect(ServerName::try_from(host).unwrap(), s);
        assert!(ok.await.is_ok());
    }

    #[tokio::test]
    async fn accept_loop_survives_garbage_and_drop_stops_it() {
        let b = http_app(any_local_port(), "webapp").await.unwrap();
        let mut s = TcpStream::connect(b.addr).await.unwrap();
        s.write_all(b"\x16\x03\x01 definitely not HTTP\r\n\r\n")
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
        let s = TcpStream::connect(b.addr).await.unwrap();
        assert_eq!(get(s, false, "a", "/").await.0, StatusCode::OK);

        let addr = b.addr;
        let open = TcpStream::connect(addr).await.unwrap();
        drop(b);
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_err() {
                // The open connection was closed too.
                let mut open = open;
                let mut buf = [0u8; 1];
                assert!(matches!(open.read(&mut buf).await, Ok(0) | Err(_)));
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("backend still accepting after drop");
    }
}

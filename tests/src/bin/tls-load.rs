//! `tls-load ADDR:PORT SNI CONNS SECS [resume]`: new TLS connections per second. CONNS
//! clients, each in a loop for SECS seconds: connect, a full TLS handshake with server
//! name SNI (no session resumption, certificates not checked: the server's cost is what
//! is measured, the client's is kept small), `GET /hello.txt` with `Host: SNI` and
//! `Connection: close`, read the response to the end. One thread (the caller pins it).
//!
//! `resume`: TLS 1.2 with session resumption instead, so that after the first
//! connection each one is an abbreviated handshake without public-key operations on
//! either side. For TLS passthrough, where the handshake is the upstream's: what is
//! left is the gateway's own work per connection (accept, read the ClientHello, find
//! the route by SNI, connect upstream, relay, close), not the upstream's crypto.
//! Prints `TLSLOAD {"ok":..,"errors":..,"secs":..,"p99_us":..,"first_error":..}`.
//!
//! The load generator of the routing-scale bench's HTTPS and TLS passthrough rows
//! (`gateway_tests::scalebench`): wrk can only send the URL's host as SNI, and these
//! rows need a different SNI per host on one address.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::{
        Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn usage() -> ! {
    eprintln!("usage: tls-load ADDR:PORT SNI CONNS SECS [resume]");
    std::process::exit(2);
}

/// One connection, start to end.
async fn one(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    name: &ServerName<'static>,
    request: &[u8],
) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut tls = connector
        .connect(name.clone(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    match tls.read_to_end(&mut buf).await {
        Ok(_) => {}
        // A peer that closes without close_notify after a whole response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
        Err(e) => return Err(format!("read: {e}")),
    }
    if !buf.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "response: {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(80)])
        ));
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, sni, conns, secs, resume) = match args.as_slice() {
        [a, s, c, t] => (a, s, c, t, false),
        [a, s, c, t, r] if r == "resume" => (a, s, c, t, true),
        _ => usage(),
    };
    let addr: SocketAddr = addr.parse().unwrap_or_else(|_| usage());
    let conns: usize = conns.parse().unwrap_or_else(|_| usage());
    let secs: f64 = secs.parse().unwrap_or_else(|_| usage());
    let provider = Arc::new(ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if resume {
        &[&rustls::version::TLS12]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    if !resume {
        config.resumption = Resumption::disabled();
    }
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(sni.clone()).unwrap_or_else(|_| usage());
    let request: Arc<[u8]> = format!(
        "GET /hello.txt HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\nUser-Agent: tls-load\r\n\r\n"
    )
    .into_bytes()
    .into();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (ok, errors, lat, first_error, elapsed) = rt.block_on(async move {
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(secs);
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                let (connector, name, request) = (connector.clone(), name.clone(), request.clone());
                tokio::spawn(async move {
                    let (mut ok, mut errors, mut lat, mut first) = (0u64, 0u64, Vec::new(), None);
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let r = tokio::time::timeout(
                            Duration::from_secs(5),
                            one(&connector, addr, &name, &request),
                        )
                        .await
                        .unwrap_or_else(|_| Err("timed out".into()));
                        match r {
                            Ok(()) => {
                                ok += 1;
                                lat.push(t.elapsed().as_micros() as u64);
                            }
                            Err(e) => {
                                errors += 1;
                                first.get_or_insert(e);
                                // Don't spin on a refused connect.
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                    (ok, errors, lat, first)
                })
            })
            .collect();
        let (mut ok, mut errors, mut lat, mut first) = (0, 0, Vec::new(), None);
        for t in tasks {
            let (o, e, l, f) = t.await.expect("client task");
            ok += o;
            errors += e;
            lat.extend(l);
            if first.is_none() {
                first = f;
            }
        }
        (ok, errors, lat, first, started.elapsed().as_secs_f64())
    });
    let mut lat = lat;
    lat.sort_unstable();
    let p99 = lat
        .get((lat.len() * 99 / 100).min(lat.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0);
    println!(
        "TLSLOAD {}",
        serde_json::json!({
            "ok": ok,
            "errors": errors,
            "secs": elapsed,
            "p99_us": p99,
            "first_error": first_error,
        })
    );
}

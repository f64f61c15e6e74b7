//! TLS termination for `tcp` routes: Gateway servers of protocol TLS with SIMPLE and
//! MUTUAL on one port, next to a PASSTHROUGH server (the SNI decides). The decrypted
//! stream goes to a TCP echo backend through the VirtualService `tcp` route: text and a
//! 16 MiB payload come back byte-exact, a half-close is passed on (the echo finishes
//! and closes, the client reads everything then EOF), MUTUAL refuses a client without a
//! certificate, and the passthrough server's backend still terminates its own TLS.
mod http_common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use gateway_tests::{
    backends::{self, config_dir, demo_ca, demo_cert},
    netns::{NetNs, privileged},
};
use http_common::*;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PORT: u16 = 31400;
const SIMPLE_HOST: &str = "webapp.istioinaction.io";
const MUTUAL_HOST: &str = "catalog.istioinaction.io";
const PASS_HOST: &str = "simple-sni-1.istioinaction.io";
const CRL_HOST: &str = "simple-sni-2.istioinaction.io";

/// A CA minted with rcgen, two client certificates it signs, and a CRL revoking the
/// second: `(ca, good, revoked, crl)` paths.
fn crl_material(dir: &Path) -> (PathBuf, (PathBuf, PathBuf), (PathBuf, PathBuf), PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
        ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
        RevokedCertParams, SerialNumber, date_time_ymd,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.distinguished_name.push(DnType::CommonName, "crl-test-ca");
    let ca = p.self_signed(&ca_key).unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let leaf = |name: &str, serial: u64| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![format!("{name}.client.test")]).unwrap();
        p.serial_number = Some(SerialNumber::from(serial));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        (
            write(&format!("{name}.crt"), cert.pem()),
            write(&format!("{name}.key"), key.serialize_pem()),
        )
    };
    let good = leaf("crl-good", 1001);
    let revoked = leaf("crl-revoked", 1002);
    let crl = CertificateRevocationListParams {
        this_update: date_time_ymd(2024, 1, 1),
        next_update: date_time_ymd(2099, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(1002u64),
            revocation_time: date_time_ymd(2024, 1, 1),
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca, &ca_key)
    .unwrap();
    let crl = write("ca.crl.pem", crl.pem().unwrap());
    (write("crl-ca.crt", ca.pem()), good, revoked, crl)
}

fn config_yaml(dir: &Path, crl_ca: &Path, crl: &Path) -> PathBuf {
    let (wc, wk) = demo_cert(SIMPLE_HOST);
    let (cc, ck) = demo_cert(MUTUAL_HOST);
    let (sc, sk) = demo_cert(CRL_HOST);
    let (sc, sk, crl_ca, crl) = (sc.display(), sk.display(), crl_ca.display(), crl.display());
    let mut y = format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: tls-term-gw}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {PORT}, name: tls-simple, protocol: TLS}}
    tls: {{mode: SIMPLE, credentialName: webapp-cred}}
    hosts: [{SIMPLE_HOST}]
  - port: {{number: {PORT}, name: tls-mutual, protocol: TLS}}
    tls: {{mode: MUTUAL, credentialName: catalog-mtls}}
    hosts: [{MUTUAL_HOST}]
  - port: {{number: {PORT}, name: tls-pass, protocol: TLS}}
    tls: {{mode: PASSTHROUGH}}
    hosts: [{PASS_HOST}]
  - port: {{number: {PORT}, name: tls-crl, protocol: TLS}}
    tls:
      mode: MUTUAL
      serverCertificate: {sc}
      privateKey: {sk}
      caCertificates: {crl_ca}
      caCrl: {crl}
    hosts: [{CRL_HOST}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: echo-terminated}}
spec:
  hosts: [{SIMPLE_HOST}, {MUTUAL_HOST}, {CRL_HOST}]
  gateways: [tls-term-gw]
  tcp:
  - route:
    - destination:
        host: tcp-echo-service.default.svc.cluster.local
        port: {{number: 2701}}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: passthrough}}
spec:
  hosts: [{PASS_HOST}]
  gateways: [tls-term-gw]
  tls:
  - match: [{{port: {PORT}, sniHosts: [{PASS_HOST}]}}]
    route:
    - destination:
        host: simple-tls-service-1.default.svc.cluster.local
        port: {{number: 80}}
"#
    );
    y += &tls_secret_yaml("webapp-cred", &wc, &wk, None);
    y += &tls_secret_yaml("catalog-mtls", &cc, &ck, Some(&demo_ca()));
    let path = dir.join("tls-terminate.yaml");
    std::fs::write(&path, y).unwrap();
    path
}

fn client_config(cert: Option<&(PathBuf, PathBuf)>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(demo_ca()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match cert {
        None => b.with_no_client_auth(),
        Some((c, k)) => {
            let chain = CertificateDer::pem_file_iter(c)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(k).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
    })
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(host: &'static str, cfg: Arc<ClientConfig>) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], PORT))).await?;
    let name = ServerName::try_from(host).unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// Writes `payload` while reading, then half-closes (close_notify + FIN) and reads to
/// EOF: what came back.
async fn echo_through(tls: Tls, payload: Arc<Vec<u8>>) -> std::io::Result<Vec<u8>> {
    let (mut r, mut w) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        for chunk in payload.chunks(64 * 1024) {
            w.write_all(chunk).await?;
        }
        w.shutdown().await?;
        Ok::<_, std::io::Error>(w)
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await?;
    writer.await.expect("writer task")?;
    Ok(got)
}

#[test]
fn tls_terminated_tcp_routes() {
    if !privileged("tls_terminated_tcp_routes") {
        return;
    }
    let ns = NetNs::new("tls-term");
    let dir = scratch(&ns);
    let ca_key = config_dir().join("certs/ca.key.pem");
    let client = mint_cert(&dir, "client", "DNS:client.test", &demo_ca(), &ca_key);
    let _tls_backend = start_backends(&ns, vec![App::Tls(18443, "simple-tls-1", PASS_HOST)]);
    let rt = ns.runtime();
    let _echo = NetNs::block_on(&rt, async {
        backends::tcp_echo(SocketAddr::from(([127, 0, 0, 1], 2701))).await
    })
    .expect("tcp echo");
    let (crl_ca, crl_good, crl_revoked, crl) = crl_material(&dir);
    let cfg = config_yaml(&dir, &crl_ca, &crl);
    // A short idle timeout, checked at the end (every other flow here keeps moving).
    let gw = start_gateway_with(
        &ns,
        &[&cfg, &config("service-entries.yaml")],
        &["--tcp-idle-timeout", "2s"],
    );

    // SIMPLE: a line echoed byte-exact, then a 16 MiB payload both ways with a
    // half-close at the end (the client's close_notify/FIN reaches the echo, which
    // finishes and closes; the client reads all of it, then EOF).
    let simple = client_config(None);
    let got = NetNs::block_on(&rt, {
        let c = simple.clone();
        async move {
            let mut tls = connect(SIMPLE_HOST, c).await?;
            tls.write_all(b"hello through TLS\n").await?;
            let mut buf = [0u8; 18];
            tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut buf))
                .await
                .map_err(std::io::Error::other)??;
            // ALPN as Istio offers on its TLS-terminating TCP chains: none asked, none got.
            assert_eq!(tls.get_ref().1.alpn_protocol(), None);
            Ok::<_, std::io::Error>(buf.to_vec())
        }
    });
    assert_eq!(
        got.expect("SIMPLE echo"),
        b"hello through TLS\n",
        "{}",
        gw.log()
    );

    let payload: Arc<Vec<u8>> = Arc::new((0..16u32 << 20).map(|i| (i * 7 % 251) as u8).collect());
    let got = NetNs::block_on(&rt, {
        let (c, p) = (simple.clone(), payload.clone());
        async move {
            let tls = connect(SIMPLE_HOST, c).await?;
            tokio::time::timeout(Duration::from_secs(60), echo_through(tls, p))
                .await
                .map_err(std::io::Error::other)?
        }
    })
    .expect("16 MiB through SIMPLE");
    assert_eq!(got.len(), payload.len(), "{}", gw.log());
    assert!(got == *payload, "16 MiB payload not byte-exact");
    let big = |l: &str| {
        l.contains("flow closed") && l.contains(&format!("bytes_received={}", 16u32 << 20))
    };
    let log = gw.wait_log(Duration::from_secs(10), |log| log.lines().any(big));
    let line = log.lines().find(|l| big(l)).unwrap();
    assert!(
        line.contains(&format!("bytes_sent={}", 16u32 << 20)),
        "{line}"
    );
    assert!(line.contains("termination=closed"), "{line}");
    assert!(line.contains(&format!("sni=\"{SIMPLE_HOST}\"")), "{line}");
    assert!(line.contains("path=\"copy\""), "{line}");

    // MUTUAL: without a client certificate the handshake is refused and nothing is
    // echoed; with one signed by the CA it works.
    let refused = NetNs::block_on(&rt, async move {
        let mut tls = match connect(MUTUAL_HOST, client_config(None)).await {
            Err(e) => return format!("handshake: {e}"),
            Ok(t) => t,
        };
        // TLS 1.3: the client finishes first and learns of the refusal on its read.
        let _ = tls.write_all(b"no certificate\n").await;
        let mut buf = Vec::new();
        match tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf)).await {
            Err(_) => panic!("MUTUAL without a certificate: neither refused nor closed"),
            Ok(Err(e)) => format!("read: {e}"),
            Ok(Ok(_)) => {
                assert!(
                    buf.is_empty(),
                    "echoed without a client certificate: {buf:?}"
                );
                "closed".to_string()
            }
        }
    });
    eprintln!("MUTUAL without a certificate: {refused}");
    let log = gw.wait_log(Duration::from_secs(10), |l| {
        l.contains("TLS handshake failed")
    });
    assert!(
        log.lines()
            .any(|l| l.contains("TLS handshake failed") && l.contains(MUTUAL_HOST)),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("flow closed") && l.contains(MUTUAL_HOST)),
        "a refused client reached the upstream: {log}"
    );
    let got = NetNs::block_on(&rt, {
        let c = client_config(Some(&client));
        async move {
            let tls = connect(MUTUAL_HOST, c).await?;
            tokio::time::timeout(
                Duration::from_secs(10),
                echo_through(tls, Arc::new(b"mutual ok\n".to_vec())),
            )
            .await
            .map_err(std::io::Error::other)?
        }
    });
    assert_eq!(got.expect("MUTUAL echo"), b"mutual ok\n", "{}", gw.log());

    // caCrl: a certificate the CRL does not list works, the revoked one is refused.
    let got = NetNs::block_on(&rt, {
        let c = client_config(Some(&crl_good));
        async move {
            let tls = connect(CRL_HOST, c).await?;
            tokio::time::timeout(
                Duration::from_secs(10),
                echo_through(tls, Arc::new(b"not revoked\n".to_vec())),
            )
            .await
            .map_err(std::io::Error::other)?
        }
    });
    assert_eq!(
        got.expect("caCrl, good certificate"),
        b"not revoked\n",
        "{}",
        gw.log()
    );
    let got = NetNs::block_on(&rt, {
        let c = client_config(Some(&crl_revoked));
        async move {
            let tls = connect(CRL_HOST, c).await?;
            tokio::time::timeout(
                Duration::from_secs(10),
                echo_through(tls, Arc::new(b"revoked\n".to_vec())),
            )
            .await
            .map_err(std::io::Error::other)?
        }
    });
    assert!(got.is_err(), "a revoked certificate was accepted: {got:?}");
    let log = gw.wait_log(Duration::from_secs(10), |l| l.contains("Revoked"));
    assert!(
        log.lines()
            .any(|l| l.contains("TLS handshake failed") && l.contains("Revoked")),
        "{log}"
    );

    // --tcp-idle-timeout: a terminated flow in which nothing moves is closed (a FIN, so
    // the client reads EOF) after 2 s, and logged as such.
    let waited = NetNs::block_on(&rt, {
        let c = simple.clone();
        async move {
            let mut tls = connect(SIMPLE_HOST, c).await?;
            tls.write_all(b"x").await?;
            let mut one = [0u8; 1];
            tls.read_exact(&mut one).await?;
            let t0 = std::time::Instant::now();
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut rest))
                .await
                .map_err(std::io::Error::other)?;
            // The gateway ends the flow with a FIN, not a close_notify: EOF either way.
            if let Err(e) = read {
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
            }
            assert!(rest.is_empty(), "{rest:?}");
            Ok::<_, std::io::Error>(t0.elapsed())
        }
    })
    .expect("idle flow");
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(6),
        "closed after {waited:?}"
    );
    let log = gw.wait_log(Duration::from_secs(5), |l| {
        l.contains("termination=idle_timeout")
    });
    assert!(
        log.lines()
            .any(|l| l.contains("termination=idle_timeout") && l.contains(SIMPLE_HOST)),
        "{log}"
    );
    eprintln!("measured: idle TLS-terminated flow closed after {waited:?} (--tcp-idle-timeout 2s)");

    // The PASSTHROUGH server on the same port: its backend's own certificate answers.
    let resolve = format!("{PASS_HOST}:{PORT}:127.0.0.1");
    let url = format!("https://{PASS_HOST}:{PORT}/");
    let ca = demo_ca();
    let r = curl(
        &ns,
        &[
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &resolve,
            &url,
        ],
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
}

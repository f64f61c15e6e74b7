//! TLS origination on `tcp` routes (DestinationRule `tls` on the cluster a TCP route
//! goes to), through the real gateway to rustls echo backends with a CA minted by rcgen:
//! SIMPLE verifying the SNI carries bytes both ways byte-exact; a `subjectAltNames` the
//! certificate does not have, and a server certificate the DestinationRule's `caCrl`
//! revokes, fail closed: the client's connection is closed without a byte and the
//! access log says `UF` with the reason.
mod http_common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use gateway_tests::netns::{NetNs, privileged};
use http_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Certificates for the test: `(ca, [(cert, key)] for good and revoked, crl)`.
struct Pki {
    ca: PathBuf,
    good: (PathBuf, PathBuf),
    revoked: (PathBuf, PathBuf),
    crl: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
        ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
        RevokedCertParams, SerialNumber, date_time_ymd,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.distinguished_name.push(DnType::CommonName, "origin-ca");
    let ca = p.self_signed(&ca_key).unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let leaf = |host: &str, serial: u64| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![host.to_string()]).unwrap();
        p.serial_number = Some(SerialNumber::from(serial));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.distinguished_name.push(DnType::CommonName, host);
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        (
            write(&format!("{host}.crt"), cert.pem()),
            write(&format!("{host}.key"), key.serialize_pem()),
        )
    };
    let good = leaf("echo.tls.test", 2001);
    let revoked = leaf("revoked.tls.test", 2002);
    let crl = CertificateRevocationListParams {
        this_update: date_time_ymd(2024, 1, 1),
        next_update: date_time_ymd(2099, 1, 1),
        crl_number: SerialNumber::from(7u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(2002u64),
            revocation_time: date_time_ymd(2024, 1, 1),
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca, &ca_key)
    .unwrap();
    Pki {
        ca: write("origin-ca.crt", ca.pem()),
        good,
        revoked,
        crl: write("origin.crl.pem", crl.pem().unwrap()),
    }
}

/// A TLS echo backend on `addr` with `cert`: echoes until EOF, then close_notify.
async fn tls_echo(addr: SocketAddr, cert: (PathBuf, PathBuf)) -> tokio::task::JoinHandle<()> {
    let cfg = gateway_tests::backends::tls_server_config(&cert.0, &cert.1).unwrap();
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let (mut r, mut w) = tokio::io::split(tls);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    })
}

/// One TCP server, VirtualService, ServiceEntry and DestinationRule per case: port
/// `gw_port` goes to `host`, whose endpoint is 127.0.0.1:`backend`, with `tls`.
fn case(gw_port: u16, host: &str, backend: u16, tls: &str) -> String {
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw-{gw_port}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gw_port}, name: tcp-{gw_port}, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs-{gw_port}}}
spec:
  hosts: ["*"]
  gateways: [gw-{gw_port}]
  tcp:
  - route: [{{destination: {{host: {host}, port: {{number: 9000}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {backend}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: dr-{gw_port}}}
spec:
  host: {host}
  trafficPolicy:
    tls: {tls}
"#
    )
}

/// Sends `payload` to the gateway's `port`, half-closes, reads to EOF (or a reset).
async fn exchange(port: u16, payload: Arc<Vec<u8>>) -> std::io::Result<Vec<u8>> {
    let s = tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        for chunk in payload.chunks(64 * 1024) {
            if w.write_all(chunk).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut got = Vec::new();
    let read = r.read_to_end(&mut got).await;
    writer.await.expect("writer task");
    read.map(|_| got)
}

#[test]
fn tcp_routes_originate_tls() {
    if !privileged("tcp_routes_originate_tls") {
        return;
    }
    let ns = NetNs::new("tcp-tls-orig");
    let dir = scratch(&ns);
    let pki = pki(&dir);
    let rt = ns.runtime();
    let _good = NetNs::block_on(
        &rt,
        tls_echo(([127, 0, 0, 1], 19443).into(), pki.good.clone()),
    );
    let _revoked = NetNs::block_on(
        &rt,
        tls_echo(([127, 0, 0, 1], 19444).into(), pki.revoked.clone()),
    );
    let ca = pki.ca.display();
    let crl = pki.crl.display();
    let mut y = case(
        31401,
        "echo.tls.test",
        19443,
        &format!("{{mode: SIMPLE, caCertificates: {ca}, caCrl: {crl}}}"),
    );
    y += &case(
        31402,
        "wrong-san.test",
        19443,
        &format!(
            "{{mode: SIMPLE, caCertificates: {ca}, sni: echo.tls.test, subjectAltNames: [other.tls.test]}}"
        ),
    );
    y += &case(
        31403,
        "revoked.tls.test",
        19444,
        &format!("{{mode: SIMPLE, caCertificates: {ca}, caCrl: {crl}}}"),
    );
    let cfg = dir.join("tcp-tls-origination.yaml");
    std::fs::write(&cfg, y).unwrap();
    let mesh = dir.join("mesh.yaml");
    std::fs::write(
        &mesh,
        "accessLogFile: /dev/stdout\naccessLogEncoding: JSON\n",
    )
    .unwrap();
    let gw = start_gateway_with(&ns, &[&cfg], &["--mesh-config", mesh.to_str().unwrap()]);
    let log = gw.log();
    assert!(!log.contains("GW1068"), "{log}");

    // SIMPLE with the SNI checked (the destination host) and a CRL that does not list
    // the certificate: 4 MiB both ways, byte-exact, half-close passed on.
    let payload: Arc<Vec<u8>> = Arc::new((0..4u32 << 20).map(|i| (i * 13 % 251) as u8).collect());
    let got = NetNs::block_on(&rt, {
        let p = payload.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(60), exchange(31401, p))
                .await
                .map_err(std::io::Error::other)?
        }
    })
    .expect("echo through TLS origination");
    assert_eq!(got.len(), payload.len(), "{}", gw.log());
    assert!(got == *payload, "payload not byte-exact");

    // A wrong subjectAltNames, and a revoked server certificate: closed, nothing echoed.
    for (port, host, reason) in [
        (31402, "wrong-san.test", "subjectAltNames"),
        (31403, "revoked.tls.test", "Revoked"),
    ] {
        let got = NetNs::block_on(&rt, async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                exchange(port, Arc::new(b"must not pass\n".to_vec())),
            )
            .await
            .map_err(std::io::Error::other)?
        });
        if let Ok(bytes) = &got {
            assert!(bytes.is_empty(), "{host}: bytes came back: {bytes:?}");
        }
        let cluster = format!("outbound|9000||{host}");
        let is_line = |l: &str| l.starts_with('{') && l.contains(&cluster);
        let log = gw.wait_log(Duration::from_secs(10), |l| l.lines().any(is_line));
        let line = log
            .lines()
            .find(|l| is_line(l))
            .unwrap_or_else(|| panic!("{host}: no access log line:\n{log}"));
        let rec: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(rec["response_flags"], "UF", "{line}");
        assert!(line.contains(reason), "{host}: reason missing: {line}");
        assert_eq!(rec["bytes_sent"], 0, "{line}");
        eprintln!("{host}: {line}");
    }
}

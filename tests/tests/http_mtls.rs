//! MUTUAL and OPTIONAL_MUTUAL TLS with client certificates minted by openssl for the
//! test: no certificate, a certificate from another CA, and a certificate whose SAN is
//! not in `subjectAltNames` are refused during the handshake; the right one gets 200.
mod http_common;

use std::path::Path;

use gateway_tests::{
    backends::{config_dir, demo_ca, demo_cert},
    netns::{NetNs, privileged},
};
use http_common::*;

const GOOD_SAN: &str = "spiffe://cluster.local/ns/default/sa/good";

fn config_yaml(dir: &Path) -> String {
    let (wc, wk) = demo_cert("webapp.istioinaction.io");
    let (cc, ck) = demo_cert("catalog.istioinaction.io");
    let ca = demo_ca();
    let ca_pem: String = std::fs::read_to_string(&ca)
        .unwrap()
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    let mut y = format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: mtls-gw}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https-mutual, protocol: HTTPS}}
    tls:
      mode: MUTUAL
      credentialName: webapp-mtls
      subjectAltNames: ["{GOOD_SAN}", "client.other.test"]
    hosts: [webapp.istioinaction.io]
  - port: {{number: 443, name: https-optional, protocol: HTTPS}}
    tls:
      mode: OPTIONAL_MUTUAL
      credentialName: catalog-opt
    hosts: [catalog.istioinaction.io]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: mtls-vs}}
spec:
  hosts: [webapp.istioinaction.io, catalog.istioinaction.io]
  gateways: [mtls-gw]
  http:
  - route: [{{destination: {{host: webapp, port: {{number: 80}}}}}}]
---
# The CA of catalog-opt lives in its own `<name>-cacert` Secret (generic, `cacert`).
apiVersion: v1
kind: Secret
metadata: {{name: catalog-opt-cacert, namespace: istio-system}}
stringData:
  cacert: |
{ca_pem}"#
    );
    // webapp-mtls carries its CA as ca.crt; catalog-opt has none of its own.
    y += &tls_secret_yaml("webapp-mtls", &wc, &wk, Some(&ca));
    y += &tls_secret_yaml("catalog-opt", &cc, &ck, None);
    let path = dir.join("mtls.yaml");
    std::fs::write(&path, y).unwrap();
    path.to_str().unwrap().to_string()
}

/// curl to `host` on 443 with an optional client certificate.
fn get(
    ns: &NetNs,
    host: &str,
    client: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    extra: &[&str],
) -> Resp {
    let ca = demo_ca();
    let resolve = format!("{host}:443:127.0.0.1");
    let url = format!("https://{host}/mtls");
    let mut args = vec![
        "-v",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        &url,
    ];
    let (c, k);
    if let Some((cert, key)) = client {
        c = cert.to_str().unwrap().to_string();
        k = key.to_str().unwrap().to_string();
        args.extend(["--cert", &c, "--key", &k]);
    }
    args.extend_from_slice(extra);
    curl(ns, &args)
}

#[test]
fn mutual_tls_client_certificates() {
    if !privileged("mutual_tls_client_certificates") {
        return;
    }
    let ns = NetNs::new("http-mtls");
    let dir = scratch(&ns);
    let ca_key = config_dir().join("certs/ca.key.pem");
    let good = mint_cert(
        &dir,
        "good",
        &format!("URI:{GOOD_SAN}"),
        &demo_ca(),
        &ca_key,
    );
    let bad_san = mint_cert(&dir, "badsan", "DNS:client.bad.test", &demo_ca(), &ca_key);
    let (evil_ca, evil_key) = mint_ca(&dir, "evil-ca");
    let wrong_ca = mint_cert(
        &dir,
        "wrongca",
        &format!("URI:{GOOD_SAN}"),
        &evil_ca,
        &evil_key,
    );

    let _b = start_backends(&ns, vec![App::Http(18080, "webapp")]);
    let cfg = config_yaml(&dir);
    let gw = start_gateway(&ns, &[Path::new(&cfg), &config("service-entries.yaml")]);
    let web = "webapp.istioinaction.io";

    // MUTUAL: the right certificate, over HTTP/1.1 and HTTP/2.
    for flag in ["--http1.1", "--http2"] {
        let r = get(
            &ns,
            web,
            Some(&good),
            &[flag, "-H", "x-forwarded-client-cert: forged"],
        );
        assert_eq!(r.status, 200, "{flag}: {r:?}\n{}", gw.log());
        assert_eq!(r.header("x-backend"), Some("webapp"));
        // The verified identity reaches the backend (Istio's SANITIZE_SET); the
        // client's own header does not.
        let xfcc = r.echo()["headers"]["x-forwarded-client-cert"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(xfcc.starts_with("Hash="), "{xfcc}");
        assert!(xfcc.contains(";Subject=\"CN=good\""), "{xfcc}");
        assert!(xfcc.contains(&format!(";URI={GOOD_SAN}")), "{xfcc}");
        assert!(!xfcc.contains("forged"), "{xfcc}");
    }
    // No certificate, another CA, a SAN not allowed: no HTTP response at all.
    for (what, client) in [
        ("no cert", None),
        ("wrong CA", Some(&wrong_ca)),
        ("SAN mismatch", Some(&bad_san)),
    ] {
        let r = get(&ns, web, client, &[]);
        assert_eq!(r.status, 0, "{what}: got an HTTP response: {r:?}");
        assert_ne!(r.exit, 0, "{what}: {r:?}");
    }
    let log = gw.log();
    assert!(log.contains("TLS handshake failed"), "{log}");
    assert!(log.contains("no allowed subjectAltName"), "{log}");
    // openssl, TLS 1.2 (where the refusal is part of the handshake itself).
    let out = sh_in(
        &ns,
        &format!(
            "openssl s_client -tls1_2 -connect 127.0.0.1:443 -servername {web} -CAfile {} </dev/null 2>&1",
            demo_ca().display()
        ),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("alert certificate required"), "{text}");

    // OPTIONAL_MUTUAL: no certificate is fine, a good one too, a bad one is not.
    let cat = "catalog.istioinaction.io";
    let r = get(&ns, cat, None, &["-H", "x-forwarded-client-cert: forged"]);
    assert_eq!(r.status, 200);
    assert!(
        r.echo()["headers"].get("x-forwarded-client-cert").is_none(),
        "{r:?}"
    );
    assert_eq!(get(&ns, cat, Some(&good), &[]).status, 200);
    let r = get(&ns, cat, Some(&wrong_ca), &[]);
    assert_eq!(r.status, 0, "{r:?}");

    // And the good client still gets through after all that.
    assert_eq!(get(&ns, web, Some(&good), &[]).status, 200);
}

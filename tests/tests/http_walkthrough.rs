//! The coolstore walkthrough end to end with real clients (curl, openssl s_client):
//! HTTP virtual hosting on :80, HTTPS with one certificate per host on :443 (SNI),
//! HTTP/1.1 and HTTP/2, the redirect to HTTPS, and a TLS port shared by passthrough
//! and termination.
mod http_common;

use gateway_tests::{
    backends::demo_ca,
    netns::{NetNs, privileged},
};
use http_common::*;

fn walkthrough(ns: &NetNs) -> (Backends, gateway_tests::gateway::GatewayProc) {
    let b = start_backends(
        ns,
        vec![App::Http(18080, "webapp"), App::Http(18081, "catalog")],
    );
    let gw = start_gateway(
        ns,
        &[
            &config("coolstore-gateway.yaml"),
            &config("secrets.yaml"),
            &config("service-entries.yaml"),
        ],
    );
    (b, gw)
}

#[test]
fn walkthrough_http_virtual_hosting() {
    if !privileged("walkthrough_http_virtual_hosting") {
        return;
    }
    let ns = NetNs::new("http-walk");
    let (_b, gw) = walkthrough(&ns);

    // The walkthrough's own command.
    let r = curl(
        &ns,
        &[
            "http://localhost/api/catalog",
            "-H",
            "Host: webapp.istioinaction.io",
        ],
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert_eq!(r.header("x-backend"), Some("webapp"));
    assert!(
        r.body.starts_with("webapp: GET /api/catalog\n"),
        "{}",
        r.body
    );
    assert_eq!(r.header("server"), Some("gateway"));
    assert!(
        r.header("x-envoy-upstream-service-time")
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "{r:?}"
    );
    let echo = r.echo();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "http");
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");
    let id = echo["headers"]["x-request-id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 36, "generated x-request-id is a UUID: {id}");
    let line = log_line(&gw, &id);
    for want in [
        "method=GET",
        "path=/api/catalog",
        "protocol=\"HTTP/1.1\"",
        "status=200",
        "response_flags=-",
        "upstream_host=127.0.0.1:18080",
        "upstream_cluster=outbound|80||webapp.default.svc.cluster.local",
        "authority=webapp.istioinaction.io",
    ] {
        assert!(line.contains(want), "{want} not in {line}");
    }

    let r = curl(
        &ns,
        &[
            "http://localhost/items",
            "-H",
            "Host: catalog.istioinaction.io",
        ],
    );
    assert_eq!((r.status, r.header("x-backend")), (200, Some("catalog")));
    // Case-insensitive, port stripped.
    let r = curl(
        &ns,
        &[
            "http://localhost/items",
            "-H",
            "Host: CATALOG.IstioInAction.io:80",
        ],
    );
    assert_eq!((r.status, r.header("x-backend")), (200, Some("catalog")));
    // Upstream connections are pooled: two requests in a row reach the backend over
    // the same connection.
    let peers: Vec<String> = (0..2)
        .map(|_| {
            let r = curl(
                &ns,
                &["http://localhost/", "-H", "Host: catalog.istioinaction.io"],
            );
            r.echo()["peer"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(peers[0], peers[1], "upstream connection not reused");
    // A client's request id is kept.
    let r = curl(
        &ns,
        &[
            "http://localhost/",
            "-H",
            "Host: webapp.istioinaction.io",
            "-H",
            "x-request-id: keep-me-1",
        ],
    );
    assert_eq!(r.echo()["headers"]["x-request-id"], "keep-me-1");

    // Unknown host: 404, empty body, NR.
    let r = curl(
        &ns,
        &[
            "http://localhost/api/catalog",
            "-H",
            "Host: unknown.istioinaction.io",
            "-H",
            "x-request-id: nr-1",
        ],
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.body, "");
    let line = log_line(&gw, "nr-1");
    assert!(
        line.contains("status=404") && line.contains("response_flags=NR"),
        "{line}"
    );

    // h2c with prior knowledge on the plain port.
    let r = curl(
        &ns,
        &[
            "--http2-prior-knowledge",
            "http://localhost/h2",
            "-H",
            "Host: webapp.istioinaction.io",
            "-H",
            "x-request-id: h2c-1",
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.verbose.is_empty() || !r.verbose.contains("error"),
        "{}",
        r.verbose
    );
    assert!(log_line(&gw, "h2c-1").contains("protocol=\"HTTP/2\""));

    // HTTP/1.1 keep-alive: curl reuses one connection for two requests, both answered.
    let r = curl(
        &ns,
        &[
            "-v",
            "-H",
            "Host: webapp.istioinaction.io",
            "http://localhost/one",
            "http://localhost/two",
        ],
    );
    assert_eq!(r.status, 200);
    assert!(r.body.contains("webapp: GET /two"), "{}", r.body);
    assert!(
        r.verbose.contains("Re-using existing connection"),
        "{}",
        r.verbose
    );
}

/// `curl -v` over TLS to `host` on `port` (resolved to 127.0.0.1), trusting the demo CA.
fn https(ns: &NetNs, host: &str, port: u16, path: &str, extra: &[&str]) -> Resp {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}{path}");
    let ca = demo_ca();
    let mut args = vec![
        "-v",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        &url,
    ];
    args.extend_from_slice(extra);
    curl(ns, &args)
}

#[test]
fn walkthrough_https_certificate_per_host() {
    if !privileged("walkthrough_https_certificate_per_host") {
        return;
    }
    let ns = NetNs::new("http-tls");
    let (_b, gw) = walkthrough(&ns);

    for host in ["webapp.istioinaction.io", "catalog.istioinaction.io"] {
        let backend = host.split('.').next().unwrap();
        for (flag, alpn) in [("--http1.1", "http/1.1"), ("--http2", "h2")] {
            let r = https(&ns, host, 443, "/api/catalog", &[flag]);
            assert_eq!(r.status, 200, "{host} {flag}: {r:?}\n{}", gw.log());
            assert_eq!(r.header("x-backend"), Some(backend));
            assert!(
                r.verbose.contains(&format!("subject: CN={host}")),
                "{host}: wrong certificate:\n{}",
                r.verbose
            );
            assert!(
                r.verbose.contains(&format!("ALPN: server accepted {alpn}")),
                "{}",
                r.verbose
            );
            assert_eq!(r.echo()["headers"]["x-forwarded-proto"], "https");
        }
    }

    // openssl s_client sees each host's certificate, verified by the demo CA.
    let ca = demo_ca();
    for host in ["webapp.istioinaction.io", "catalog.istioinaction.io"] {
        let out = sh_in(
            &ns,
            &format!(
                "openssl s_client -connect 127.0.0.1:443 -servername {host} -CAfile {} </dev/null 2>&1",
                ca.display()
            ),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("subject=CN = {host}")), "{text}");
        assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    }
    // No SNI, and no server on the port has host `*`: no filter chain matches, and the
    // connection is closed without a certificate, as Envoy does (README "HTTPS without
    // SNI"). Before: the first server's certificate was served.
    let out = sh_in(
        &ns,
        "openssl s_client -connect 127.0.0.1:443 -noservername </dev/null 2>&1",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("subject="), "{text}");
    assert!(text.contains("no peer certificate available"), "{text}");
    // curl to an IP address sends no SNI (RFC 6066): the same.
    let r = curl(&ns, &["-k", "https://127.0.0.1/api/catalog"]);
    assert_ne!(r.exit, 0, "{r:?}");
    assert!(
        gw.log()
            .contains("no SNI, and no HTTPS server on this port has host")
    );

    // A name no server on the port has: the handshake is refused.
    let r = https(&ns, "nope.istioinaction.io", 443, "/", &[]);
    assert_ne!(r.exit, 0, "{r:?}");
    assert!(
        gw.log()
            .contains("no HTTPS server for SNI \"nope.istioinaction.io\"")
    );

    // Connection coalescing: a request for catalog on the connection made for webapp
    // is misdirected (421), over HTTP/2 and HTTP/1.1 alike.
    for flag in ["--http2", "--http1.1"] {
        let r = https(
            &ns,
            "webapp.istioinaction.io",
            443,
            "/",
            &[flag, "-H", "Host: catalog.istioinaction.io"],
        );
        assert_eq!(r.status, 421, "{flag}: {r:?}");
        assert!(r.header("x-backend").is_none());
    }
}

/// HTTPS without SNI picks what Envoy's filter-chain match picks for Istio's chains:
/// the server with host `*` (its chain has no `server_names`), not the first server of
/// the port; with an SNI, the server that names it. Failed before: a ClientHello
/// without SNI got the first server's certificate (webapp's).
#[test]
fn https_without_sni_takes_the_star_server() {
    if !privileged("https_without_sni_takes_the_star_server") {
        return;
    }
    let ns = NetNs::new("http-nosni");
    let _b = start_backends(
        &ns,
        vec![App::Http(18080, "webapp"), App::Http(18081, "catalog")],
    );
    let gw = start_gateway(
        &ns,
        &[
            &fixture("no-sni.yaml"),
            &config("secrets.yaml"),
            &config("service-entries.yaml"),
        ],
    );
    let ca = demo_ca();
    let s_client = |sni: &str| {
        let out = sh_in(
            &ns,
            &format!(
                "openssl s_client -connect 127.0.0.1:443 {sni} -CAfile {} </dev/null 2>&1",
                ca.display()
            ),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = s_client("-noservername");
    assert!(
        text.contains("subject=CN = catalog.istioinaction.io"),
        "no SNI: the `*` server's certificate\n{text}\n{}",
        gw.log()
    );
    let text = s_client("-servername webapp.istioinaction.io");
    assert!(
        text.contains("subject=CN = webapp.istioinaction.io"),
        "{text}"
    );
    // Any other SNI falls to the chain without server_names too.
    let text = s_client("-servername other.example");
    assert!(
        text.contains("subject=CN = catalog.istioinaction.io"),
        "{text}"
    );
    // curl to the IP address (no SNI): the `*` server, routed by its VirtualService.
    let r = curl(&ns, &["-v", "-k", "https://127.0.0.1/items"]);
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert_eq!(r.header("x-backend"), Some("catalog"));
    assert!(
        r.verbose.contains("subject: CN=catalog.istioinaction.io"),
        "{}",
        r.verbose
    );
    // And by name, webapp's server and certificate.
    let r = https(&ns, "webapp.istioinaction.io", 443, "/", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-backend"), Some("webapp"));
}

#[test]
fn https_redirect_from_port_80() {
    if !privileged("https_redirect_from_port_80") {
        return;
    }
    let ns = NetNs::new("http-redir");
    let _b = start_backends(&ns, vec![App::Http(18080, "webapp")]);
    let _gw = start_gateway(
        &ns,
        &[
            &fixture("https-redirect.yaml"),
            &config("secrets.yaml"),
            &config("service-entries.yaml"),
        ],
    );
    let r = curl(
        &ns,
        &[
            "http://localhost/api/catalog?x=1",
            "-H",
            "Host: webapp.istioinaction.io",
        ],
    );
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some("https://webapp.istioinaction.io/api/catalog?x=1")
    );
    assert!(r.header("x-backend").is_none());

    // Following it lands on the HTTPS server.
    let ca = demo_ca();
    let r = curl(
        &ns,
        &[
            "-L",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            "webapp.istioinaction.io:80:127.0.0.1",
            "--resolve",
            "webapp.istioinaction.io:443:127.0.0.1",
            "http://webapp.istioinaction.io/api/catalog",
        ],
    );
    assert_eq!(
        (r.status, r.header("x-backend")),
        (200, Some("webapp")),
        "{r:?}"
    );
    assert_eq!(r.echo()["headers"]["x-forwarded-proto"], "https");
}

#[test]
fn tls_port_shared_by_passthrough_and_termination() {
    if !privileged("tls_port_shared_by_passthrough_and_termination") {
        return;
    }
    let ns = NetNs::new("http-mixed");
    let _b = start_backends(
        &ns,
        vec![
            App::Http(18080, "webapp"),
            App::Tls(
                18443,
                "simple-tls-service-1",
                "simple-sni-1.istioinaction.io",
            ),
        ],
    );
    let gw = start_gateway(
        &ns,
        &[
            &fixture("mixed-port.yaml"),
            &config("secrets.yaml"),
            &config("service-entries.yaml"),
        ],
    );
    for flag in ["--http1.1", "--http2"] {
        let r = https(&ns, "webapp.istioinaction.io", 8443, "/t", &[flag]);
        assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
        assert!(r.verbose.contains("subject: CN=webapp.istioinaction.io"));
        assert_eq!(r.header("x-backend"), Some("webapp"));
        // Terminated here: the plain-HTTP backend saw no TLS.
        assert!(r.echo()["tls"].is_null());
    }
    let r = https(&ns, "simple-sni-1.istioinaction.io", 8443, "/p", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-backend"), Some("simple-tls-service-1"));
    assert!(
        r.verbose
            .contains("subject: CN=simple-sni-1.istioinaction.io")
    );
    assert_eq!(r.echo()["tls"]["sni"], "simple-sni-1.istioinaction.io");
}

#[test]
fn tls_versions_and_cipher_suites_are_honoured() {
    if !privileged("tls_versions_and_cipher_suites_are_honoured") {
        return;
    }
    let ns = NetNs::new("http-tlsver");
    let _b = start_backends(&ns, vec![App::Http(18080, "webapp")]);
    let _gw = start_gateway(
        &ns,
        &[
            &fixture("tls-versions.yaml"),
            &config("secrets.yaml"),
            &config("service-entries.yaml"),
        ],
    );
    // webapp: TLS 1.3 only.
    let r = https(
        &ns,
        "webapp.istioinaction.io",
        443,
        "/",
        &["--tls-max", "1.2"],
    );
    assert_eq!(
        r.status, 0,
        "TLS 1.2 accepted by a TLSV1_3-only server: {r:?}"
    );
    let r = https(&ns, "webapp.istioinaction.io", 443, "/", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.verbose.contains("TLSv1.3"), "{}", r.verbose);

    // catalog: TLS 1.2 at most, one cipher suite.
    let r = https(&ns, "catalog.istioinaction.io", 443, "/", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.verbose
            .contains("TLSv1.2 / ECDHE-ECDSA-CHACHA20-POLY1305"),
        "{}",
        r.verbose
    );
    let ca = demo_ca();
    let out = sh_in(
        &ns,
        &format!(
            "openssl s_client -connect 127.0.0.1:443 -servername catalog.istioinaction.io -tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256 -CAfile {} </dev/null 2>&1",
            ca.display()
        ),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("handshake failure"), "{text}");
}

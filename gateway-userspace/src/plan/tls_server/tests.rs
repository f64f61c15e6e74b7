//! Every problem of the server TLS configs, located; a good config builds.
use crate::config::{GatewayIdentity, ListenerProtocol, load_str};
use crate::plan::http::HttpState;

fn demo(file: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/certs")
        .join(file);
    std::fs::read_to_string(p).unwrap()
}

/// `stringData` entries, as a block scalar each.
fn secret(name: &str, entries: &[(&str, &str)]) -> String {
    let mut y = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: istio-system}}\nstringData:\n"
    );
    for (k, v) in entries {
        y += &format!("  {k}: |\n");
        for l in v.lines() {
            y += &format!("    {l}\n");
        }
    }
    y
}

fn gateway(servers: &[(&str, u16, &str, &str)]) -> String {
    let mut y = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n".to_string();
    for (name, port, mode, cred) in servers {
        y += &format!(
            "  - port: {{number: {port}, name: {name}, protocol: HTTPS}}\n    name: {name}\n    hosts: [\"{name}.example.com\"]\n    tls: {{mode: {mode}, credentialName: {cred}}}\n"
        );
    }
    y
}

fn errors(yaml: &str) -> Vec<String> {
    let snap = load_str("t.yaml", yaml, &GatewayIdentity::default()).expect("loads");
    match HttpState::build(&snap) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn good_material_builds() {
    let y = gateway(&[("a", 8443, "SIMPLE", "good"), ("b", 8444, "MUTUAL", "good")])
        + &secret(
            "good",
            &[
                ("tls.crt", &demo("webapp.istioinaction.io.cert.pem")),
                ("tls.key", &demo("webapp.istioinaction.io.key.pem")),
                ("ca.crt", &demo("ca-chain.cert.pem")),
            ],
        );
    assert_eq!(errors(&y), Vec::<String>::new());
    let snap = load_str("t.yaml", &y, &GatewayIdentity::default()).unwrap();
    assert!(
        snap.listeners
            .iter()
            .all(|l| l.protocol == ListenerProtocol::Https)
    );
}

#[test]
fn mismatched_key_and_undecodable_crl_are_located() {
    let crl = "-----BEGIN X509 CRL-----\naGVsbG8=\n-----END X509 CRL-----\n";
    let y = gateway(&[
        ("a", 8443, "SIMPLE", "mismatch"),
        ("b", 8444, "MUTUAL", "crl"),
    ]) + &secret(
        "mismatch",
        &[
            ("tls.crt", &demo("webapp.istioinaction.io.cert.pem")),
            ("tls.key", &demo("catalog.istioinaction.io.key.pem")),
        ],
    ) + &secret(
        "crl",
        &[
            ("tls.crt", &demo("webapp.istioinaction.io.cert.pem")),
            ("tls.key", &demo("webapp.istioinaction.io.key.pem")),
            ("ca.crt", &demo("ca-chain.cert.pem")),
            ("ca.crl", crl),
        ],
    );
    let e = errors(&y);
    assert_eq!(e.len(), 2, "{e:#?}");
    // A block scalar is where its text starts: the line after `key: |`, column 5.
    let block = |key: &str| {
        let i = y.find(&format!("{key}: |")).unwrap();
        format!("t.yaml:{}:5", y[..i].matches('\n').count() + 2)
    };
    // `tls.key` of the first Secret, `ca.crl` of the second.
    let key = block("tls.key");
    assert!(
        e[0].starts_with(&format!("{key}: Secret istio-system/mismatch tls.key: the private key is not the one of the certificate (Secret istio-system/mismatch tls.crt)")),
        "{e:#?}"
    );
    assert!(
        e[0].ends_with("the TLS of gateway default/gw server a (port 8443) cannot be set up"),
        "{e:#?}"
    );
    let crl_at = block("ca.crl");
    assert!(
        e[1].starts_with(&format!("{crl_at}: Secret istio-system/crl ca.crl: ")),
        "{e:#?}"
    );
    assert!(
        e[1].ends_with("the TLS of gateway default/gw server b (port 8444) cannot be set up"),
        "{e:#?}"
    );
}

#[test]
fn a_shared_secret_is_one_error_naming_every_server() {
    let y = gateway(&[
        ("a", 8443, "SIMPLE", "bad"),
        ("b", 8443, "SIMPLE", "bad"),
        ("c", 8445, "SIMPLE", "bad"),
    ]) + "---\napiVersion: v1\nkind: Secret\nmetadata: {name: bad, namespace: istio-system}\ndata: {tls.crt: aGVsbG8=, tls.key: aGVsbG8=}\n";
    let e = errors(&y);
    assert_eq!(e.len(), 2, "{e:#?}");
    for line in &e {
        assert!(
            line.ends_with("the TLS of gateway default/gw server a (port 8443), gateway default/gw server b (port 8443), gateway default/gw server c (port 8445) cannot be set up"),
            "{e:#?}"
        );
    }
}

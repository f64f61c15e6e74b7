//! Issue 11 ("`gateway validate` prints every error of every phase with its location"),
//! the TLS part, against the real binary: certificates, keys, CAs and CRLs that do not
//! load are errors found when the TLS configs are built. Every one of every server is
//! printed with the `file:line:col` of what is at fault (the Secret's data key, or the
//! Gateway's `tls` field for a file), sorted, then the count; `validate` and `run` exit
//! 64, and `run` binds nothing.
mod http_common;

use std::path::{Path, PathBuf};

use gateway_tests::{
    backends::{demo_ca, demo_cert},
    gateway::{gateway_bin, validate},
    netns::{NetNs, privileged},
};
use http_common::tls_secret_yaml;

/// Two HTTPS servers sharing one Secret whose certificate and key are both not PEM.
const BADCERT: &str = r#"apiVersion: v1
kind: Secret
metadata: {name: bad-cred, namespace: istio-system}
type: kubernetes.io/tls
data: {tls.crt: aGVsbG8=, tls.key: aGVsbG8=}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["a.example.com"]
    tls: {mode: SIMPLE, credentialName: bad-cred}
  - port: {number: 8444, name: https2, protocol: HTTPS}
    hosts: ["b.example.com"]
    tls: {mode: SIMPLE, credentialName: bad-cred}
"#;

/// `file:line:col` of the `nth` (0-based) occurrence of `needle` in `text`, 1-based,
/// the column of its first character.
fn pos(file: &Path, text: &str, needle: &str, nth: usize) -> String {
    let (i, _) = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle} #{nth} not in the test config"));
    let line = text[..i].matches('\n').count() + 1;
    let col = i - text[..i].rfind('\n').map_or(0, |n| n + 1) + 1;
    format!("{}:{line}:{col}", file.display())
}

fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gw-tlserr-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The error lines of `out` (those naming `file`), in order.
fn error_lines<'a>(out: &'a str, file: &Path) -> Vec<&'a str> {
    let prefix = format!("{}:", file.display());
    out.lines().filter(|l| l.starts_with(&prefix)).collect()
}

/// `gateway run` in `ns` on `config` (splice(2) mode: no eBPF needed to reach the
/// certificates), returning (exit code, stdout + stderr).
fn run(ns: &NetNs, config: &Path) -> (i32, String) {
    let out = ns
        .cmd(gateway_bin().to_str().unwrap())
        .args([
            "run",
            "--splice",
            "splice",
            "--admin-addr",
            "127.0.0.1:15000",
        ])
        .arg("--config")
        .arg(config)
        .output()
        .expect("run gateway");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn check_badcert(out: &str, file: &Path) {
    let lines = error_lines(out, file);
    assert_eq!(lines.len(), 2, "two errors, one per bad key:\n{out}");
    let servers =
        "gateway default/gw servers[0] (port 8443), gateway default/gw servers[1] (port 8444)";
    let crt = pos(file, BADCERT, "aGVsbG8=", 0);
    let key = pos(file, BADCERT, "aGVsbG8=", 1);
    assert!(
        lines[0].starts_with(&format!(
            "{crt}: Secret istio-system/bad-cred tls.crt: no PEM certificate found"
        )) && lines[0].ends_with(&format!("the TLS of {servers} cannot be set up")),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{key}: Secret istio-system/bad-cred tls.key: no usable PEM private key"
        )) && lines[1].ends_with(&format!("the TLS of {servers} cannot be set up")),
        "{out}"
    );
    assert!(
        out.contains("2 configuration error(s); nothing was started"),
        "{out}"
    );
}

#[test]
fn bad_certificate_and_key_are_located_at_validate_and_run() {
    let dir = scratch_dir("badcert");
    let file = dir.join("badcert.yaml");
    std::fs::write(&file, BADCERT).unwrap();
    let (code, out) = validate(&[&file]);
    assert_eq!(code, 64, "validate:\n{out}");
    check_badcert(&out, &file);
    assert!(!out.contains("config OK"), "{out}");

    if !privileged("bad_certificate_and_key_are_located_at_validate_and_run") {
        return;
    }
    let ns = NetNs::new("tlserr-run");
    let (code, out) = run(&ns, &file);
    assert_eq!(code, 64, "run:\n{out}");
    check_badcert(&out, &file);
    // Nothing was bound: the ports are free in the namespace.
    let listening = ns.cmd("ss").args(["-Htln"]).output().unwrap();
    let listening = String::from_utf8_lossy(&listening.stdout);
    assert!(
        !listening.contains(":8443") && !listening.contains(":15000"),
        "{listening}"
    );
}

/// MUTUAL servers: a Secret whose `ca.crt` is no certificate, one whose `ca.crl` is no
/// CRL, and one with file paths: a `caCertificates` file that is no certificate and a
/// `caCrl` that does not exist.
fn mutual_config(dir: &Path) -> String {
    let (cert, key) = demo_cert("webapp.istioinaction.io");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "hello\n").unwrap();
    let missing = dir.join("missing.crl");
    let mut y = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: mtls, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 9443, name: bad-ca, protocol: HTTPS}}
    hosts: [a.example.com]
    tls: {{mode: MUTUAL, credentialName: bad-ca}}
  - port: {{number: 9444, name: bad-crl, protocol: HTTPS}}
    hosts: [b.example.com]
    tls: {{mode: OPTIONAL_MUTUAL, credentialName: bad-crl}}
  - port: {{number: 9445, name: files, protocol: TLS}}
    hosts: [c.example.com]
    tls:
      mode: MUTUAL
      serverCertificate: {cert}
      privateKey: {key}
      caCertificates: {garbage}
      caCrl: {missing}
"#,
        cert = cert.display(),
        key = key.display(),
        garbage = garbage.display(),
        missing = missing.display(),
    );
    y += &tls_secret_yaml("bad-ca", &cert, &key, None);
    y += "  ca.crt: not a certificate\n";
    y += &tls_secret_yaml("bad-crl", &cert, &key, Some(&demo_ca()));
    y += "  ca.crl: not a CRL\n";
    y
}

#[test]
fn bad_ca_and_crl_of_mutual_servers_are_located() {
    let dir = scratch_dir("mutual");
    let text = mutual_config(&dir);
    let file = dir.join("mutual.yaml");
    std::fs::write(&file, &text).unwrap();
    let (code, out) = validate(&[&file]);
    assert_eq!(code, 64, "validate:\n{out}");
    let lines = error_lines(&out, &file);
    let garbage = dir.join("garbage.pem").display().to_string();
    let missing = dir.join("missing.crl").display().to_string();
    let files = "gateway istio-system/mtls servers[2] (port 9445)";
    // (at, what is said, the server it stops), sorted by position.
    let expected = [
        (
            pos(&file, &text, &garbage, 0),
            format!("caCertificates {garbage}: no PEM certificate found"),
            files,
        ),
        (
            pos(&file, &text, &missing, 0),
            format!("caCrl: cannot read {missing}: No such file or directory (os error 2)"),
            files,
        ),
        (
            pos(&file, &text, "not a certificate", 0),
            "Secret istio-system/bad-ca ca.crt: no PEM certificate found".to_string(),
            "gateway istio-system/mtls servers[0] (port 9443)",
        ),
        (
            pos(&file, &text, "not a CRL", 0),
            "Secret istio-system/bad-crl ca.crl: no X509 CRL found".to_string(),
            "gateway istio-system/mtls servers[1] (port 9444)",
        ),
    ];
    assert_eq!(lines.len(), expected.len(), "{out}");
    for (line, (at, what, server)) in lines.iter().zip(&expected) {
        assert_eq!(
            *line,
            format!("{at}: {what}; the TLS of {server} cannot be set up"),
            "\n{out}"
        );
    }
    assert!(
        out.contains("4 configuration error(s); nothing was started"),
        "{out}"
    );
}

/// DestinationRule `tls` (TLS origination) at three levels: top-level with a missing
/// Secret, a subset's port level with a Secret whose CA, certificate and key are not
/// PEM, a subset's with a missing Secret, and an unreadable `caCrl`. `run` serves
/// without such a cluster (503 UF, tests/upstream_tls_h2.rs); `validate` says where.
const DR_BAD: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: a.test, port: {number: 443}}}]
  - match: [{uri: {prefix: /b}}]
    route:
    - destination: {host: b.test, port: {number: 443}, subset: v1}
    - destination: {host: b.test, port: {number: 443}, subset: v2}
  - route: [{destination: {host: c.test, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: se, namespace: istio-system}
spec:
  hosts: [a.test, b.test, c.test]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a, namespace: istio-system}
spec:
  host: a.test
  trafficPolicy:
    tls: {mode: SIMPLE, credentialName: nope}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: b, namespace: istio-system}
spec:
  host: b.test
  subsets:
  - name: v1
    labels: {}
    trafficPolicy:
      portLevelSettings:
      - port: {number: 443}
        tls: {mode: MUTUAL, credentialName: badca}
  - name: v2
    labels: {}
    trafficPolicy:
      tls: {mode: SIMPLE, credentialName: missing2}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: c, namespace: istio-system}
spec:
  host: c.test
  trafficPolicy:
    tls: {mode: SIMPLE, insecureSkipVerify: true, caCrl: /nonexistent/c.crl}
---
apiVersion: v1
kind: Secret
metadata: {name: badca, namespace: istio-system}
stringData: {ca.crt: not-a-ca, tls.crt: not-a-cert, tls.key: not-a-key}
"#;

#[test]
fn destination_rule_tls_material_is_located_at_validate() {
    let dir = scratch_dir("dr");
    let file = dir.join("dr.yaml");
    std::fs::write(&file, DR_BAD).unwrap();
    let (code, out) = validate(&[&file]);
    assert_eq!(code, 64, "validate:\n{out}");
    let at = |needle: &str| pos(&file, DR_BAD, needle, 0);
    let v1 = "cluster outbound|443|v1|b.test";
    let expected = [
        (
            at("nope}"),
            r#"credentialName "nope": no Secret "nope" in namespace "istio-system""#.to_string(),
            "cluster outbound|443||a.test",
        ),
        (
            at("missing2}"),
            r#"credentialName "missing2": no Secret "missing2" in namespace "istio-system""#
                .to_string(),
            "cluster outbound|443|v2|b.test",
        ),
        (
            at("/nonexistent/c.crl"),
            "caCrl: cannot read /nonexistent/c.crl: No such file or directory (os error 2)"
                .to_string(),
            "cluster outbound|443||c.test",
        ),
        (
            at("not-a-ca"),
            "Secret istio-system/badca ca.crt: no PEM certificate found".to_string(),
            v1,
        ),
        (
            at("not-a-cert"),
            "Secret istio-system/badca tls.crt: no PEM certificate found".to_string(),
            v1,
        ),
        (
            at("not-a-key"),
            "Secret istio-system/badca tls.key: no usable PEM private key: no items found"
                .to_string(),
            v1,
        ),
    ];
    let lines = error_lines(&out, &file);
    assert_eq!(lines.len(), expected.len(), "{out}");
    for (line, (at, what, cluster)) in lines.iter().zip(&expected) {
        assert_eq!(
            *line,
            format!("{at}: {what}; the TLS of {cluster} cannot be set up"),
            "\n{out}"
        );
    }
    assert!(
        out.contains("6 configuration error(s); nothing was started"),
        "{out}"
    );
}

//! Issue 11 ("`gateway validate` prints every error of every phase with its location"),
//! the route-table part, against the real binary: what the route-table compile refuses
//! (header names and values, redirects, direct responses, rewrites, faults) is found
//! where the tables are built, once, and printed at the field of the VirtualService
//! `http[]` entry that is wrong, not where its port's first server is. With errors of
//! the config phase too, `validate` prints both phases' in one run.
use std::path::{Path, PathBuf};

use gateway_tests::gateway::validate;

/// One port with two HTTP servers (two route tables' worth of servers, one merged
/// table); the VirtualService's 2nd route has a header name that is no header name.
const TWO_SERVERS: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http-a, protocol: HTTP}
    hosts: ["a.example.com"]
  - port: {number: 8080, name: http-b, protocol: HTTP}
    hosts: ["b.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: ["a.example.com", "b.example.com"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /one}}]
    route: [{destination: {host: 127.0.0.1, port: {number: 9001}}}]
  - match: [{uri: {prefix: /two}}]
    headers:
      request:
        set: {"bad name": "x"}
    route: [{destination: {host: 127.0.0.1, port: {number: 9002}}}]
"#;

/// `file:line:col` of the first character of `needle` in `text`.
fn pos(file: &Path, text: &str, needle: &str) -> String {
    let i = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in the test config"));
    let line = text[..i].matches('\n').count() + 1;
    let col = i - text[..i].rfind('\n').map_or(0, |n| n + 1) + 1;
    format!("{}:{line}:{col}", file.display())
}

fn write(name: &str, text: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gw-routeerr-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let f = d.join(format!("{name}.yaml"));
    std::fs::write(&f, text).unwrap();
    f
}

#[test]
fn a_bad_header_name_is_located_at_its_route_through_validate() {
    let file = write("twoservers", TWO_SERVERS);
    let (code, out) = validate(&[&file]);
    assert_eq!(code, 64, "validate:\n{out}");
    let prefix = format!("{}:", file.display());
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with(&prefix)).collect();
    // Once, though the route is compiled for both servers; at `http[1].headers.request`,
    // not at `servers[0]` of the Gateway.
    assert_eq!(
        lines,
        [format!(
            "{}: HTTP route: invalid header name \"bad name\"",
            pos(&file, TWO_SERVERS, "set: {\"bad name\"")
        )],
        "{out}"
    );
    assert!(
        out.contains("1 configuration error(s); nothing was started"),
        "{out}"
    );
    assert!(!out.contains("config OK"), "{out}");
}

/// Errors of both phases: route weights that do not add up (config) and a bad header
/// name (route-table compile); and a cipher suite rustls cannot offer, which both phases
/// check and which is printed once.
const BOTH_PHASES: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["a.example.com"]
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["a.example.com"]
    tls: {mode: SIMPLE, serverCertificate: /nonexistent/cert.pem, privateKey: /nonexistent/key.pem, cipherSuites: [NOPE]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: ["a.example.com"]
  gateways: [gw]
  http:
  - route:
    - {destination: {host: 127.0.0.1, port: {number: 9001}}, weight: 30}
    - {destination: {host: 127.0.0.1, port: {number: 9002}}, weight: 30}
  - headers: {request: {remove: ["bad name"]}}
    route: [{destination: {host: 127.0.0.1, port: {number: 9003}}}]
"#;

#[test]
fn validate_prints_the_errors_of_both_phases_in_one_run() {
    let file = write("bothphases", BOTH_PHASES);
    let (code, out) = validate(&[&file]);
    assert_eq!(code, 64, "validate:\n{out}");
    let prefix = format!("{}:", file.display());
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with(&prefix)).collect();
    let at = |needle: &str| pos(&file, BOTH_PHASES, needle);
    let cipher = at("[NOPE]");
    let want = [
        // Compile: the HTTPS server's certificate and key do not load.
        format!(
            "{}: serverCertificate: cannot read /nonexistent/cert.pem",
            at("/nonexistent/cert.pem")
        ),
        format!(
            "{}: privateKey: cannot read /nonexistent/key.pem",
            at("/nonexistent/key.pem")
        ),
        // Both (once): config validation's message.
        format!(
            "{cipher}: cipherSuites [\"NOPE\"] cannot be offered by this gateway's TLS (rustls);"
        ),
        // Config.
        format!(
            "{}: route weights sum to 60, they must add up to 100",
            at("- {destination")
        ),
        // Compile: the route table.
        format!(
            "{}: HTTP route: invalid header name \"bad name\"",
            at("remove: [")
        ),
    ];
    assert_eq!(lines.len(), want.len(), "{out}");
    for (line, want) in lines.iter().zip(&want) {
        assert!(
            line.starts_with(want.as_str()),
            "want {want}\ngot  {line}\n{out}"
        );
    }
    assert!(!lines[2].contains("cannot be set up"), "{out}");
    assert!(
        out.contains("5 configuration error(s); nothing was started"),
        "{out}"
    );
}

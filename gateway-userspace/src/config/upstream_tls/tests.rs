//! DestinationRule `tls`: validation errors with their positions, and the policy each
//! cluster gets (top level, port level, subset).

use crate::config::destination_rule::ClientTlsMode;
use crate::config::{GatewayIdentity, Missing, load_str_with};

const BASE: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*\"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: app}
spec:
  hosts: [app.test]
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 81, name: alt, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: [\"*\"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /v1}}]
    route: [{destination: {host: app.test, subset: v1, port: {number: 80}}}]
  - match: [{uri: {prefix: /alt}}]
    route: [{destination: {host: app.test, port: {number: 81}}}]
  - route: [{destination: {host: app.test, port: {number: 80}}}]
---
";

fn errors(extra: &str) -> Vec<String> {
    let l = load_str_with(
        "dr.yaml",
        &format!("{BASE}{extra}"),
        &GatewayIdentity::default(),
        Missing::Error,
    );
    match l.result {
        Ok(_) => panic!("loaded"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn invalid_tls_settings_are_errors_with_positions() {
    let e = errors(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bad}
spec:
  host: app.test
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 81}
      tls: {mode: SIMPLE, sni: \"bad sni\", caCertificates: /nonexistent/ca.pem}
  subsets:
  - name: v1
    trafficPolicy:
      tls: {mode: MUTUAL, credentialName: c, caCertificates: /x.pem, insecureSkipVerify: true}
  - name: v2
    trafficPolicy:
      tls: {mode: SIMPLE}
  - name: v3
    trafficPolicy:
      tls: {mode: MUTUAL, insecureSkipVerify: true}
",
    );
    assert_eq!(
        e,
        [
            "dr.yaml:38:17: ISTIO_MUTUAL needs the mesh's workload certificates (issued by istiod); this gateway has none: use MUTUAL with credentialName, or clientCertificate and privateKey",
            "dr.yaml:41:32: invalid sni \"bad sni\"",
            "dr.yaml:41:59: cannot read /nonexistent/ca.pem: No such file or directory (os error 2)",
            "dr.yaml:45:62: caCertificates cannot be set with credentialName (the Secret supplies it)",
            "dr.yaml:45:62: cannot read /x.pem: No such file or directory (os error 2)",
            "dr.yaml:48:13: the server certificate cannot be verified: set caCertificates (or a credentialName Secret with ca.crt), or insecureSkipVerify: true; this gateway does not use the system's root certificates",
            "dr.yaml:51:13: MUTUAL needs credentialName, or clientCertificate and privateKey (client certificate required for mutual tls)",
            "dr.yaml:51:13: MUTUAL needs credentialName, or clientCertificate and privateKey (private key required for mutual tls)",
        ]
    );
}

#[test]
fn each_cluster_takes_its_merged_tls() {
    let l = load_str_with(
        "dr.yaml",
        &format!(
            "{BASE}apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: app}}
spec:
  host: app.test
  trafficPolicy:
    tls: {{mode: SIMPLE, insecureSkipVerify: true, sni: top.test}}
    portLevelSettings:
    - port: {{number: 81}}
      tls: {{mode: DISABLE}}
  subsets:
  - name: v1
    labels: {{version: v1}}
    trafficPolicy:
      tls: {{mode: MUTUAL, credentialName: client}}
"
        ),
        &GatewayIdentity::default(),
        Missing::Isolate,
    );
    let s = l.result.unwrap_or_else(|e| panic!("{e}"));
    let tls = |n: &str| s.clusters[n].tls.clone();
    let top = tls("outbound|80||app.test").expect("top level SIMPLE");
    assert_eq!(
        (top.mode, top.sni.as_deref()),
        (ClientTlsMode::Simple, Some("top.test"))
    );
    assert_eq!(tls("outbound|81||app.test"), None, "port 81: DISABLE");
    let v1 = tls("outbound|80|v1|app.test").expect("subset MUTUAL");
    assert_eq!(
        (v1.mode, v1.credential_name.as_deref()),
        (ClientTlsMode::Mutual, Some("client"))
    );
}

#[test]
fn http2_ports_by_protocol_or_name() {
    use crate::config::istio::ServicePort;
    let port = |protocol: Option<&str>, name: &str| ServicePort {
        number: 80,
        protocol: protocol.map(str::to_string),
        name: Some(name.to_string()),
        target_port: None,
    };
    let h2 = crate::config::resolve::speaks_h2;
    assert!(h2(&port(Some("GRPC"), "x")));
    assert!(h2(&port(Some("http2"), "x")));
    assert!(h2(&port(Some("GRPC-WEB"), "x")));
    assert!(
        !h2(&port(Some("HTTP"), "grpc")),
        "the protocol wins over the name"
    );
    assert!(h2(&port(None, "grpc-echo")));
    assert!(h2(&port(None, "http2")));
    assert!(h2(&port(None, "grpc-web")));
    assert!(!h2(&port(None, "http-grpc")));
    assert!(!h2(&port(None, "grpcx")));
}

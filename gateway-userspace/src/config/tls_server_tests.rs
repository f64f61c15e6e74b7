//! Gateway servers of protocol TLS: SIMPLE/MUTUAL terminate and take `tcp` routes,
//! one per server; PASSTHROUGH keeps `tls` routes; the SNI table knows both kinds.
use super::*;

const YAML: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 9443, name: a, protocol: TLS}
    tls: {mode: SIMPLE, serverCertificate: /a.crt, privateKey: /a.key}
    hosts: [a.test]
  - port: {number: 9443, name: b, protocol: TLS}
    tls: {mode: MUTUAL, serverCertificate: /b.crt, privateKey: /b.key, caCertificates: /ca.crt}
    hosts: [b.test]
  - port: {number: 9443, name: p, protocol: TLS}
    tls: {mode: PASSTHROUGH}
    hosts: [p.test]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backends}
spec:
  hosts: [a.svc, b.svc, p.svc]
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a}
spec:
  hosts: [a.test]
  gateways: [gw]
  tcp: [{route: [{destination: {host: a.svc, port: {number: 9000}}}]}]
  tls:
  - match: [{sniHosts: [a.test]}]
    route: [{destination: {host: p.svc, port: {number: 9000}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b}
spec:
  hosts: [b.test, p.test]
  gateways: [gw]
  tcp: [{route: [{destination: {host: b.svc, port: {number: 9000}}}]}]
  tls:
  - match: [{sniHosts: [p.test]}]
    route: [{destination: {host: p.svc, port: {number: 9000}}}]
"#;

#[test]
fn tls_servers_terminate_into_tcp_routes() {
    let snap = match load_str("tls.yaml", YAML, &GatewayIdentity::default()) {
        Ok(s) => s,
        Err(e) => panic!("unexpected errors:\n{e}"),
    };
    let l = snap.listener(9443).expect("9443");
    let kinds: Vec<ServerKind> = l.servers.iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [
            ServerKind::TlsTerminate,
            ServerKind::TlsTerminate,
            ServerKind::TlsPassthrough
        ]
    );
    let routes: Vec<(usize, &str, &str)> = l
        .terminated_tcp
        .iter()
        .map(|(i, r)| (*i, r.name.as_str(), r.destinations[0].cluster.as_str()))
        .collect();
    assert_eq!(
        routes,
        [
            (0, "default/a", "outbound|9000||a.svc"),
            (1, "default/b", "outbound|9000||b.svc"),
        ]
    );
    // A `tls` route applies to PASSTHROUGH servers only: a.test's is dropped (no
    // passthrough server accepts it), p.test's kept; no plain TCP route on the port.
    let sni: Vec<&[String]> = l.tls.iter().map(|t| t.sni_hosts.as_slice()).collect();
    assert_eq!(sni, [["p.test".to_string()].as_slice()]);
    assert_eq!(l.tcp, None);
    // The SNI picks terminating servers of both kinds; only HTTPS ones go to HTTP.
    assert_eq!(
        crate::plan::routing::tls_server_for(l, Some("b.test")),
        Some(1)
    );
    assert_eq!(
        crate::plan::routing::tls_server_for(l, Some("p.test")),
        None
    );
    assert!(!crate::plan::http::terminates(l, Some("a.test")));
}

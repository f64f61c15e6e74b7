use std::path::PathBuf;

use super::*;

const WALKTHROUGH: &str = r#"apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: coolstore-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["webapp.istioinaction.io", "catalog.istioinaction.io"]
  - port: {number: 443, name: https-webapp, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: webapp-credential}
    hosts: ["webapp.istioinaction.io"]
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: echo-tcp-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 31400, name: tcp-echo, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: sni-passthrough-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 31400, name: tcp-sni, protocol: TLS}
    hosts: ["simple-sni-1.istioinaction.io", "simple-sni-2.istioinaction.io"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: tcp-echo-vs-from-gw}
spec:
  hosts: ["*"]
  gateways: [echo-tcp-gateway]
  tcp:
  - match: [{port: 31400}]
    route: [{destination: {host: tcp-echo-service, port: {number: 2701}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: simple-sni-1-vs}
spec:
  hosts: ["simple-sni-1.istioinaction.io"]
  gateways: [sni-passthrough-gateway]
  tls:
  - match: [{port: 31400, sniHosts: ["simple-sni-1.istioinaction.io"]}]
    route: [{destination: {host: simple-tls-service-1, port: {number: 80}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: tcp-echo-service}
spec:
  hosts: [tcp-echo-service.default.svc.cluster.local]
  ports: [{number: 2701, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: simple-tls-service-1}
spec:
  hosts: [simple-tls-service-1.default.svc.cluster.local]
  ports: [{number: 80, name: tls, protocol: TLS}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {tls: 18443}}]
---
# The resources the walkthrough leaves out.
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: webapp-vs-from-gw}
spec:
  hosts: ["webapp.istioinaction.io"]
  gateways: [coolstore-gateway]
  http:
  - name: api
    match: [{uri: {prefix: /api}, headers: {x-canary: {exact: "true"}}}]
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 100ms, retryOn: 5xx}
    fault: {abort: {percentage: {value: 0.5}, httpStatus: 503}}
    headers: {request: {set: {x-from: gateway}, remove: [x-debug]}}
    route:
    - destination: {host: webapp, port: {number: 80}}
      weight: 90
    - destination: {host: catalog.default.svc.cluster.local, port: {number: 80}}
      weight: 10
  - route: [{destination: {host: webapp, port: {number: 80}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: catalog-vs-from-gw}
spec:
  hosts: ["catalog.istioinaction.io"]
  gateways: [default/coolstore-gateway, mesh]
  http:
  - match: [{uri: {exact: /old}}]
    redirect: {uri: /new, redirectCode: 301}
  - route: [{destination: {host: catalog}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: simple-sni-2-vs}
spec:
  hosts: ["simple-sni-2.istioinaction.io"]
  gateways: [sni-passthrough-gateway]
  tls:
  - match: [{port: 31400, sniHosts: ["simple-sni-2.istioinaction.io"]}]
    route: [{destination: {host: simple-tls-service-2, port: {number: 80}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: webapp}
spec:
  hosts: [webapp.default.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 18080}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}, {address: "::1"}]
---
# Short host name: expands to catalog.default.svc.cluster.local.
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: catalog}
spec:
  hosts: [catalog]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 18081}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: simple-tls-service-2}
spec:
  hosts: [simple-tls-service-2.default.svc.cluster.local]
  ports: [{number: 80, name: tls, protocol: TLS}]
  resolution: DNS
  endpoints: [{address: localhost, ports: {tls: 18444}}]
---
apiVersion: v1
kind: Secret
metadata: {name: webapp-credential, namespace: istio-system}
type: kubernetes.io/tls
data:
  tls.crt: Y2VydA==
stringData:
  tls.key: key
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging: [{providers: [{name: envoy}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-none, namespace: istio-system}
spec: {action: ALLOW, rules: [{}]}
---
# A Gateway for some other workload: ignored, not an error.
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: egress, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: tcp, protocol: TCP}
    hosts: ["*"]
"#;

fn id() -> GatewayIdentity {
    GatewayIdentity::default()
}

fn load_ok(yaml: &str) -> Snapshot {
    match load_str("walkthrough.yaml", yaml, &id()) {
        Ok(s) => s,
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

fn wc(cluster: &str, weight: u32) -> WeightedCluster {
    WeightedCluster {
        cluster: cluster.into(),
        weight,
    }
}

#[test]
fn walkthrough_listeners() {
    let snap = load_ok(WALKTHROUGH);
    let ports: Vec<(u16, ListenerProtocol)> = snap
        .listeners
        .iter()
        .map(|l| (l.port, l.protocol))
        .collect();
    assert_eq!(
        ports,
        [
            (80, ListenerProtocol::Http),
            (443, ListenerProtocol::Https),
            (31400, ListenerProtocol::Tls)
        ]
    );

    let l = snap.listener(31400).expect("31400");
    let servers: Vec<(&str, ServerKind, TlsMode)> = l
        .servers
        .iter()
        .map(|s| (s.gateway.as_str(), s.kind, s.tls_mode))
        .collect();
    assert_eq!(
        servers,
        [
            (
                "default/echo-tcp-gateway",
                ServerKind::Tcp,
                TlsMode::Passthrough
            ),
            (
                "default/sni-passthrough-gateway",
                ServerKind::TlsPassthrough,
                TlsMode::Passthrough
            ),
        ]
    );
    assert_eq!(
        l.tcp,
        Some(TcpRoute {
            name: "default/tcp-echo-vs-from-gw".into(),
            destinations: vec![wc(
                "outbound|2701||tcp-echo-service.default.svc.cluster.local",
                100
            )],
        })
    );
    let tls: Vec<(&str, Vec<String>, Vec<WeightedCluster>)> = l
        .tls
        .iter()
        .map(|r| (r.name.as_str(), r.sni_hosts.clone(), r.destinations.clone()))
        .collect();
    assert_eq!(
        tls,
        [
            (
                "default/simple-sni-1-vs",
                vec!["simple-sni-1.istioinaction.io".to_string()],
                vec![wc(
                    "outbound|80||simple-tls-service-1.default.svc.cluster.local",
                    100
                )],
            ),
            (
                "default/simple-sni-2-vs",
                vec!["simple-sni-2.istioinaction.io".to_string()],
                vec![wc(
                    "outbound|80||simple-tls-service-2.default.svc.cluster.local",
                    100
                )],
            ),
        ]
    );
    assert!(l.http.is_empty());

    // HTTP: both VSs on port 80, only webapp on 443; routes carried through.
    let http80: Vec<&str> = snap
        .listener(80)
        .expect("80")
        .http
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(
        http80,
        ["default/catalog-vs-from-gw", "default/webapp-vs-from-gw"]
    );
    let l443 = snap.listener(443).expect("443");
    assert_eq!(l443.servers[0].tls_mode, TlsMode::Simple);
    assert_eq!(l443.servers[0].kind, ServerKind::HttpsTerminate);
    let webapp = &l443.http[0];
    assert_eq!(webapp.name, "default/webapp-vs-from-gw");
    assert_eq!(webapp.routes.len(), 2);
    assert_eq!(
        webapp.routes[0].destinations,
        [
            wc("outbound|80||webapp.default.svc.cluster.local", 90),
            wc("outbound|80||catalog.default.svc.cluster.local", 10),
        ]
    );
    let api = &webapp.routes[0].route;
    assert_eq!(
        api.timeout.as_ref().map(|t| t.duration),
        Some(std::time::Duration::from_millis(1500))
    );
    assert_eq!(
        api.retries
            .as_ref()
            .and_then(|r| r.per_try_timeout.as_ref())
            .map(|t| t.duration),
        Some(std::time::Duration::from_millis(100))
    );
    let catalog = &snap.listener(80).expect("80").http[0];
    assert!(
        catalog.routes[0].destinations.is_empty(),
        "redirect route has no destinations"
    );
    assert_eq!(
        catalog.routes[1].destinations,
        [wc("outbound|80||catalog.default.svc.cluster.local", 100)]
    );
}

#[test]
fn walkthrough_route_sni() {
    let snap = load_ok(WALKTHROUGH);
    let l = snap.listener(31400).expect("31400");
    let name = |sni: &str| l.route_sni(sni).map(|r| r.name.as_str());
    assert_eq!(
        name("simple-sni-1.istioinaction.io"),
        Some("default/simple-sni-1-vs")
    );
    assert_eq!(
        name("SIMPLE-SNI-2.IstioInAction.io"),
        Some("default/simple-sni-2-vs")
    );
    assert_eq!(name("unknown.istioinaction.io"), None);
    assert_eq!(name(""), None);
}

#[test]
fn route_sni_prefers_exact_then_longest_wildcard_then_star() {
    let route = |name: &str, sni: &str| TlsRoute {
        name: name.into(),
        sni_hosts: vec![sni.into()],
        destinations: vec![],
    };
    let l = Listener {
        port: 443,
        protocol: ListenerProtocol::Tls,
        servers: vec![],
        tcp: None,
        terminated_tcp: vec![],
        tls: vec![
            route("star", "*"),
            route("wild", "*.example.com"),
            route("wild-longer", "*.api.example.com"),
            route("exact", "a.api.example.com"),
        ],
        http: vec![],
    };
    let cases = [
        ("a.api.example.com", Some("exact")),
        ("A.API.Example.COM", Some("exact")),
        ("b.api.example.com", Some("wild-longer")),
        ("x.y.example.com", Some("wild")),
        ("example.com", Some("star")),
        ("other.org", Some("star")),
    ];
    for (sni, want) in cases {
        assert_eq!(l.route_sni(sni).map(|r| r.name.as_str()), want, "sni {sni}");
    }
}

#[test]
fn walkthrough_clusters_and_secrets() {
    let snap = load_ok(WALKTHROUGH);
    let eps = |name: &str| -> Vec<String> {
        snap.clusters
            .get(name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
            .endpoints
            .iter()
            .map(|e| e.to_string())
            .collect()
    };
    assert_eq!(
        eps("outbound|2701||tcp-echo-service.default.svc.cluster.local"),
        ["127.0.0.1:2701"]
    );
    assert_eq!(
        eps("outbound|80||simple-tls-service-1.default.svc.cluster.local"),
        ["127.0.0.1:18443"]
    );
    // targetPort applies when the endpoint has no named port.
    assert_eq!(
        eps("outbound|80||webapp.default.svc.cluster.local"),
        ["127.0.0.1:18080", "[::1]:18080"]
    );
    assert_eq!(
        eps("outbound|80||catalog.default.svc.cluster.local"),
        ["127.0.0.1:18081"]
    );
    // DNS resolution: `localhost` resolved by the system resolver.
    let dns = eps("outbound|80||simple-tls-service-2.default.svc.cluster.local");
    assert!(
        !dns.is_empty() && dns.iter().all(|a| a.ends_with(":18444")),
        "{dns:?}"
    );
    let c = &snap.clusters["outbound|2701||tcp-echo-service.default.svc.cluster.local"];
    assert_eq!(
        (c.host.as_str(), c.port),
        ("tcp-echo-service.default.svc.cluster.local", 2701)
    );
    assert_eq!(snap.clusters.len(), 5);

    let secret = &snap.secrets["istio-system/webapp-credential"];
    assert_eq!(secret.data["tls.crt"], b"cert");
    assert_eq!(secret.data["tls.key"], b"key");
    assert!(
        !format!("{secret:?}").contains("cert\""),
        "Debug must not print key material"
    );

    let r = &snap.resources;
    assert_eq!(
        (
            r.gateways.len(),
            r.virtual_services.len(),
            r.service_entries.len()
        ),
        (4, 5, 5)
    );
    assert_eq!((r.telemetry.len(), r.authorization_policies.len()), (1, 1));
    let dump = serde_yaml::to_string(r).expect("resources serialize");
    assert!(dump.contains("coolstore-gateway") && !dump.contains("Y2VydA=="));
}

#[test]
fn destinations_without_service_entry_use_system_resolver() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  servers: [{port: {number: 9000, name: tcp, protocol: TCP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: ["*"]
  gateways: [istio-system/gw]
  tcp:
  - route:
    - {destination: {host: 127.0.0.1, port: {number: 7000}}}
    - {destination: {host: localhost, port: {number: 7001}}}
    - {destination: {host: 127.0.0.1, port: {number: 7002}}}
"#;
    let snap = load_ok(yaml);
    let l = snap.listener(9000).expect("9000");
    assert_eq!(l.protocol, ListenerProtocol::Tcp);
    let tcp = l.tcp.as_ref().expect("tcp route");
    let weights: Vec<u32> = tcp.destinations.iter().map(|d| d.weight).collect();
    assert_eq!(weights, [34, 33, 33], "unset weights split evenly");
    assert_eq!(
        snap.clusters["outbound|7000||127.0.0.1"].endpoints,
        ["127.0.0.1:7000".parse().expect("addr")]
    );
}

const GW: &str = "apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 31400, name: tls, protocol: TLS}
    hosts: [\"*.example.com\"]
    tls: {mode: PASSTHROUGH}
";

#[test]
fn bad_configs_report_file_line_col() {
    let cases: &[(&str, String, &[&str])] = &[
        (
            "unknown kind",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRul\nmetadata: {name: x}\nspec: {}\n".into(),
            &["bad.yaml:2:7: unknown kind \"DestinationRul\""],
        ),
        (
            "misspelled field",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  selector: {}\n  sevrers: []\n".into(),
            &["bad.yaml:6:3: spec: unknown field `sevrers`, expected `selector` or `servers`"],
        ),
        (
            "wrong type",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  servers:\n  - port: {number: abc, protocol: HTTP}\n    hosts: [\"*\"]\n".into(),
            &["bad.yaml:6:20: spec.servers[0].port.number: invalid type: string \"abc\", expected u32"],
        ),
        (
            "missing gateway",
            format!("{GW}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs}}\nspec:\n  hosts: [\"*.example.com\"]\n  gateways: [gw, mesh, other/nope]\n"),
            &["bad.yaml:16:24: virtual service references gateway \"other/nope\" which does not exist"],
        ),
        (
            "conflicting protocols on one port",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: x, namespace: a}\nspec:\n  servers:\n  - port: {number: 31400, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: y, namespace: b}\nspec:\n  servers:\n  - port: {number: 31400, name: tcp, protocol: TCP}\n    hosts: [\"*\"]\n".into(),
            &["bad.yaml:14:20: port 31400 is bound twice with conflicting protocols: HTTP (gateway a/x) and TCP (gateway b/y)"],
        ),
        (
            "sniHosts outside VS hosts",
            format!("{GW}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs}}\nspec:\n  hosts: [a.example.com]\n  gateways: [gw]\n  tls:\n  - match:\n    - sniHosts:\n      - a.example.com\n      - b.example.com\n    route: [{{destination: {{host: 127.0.0.1, port: {{number: 1}}}}}}]\n"),
            &["bad.yaml:21:9: the SNI host \"b.example.com\" is not a subset of any of the virtual service hosts"],
        ),
        (
            "unresolvable destination",
            format!("{GW}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs}}\nspec:\n  hosts: [a.example.com]\n  gateways: [gw]\n  tls:\n  - match: [{{sniHosts: [a.example.com]}}]\n    route:\n    - destination: {{host: no-such-host.invalid, port: {{number: 443}}}}\n"),
            &["bad.yaml:20:27: destination host \"no-such-host.invalid\" port 443 cannot be resolved: no ServiceEntry names it and the system resolver said: "],
        ),
        (
            "weights not summing to 100",
            format!("{GW}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs}}\nspec:\n  hosts: [a.example.com]\n  gateways: [gw]\n  tls:\n  - match: [{{sniHosts: [a.example.com]}}]\n    route:\n    - {{destination: {{host: 127.0.0.1, port: {{number: 1}}}}, weight: 50}}\n    - {{destination: {{host: 127.0.0.1, port: {{number: 2}}}}, weight: 40}}\n"),
            &["bad.yaml:20:5: route weights sum to 90, they must add up to 100"],
        ),
        (
            "two errors in one file",
            format!("{GW}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs}}\nspec:\n  hosts: [a.example.com]\n  gateways: [gw, missing]\n  tls:\n  - match: [{{sniHosts: [c.example.com]}}]\n    route: [{{destination: {{host: 127.0.0.1, port: {{number: 1}}}}}}]\n"),
            &[
                "bad.yaml:16:18: virtual service references gateway \"default/missing\" which does not exist",
                "bad.yaml:18:25: the SNI host \"c.example.com\" is not a subset of any of the virtual service hosts",
            ],
        ),
        (
            "serde error in the second document",
            format!("{GW}\n---\n# comment\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se}}\nspec:\n  hosts: [x.example.com]\n  ports:\n  - number: 80\n    protocl: TCP\n"),
            &["bad.yaml:20:5: spec.ports[0]: unknown field `protocl`"],
        ),
        (
            "credential without Secret",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [\"*\"]\n    tls: {mode: SIMPLE, credentialName: nope}\n".into(),
            &["bad.yaml:8:41: credential \"nope\" not found: no Secret \"nope\" in namespace \"istio-system\""],
        ),
        (
            "bad duration and StringMatch",
            format!("{GW}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs}}\nspec:\n  hosts: [a.example.com]\n  http:\n  - timeout: 10 seconds\n    route: [{{destination: {{host: a}}}}]\n"),
            &["bad.yaml:17:14: spec.http[0].timeout: invalid duration \"10 seconds\""],
        ),
        (
            "HTTP and TLS on one port",
            format!("{GW}---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: web}}\nspec:\n  servers:\n  - port: {{number: 31400, name: http, protocol: http}}\n    hosts: [\"*\"]\n"),
            &["bad.yaml:16:20: port 31400 is bound twice with conflicting protocols: TLS (gateway default/gw) and HTTP (gateway default/web)"],
        ),
        (
            "tls route without sniHosts",
            format!("{GW}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs}}\nspec:\n  hosts: [a.example.com]\n  gateways: [gw]\n  tls:\n  - match: [{{port: 31400}}]\n    route: [{{destination: {{host: 127.0.0.1, port: {{number: 1}}}}}}]\n"),
            &["bad.yaml:18:14: TLS match must have at least one SNI host (sniHosts)"],
        ),
        (
            "STATIC endpoint that is not an IP, and a port the SE lacks",
            format!("{GW}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se}}\nspec:\n  hosts: [svc.example.com]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: backend.local}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs}}\nspec:\n  hosts: [a.example.com]\n  gateways: [gw]\n  tls:\n  - match: [{{sniHosts: [a.example.com]}}]\n    route: [{{destination: {{host: svc.example.com, port: {{number: 81}}}}}}]\n"),
            &[
                "bad.yaml:18:25: endpoint address \"backend.local\" must be an IP address when resolution is STATIC",
                "bad.yaml:28:66: service entry default/se has no port 81 for host \"svc.example.com\"",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (name, yaml, wanted) in cases {
        let got = match load_str("bad.yaml", yaml, &id()) {
            Ok(_) => vec!["<loaded without errors>".to_string()],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        };
        for want in *wanted {
            if !got.iter().any(|g| g.contains(want)) {
                failures.push(format!("{name}: wanted {want:?}\n  got {got:#?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("gwconfig-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn directory_loading() {
    let dir = TempDir::new("dir");
    // Split the walkthrough over files; the loader sorts them by name.
    let docs: Vec<&str> = WALKTHROUGH.split("\n---\n").collect();
    let mid = docs.len() / 2;
    dir.write("10-first.yaml", &docs[..mid].join("\n---\n"));
    dir.write("20-second.yml", &docs[mid..].join("\n---\n"));
    dir.write("README.txt", "not: [yaml");
    let snap = load(std::slice::from_ref(&dir.0), &id()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.listeners.len(), 3);
    assert_eq!(
        snap.resources.gateways[0].metadata.name,
        "coolstore-gateway"
    );
}

#[test]
fn syntax_errors_and_io_errors_have_positions() {
    let dir = TempDir::new("syntax");
    let bad = dir.write(
        "bad.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: x\n   namespace: y\n",
    );
    let also = dir.write(
        "also.yaml",
        "apiVersion: v1\nkind: Secrt\nmetadata: {name: y}\n",
    );
    let missing = dir.0.join("missing.yaml");
    let err = load(&[bad.clone(), also.clone(), missing.clone()], &id()).expect_err("must fail");
    let lines: Vec<String> = err.to_string().lines().map(str::to_string).collect();
    let want = [
        format!("{}:2:7: unknown kind \"Secrt\"", also.display()),
        format!(
            "{}:9:13: mapping values are not allowed in this context",
            bad.display()
        ),
        format!("{}:1:1: cannot read file: ", missing.display()),
    ];
    for w in &want {
        assert!(
            lines.iter().any(|l| l.starts_with(w.as_str())),
            "wanted {w:?} in {lines:#?}"
        );
    }
    assert_eq!(lines.len(), 3, "{lines:#?}");
}

/// Found by the config fuzzer (`"\r{"`): YAML ends lines at a lone CR, and libyaml also
/// at U+0085/U+2028/U+2029, but documents were split and errors placed counting LF
/// only, so an error could name a line past the end of the file (`fuzz.yaml:116:1` in
/// a 43-line one). Lines are now CR/LF/CRLF everywhere, recomputed from serde_yaml's
/// byte offset.
#[test]
fn errors_are_placed_on_lines_the_file_has() {
    let line = |yaml: &str| {
        let e = load_str("f.yaml", yaml, &id()).expect_err("must fail");
        assert_eq!(e.0.len(), 1, "{e}");
        (e.0[0].loc.line, e.0[0].loc.col)
    };
    assert_eq!(line("\r{"), (2, 2));
    // Two CR-only lines, then a document whose kind is wrong.
    assert_eq!(line("# a\r# b\r---\rapiVersion: v1\rkind: Secrt\r"), (5, 7));
    // libyaml ends the comment at U+2028, so `b` is a key and the `:` of line 2 is
    // wrong; that `:` is what the position must point at (libyaml said 3:5).
    assert_eq!(line("# a\u{2028}b\nkind: [\n"), (2, 5));
    // Found while minimizing another config fuzzer crash: yaml-rust2 put the implicit
    // null key of `? ` (no newline) on line 2 of this 1-line file; `!!:` the same way.
    assert_eq!(line("? "), (1, 3));
    assert_eq!(line("!!:"), (1, 4));
    // MeshConfig too: the `b` libyaml complains about is the 6th character of line 1
    // (libyaml: line 3).
    let mesh = mesh::parse(
        Path::new("m.yaml"),
        "# a\u{2028}\u{85}b\raccessLogEncoding: [\n",
    )
    .expect_err("must fail");
    assert_eq!((mesh.0[0].loc.line, mesh.0[0].loc.col), (1, 6), "{mesh}");
}

#[test]
fn host_rules() {
    use super::hosts::{covers, intersects};
    let cases = [
        // (a, b, intersects, a covers b)
        ("*", "foo.com", true, true),
        ("*.example.com", "a.b.example.com", true, true),
        ("*.example.com", "example.com", false, false),
        ("*.example.com", "*.b.example.com", true, true),
        ("*.b.example.com", "*.example.com", true, false),
        ("A.Example.com", "a.example.COM", true, true),
        ("a.example.com", "b.example.com", false, false),
        ("a.example.com", "*", true, false),
    ];
    for (a, b, i, c) in cases {
        assert_eq!(intersects(a, b), i, "intersects({a}, {b})");
        assert_eq!(covers(a, b), c, "covers({a}, {b})");
    }
}

#[test]
fn durations_and_weights() {
    use super::istio::parse_duration;
    use std::time::Duration;
    for (s, want) in [
        ("1.5s", Some(1500)),
        ("100ms", Some(100)),
        ("1m30s", Some(90_000)),
        ("1h", Some(3_600_000)),
        ("10", None),
        ("s", None),
        ("", None),
        ("5d", None),
    ] {
        assert_eq!(
            parse_duration(s).ok(),
            want.map(Duration::from_millis),
            "{s:?}"
        );
    }
    use super::validate::weights;
    assert_eq!(weights(&[None]), Ok(vec![100]));
    assert_eq!(weights(&[None, None, None]), Ok(vec![34, 33, 33]));
    assert_eq!(weights(&[Some(100), None]), Ok(vec![100, 0]));
    assert_eq!(weights(&[Some(60), Some(30)]), Err(90));
}

#[test]
fn gateways_for_other_workloads_are_ignored() {
    let other = GatewayIdentity {
        namespace: "istio-system".into(),
        labels: [("istio".to_string(), "egressgateway".to_string())].into(),
        ..GatewayIdentity::default()
    };
    let snap = load_str("w.yaml", WALKTHROUGH, &other).unwrap_or_else(|e| panic!("{e}"));
    let ports: Vec<u16> = snap.listeners.iter().map(|l| l.port).collect();
    assert_eq!(ports, [80]);
    assert_eq!(snap.listeners[0].protocol, ListenerProtocol::Tcp);
}

/// The README's first example ("Config reference by example") loads as `gateway validate`
/// loads it: no error, no missing reference (a reader pastes it first).
#[test]
fn readme_config_reference_example_loads() {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split_once("## Config reference by example")
        .expect("README has the section")
        .1;
    let yaml = section
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a yaml block")
        .0;
    let loaded = load_str_with("README.md", yaml, &id(), Missing::Error);
    if let Err(e) = loaded.result {
        panic!("the README's config reference example does not load:\n{e}");
    }
}

use super::*;
use crate::config::{GatewayIdentity, Missing, load_str_with};

fn load(yaml: &str, missing: Missing) -> crate::config::Loaded {
    load_str_with("w.yaml", yaml, &GatewayIdentity::default(), missing)
}

fn warnings(yaml: &str) -> Vec<String> {
    let l = load(yaml, Missing::Isolate);
    if let Err(e) = &l.result {
        panic!("errors: {e}");
    }
    l.warnings.iter().map(ToString::to_string).collect()
}

const GW_YAML: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP, targetPort: 80}
    hosts: [\"*\"]
";

const VS_YAML: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web.example.com]
  gateways: [istio-system/gw]
  http:
  - match:
    - uri: {prefix: /}
      statPrefix: x
    route:
    - destination: {host: 127.0.0.1, port: {number: 9}}
";

#[test]
fn one_warning_per_unsupported_field_with_the_key_position() {
    let w = warnings(&format!("{GW_YAML}---\n{VS_YAML}"));
    assert_eq!(
        w,
        [
            "w.yaml:7:54: warning[GW1011]: Gateway istio-system/gw: spec.servers[0].port.targetPort: not supported; ignored: the port listens on `--bind`'s addresses, on `port.number`",
            "w.yaml:19:7: warning[GW1006]: VirtualService default/web: spec.http[0].match[0].statPrefix: not supported; ignored: no per-route statistics are emitted",
        ]
    );
}

#[test]
fn every_kind_has_its_warnings() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se}\nspec:\n  hosts: [se.example.com]\n  ports: [{number: 80, name: grpc, protocol: GRPC}]\n  resolution: STATIC\n  exportTo: [\".\"]\n  endpoints: [{address: 127.0.0.1, weight: 3, locality: r1}]\n",
            "GW1010 GW1021",
            "w.yaml:8:3",
        ),
        (
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: istio-system}\nspec:\n  tracing: [{randomSamplingPercentage: 10}]\n  metrics: [{providers: [{name: prometheus}]}]\n",
            "GW1031 GW1030",
            "w.yaml:5:3",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: istio-system}\nspec:\n  action: AUDIT\n  rules: [{to: [{operation: {paths: [/x]}}]}]\n",
            "GW1040",
            "w.yaml:5:3",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nimmutable: true\nstringData: {a: b}\n",
            "GW1050",
            "w.yaml:4:1",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: dr}\nspec:\n  host: x\n  trafficPolicy: {tls: {mode: DISABLE, caCrl: /crl.pem}}\n",
            "GW1063",
            "w.yaml:6:19",
        ),
        (
            "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: dr}\nspec:\n  host: x\n  workloadSelector: {matchLabels: {a: b}}\n  trafficPolicy:\n    tls: {mode: DISABLE, sni: x.test}\n    connectionPool: {tcp: {maxConnections: 1, connectTimeout: 1s, idleTimeout: 1s, maxConnectionDuration: 1s}}\n    loadBalancer: {simple: PASSTHROUGH, localityLbSetting: {enabled: true}}\n    portLevelSettings:\n    - port: {number: 80}\n      outlierDetection: {consecutive5xxErrors: 1}\n  subsets:\n  - name: v1\n    trafficPolicy:\n      tunnel: {targetHost: a, targetPort: 1}\n      loadBalancer: {consistentHash: {httpCookie: {name: c, ttl: 1s, attributes: [{name: a}]}}}\n",
            "GW1066 GW1063 GW1067 GW1064 GW1065 GW1065",
            "w.yaml:6:3",
        ),
    ];
    for (yaml, codes, first) in cases {
        let w = warnings(yaml);
        let got: Vec<&str> = w
            .iter()
            .map(|w| {
                w.split("warning[")
                    .nth(1)
                    .unwrap_or_default()
                    .get(..6)
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(got.join(" "), *codes, "{w:#?}");
        assert!(w[0].starts_with(first), "{w:#?}");
    }
}

#[test]
fn defaults_and_empty_values_are_not_warned() {
    let vs = VS_YAML
        .replace(
            "  - mirror:\n      {host: 127.0.0.1, subset: v1, port: {number: 9}}\n    match:",
            "  - corsPolicy: {}\n    match:",
        )
        .replace("statPrefix: x", "sourceNamespace: \"\"")
        .replace(
            "  hosts: [web.example.com]",
            "  hosts: [web.example.com]\n  exportTo: [\"*\"]",
        );
    assert_eq!(
        warnings(&format!(
            "{}---\n{vs}",
            GW_YAML.replace(", targetPort: 80", "")
        )),
        Vec::<String>::new()
    );
}

#[test]
fn missing_references_are_errors_or_isolated_warnings() {
    let yaml = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-a, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: SIMPLE, credentialName: missing}
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*\"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [\"*\"]
  gateways: [istio-system/gw, nope]
  http:
  - match: [{uri: {prefix: /b}}]
    route:
    - destination: {host: no-such-host.invalid, port: {number: 80}}
  - route:
    - destination: {host: no-such-host.invalid, port: {number: 80}}
";
    let strict = load(yaml, Missing::Error);
    let e = strict.result.unwrap_err().to_string();
    assert!(e.contains("w.yaml:9:41: credential \"missing\" not found: no Secret \"missing\" in namespace \"istio-system\"; that server is inactive"), "{e}");
    assert!(
        e.contains("[GW2001]") && e.contains("[GW2002]") && e.contains("[GW2003]"),
        "{e}"
    );

    let run = load(yaml, Missing::Isolate);
    let codes: Vec<&str> = run.warnings.iter().map(|w| w.code).collect();
    // Each route naming the host is told, at its own position.
    assert_eq!(codes, ["GW2001", "GW2002", "GW2003", "GW2003"]);
    let snap = run.result.expect("isolated");
    assert_eq!(snap.inactive.len(), 1);
    assert_eq!(snap.inactive[0].credential_name, "missing");
    // Port 443 had only the inactive server: not served; 80 is, with the route to a
    // cluster without endpoints.
    let ports: Vec<u16> = snap.listeners.iter().map(|l| l.port).collect();
    assert_eq!(ports, [80]);
    let c = &snap.clusters["outbound|80||no-such-host.invalid"];
    assert!(c.endpoints.is_empty());
    assert_eq!(snap.listeners[0].http[0].routes[1].destinations.len(), 1);
}

/// MUTUAL without a CA (none in the Secret, no `<name>-cacert`): the server is
/// inactive, and the missing CA Secret is what proxy-config shows warming.
#[test]
fn mutual_without_a_ca_is_a_missing_reference() {
    let yaml = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: MUTUAL, credentialName: a-cred}
---
apiVersion: v1
kind: Secret
metadata: {name: a-cred, namespace: istio-system}
stringData: {tls.crt: x, tls.key: y}
";
    let run = load(yaml, Missing::Isolate);
    let snap = run.result.expect("isolated");
    assert_eq!(run.warnings.len(), 1);
    assert!(
        run.warnings[0]
            .message
            .starts_with("MUTUAL TLS needs a CA: Secret \"a-cred\" has no ca.crt"),
        "{}",
        run.warnings[0]
    );
    assert_eq!(snap.inactive[0].credential_name, "a-cred-cacert");
    assert!(snap.listeners.is_empty());
    let with_ca = format!(
        "{yaml}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: a-cred-cacert, namespace: istio-system}}\nstringData: {{cacert: z}}\n"
    );
    let ok = load(&with_ca, Missing::Error);
    assert!(ok.warnings.is_empty());
    assert_eq!(ok.result.expect("valid").listeners.len(), 1);
}

#[test]
fn refused_fields_and_misspellings_stay_errors() {
    let fault = VS_YAML.replace(
        "    route:\n",
        "    fault: {delay: {exponentialDelay: 1s}}\n    route:\n",
    );
    let e = load(&format!("{GW_YAML}---\n{fault}"), Missing::Isolate)
        .result
        .unwrap_err()
        .to_string();
    assert!(e.contains("exponentialDelay is not supported"), "{e}");
    let typo = VS_YAML.replace("    route:\n", "    corsPolicyy: {}\n    route:\n");
    let e = load(&typo, Missing::Isolate)
        .result
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `corsPolicyy`"), "{e}");
    let sa = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  rules: [{from: [{source: {serviceAccounts: [ns/sa]}}]}]\n";
    let e = load(sa, Missing::Isolate).result.unwrap_err().to_string();
    assert!(
        e.contains("`serviceAccounts` needs a peer or JWT identity"),
        "{e}"
    );
}

#[test]
fn mesh_config_fields_not_used_are_warned() {
    let text = "accessLogFile: /dev/stdout\nenableTracing: true\ndefaultProviders:\n  accessLogging: [envoy]\n  tracing: [zipkin]\nextensionProviders:\n- name: z\n  zipkin: {service: z, port: 9411}\n";
    let w: Vec<String> = scan_mesh(Path::new("mesh.yaml"), text)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(w.len(), 3, "{w:#?}");
    assert!(
        w[0].starts_with("mesh.yaml:2:1: warning[GW1070]: enableTracing: "),
        "{w:#?}"
    );
    assert!(
        w[1].starts_with("mesh.yaml:5:3: warning[GW1070]: defaultProviders.tracing: "),
        "{w:#?}"
    );
    assert!(
        w[2].starts_with("mesh.yaml:8:3: warning[GW1070]: extensionProviders[0].zipkin: "),
        "{w:#?}"
    );
}

/// The counts of `gateway_config_warnings{code}` (rendered by
/// `telemetry::metrics::render_config_warnings`, tested there).
#[test]
fn metric_counts_per_code() {
    let l = load(&format!("{GW_YAML}---\n{VS_YAML}"), Missing::Isolate);
    let counts = count_by_code(&l.warnings);
    assert_eq!(counts.get("GW1011"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("GW1006"), Some(&1), "{counts:?}");
    assert!(count_by_code(&[]).is_empty());
}

/// Every code is in the README's table, and every rule's code is in [`CODES`].
#[test]
fn the_readme_table_lists_every_code() {
    let readme = include_str!("../../../../README.md");
    for (code, ..) in CODES {
        assert!(
            readme.contains(&format!("| `{code}` |")),
            "{code} missing from README"
        );
    }
    for rules in [
        VIRTUAL_SERVICE,
        GATEWAY,
        SERVICE_ENTRY,
        TELEMETRY,
        AUTHORIZATION_POLICY,
        SECRET,
    ] {
        for r in rules {
            assert!(!effect(r.code).is_empty(), "{}", r.code);
        }
    }
}

/// The connection settings the gateway acts on (`upstream_policy::ConnSettings`) are
/// not warned, and reach the cluster as Istio's `applyConnectionPool` sets them.
#[test]
fn connection_pool_connection_settings_are_acted_on() {
    use crate::config::upstream_policy::{ConnSettings, Keepalive};
    use std::time::Duration;
    let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se}\nspec:\n  hosts: [svc.test]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 127.0.0.1}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: dr}\nspec:\n  host: svc.test\n  trafficPolicy:\n    connectionPool:\n      tcp: {connectTimeout: 250ms, tcpKeepalive: {time: 1500ms, interval: 3s, probes: 4}}\n      http: {maxRequestsPerConnection: 2, idleTimeout: 5s, h2UpgradePolicy: UPGRADE, maxConcurrentStreams: 3}\n  subsets:\n  - name: v1\n    trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 0, h2UpgradePolicy: DO_NOT_UPGRADE, useClientProtocol: true}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\nspec:\n  hosts: [web.example.com]\n  gateways: [istio-system/gw]\n  http:\n  - route: [{destination: {host: svc.test, subset: v1}}]\n";
    let gw = GW_YAML.replace(", targetPort: 80", "");
    let l = load(&format!("{gw}---\n{yaml}"), Missing::Isolate);
    let snap = match &l.result {
        Ok(s) => s,
        Err(e) => panic!("errors: {e}"),
    };
    let w: Vec<String> = l.warnings.iter().map(ToString::to_string).collect();
    assert!(w.is_empty(), "{w:#?}");
    let whole = &snap.clusters["outbound|80||svc.test"];
    assert_eq!(
        whole.conn,
        ConnSettings {
            connect_timeout: Some(Duration::from_millis(250)),
            // Envoy's TcpKeepalive is in whole seconds.
            keepalive: Some(Keepalive {
                time: Some(Duration::from_secs(1)),
                interval: Some(Duration::from_secs(3)),
                probes: Some(4),
            }),
            max_requests_per_connection: Some(2),
            idle_timeout: Some(Duration::from_secs(5)),
            h2_upgrade: true,
            max_concurrent_streams: Some(3),
            use_client_protocol: false,
            max_connection_duration: None,
        }
    );
    assert!(whole.http2, "UPGRADE makes the HTTP port's cluster HTTP/2");
    // A subset's connectionPool replaces the top level's (Istio's MergeTrafficPolicy).
    let v1 = &snap.clusters["outbound|80|v1|svc.test"];
    assert_eq!(v1.conn.max_requests_per_connection, None);
    assert!(!v1.http2);
    assert!(v1.conn.use_client_protocol);
    // Istio's validation: useClientProtocol with UPGRADE is refused.
    let bad = yaml.replace(
        "DO_NOT_UPGRADE, useClientProtocol",
        "UPGRADE, useClientProtocol",
    );
    let l = load(&format!("{gw}---\n{bad}"), Missing::Isolate);
    let e = l.result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        e.contains("use client protocol must not be true when H2UpgradePolicy is UPGRADE"),
        "{e}"
    );
}

/// `tcp.idleTimeout` is acted on, as Istio gives it out: the top level's to a TCP
/// route's tcp_proxy (`Cluster::tcp_idle_timeout`), and every level's to the cluster's
/// HTTP connections when `http.idleTimeout` is unset (`applyConnectionPool`).
#[test]
fn tcp_idle_timeout_is_acted_on() {
    use std::time::Duration;
    let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se}\nspec:\n  hosts: [svc.test]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 127.0.0.1}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: dr}\nspec:\n  host: svc.test\n  trafficPolicy:\n    connectionPool:\n      tcp: {idleTimeout: 7s}\n  subsets:\n  - name: v1\n    trafficPolicy: {connectionPool: {tcp: {idleTimeout: 0s}}}\n  - name: v2\n    trafficPolicy: {connectionPool: {tcp: {idleTimeout: 9s}, http: {idleTimeout: 2s}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\nspec:\n  hosts: [web.example.com]\n  gateways: [istio-system/gw]\n  http:\n  - route: [{destination: {host: svc.test, subset: v1}}, {destination: {host: svc.test, subset: v2}}]\n";
    let gw = GW_YAML.replace(", targetPort: 80", "");
    let l = load(&format!("{gw}---\n{yaml}"), Missing::Isolate);
    let snap = match &l.result {
        Ok(s) => s,
        Err(e) => panic!("errors: {e}"),
    };
    let w: Vec<String> = l.warnings.iter().map(ToString::to_string).collect();
    assert!(w.is_empty(), "{w:#?}");
    let c = |n: &str| &snap.clusters[n];
    let whole = c("outbound|80||svc.test");
    assert_eq!(whole.conn.idle_timeout, Some(Duration::from_secs(7)));
    assert_eq!(whole.tcp_idle_timeout, Some(Duration::from_secs(7)));
    // 0s: disabled (Envoy), for the HTTP connections too.
    assert_eq!(
        c("outbound|80|v1|svc.test").conn.idle_timeout,
        Some(Duration::ZERO)
    );
    // http.idleTimeout wins over tcp.idleTimeout.
    let v2 = c("outbound|80|v2|svc.test");
    assert_eq!(v2.conn.idle_timeout, Some(Duration::from_secs(2)));
    // The tcp_proxy reads the rule's top level only (networkfilter.go).
    for n in ["outbound|80|v1|svc.test", "outbound|80|v2|svc.test"] {
        assert_eq!(c(n).tcp_idle_timeout, Some(Duration::from_secs(7)), "{n}");
    }
    // Istio's ValidateDuration (at least 1 ms), skipped for 0s.
    let bad = yaml.replace("idleTimeout: 7s", "idleTimeout: 500us");
    let l = load(&format!("{gw}---\n{bad}"), Missing::Isolate);
    let e = l.result.err().map(|e| e.to_string()).unwrap_or_default();
    // The error points at the value (line 26 of the joined file, after `idleTimeout: `).
    assert!(
        e.contains(":26:26: duration must be greater than 1ms"),
        "{e}"
    );
}

/// `tcp.maxConnectionDuration` is acted on, as Istio gives it out: every level's to the
/// cluster's HTTP connections (`applyConnectionPool`), the top level's to a TCP route's
/// tcp_proxy (`Cluster::tcp_max_duration`, networkfilter.go); at least 1 ms.
#[test]
fn max_connection_duration_is_acted_on() {
    use std::time::Duration;
    let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se}\nspec:\n  hosts: [svc.test]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 127.0.0.1}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: dr}\nspec:\n  host: svc.test\n  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnectionDuration: 7s}\n  subsets:\n  - name: v1\n    trafficPolicy: {connectionPool: {tcp: {maxConnectionDuration: 2s}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\nspec:\n  hosts: [web.example.com]\n  gateways: [istio-system/gw]\n  http:\n  - route: [{destination: {host: svc.test, subset: v1}}]\n";
    let gw = GW_YAML.replace(", targetPort: 80", "");
    let l = load(&format!("{gw}---\n{yaml}"), Missing::Isolate);
    let snap = match &l.result {
        Ok(s) => s,
        Err(e) => panic!("errors: {e}"),
    };
    let w: Vec<String> = l.warnings.iter().map(ToString::to_string).collect();
    assert!(w.is_empty(), "{w:#?}");
    let whole = &snap.clusters["outbound|80||svc.test"];
    assert_eq!(
        whole.conn.max_connection_duration,
        Some(Duration::from_secs(7))
    );
    assert_eq!(whole.tcp_max_duration, Some(Duration::from_secs(7)));
    let v1 = &snap.clusters["outbound|80|v1|svc.test"];
    assert_eq!(
        v1.conn.max_connection_duration,
        Some(Duration::from_secs(2))
    );
    // The tcp_proxy reads the rule's top level only.
    assert_eq!(v1.tcp_max_duration, Some(Duration::from_secs(7)));
    // Istio's ValidateDuration: at least 1 ms, 0s included.
    for bad in ["500us", "0s"] {
        let y = yaml.replace(
            "maxConnectionDuration: 7s",
            &format!("maxConnectionDuration: {bad}"),
        );
        let l = load(&format!("{gw}---\n{y}"), Missing::Isolate);
        let e = l.result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.contains("duration must be greater than 1ms"),
            "{bad}: {e}"
        );
    }
}

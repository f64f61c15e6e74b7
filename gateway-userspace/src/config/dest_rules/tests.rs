//! Which DestinationRule a destination gets, the policy of each cluster, and the
//! errors and warnings with their positions.

use crate::config::dest_rules::{HashKey, LbPolicy};
use crate::config::{GatewayIdentity, Missing, Snapshot, load_str_with};

const BASE: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*\"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: app, namespace: shop}
spec:
  hosts: [app.shop.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 81, name: alt, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: 9001, alt: 9101}, labels: {version: v1}}
  - {address: 127.0.0.2, ports: {http: 9002, alt: 9102}, labels: {version: v2}}
  - {address: 127.0.0.3, ports: {http: 9003, alt: 9103}, labels: {version: v2, canary: \"yes\"}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: shop}
spec:
  hosts: [\"*\"]
  gateways: [istio-system/gw]
  http:
  - match: [{uri: {prefix: /v1}}]
    route: [{destination: {host: app, subset: v1, port: {number: 80}}}]
  - match: [{uri: {prefix: /alt}}]
    route: [{destination: {host: app, port: {number: 81}}}]
  - route: [{destination: {host: app, port: {number: 80}}}]
";

fn load(yaml: &str, mode: Missing) -> crate::config::Loaded {
    load_str_with("dr.yaml", yaml, &GatewayIdentity::default(), mode)
}

/// Loaded as `run` loads (the BASE route's subset v1 may have no rule).
fn snap(extra: &str) -> Snapshot {
    let l = load(&format!("{BASE}---\n{extra}"), Missing::Isolate);
    match l.result {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

fn errors(extra: &str) -> Vec<String> {
    match load(&format!("{BASE}---\n{extra}"), Missing::Error).result {
        Ok(_) => panic!("loaded"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

const DR_SHOP: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: app, namespace: shop}
spec:
  host: app
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    portLevelSettings:
    - port: {number: 81}
      loadBalancer: {consistentHash: {httpHeaderName: X-User}}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: RANDOM}
  - name: canary
    labels: {version: v2, canary: \"yes\"}
    trafficPolicy:
      portLevelSettings:
      - port: {number: 80}
        loadBalancer: {consistentHash: {maglev: {tableSize: 251}, useSourceIp: true}}
";

#[test]
fn subsets_select_endpoints_by_labels_and_take_their_policy() {
    let s = snap(DR_SHOP);
    let c = |n: &str| {
        s.clusters
            .get(n)
            .unwrap_or_else(|| panic!("{n}: {:?}", s.clusters.keys()))
    };
    let host = "app.shop.svc.cluster.local";
    let whole = c(&format!("outbound|80||{host}"));
    assert_eq!(whole.endpoints.len(), 3);
    assert_eq!(whole.lb, LbPolicy::RoundRobin);
    assert_eq!(whole.destination_rule.as_deref(), Some("shop/app"));
    let v1 = c(&format!("outbound|80|v1|{host}"));
    assert_eq!(v1.endpoints, ["127.0.0.1:9001".parse().unwrap()]);
    assert_eq!(v1.subset, "v1");
    // The subset has no policy: the top level's.
    assert_eq!(v1.lb, LbPolicy::RoundRobin);
    let v2 = c(&format!("outbound|80|v2|{host}"));
    assert_eq!(v2.endpoints.len(), 2);
    assert_eq!(v2.lb, LbPolicy::Random);
    let canary = c(&format!("outbound|80|canary|{host}"));
    assert_eq!(canary.endpoints, ["127.0.0.3:9003".parse().unwrap()]);
    assert_eq!(
        canary.lb,
        LbPolicy::Maglev {
            key: HashKey::SourceIp,
            table_size: 251
        }
    );
    // Port 81: the top-level portLevelSettings entry; subsets there too.
    let alt = c(&format!("outbound|81||{host}"));
    assert_eq!(
        alt.lb,
        LbPolicy::RingHash {
            key: HashKey::Header("x-user".into()),
            minimum_ring_size: 1024
        }
    );
    // v2 at 81: the subset's RANDOM overrides the port-level hash (Istio merges the
    // subset's policy over the port-resolved top level).
    assert_eq!(c(&format!("outbound|81|v2|{host}")).lb, LbPolicy::Random);
}

#[test]
fn no_destination_rule_is_least_request() {
    let s = snap("");
    let c = &s.clusters["outbound|80||app.shop.svc.cluster.local"];
    assert_eq!(c.lb, LbPolicy::LeastRequest);
    assert_eq!(c.destination_rule, None);
}

fn dr(name: &str, ns: &str, host: &str, export: &str, lb: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: \"{host}\"\n  exportTo: {export}\n  trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}\n  subsets: [{{name: v1, labels: {{version: v1}}}}]\n"
    )
}

fn chosen(docs: &[String]) -> Option<String> {
    snap(&docs.join("---\n")).clusters["outbound|80||app.shop.svc.cluster.local"]
        .destination_rule
        .clone()
}

#[test]
fn precedence_exact_before_wildcard_and_namespaces_as_istio() {
    // Exact host before a wildcard in the same namespace.
    let got = chosen(&[
        dr("wild", "shop", "*.svc.cluster.local", "[]", "RANDOM"),
        dr(
            "exact",
            "shop",
            "app.shop.svc.cluster.local",
            "[]",
            "ROUND_ROBIN",
        ),
    ]);
    assert_eq!(got.as_deref(), Some("shop/exact"));
    // The longer wildcard wins over the shorter one.
    let got = chosen(&[
        dr("a", "shop", "*.cluster.local", "[]", "RANDOM"),
        dr("b", "shop", "*.shop.svc.cluster.local", "[]", "RANDOM"),
    ]);
    assert_eq!(got.as_deref(), Some("shop/b"));
    // The gateway is in the root namespace: the service's namespace before the
    // root namespace's exported rules.
    let got = chosen(&[
        dr(
            "root",
            "istio-system",
            "app.shop.svc.cluster.local",
            "[]",
            "RANDOM",
        ),
        dr("svc", "shop", "app", "[]", "ROUND_ROBIN"),
    ]);
    assert_eq!(got.as_deref(), Some("shop/svc"));
    // A root-namespace rule private to it (`.`) applies to the gateway there first.
    let got = chosen(&[
        dr(
            "root",
            "istio-system",
            "app.shop.svc.cluster.local",
            "[\".\"]",
            "RANDOM",
        ),
        dr("svc", "shop", "app", "[]", "ROUND_ROBIN"),
    ]);
    assert_eq!(got.as_deref(), Some("istio-system/root"));
    // Not exported to the gateway's namespace: skipped, the root one applies.
    let got = chosen(&[
        dr("svc", "shop", "app", "[\".\"]", "ROUND_ROBIN"),
        dr(
            "root",
            "istio-system",
            "app.shop.svc.cluster.local",
            "[]",
            "RANDOM",
        ),
    ]);
    assert_eq!(got.as_deref(), Some("istio-system/root"));
    // Exported by name.
    let got = chosen(&[dr("svc", "shop", "app", "[istio-system]", "ROUND_ROBIN")]);
    assert_eq!(got.as_deref(), Some("shop/svc"));
    // `~`: nobody. A rule in an unrelated namespace never applies (Istio looks in the
    // gateway's, the service's and the root namespace only).
    assert_eq!(
        chosen(&[dr("svc", "shop", "app", "[\"~\"]", "RANDOM")]),
        None
    );
    assert_eq!(
        chosen(&[dr(
            "other",
            "other",
            "app.shop.svc.cluster.local",
            "[]",
            "RANDOM"
        )]),
        None
    );
    // A short host is expanded in the rule's own namespace.
    assert_eq!(
        chosen(&[dr("x", "istio-system", "app", "[]", "RANDOM")]),
        None
    );
}

#[test]
fn same_host_same_namespace_merges_first_by_name() {
    let a = dr("a-first", "shop", "app", "[]", "RANDOM");
    let b = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b-second, namespace: shop}\nspec:\n  host: app\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n  subsets: [{name: v1, labels: {version: v2}}, {name: v2, labels: {version: v2}}]\n".to_string();
    // File order does not matter: the first by name wins (Istio: creation time, then
    // name), subsets are united, a repeated name keeps the first's.
    let s = snap(&[b, a].join("---\n"));
    let c = &s.clusters["outbound|80||app.shop.svc.cluster.local"];
    assert_eq!(c.lb, LbPolicy::Random);
    assert_eq!(c.destination_rule.as_deref(), Some("shop/a-first"));
    let v1 = &s.clusters["outbound|80|v1|app.shop.svc.cluster.local"];
    assert_eq!(v1.endpoints, ["127.0.0.1:9001".parse().unwrap()]);
    assert!(
        s.clusters
            .contains_key("outbound|80|v2|app.shop.svc.cluster.local")
    );
}

#[test]
fn a_missing_subset_is_an_error_at_validate_and_a_warning_at_run() {
    let yaml = format!("{BASE}---\n{}", dr("app", "shop", "app", "[]", "RANDOM"))
        .replace("subset: v1", "subset: v9");
    let e = match load(&yaml, Missing::Error).result {
        Err(e) => e.to_string(),
        Ok(_) => panic!("loaded"),
    };
    assert_eq!(
        e,
        "dr.yaml:30:47: DestinationRule shop/app for \"app.shop.svc.cluster.local\" has no subset \"v9\"; the route's cluster does not exist, as in Envoy: requests get 503 (NC, `cluster_not_found`) and TCP/TLS connections are closed [GW2004]"
    );
    let l = load(&yaml, Missing::Isolate);
    let s = l.result.expect("run loads");
    assert!(
        !s.clusters
            .contains_key("outbound|80|v9|app.shop.svc.cluster.local")
    );
    assert_eq!(l.warnings.len(), 1);
    assert_eq!(l.warnings[0].code, "GW2004");
    // No DestinationRule at all.
    let e = match load(BASE, Missing::Error).result {
        Err(e) => e.to_string(),
        Ok(_) => panic!("loaded"),
    };
    assert!(
        e.starts_with("dr.yaml:30:47: subset \"v1\" of \"app.shop.svc.cluster.local\": no DestinationRule for this host applies to the gateway;"),
        "{e}"
    );
}

#[test]
fn invalid_rules_are_errors_with_positions() {
    let e = errors(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bad, namespace: shop}
spec:
  host: app
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      consistentHash: {httpCookie: {name: \"\"}, maglev: {tableSize: 1000}}
    portLevelSettings:
    - port: {number: 80}
    - port: {number: 80}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v1}
",
    );
    assert_eq!(
        e,
        [
            "dr.yaml:43:24: simple and consistentHash are both set; they are alternatives (one of lbPolicy)",
            "dr.yaml:43:37: ttl required for HttpCookie",
            "dr.yaml:43:43: name required for HttpCookie",
            "dr.yaml:43:68: tableSize 1000 must be a prime number no larger than 5000011",
            "dr.yaml:46:22: port 80 is already set by spec.trafficPolicy.portLevelSettings[0]",
            "dr.yaml:49:12: duplicate subset name \"v1\" (also spec.subsets[0])",
        ]
    );
    // Not Istio's API: a misspelt field is an error too.
    let e = errors(
        "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: x, namespace: shop}\nspec:\n  host: app\n  trafficPolicy: {loadBalancer: {simpel: RANDOM}}\n",
    );
    assert!(
        e.iter().any(|e| e
            .starts_with("dr.yaml:40:34: spec.trafficPolicy.loadBalancer: unknown field `simpel`")),
        "{e:?}"
    );
}

#[test]
fn connection_pool_and_outlier_detection_merge_and_default_as_istio() {
    use crate::config::upstream_policy::{CircuitBreakers, OutlierPolicy};
    use std::time::Duration;
    let s = snap(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: app, namespace: shop}
spec:
  host: app
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 3}
      http: {http1MaxPendingRequests: 2, http2MaxRequests: 0}
    outlierDetection: {baseEjectionTime: 2s, interval: 500ms, maxEjectionPercent: 100}
    portLevelSettings:
    - port: {number: 81}
      loadBalancer: {simple: RANDOM}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      outlierDetection:
        consecutiveErrors: 2
        minHealthPercent: 50
        splitExternalLocalOriginErrors: true
        consecutiveLocalOriginFailures: 4
",
    );
    let host = "app.shop.svc.cluster.local";
    let c = |n: &str| &s.clusters[&format!("outbound|{n}|{host}")];
    let limits = CircuitBreakers {
        max_connections: 3,
        max_pending_requests: 2,
        // 0 is "not set": Istio's default, no limit.
        max_requests: u32::MAX,
        max_retries: u32::MAX,
    };
    assert_eq!(c("80|").circuit_breakers, Some(limits));
    // Envoy's defaults for what the rule leaves out (consecutive_5xx 5).
    let top = OutlierPolicy {
        consecutive_5xx: 5,
        consecutive_gateway: 0,
        interval: Duration::from_millis(500),
        base_ejection_time: Duration::from_secs(2),
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent: 100,
        min_health_percent: 0,
        split_local_origin: false,
        consecutive_local_origin: 5,
    };
    assert_eq!(c("80|").outlier, Some(top));
    assert_eq!(c("80|v1").outlier, Some(top));
    assert_eq!(c("80|v1").circuit_breakers, Some(limits));
    // The subset's outlierDetection replaces the top level's as a whole; the
    // deprecated consecutiveErrors counts gateway errors only.
    let v2 = OutlierPolicy {
        consecutive_5xx: 0,
        consecutive_gateway: 2,
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent: 10,
        min_health_percent: 50,
        split_local_origin: true,
        consecutive_local_origin: 4,
    };
    assert_eq!(c("80|v2").outlier, Some(v2));
    // Port 81 has a portLevelSettings entry: "port level policies do not inherit".
    assert_eq!(c("81|").outlier, None);
    assert_eq!(c("81|").circuit_breakers, None);
    // No rule: nothing.
    let none = snap("");
    let c = &none.clusters[&format!("outbound|80||{host}")];
    assert_eq!((c.outlier, c.circuit_breakers), (None, None));
}

#[test]
fn invalid_connection_pool_and_outlier_detection_are_errors_with_positions() {
    let e = errors(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bad, namespace: shop}
spec:
  host: app
  trafficPolicy:
    connectionPool: {}
    outlierDetection: {consecutive5xxErrors: -1, maxEjectionPercent: 101, interval: 0s}
    portLevelSettings:
    - port: {number: 80}
      connectionPool: {tcp: {maxConnections: -2}, http: {http1MaxPendingRequests: -1}}
  subsets: [{name: v1, labels: {version: v1}}]
",
    );
    assert_eq!(
        e,
        [
            "dr.yaml:41:20: must set at least one of http or tcp",
            "dr.yaml:42:46: outlier detection consecutive 5xx errors cannot be negative",
            "dr.yaml:42:70: percentage 101 is not in range 0..100",
            "dr.yaml:42:85: duration must be greater than 1ms",
            "dr.yaml:45:46: max connections must be non-negative",
            "dr.yaml:45:83: http1 max pending requests must be non-negative",
        ]
    );
    let e = errors(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x, namespace: shop}\nspec:\n  host: app\n  trafficPolicy: {outlierDetection: {consecutive5xx: 1}}\n",
    );
    assert!(
        e.iter().any(|e| e.starts_with(
            "dr.yaml:40:38: spec.trafficPolicy.outlierDetection: unknown field `consecutive5xx`"
        )),
        "{e:?}"
    );
}

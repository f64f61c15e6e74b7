//! VirtualService `match[].sourceLabels` / `sourceNamespace` on a gateway. Istio
//! compares them with the proxy the configuration is generated for, which on a gateway
//! is the gateway itself ([`GatewayIdentity`]): a match block whose `sourceLabels` are
//! not a subset of the gateway's labels, or whose `sourceNamespace` is not the
//! gateway's namespace, is dropped at configuration time (nothing is looked up per
//! request).
//!
//! - HTTP, istio/istio `pilot/pkg/networking/core/route/route.go` `sourceMatchHTTP`:
//!   a block with `gateways` is kept when one of them is this gateway and its source
//!   fields are not looked at; otherwise it is kept when
//!   `labels.Instance(match.GetSourceLabels()).SubsetOf(proxyLabels)` and
//!   `match.SourceNamespace == "" || match.SourceNamespace == proxyNamespace`.
//! - TCP and TLS, `pilot/pkg/networking/core/tls.go` `matchTCP` / `matchTLS`:
//!   `gatewayMatch && labelMatch && portMatch && nsMatch`, the source fields checked
//!   whether or not `gateways` is set.
//!
//! A route whose every block is dropped is dropped (Istio's `translateRoute` returns
//! nil for each), never turned into a catch-all.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::GatewayIdentity;
use super::istio::{HttpMatchRequest, HttpRoute};

/// Istio's `labelMatch && nsMatch`: every written label is on the gateway with the
/// same value (an empty map is a subset of anything) and the namespace is unset,
/// empty or the gateway's.
pub fn source_ok(
    labels: &BTreeMap<String, String>,
    namespace: Option<&str>,
    id: &GatewayIdentity,
) -> bool {
    labels.iter().all(|(k, v)| id.labels.get(k) == Some(v))
        && namespace.is_none_or(|ns| ns.is_empty() || ns == id.namespace)
}

/// `sourceMatchHTTP` minus its gateway-name half (checked where the server is known):
/// a block naming `gateways` is not filtered by its source fields.
pub fn http_match_ok(m: &HttpMatchRequest, id: &GatewayIdentity) -> bool {
    !m.gateways.is_empty() || source_ok(&m.source_labels, m.source_namespace.as_deref(), id)
}

/// The route with the match blocks this gateway's source does not satisfy removed:
/// the same `Arc` when none is, `None` when every block is (the route does not exist
/// for this gateway).
pub fn http_route_for(r: &Arc<HttpRoute>, id: &GatewayIdentity) -> Option<Arc<HttpRoute>> {
    if r.matches.iter().all(|m| http_match_ok(m, id)) {
        return Some(Arc::clone(r));
    }
    let matches: Vec<HttpMatchRequest> = r
        .matches
        .iter()
        .filter(|m| http_match_ok(m, id))
        .cloned()
        .collect();
    if matches.is_empty() {
        return None;
    }
    Some(Arc::new(HttpRoute {
        matches,
        ..HttpRoute::clone(r)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> GatewayIdentity {
        GatewayIdentity::default()
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_must_be_a_subset_and_namespace_the_gateways() {
        let id = id();
        assert!(source_ok(&labels(&[]), None, &id));
        assert!(source_ok(
            &labels(&[("istio", "ingressgateway")]),
            None,
            &id
        ));
        assert!(source_ok(
            &labels(&[("istio", "ingressgateway"), ("app", "istio-ingressgateway")]),
            Some("istio-system"),
            &id
        ));
        assert!(source_ok(&labels(&[]), Some(""), &id));
        assert!(!source_ok(
            &labels(&[("istio", "egressgateway")]),
            None,
            &id
        ));
        assert!(!source_ok(&labels(&[("version", "v1")]), None, &id));
        assert!(!source_ok(&labels(&[]), Some("default"), &id));
    }

    #[test]
    fn http_blocks_with_gateways_skip_the_source_check() {
        let id = id();
        let m = HttpMatchRequest {
            source_labels: labels(&[("app", "other")]),
            ..Default::default()
        };
        assert!(!http_match_ok(&m, &id));
        let with_gw = HttpMatchRequest {
            gateways: vec!["istio-system/gw".into()],
            ..m
        };
        assert!(http_match_ok(&with_gw, &id));
    }

    #[test]
    fn routes_lose_failing_blocks_and_vanish_when_none_is_left() {
        let id = id();
        let bad = HttpMatchRequest {
            source_namespace: Some("elsewhere".into()),
            ..Default::default()
        };
        let good = HttpMatchRequest {
            port: Some(80),
            ..Default::default()
        };
        let all_good = Arc::new(HttpRoute {
            matches: vec![good.clone()],
            ..Default::default()
        });
        let kept = http_route_for(&all_good, &id).expect("kept");
        assert!(Arc::ptr_eq(&kept, &all_good));
        let mixed = Arc::new(HttpRoute {
            matches: vec![bad.clone(), good.clone()],
            ..Default::default()
        });
        assert_eq!(http_route_for(&mixed, &id).expect("kept").matches, [good]);
        let only_bad = Arc::new(HttpRoute {
            matches: vec![bad],
            ..Default::default()
        });
        assert!(http_route_for(&only_bad, &id).is_none());
        // No match at all: a catch-all, kept as is.
        let catch_all = Arc::new(HttpRoute::default());
        assert!(http_route_for(&catch_all, &id).is_some());
    }

    /// The whole compile step: blocks for another source are gone from the snapshot,
    /// for http, tcp and tls, and the next route serves.
    #[test]
    fn the_snapshot_keeps_only_this_gateways_blocks() {
        let yaml = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 9000, name: tcp, protocol: TCP}
    hosts: ["*"]
  - port: {number: 9443, name: tls, protocol: TLS}
    hosts: ["*"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{sourceLabels: {app: reviews}}]
    route: [{destination: {host: 127.0.0.1, port: {number: 1}}}]
  - match: [{sourceNamespace: default, uri: {prefix: /a}}, {uri: {prefix: /b}, sourceLabels: {istio: ingressgateway}}]
    route: [{destination: {host: 127.0.0.1, port: {number: 2}}}]
  - match: [{sourceLabels: {app: reviews}, gateways: [gw]}]
    route: [{destination: {host: 127.0.0.1, port: {number: 3}}}]
  tcp:
  - match: [{sourceLabels: {app: reviews}}]
    route: [{destination: {host: 127.0.0.1, port: {number: 4}}}]
  - match: [{sourceNamespace: istio-system}]
    route: [{destination: {host: 127.0.0.1, port: {number: 5}}}]
  tls:
  - match: [{sniHosts: [a.test], sourceNamespace: default}]
    route: [{destination: {host: 127.0.0.1, port: {number: 6}}}]
  - match: [{sniHosts: [b.test], sourceLabels: {app: istio-ingressgateway}}]
    route: [{destination: {host: 127.0.0.1, port: {number: 7}}}]
"#;
        let snap = super::super::load_str("s.yaml", yaml, &id()).unwrap_or_else(|e| panic!("{e}"));
        let listener = |port: u16| {
            snap.listeners
                .iter()
                .find(|l| l.port == port)
                .unwrap_or_else(|| panic!("no listener {port}"))
        };
        let http = &listener(80).http[0].routes;
        assert_eq!(http.len(), 2, "{http:#?}");
        assert_eq!(http[0].destinations[0].cluster, "outbound|2||127.0.0.1");
        let prefixes: Vec<_> = http[0]
            .route
            .matches
            .iter()
            .map(|m| m.uri.as_ref().and_then(|u| u.prefix.clone()))
            .collect();
        assert_eq!(prefixes, [Some("/b".to_string())]);
        assert_eq!(http[1].destinations[0].cluster, "outbound|3||127.0.0.1");
        let tcp = listener(9000).tcp.as_ref().expect("a tcp route");
        assert_eq!(tcp.destinations[0].cluster, "outbound|5||127.0.0.1");
        let tls = &listener(9443).tls;
        assert_eq!(tls.len(), 1, "{tls:#?}");
        assert_eq!(tls[0].sni_hosts, ["b.test"]);
        assert_eq!(tls[0].destinations[0].cluster, "outbound|7||127.0.0.1");
    }
}

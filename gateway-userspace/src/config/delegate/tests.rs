use super::*;
use crate::config::{GatewayIdentity, Missing, load_str_with};

fn prefix(p: &str) -> StringMatch {
    StringMatch {
        prefix: Some(p.into()),
        ..StringMatch::default()
    }
}

fn exact(p: &str) -> StringMatch {
    StringMatch {
        exact: Some(p.into()),
        ..StringMatch::default()
    }
}

fn regex(p: &str) -> StringMatch {
    StringMatch {
        regex: Some(p.into()),
        ..StringMatch::default()
    }
}

fn uri(sm: StringMatch) -> HttpMatchRequest {
    HttpMatchRequest {
        uri: Some(sm),
        ..HttpMatchRequest::default()
    }
}

#[test]
fn string_match_conflicts_as_istio() {
    let c = |r: StringMatch, l: StringMatch| string_match_conflict(Some(&r), Some(&l));
    assert!(!c(prefix("/api"), prefix("/api/v1")));
    assert!(!c(prefix("/api"), exact("/api/x")));
    assert!(c(prefix("/api/v1"), prefix("/api")));
    assert!(c(prefix("/api"), exact("/web")));
    assert!(!c(exact("/a"), exact("/a")));
    assert!(c(exact("/a"), exact("/b")));
    assert!(c(exact("/a"), prefix("/a")));
    assert!(c(regex("/a.*"), prefix("/a")));
    assert!(c(prefix("/a"), regex("/a.*")));
    assert!(c(regex("/a.*"), regex("/a.*")));
    // Either side unset: no conflict.
    assert!(!string_match_conflict(None, Some(&prefix("/x"))));
    assert!(!string_match_conflict(Some(&prefix("/x")), None));
}

#[test]
fn matches_merge_with_every_root_match_they_fit() {
    let root = [uri(prefix("/api")), uri(prefix("/v2"))];
    let mut leaf = uri(prefix("/api/v1"));
    leaf.headers.insert("x-user".into(), exact("a"));
    let merged = merge_matches(&root, &[leaf]).expect("no conflict");
    assert_eq!(merged.len(), 1);
    assert_eq!(merged[0].uri, Some(prefix("/api/v1")));
    assert_eq!(merged[0].headers.len(), 1);

    // A delegate match without uri takes each root match's uri.
    let m = HttpMatchRequest {
        method: Some(exact("GET")),
        ..HttpMatchRequest::default()
    };
    let merged = merge_matches(&root, &[m]).expect("no conflict");
    assert_eq!(merged.len(), 2);
    assert_eq!(merged[1].uri, Some(prefix("/v2")));
    assert_eq!(merged[1].method, Some(exact("GET")));

    // One delegate match outside every root match drops the route.
    assert!(merge_matches(&root, &[uri(prefix("/api/v1")), uri(prefix("/web"))]).is_none());
    // Root headers stay; the delegate may not contradict them.
    let mut r = uri(prefix("/"));
    r.headers.insert("x-env".into(), exact("prod"));
    let mut l = uri(prefix("/a"));
    l.headers.insert("x-env".into(), exact("dev"));
    assert!(merge_matches(std::slice::from_ref(&r), &[l]).is_none());
    let merged = merge_matches(&[r], &[uri(prefix("/a"))]).expect("no conflict");
    assert_eq!(merged[0].headers["x-env"], exact("prod"));
    // Ports and gateways.
    let mut r = uri(prefix("/"));
    r.port = Some(80);
    let mut l = uri(prefix("/"));
    l.port = Some(8080);
    assert!(has_conflict(&r, &l));
    r.port = None;
    r.gateways = vec!["gw".into()];
    l.gateways = vec!["gw".into(), "other".into()];
    assert!(has_conflict(&r, &l));
}

#[test]
fn route_fields_come_from_the_root_when_unset() {
    let root: HttpRoute = serde_yaml::from_str(
        "name: root\nmatch: [{uri: {prefix: /api}, name: m}]\ndelegate: {name: d}\ntimeout: 3s\nheaders: {request: {set: {x-root: '1'}}}",
    )
    .unwrap();
    let leaf: HttpRoute = serde_yaml::from_str(
        "name: leaf\nmatch: [{uri: {prefix: /api/v1}}]\ntimeout: 1s\nroute: [{destination: {host: a}}]",
    )
    .unwrap();
    let m = merge_route(&root, &leaf).expect("merged");
    assert_eq!(m.name.as_deref(), Some("root-leaf"));
    assert_eq!(m.matches[0].name.as_deref(), Some("m"));
    assert!(m.delegate.is_none());
    assert_eq!(m.timeout, leaf.timeout);
    assert_eq!(m.headers, root.headers);
    assert_eq!(m.route, leaf.route);
    assert!(!own_mirror(&leaf));
}

const YAML: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*\"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root, namespace: istio-system}
spec:
  hosts: [\"*\"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /api}}]
    delegate: {name: api, namespace: team}
  - match: [{uri: {prefix: /gone}}]
    delegate: {name: nope}
  - route: [{destination: {host: 127.0.0.1, port: {number: 9}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: team}
spec:
  http:
  - match: [{uri: {prefix: /api/v1}}]
    route: [{destination: {host: 127.0.0.2, port: {number: 9}}}]
  - match: [{uri: {prefix: /web}}]
    route: [{destination: {host: 127.0.0.3, port: {number: 9}}}]
";

#[test]
fn snapshot_has_the_merged_routes_and_says_what_was_left_out() {
    let strict = load_str_with("d.yaml", YAML, &GatewayIdentity::default(), Missing::Error);
    let e = strict.result.unwrap_err().to_string();
    assert!(
        e.contains("d.yaml:20:16: delegate virtual service \"istio-system/nope\" not found"),
        "{e}"
    );
    assert!(e.contains("[GW2005]"), "{e}");

    let run = load_str_with(
        "d.yaml",
        YAML,
        &GatewayIdentity::default(),
        Missing::Isolate,
    );
    let snap = run.result.expect("loads");
    let w: Vec<String> = run.warnings.iter().map(ToString::to_string).collect();
    assert!(
        w.iter().any(|w| w.starts_with("d.yaml:30:5: warning[GW1009]: VirtualService team/api: spec.http[1].match: not within the match of the root route delegating to it (VirtualService istio-system/root spec.http[0] at d.yaml:17:")),
        "{w:#?}"
    );
    let l = &snap.listeners[0];
    let routes = &l.http[0].routes;
    // /api/v1 (from the delegate), then the catch-all; the missing delegate's entry is gone.
    assert_eq!(routes.len(), 2, "{routes:#?}");
    assert_eq!(routes[0].route.matches[0].uri, Some(prefix("/api/v1")));
    assert_eq!(routes[0].destinations[0].cluster, "outbound|9||127.0.0.2");
    assert!(routes[1].route.matches.is_empty());
}

#[test]
fn delegates_are_validated_as_istio_does() {
    let yaml = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: d}
spec:
  tcp: [{route: [{destination: {host: a}}]}]
  http:
  - delegate: {name: other}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [a.example.com]
  gateways: [gw]
  http:
  - delegate: {name: d}
    route: [{destination: {host: a}}]
";
    let l = load_str_with(
        "v.yaml",
        yaml,
        &GatewayIdentity::default(),
        Missing::Isolate,
    );
    let e = l.result.unwrap_err().to_string();
    assert!(
        e.contains("delegate virtual service must have no tcp route specified"),
        "{e}"
    );
    assert!(
        e.contains("delegate HTTP route cannot contain delegate"),
        "{e}"
    );
    assert!(
        e.contains("root HTTP route (with delegate) must not specify route or redirect"),
        "{e}"
    );
}

#[test]
fn a_delegate_not_exported_to_the_root_is_not_found() {
    let yaml = YAML.replace(
        "metadata: {name: api, namespace: team}\nspec:\n",
        "metadata: {name: api, namespace: team}\nspec:\n  exportTo: [\".\"]\n",
    );
    let run = load_str_with(
        "d.yaml",
        &yaml,
        &GatewayIdentity::default(),
        Missing::Isolate,
    );
    let w: Vec<String> = run.warnings.iter().map(ToString::to_string).collect();
    assert!(
        w.iter().any(|w| w.contains("warning[GW2005]")
            && w.contains("delegate virtual service \"team/api\" is not exported to namespace \"istio-system\"")),
        "{w:#?}"
    );
    let snap = run.result.expect("loads");
    // Only the catch-all is left.
    assert_eq!(snap.listeners[0].http[0].routes.len(), 1);
    // Exported to the root's namespace by name: found.
    let yaml = YAML.replace(
        "metadata: {name: api, namespace: team}\nspec:\n",
        "metadata: {name: api, namespace: team}\nspec:\n  exportTo: [istio-system]\n",
    );
    let run = load_str_with(
        "d.yaml",
        &yaml,
        &GatewayIdentity::default(),
        Missing::Isolate,
    );
    assert_eq!(
        run.result.expect("loads").listeners[0].http[0].routes.len(),
        2
    );
}

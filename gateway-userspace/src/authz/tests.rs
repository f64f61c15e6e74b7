use std::net::{IpAddr, SocketAddr};

use hyper::HeaderMap;

use super::*;
use crate::config::{GatewayIdentity, load_str};

const GW: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{route: [{destination: {host: 127.0.0.1, port: {number: 9000}}}]}]
  tcp: [{match: [{port: 31400}], route: [{destination: {host: 127.0.0.1, port: {number: 9001}}}]}]
"#;

fn policies(yaml: &str) -> (Policies, PortKinds) {
    let text = format!("{GW}---\n{yaml}");
    let snap = match load_str("p.yaml", &text, &GatewayIdentity::default()) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let e = Enforcer::new(&snap);
    (e.policies, e.kinds)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn at_accept(p: &Policies, k: &PortKinds, src: &str, port: u16) -> Decision {
    let kind = k.get(&port).copied().unwrap_or(PortKind::Unserved);
    let l7 = if kind == PortKind::Tcp {
        L7::TcpUnknownSni
    } else {
        L7::Unknown
    };
    p.decide(
        kind,
        &Request {
            source: Cidr::host(ip(src)),
            port,
            l7,
        },
    )
}

fn http(p: &Policies, src: &str, host: &str, path: &str, method: &str) -> Decision {
    let headers = HeaderMap::new();
    let attrs = HttpAttrs {
        host,
        path,
        method,
        headers: &headers,
        sni: None,
    };
    p.decide(
        PortKind::Http,
        &Request {
            source: Cidr::host(ip(src)),
            port: 80,
            l7: L7::Http(attrs),
        },
    )
}

fn denied(d: &Decision) -> bool {
    matches!(d, Decision::Deny(_))
}

#[test]
fn cidrs_parse_and_contain() {
    let c = Cidr::parse("10.1.2.0/24").unwrap();
    assert!(c.contains(&Cidr::host(ip("10.1.2.200"))));
    assert!(!c.contains(&Cidr::host(ip("10.1.3.1"))));
    assert!(!c.contains(&Cidr::host(ip("fd00::1"))));
    assert_eq!(Cidr::parse("10.0.0.1").unwrap().len, 32);
    assert!(
        Cidr::parse("fd00:1::/32")
            .unwrap()
            .contains(&Cidr::host(ip("fd00:1::5")))
    );
    // v4-mapped peers (dual-stack sockets) are judged as IPv4.
    assert!(c.contains(&Cidr::host(ip("::ffff:10.1.2.3"))));
    assert!(
        Cidr::parse("10.1.2.1/24")
            .unwrap_err()
            .contains("host bits")
    );
    assert!(Cidr::parse("10.1.2.0/33").is_err());
    assert!(Cidr::parse("nonsense").is_err());
}

#[test]
fn deny_ip_blocks_denies_inside_only() {
    let (p, k) = policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: istio-system}\nspec:\n  action: DENY\n  rules: [{from: [{source: {ipBlocks: [10.9.1.0/24, 'fd00:9:1::/64']}}]}]\n",
    );
    assert_eq!(
        at_accept(&p, &k, "10.9.1.7", 80),
        Decision::Deny(DenyReason::Rule("istio-system/deny#0".into()))
    );
    assert!(denied(&at_accept(&p, &k, "fd00:9:1::7", 31400)));
    assert_eq!(
        at_accept(&p, &k, "10.9.2.7", 80),
        Decision::Allow { rule: None }
    );
    // Not a gateway port and not named by the rule: not the gateway's business.
    assert_eq!(
        at_accept(&p, &k, "10.9.1.7", 22),
        Decision::Allow { rule: None }
    );
}

#[test]
fn allow_host_path_is_decided_per_request() {
    let (p, k) = policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: only-api, namespace: istio-system}\nspec:\n  rules:\n  - to: [{operation: {hosts: [api.example.com], paths: ['/v1/*'], methods: [GET]}}]\n",
    );
    assert_eq!(at_accept(&p, &k, "10.0.0.1", 80), Decision::Undecided);
    assert!(matches!(
        http(&p, "10.0.0.1", "api.example.com:80", "/v1/items", "GET"),
        Decision::Allow { rule: Some(_) }
    ));
    assert!(denied(&http(
        &p,
        "10.0.0.1",
        "API.example.com",
        "/v2/items",
        "GET"
    )));
    assert!(denied(&http(
        &p,
        "10.0.0.1",
        "other.example.com",
        "/v1/items",
        "GET"
    )));
    assert!(denied(&http(
        &p,
        "10.0.0.1",
        "api.example.com",
        "/v1/items",
        "POST"
    )));
    // Istio's TCP rule: an ALLOW rule with HTTP-only fields never matches TCP traffic.
    assert_eq!(
        at_accept(&p, &k, "10.0.0.1", 31400),
        Decision::Deny(DenyReason::NoAllowMatch)
    );
}

#[test]
fn deny_with_http_fields_denies_all_tcp() {
    let (p, k) = policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-post, namespace: istio-system}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {methods: [POST]}}]}]\n",
    );
    assert!(denied(&at_accept(&p, &k, "10.0.0.1", 31400)));
    assert_eq!(at_accept(&p, &k, "10.0.0.1", 80), Decision::Undecided);
    assert!(denied(&http(&p, "10.0.0.1", "a", "/", "POST")));
    assert_eq!(
        http(&p, "10.0.0.1", "a", "/", "GET"),
        Decision::Allow { rule: None }
    );
}

#[test]
fn empty_allow_policy_denies_everything_and_other_namespaces_do_not_apply() {
    let (p, k) = policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-nothing, namespace: istio-system}\nspec: {}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: elsewhere, namespace: shop}\nspec: {action: DENY, rules: [{}]}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: other-gw, namespace: istio-system}\nspec: {selector: {matchLabels: {istio: egressgateway}}, action: DENY, rules: [{}]}\n",
    );
    assert_eq!(p.policies.len(), 1);
    assert_eq!(
        at_accept(&p, &k, "10.0.0.1", 80),
        Decision::Deny(DenyReason::NoAllowMatch)
    );
}

#[test]
fn deny_beats_allow_and_not_blocks_and_when() {
    let (p, k) = policies(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-lan, namespace: istio-system}
spec:
  rules:
  - from: [{source: {ipBlocks: [10.0.0.0/8], notIpBlocks: [10.66.0.0/16]}}]
    when: [{key: destination.port, values: ["80"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-one, namespace: istio-system}
spec:
  action: DENY
  rules: [{when: [{key: source.ip, values: [10.1.1.1]}]}]
"#,
    );
    assert!(matches!(
        at_accept(&p, &k, "10.2.3.4", 80),
        Decision::Allow { rule: Some(_) }
    ));
    assert_eq!(
        at_accept(&p, &k, "10.66.3.4", 80),
        Decision::Deny(DenyReason::NoAllowMatch)
    );
    assert_eq!(
        at_accept(&p, &k, "192.168.1.1", 80),
        Decision::Deny(DenyReason::NoAllowMatch)
    );
    assert_eq!(
        at_accept(&p, &k, "10.2.3.4", 31400),
        Decision::Deny(DenyReason::NoAllowMatch)
    );
    assert!(matches!(
        at_accept(&p, &k, "10.1.1.1", 80),
        Decision::Deny(DenyReason::Rule(_))
    ));
}

#[test]
fn enforcer_counts_refusals() {
    let text = format!(
        "{GW}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: d, namespace: istio-system}}\nspec: {{action: DENY, rules: [{{from: [{{source: {{remoteIpBlocks: [10.5.0.0/16]}}}}]}}]}}\n"
    );
    let snap = load_str("p.yaml", &text, &GatewayIdentity::default()).unwrap();
    let e = Enforcer::new(&snap);
    let peer: SocketAddr = "10.5.1.1:5555".parse().unwrap();
    assert!(!e.allow_accept(peer, 80));
    assert!(e.allow_accept("10.6.1.1:5555".parse().unwrap(), 80));
    let mut out = String::new();
    e.prometheus(&mut out);
    assert!(
        out.contains("gateway_authz_denied_total{stage=\"accept\",port=\"80\"} 1"),
        "{out}"
    );
}

/// A reload's successor shares the refusal counters of the ports both serve (the
/// series don't go back to 0).
#[test]
fn a_successor_carries_the_refusal_counters() {
    let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d, namespace: istio-system}\nspec: {action: DENY, rules: [{from: [{source: {remoteIpBlocks: [10.5.0.0/16]}}]}]}\n";
    let snap = |yaml: &str| {
        load_str(
            "p.yaml",
            &format!("{GW}---\n{yaml}"),
            &GatewayIdentity::default(),
        )
        .unwrap()
    };
    let peer: SocketAddr = "10.5.1.1:5555".parse().unwrap();
    let old = std::sync::Arc::new(Enforcer::new(&snap(deny)));
    assert!(!old.allow_accept(peer, 80));
    let mut new = Enforcer::new(&snap(deny));
    new.carry_counters(&old);
    let new = std::sync::Arc::new(new);
    // The old one still serves a moment; both count into the same series.
    assert!(!old.allow_accept(peer, 80));
    assert!(!new.allow_accept(peer, 80));
    let line = "gateway_authz_denied_total{stage=\"accept\",port=\"80\"} 3\n";
    for e in [&old, &new] {
        let mut out = String::new();
        e.prometheus(&mut out);
        assert!(out.contains(line), "{out}");
    }
}

#[test]
fn invalid_values_are_reported_with_positions() {
    let text = format!(
        "{GW}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: bad, namespace: istio-system}}\nspec:\n  rules:\n  - from: [{{source: {{ipBlocks: [10.0.0.1/8, 300.1.1.1]}}}}]\n    to: [{{operation: {{ports: [\"99999\"]}}}}]\n    when: [{{key: \"request.auth.claims[iss]\", values: [x]}}]\n"
    );
    let errs = load_str("p.yaml", &text, &GatewayIdentity::default())
        .unwrap_err()
        .to_string();
    assert!(errs.contains("host bits"), "{errs}");
    assert!(errs.contains("invalid IP address"), "{errs}");
    assert!(errs.contains("invalid port \"99999\""), "{errs}");
    assert!(errs.contains("is not supported by this gateway"), "{errs}");
    assert!(errs.lines().all(|l| l.starts_with("p.yaml:")), "{errs}");
}

/// Issue 15's audit of what an HTTP rule reads, each as Istio normalizes it.
#[test]
fn hosts_ignore_case_port_and_trailing_dot() {
    for host in [
        "blocked.test",
        "BLOCKED.TEST",
        "blocked.test.",
        "blocked.test:80",
        "Blocked.Test.:8080",
    ] {
        assert!(eval::host_match("Blocked.Test", host), "{host}");
        assert!(eval::host_match("*.test", host), "{host}");
        assert!(!eval::host_match("other.test", host), "{host}");
    }
    assert!(eval::host_match("blocked.test:80", "BLOCKED.test.:80"));
    assert!(eval::host_match("[::1]", "[::1]:80"));
    // A lone dot is no name with a trailing dot.
    assert!(eval::host_match(".", "."));
}

#[test]
fn header_conditions_see_repeated_headers_joined_and_star_as_present() {
    let (p, _) = policies(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: h, namespace: istio-system}
spec:
  action: DENY
  rules:
  - when: [{key: "request.headers[X-User]", values: ["alice,bob"]}]
  - when: [{key: "request.headers[x-block]", values: ["*"]}]
  - when: [{key: "request.headers[x-env]", notValues: ["prod*"]}]
"#,
    );
    let decide = |hs: &[(&str, &str)]| {
        let mut headers = HeaderMap::new();
        for (k, v) in hs {
            headers.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        denied(&p.decide(
            PortKind::Http,
            &Request {
                source: Cidr::host(ip("10.0.0.1")),
                port: 80,
                l7: L7::Http(HttpAttrs {
                    host: "h.test",
                    path: "/",
                    method: "GET",
                    headers: &headers,
                    sni: None,
                }),
            },
        ))
    };
    assert!(!decide(&[("x-env", "prod")]));
    assert!(!decide(&[("x-user", "alice"), ("x-env", "prod")]));
    assert!(decide(&[
        ("x-user", "alice"),
        ("X-USER", "bob"),
        ("x-env", "prod")
    ]));
    assert!(decide(&[("x-user", "alice,bob"), ("x-env", "prod")]));
    assert!(decide(&[("x-block", ""), ("x-env", "prod")]));
    // notValues: an absent header is not a match, so the negation holds.
    assert!(decide(&[]));
    assert!(decide(&[("x-env", "dev")]));
    // Joined, "prod,dev" starts with "prod": the condition's negation does not hold.
    assert!(!decide(&[("x-env", "prod"), ("x-env", "dev")]));
}

/// MeshConfig `rootNamespace`: a policy there applies to the gateway (with any
/// gateway namespace); one in istio-system then is an ordinary namespace's.
#[test]
fn the_root_namespace_is_meshconfigs() {
    let policy = |ns: &str| {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: {ns}}}\nspec: {{action: DENY, rules: [{{}}]}}\n"
        );
        crate::config::load_str("p.yaml", &yaml, &GatewayIdentity::default())
            .unwrap()
            .resources
            .authorization_policies
            .remove(0)
    };
    let id = GatewayIdentity {
        namespace: "ingress".into(),
        root_namespace: "mesh-root".into(),
        ..GatewayIdentity::default()
    };
    assert!(applies(&policy("mesh-root"), &id));
    assert!(applies(&policy("ingress"), &id));
    assert!(!applies(&policy("istio-system"), &id));
    assert!(applies(
        &policy("istio-system"),
        &GatewayIdentity::default()
    ));
}

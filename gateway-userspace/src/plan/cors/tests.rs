use super::*;
use crate::config::cors::problems;
use crate::config::{GatewayIdentity, Missing, load_str_with};
use hyper::header::HeaderName;

fn policy(yaml: &str) -> Cors {
    let p: istio::CorsPolicy = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(problems(&p), Vec::<(String, String)>::new());
    Cors::compile(&p, "test").unwrap()
}

fn req(method: &str, pairs: &[(&str, &str)]) -> (Method, HeaderMap) {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    (Method::from_bytes(method.as_bytes()).unwrap(), h)
}

#[test]
fn origins_match_exact_prefix_regex_and_star() {
    let c = policy(
        "allowOrigins: [{exact: https://a.example.com}, {prefix: https://dev.}, {regex: 'https://[a-z]+\\.example\\.org'}]",
    );
    assert!(c.origin_allowed("https://a.example.com"));
    assert!(!c.origin_allowed("https://A.example.com"));
    assert!(!c.origin_allowed("https://a.example.com.evil"));
    assert!(c.origin_allowed("https://dev.anything"));
    assert!(c.origin_allowed("https://shop.example.org"));
    // Envoy's safe_regex matches the whole origin.
    assert!(!c.origin_allowed("https://shop.example.org.evil"));
    assert!(!c.origin_allowed("http://shop.example.org"));

    let star = policy("allowOrigins: [{exact: '*'}]");
    assert!(star.origin_allowed("https://anything"));
    // The deprecated list, exact; ignored when allowOrigins is set.
    let old = policy("allowOrigin: [https://b.example.com]");
    assert!(old.origin_allowed("https://b.example.com"));
    let both = policy("allowOrigin: [https://b.example.com]\nallowOrigins: [{exact: https://c}]");
    assert!(!both.origin_allowed("https://b.example.com"));
    let empty = policy("allowOrigin: [https://b.example.com]\nallowOrigins: []");
    assert!(empty.origin_allowed("https://b.example.com"));
    assert!(policy("allowMethods: [GET]").origins.is_empty());
}

#[test]
fn preflight_answer_as_envoy_writes_it() {
    let c = policy(
        "allowOrigins: [{exact: https://a.example.com}]\nallowMethods: [GET, POST]\nallowHeaders: [x-a, x-b]\nexposeHeaders: [x-c]\nmaxAge: 24h\nallowCredentials: true",
    );
    let (m, h) = req(
        "OPTIONS",
        &[
            ("origin", "https://a.example.com"),
            ("access-control-request-method", "POST"),
        ],
    );
    let Decision::Answer(resp, Some(d)) = c.decide(&m, &h) else {
        panic!("not answered");
    };
    assert_eq!(resp.status(), 200);
    let mut got = resp.headers().clone();
    d.apply(&mut got);
    let get = |k: &str| got.get(k).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        get("access-control-allow-origin").as_deref(),
        Some("https://a.example.com")
    );
    assert_eq!(
        get("access-control-allow-methods").as_deref(),
        Some("GET,POST")
    );
    assert_eq!(
        get("access-control-allow-headers").as_deref(),
        Some("x-a,x-b")
    );
    assert_eq!(get("access-control-max-age").as_deref(), Some("86400"));
    assert_eq!(
        get("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(get("access-control-expose-headers").as_deref(), Some("x-c"));

    // Not a preflight: no Access-Control-Request-Method, or not OPTIONS.
    let (m, h) = req("OPTIONS", &[("origin", "https://a.example.com")]);
    assert!(matches!(c.decide(&m, &h), Decision::Decorate(_)));
    let (m, h) = req("GET", &[("origin", "https://a.example.com")]);
    assert!(matches!(c.decide(&m, &h), Decision::Decorate(_)));
    // No origin, or an empty one: not CORS.
    let (m, h) = req("GET", &[]);
    assert!(matches!(c.decide(&m, &h), Decision::Pass));
    let (m, h) = req(
        "OPTIONS",
        &[("origin", ""), ("access-control-request-method", "GET")],
    );
    assert!(matches!(c.decide(&m, &h), Decision::Pass));
}

#[test]
fn unmatched_preflights_forward_or_ignore() {
    let forward = policy("allowOrigins: [{exact: https://a}]\nallowMethods: [GET]");
    let (m, h) = req(
        "OPTIONS",
        &[
            ("origin", "https://b"),
            ("access-control-request-method", "GET"),
        ],
    );
    assert!(matches!(forward.decide(&m, &h), Decision::Pass));
    let ignore = policy(
        "allowOrigins: [{exact: https://a}]\nallowMethods: [GET]\nunmatchedPreflights: IGNORE",
    );
    let Decision::Answer(resp, None) = ignore.decide(&m, &h) else {
        panic!("IGNORE answers");
    };
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    assert_eq!(resp.headers()["access-control-allow-methods"], "GET");
}

#[test]
fn star_methods_and_headers_echo_the_request() {
    let c = policy("allowOrigins: [{exact: https://a}]\nallowMethods: ['*']\nallowHeaders: ['*']");
    let (m, h) = req(
        "OPTIONS",
        &[
            ("origin", "https://a"),
            ("access-control-request-method", "PATCH"),
            ("access-control-request-headers", "x-one,x-two"),
        ],
    );
    let Decision::Answer(resp, _) = c.decide(&m, &h) else {
        panic!()
    };
    assert_eq!(resp.headers()["access-control-allow-methods"], "PATCH");
    assert_eq!(
        resp.headers()["access-control-allow-headers"],
        "x-one,x-two"
    );
}

#[test]
fn config_errors_carry_file_line_col() {
    let yaml = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: [\"*\"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web.example.com]
  gateways: [gw]
  http:
  - corsPolicy:
      allowOrigins:
      - exact: https://ok
      - regex: \"https://(unclosed\"
      allowMethods: [GET, FETCH]
      allowHeaders: [\"bad header\"]
      maxAge: 1.5s
    mirror: {host: 127.0.0.1, port: {number: 9}}
    mirrorPercentage: {value: 150}
    mirrors: [{destination: {host: 127.0.0.1, port: {number: 10}}}]
    route:
    - destination: {host: 127.0.0.1, port: {number: 9}}
";
    let l = load_str_with(
        "c.yaml",
        yaml,
        &GatewayIdentity::default(),
        Missing::Isolate,
    );
    let e = l.result.unwrap_err().to_string();
    for want in [
        "c.yaml:20:16: ",
        "invalid regex",
        "c.yaml:21:27: ",
        "\"FETCH\" is not a supported HTTP method",
        "c.yaml:22:22: ",
        "invalid header name \"bad header\"",
        "c.yaml:23:15: ",
        "seconds precision",
        "c.yaml:26:14: ",
        "cannot contain both mirror and mirrors",
        "c.yaml:25:31: ",
        "between 0 and 100",
    ] {
        assert!(e.contains(want), "{want:?} not in:\n{e}");
    }
}

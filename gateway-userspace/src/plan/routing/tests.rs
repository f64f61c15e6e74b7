use std::time::Duration;

use hyper::{
    HeaderMap,
    header::{HeaderName, HeaderValue},
};

use super::compile::compile_rewrite;
use super::*;
use crate::config::istio;
use crate::config::{GatewayIdentity, Snapshot, load_str};

fn snapshot(yaml: &str) -> Snapshot {
    load_str("test.yaml", yaml, &GatewayIdentity::default()).unwrap_or_else(|e| panic!("{e}"))
}

const GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"#;

/// A VS for `hosts` on gateway `gw` with the given `http:` block, destinations on
/// 127.0.0.1 (resolved without a ServiceEntry).
fn vs(name: &str, hosts: &str, http: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: {hosts}\n  gateways: [gw]\n  http:\n{http}"
    )
}

fn route_to(port: u16) -> String {
    format!("    route:\n    - destination: {{host: 127.0.0.1, port: {{number: {port}}}}}\n")
}

fn table(yaml: &str) -> RouteTable {
    let s = snapshot(yaml);
    build_table(&s.listeners[0], None).unwrap()
}

struct Req {
    method: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    host: &'static str,
    headers: Vec<(&'static str, &'static str)>,
}

fn req(path: &'static str) -> Req {
    Req {
        method: "GET",
        path,
        query: None,
        host: "a.example.com",
        headers: vec![],
    }
}

/// The cluster port of the route a request takes, or None (404).
fn route_port(t: &RouteTable, r: &Req) -> Option<u16> {
    let mut headers = HeaderMap::new();
    for (k, v) in &r.headers {
        headers.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_static(v),
        );
    }
    let host = normalize_host(r.host);
    let view = RequestView {
        method: r.method,
        scheme: "http",
        path: r.path,
        query: r.query,
        host: &host,
        port: 80,
        headers: &headers,
    };
    let vh = find_vhost(t, &host)?;
    let (route, _) = find_route(vh, &view)?;
    match &route.action {
        Action::Forward(d) => d[0].cluster.split('|').nth(1)?.parse().ok(),
        _ => None,
    }
}

#[test]
fn hosts_are_normalized() {
    for (raw, want) in [
        ("Example.COM", "example.com"),
        ("example.com:8080", "example.com"),
        ("example.com.", "example.com"),
        ("[::1]:443", "[::1]"),
        ("[::1]", "[::1]"),
        ("10.0.0.1:80", "10.0.0.1"),
    ] {
        assert_eq!(normalize_host(raw), want, "{raw}");
    }
    assert_eq!(authority_port("a.b:8080"), Some(8080));
    assert_eq!(authority_port("[::1]:8443"), Some(8443));
    assert_eq!(authority_port("[::1]"), None);
    assert_eq!(authority_port("a.b"), None);
}

#[test]
fn exact_beats_longest_wildcard_beats_star() {
    let mut y = GATEWAY.to_string();
    y += &vs(
        "exact",
        "[a.example.com]",
        &format!("  -\n{}", route_to(1001)),
    );
    y += &vs(
        "wild",
        "['*.example.com']",
        &format!("  -\n{}", route_to(1002)),
    );
    y += &vs(
        "wilder",
        "['*.b.example.com']",
        &format!("  -\n{}", route_to(1003)),
    );
    y += &vs("star", "['*']", &format!("  -\n{}", route_to(1004)));
    let t = table(&y);
    for (host, port) in [
        ("a.example.com", 1001),
        ("A.Example.Com:80", 1001),
        ("z.example.com", 1002),
        ("x.y.example.com", 1002),
        ("c.b.example.com", 1003),
        ("example.com", 1004),
        ("other.org", 1004),
    ] {
        let mut r = req("/");
        r.host = host;
        assert_eq!(route_port(&t, &r), Some(port), "{host}");
    }
}

#[test]
fn unknown_host_has_no_vhost() {
    let mut y = GATEWAY.to_string();
    y += &vs(
        "one",
        "[a.example.com]",
        &format!("  -\n{}", route_to(1001)),
    );
    let t = table(&y);
    let mut r = req("/");
    r.host = "b.example.com";
    assert_eq!(route_port(&t, &r), None);
}

/// Found by the routing fuzzer (`E :.secure.fuzz.test`, then Hosts with spaces and
/// slashes): hyper passes any visible-ASCII Host, which matched a wildcard vhost, and
/// the redirect built from it (httpsRedirect, or a `redirect` without `authority`)
/// pointed at another host (`https://:.secure.fuzz.test/` has an empty one) or was no
/// URI at all. The proxy now answers 400 to a host `valid_host` refuses; every host it
/// lets through makes a Location whose host is that host.
#[test]
fn hosts_that_are_not_uri_hosts_are_refused() {
    for bad in [
        ":.example.com",
        "evil.test/x.example.com",
        "evil.test?.example.com",
        "evil.test#.example.com",
        "user@a.example.com",
        "a b.example.com",
        "a%41.example.com",
        "a:b:c",
        "",
        "[::1",
        "[not-v6]",
    ] {
        let host = normalize_host(bad);
        assert!(!valid_request_host(&host), "{bad:?} -> {host:?}");
    }
    let redirect = Redirect {
        scheme: Some("https".into()),
        ..Redirect::default()
    };
    for good in [
        "a.example.com",
        "A.Example.com:8080",
        "10.0.0.1:80",
        "[::1]:443",
        "[fe80::1]",
        "xn--bcher-kva.example",
        "a_b-c~d.example.com",
        "!$&'()*+,;=.example.com",
    ] {
        let host = normalize_host(good);
        assert!(valid_request_host(&host), "{good:?} -> {host:?}");
        for loc in [
            redirect_location(&redirect, "http", good, "/p", Some("q=1"), 80),
            https_redirect_location(&host, "/p?q=1"),
        ] {
            let uri: hyper::Uri = loc.parse().unwrap_or_else(|e| panic!("{loc:?}: {e}"));
            assert_eq!(uri.host(), Some(host.as_str()), "{loc}");
        }
    }
}

/// Found by the routing fuzzer (`OPTIONS * HTTP/1.1` to an httpsRedirect host): the
/// Location was the host with `*` glued on (`https://a.example.com*`), a different host.
#[test]
fn redirects_of_a_target_that_is_not_a_path_keep_the_host() {
    assert_eq!(
        https_redirect_location("a.example.com", "*"),
        "https://a.example.com"
    );
    assert_eq!(
        https_redirect_location("a.example.com", "/x?y"),
        "https://a.example.com/x?y"
    );
    let r = Redirect::default();
    assert_eq!(
        redirect_location(&r, "http", "a.example.com", "*", None, 80),
        "http://a.example.com"
    );
    assert_eq!(
        redirect_location(&r, "http", "a.example.com:81", "", None, 81),
        "http://a.example.com:81"
    );
}

#[test]
fn vhost_domain_is_the_narrower_of_server_and_vs_host() {
    let y = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["a.example.com"]
"#
    .to_string()
        + &vs(
            "wild",
            "['*.example.com']",
            &format!("  -\n{}", route_to(1002)),
        );
    let t = table(&y);
    let domains: Vec<&str> = t.vhosts.iter().map(|v| v.domain.as_str()).collect();
    assert_eq!(domains, ["a.example.com"]);
}

/// Every match field, table-driven: (match YAML, request, matches?).
#[test]
fn match_conditions() {
    let cases: Vec<(&str, Req, bool)> = vec![
        ("uri: {exact: /a}", req("/a"), true),
        ("uri: {exact: /a}", req("/a/b"), false),
        ("uri: {prefix: /a}", req("/abc"), true),
        ("uri: {prefix: /a}", req("/b"), false),
        ("uri: {regex: '/v[0-9]+/.*'}", req("/v12/x"), true),
        // Anchored like RE2 full match.
        ("uri: {regex: '/v[0-9]+'}", req("/v1/x"), false),
        (
            "uri: {exact: /Api}\n      ignoreUriCase: true",
            req("/aPI"),
            true,
        ),
        (
            "uri: {prefix: /API}\n      ignoreUriCase: true",
            req("/api/x"),
            true,
        ),
        ("uri: {prefix: /API}", req("/api/x"), false),
        (
            "method: {exact: POST}",
            Req {
                method: "POST",
                ..req("/")
            },
            true,
        ),
        ("method: {exact: POST}", req("/"), false),
        ("authority: {exact: a.example.com}", req("/"), true),
        ("authority: {prefix: b.}", req("/"), false),
        ("authority: {regex: '.*\\.example\\.com'}", req("/"), true),
        ("port: 80", req("/"), true),
        (
            "headers: {x-v: {exact: '1'}}",
            Req {
                headers: vec![("x-v", "1")],
                ..req("/")
            },
            true,
        ),
        (
            "headers: {x-v: {exact: '1'}}",
            Req {
                headers: vec![("x-v", "2")],
                ..req("/")
            },
            false,
        ),
        ("headers: {x-v: {exact: '1'}}", req("/"), false),
        (
            "headers: {X-V: {prefix: ab}}",
            Req {
                headers: vec![("x-v", "abc")],
                ..req("/")
            },
            true,
        ),
        (
            "headers: {x-v: {regex: 'a+b'}}",
            Req {
                headers: vec![("x-v", "aab")],
                ..req("/")
            },
            true,
        ),
        (
            "headers: {x-v: {regex: 'a+b'}}",
            Req {
                headers: vec![("x-v", "aabc")],
                ..req("/")
            },
            false,
        ),
        // `{}` is a presence match.
        (
            "headers: {x-v: {}}",
            Req {
                headers: vec![("x-v", "")],
                ..req("/")
            },
            true,
        ),
        ("headers: {x-v: {}}", req("/"), false),
        ("withoutHeaders: {x-v: {}}", req("/"), true),
        (
            "withoutHeaders: {x-v: {}}",
            Req {
                headers: vec![("x-v", "1")],
                ..req("/")
            },
            false,
        ),
        (
            "withoutHeaders: {x-v: {exact: '1'}}",
            Req {
                headers: vec![("x-v", "2")],
                ..req("/")
            },
            true,
        ),
        (
            "queryParams: {v: {exact: '2'}}",
            Req {
                query: Some("a=1&v=2"),
                ..req("/")
            },
            true,
        ),
        (
            "queryParams: {v: {exact: '2'}}",
            Req {
                query: Some("v=3"),
                ..req("/")
            },
            false,
        ),
        (
            "queryParams: {v: {regex: '[0-9]'}}",
            Req {
                query: Some("v=7"),
                ..req("/")
            },
            true,
        ),
        (
            "queryParams: {v: {}}",
            Req {
                query: Some("v"),
                ..req("/")
            },
            true,
        ),
        ("queryParams: {v: {}}", req("/"), false),
        // Fields AND.
        (
            "uri: {prefix: /a}\n      method: {exact: GET}",
            Req {
                method: "PUT",
                ..req("/a")
            },
            false,
        ),
    ];
    for (i, (m, r, want)) in cases.into_iter().enumerate() {
        let mut y = GATEWAY.to_string();
        let http = format!("  - match:\n    - {m}\n{}", route_to(2000));
        y += &vs("m", "['*.example.com']", &http);
        let t = table(&y);
        assert_eq!(route_port(&t, &r).is_some(), want, "case {i}: {m}");
    }
}

#[test]
fn match_blocks_or_and_first_route_wins() {
    let mut y = GATEWAY.to_string();
    let http = format!(
        "  - match:\n    - uri: {{prefix: /a}}\n    - headers: {{x-b: {{exact: '1'}}}}\n{}  - match:\n    - uri: {{prefix: /}}\n{}  -\n{}",
        route_to(3001),
        route_to(3002),
        route_to(3003)
    );
    y += &vs("m", "['*.example.com']", &http);
    let t = table(&y);
    assert_eq!(route_port(&t, &req("/a")), Some(3001));
    let r = Req {
        headers: vec![("x-b", "1")],
        ..req("/z")
    };
    assert_eq!(route_port(&t, &r), Some(3001));
    assert_eq!(route_port(&t, &req("/z")), Some(3002));
}

#[test]
fn matches_for_another_gateway_or_port_are_dropped() {
    let mut y = GATEWAY.to_string();
    let http = format!(
        "  - match:\n    - port: 8080\n{}  - match:\n    - gateways: [other]\n{}  -\n{}",
        route_to(4001),
        route_to(4002),
        route_to(4003)
    );
    y += &vs("m", "['*.example.com']", &http);
    y += "---\napiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata: {name: other}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: ['*']\n";
    let t = table(&y);
    assert_eq!(route_port(&t, &req("/")), Some(4003));
}

#[test]
fn bad_regex_is_an_error() {
    let mut y = GATEWAY.to_string();
    y += &vs(
        "m",
        "['*']",
        &format!(
            "  - match:\n    - uri: {{regex: '(unclosed'}}\n{}",
            route_to(1)
        ),
    );
    // Caught by validation, with its position, before any table is built.
    let e = load_str("test.yaml", &y, &GatewayIdentity::default())
        .expect_err("a bad regex must not load")
        .to_string();
    assert!(
        e.contains("test.yaml:19:20: regex: invalid regex") && e.contains("(unclosed"),
        "{e}"
    );
}

/// Found by the config fuzzer (a `set` key mutated to `x-set:)s`): the loader accepted
/// what the route table then refused, so `gateway run` and `gateway validate` failed
/// with "invalid header name" and no position. Everything `build_table` refuses is an
/// error at its field, found where the table is compiled; one case per check.
#[test]
fn what_route_tables_refuse_is_a_positioned_config_error() {
    let head = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n";
    let dest = "route: [{destination: {host: 127.0.0.1, port: {number: 1}}}]";
    let cases = [
        (
            format!("  - headers: {{request: {{set: {{\"x-set:)s\": s}}}}}}\n    {dest}\n"),
            "16:25: HTTP route: invalid header name \"x-set:)s\"",
        ),
        (
            format!("  - headers: {{response: {{add: {{x-a: \"a\\nb\"}}}}}}\n    {dest}\n"),
            "16:26: HTTP route: invalid value for header \"x-a\"",
        ),
        (
            format!("  - {dest}\n    headers: {{request: {{remove: [\"bad name\"]}}}}\n"),
            "17:25: HTTP route: invalid header name \"bad name\"",
        ),
        (
            "  - route:\n    - destination: {host: 127.0.0.1, port: {number: 1}}\n      headers: {request: {set: {\"a b\": c}}}\n".to_string(),
            "18:27: HTTP route: invalid header name \"a b\"",
        ),
        (
            format!("  - match: [{{headers: {{\"x y\": {{exact: a}}}}}}]\n    {dest}\n"),
            "16:32: HTTP route: invalid header name \"x y\"",
        ),
        (
            format!("  - rewrite: {{authority: \"a\\u0001b\"}}\n    {dest}\n"),
            "16:26: HTTP route: invalid rewrite.authority",
        ),
        (
            // Valid anchored (`^(?:)()$`, what validation used to compile), not alone.
            format!("  - rewrite: {{uriRegexRewrite: {{match: \")(\", rewrite: /}}}}\n    {dest}\n"),
            "16:40: HTTP route: invalid uriRegexRewrite.match \")(\"",
        ),
        (
            "  - redirect: {uri: /x, redirectCode: 200}\n".to_string(),
            "16:16: HTTP route: invalid redirectCode 200",
        ),
        (
            "  - directResponse: {status: 200, body: {bytes: \"not base64!\"}}\n".to_string(),
            "16:22: HTTP route: directResponse.body.bytes: ",
        ),
        (
            format!("  - fault: {{abort: {{percentage: {{value: 10}}}}}}\n    {dest}\n"),
            "16:13: HTTP route: fault.abort needs an httpStatus",
        ),
    ];
    for (http, want) in cases {
        let yaml = format!("{head}{http}");
        let snap = load_str("r.yaml", &yaml, &GatewayIdentity::default())
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let e = match crate::plan::http::HttpState::build(&snap) {
            Ok(_) => panic!("the route table must not build:\n{yaml}"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.starts_with(&format!("r.yaml:{want}")),
            "want r.yaml:{want}\ngot {e}\nfor\n{yaml}"
        );
        assert_eq!(e.matches("r.yaml:").count(), 1, "one error: {e}");
    }
}

/// The errors of `yaml`'s route tables, as printed.
fn table_errors(yaml: &str) -> Vec<String> {
    let snap = snapshot(yaml);
    match crate::plan::http::HttpState::build(&snap) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// `test.yaml:line:col` of the first character of the `nth` (0-based) `needle`.
fn at(yaml: &str, needle: &str, nth: usize) -> String {
    let (i, _) = yaml.match_indices(needle).nth(nth).expect(needle);
    let line = yaml[..i].matches('\n').count() + 1;
    let col = i - yaml[..i].rfind('\n').map_or(0, |n| n + 1) + 1;
    format!("test.yaml:{line}:{col}")
}

/// A route is reported where it is written, however it reaches the table: bound to two
/// servers of a port (once, not per server); with a match block of another source
/// dropped before it is compiled (at the block as written, not as renumbered); merged
/// from a delegate (its own fields at the delegate, what it takes from its root at the
/// root).
#[test]
fn a_route_that_does_not_compile_is_reported_where_it_is_written() {
    let two_servers = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: a, protocol: HTTP}\n    hosts: [a.example.com]\n  - port: {number: 80, name: b, protocol: HTTP}\n    hosts: [b.example.com]\n";
    let y = two_servers.to_string()
        + &vs(
            "v",
            "[a.example.com, b.example.com]",
            &format!(
                "  -\n{}  - headers: {{request: {{set: {{\"bad name\": x}}}}}}\n{}",
                route_to(1),
                route_to(2)
            ),
        );
    let want = [format!(
        "{}: HTTP route: invalid header name \"bad name\"",
        at(&y, "set: {\"bad", 0)
    )];
    assert_eq!(table_errors(&y), want);
    // What a reload compiles, and refuses with these errors.
    match crate::plan::Plan::compile(snapshot(&y), 2) {
        Ok(_) => panic!("the Plan must not compile"),
        Err(e) => assert_eq!(
            e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
            want
        ),
    }

    let y = GATEWAY.to_string()
        + &vs(
            "v",
            "['*']",
            &format!(
                "  - match:\n    - sourceLabels: {{app: other}}\n    - headers: {{\"x y\": {{exact: a}}}}\n{}",
                route_to(1)
            ),
        );
    assert_eq!(
        table_errors(&y),
        [format!(
            "{}: HTTP route: invalid header name \"x y\"",
            at(&y, "exact: a}", 0)
        )]
    );

    let y = GATEWAY.to_string()
        + &vs(
            "root",
            "['*']",
            "  - match: [{uri: {prefix: /api}}]\n    fault: {abort: {percentage: {value: 5}}}\n    delegate: {name: leaf}\n",
        )
        + &format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: leaf}}\nspec:\n  http:\n  - rewrite: {{authority: \"a\\u0001b\"}}\n{}",
            route_to(1)
        );
    let errors = table_errors(&y);
    assert_eq!(
        errors,
        [
            format!(
                "{}: HTTP route: fault.abort needs an httpStatus (grpcStatus/http2Error are not supported)",
                at(&y, "abort:", 0)
            ),
            format!(
                "{}: HTTP route: invalid rewrite.authority \"a\\u{{1}}b\"",
                at(&y, "\"a\\u0001b", 0)
            ),
        ],
        "{errors:#?}"
    );
}

#[test]
fn weighted_pick_follows_the_weights() {
    let d = |w| Destination {
        cluster: format!("c{w}"),
        weight: w,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
    };
    let dests = vec![d(10), d(0), d(90)];
    assert_eq!(total_weight(&dests), 100);
    let mut counts = [0usize; 3];
    for r in 0..100 {
        let picked = pick_weighted(&dests, r).unwrap();
        counts[dests
            .iter()
            .position(|x| x.cluster == picked.cluster)
            .unwrap()] += 1;
    }
    assert_eq!(counts, [10, 0, 90]);
}

#[test]
fn rewrites() {
    let rw = |uri: &str| Rewrite {
        uri: Some(uri.into()),
        ..Default::default()
    };
    assert_eq!(
        rewrite_path("/api/v1/x", &rw("/v2"), Some("/api/v1")),
        "/v2/x"
    );
    assert_eq!(rewrite_path("/api/x", &rw("/"), Some("/api/")), "/x");
    assert_eq!(rewrite_path("/api/x", &rw("/"), Some("/api")), "/x");
    assert_eq!(rewrite_path("/exact", &rw("/other"), None), "/other");
    let compiled = compile_rewrite(
        Some(&istio::HttpRewrite {
            uri_regex_rewrite: Some(istio::RegexRewrite {
                pattern: "^/svc/([^/]+)/(.*)$".into(),
                rewrite: "/\\2/by/\\1".into(),
            }),
            ..Default::default()
        }),
        "t",
    )
    .unwrap()
    .unwrap();
    assert_eq!(rewrite_path("/svc/a/b/c", &compiled, None), "/b/c/by/a");
}

#[test]
fn redirect_locations() {
    let r = Redirect {
        uri: Some("/new".into()),
        ..Default::default()
    };
    assert_eq!(
        redirect_location(&r, "http", "a.io:8080", "/old", Some("q=1"), 80),
        "http://a.io:8080/new?q=1"
    );
    let r = Redirect {
        scheme: Some("https".into()),
        authority: Some("b.io".into()),
        ..Default::default()
    };
    assert_eq!(
        redirect_location(&r, "http", "a.io:8080", "/p", None, 80),
        "https://b.io/p"
    );
    let r = Redirect {
        port: Some(8443),
        scheme: Some("https".into()),
        ..Default::default()
    };
    assert_eq!(
        redirect_location(&r, "http", "a.io", "/p", None, 80),
        "https://a.io:8443/p"
    );
    let r = Redirect {
        port_from_request: true,
        ..Default::default()
    };
    assert_eq!(
        redirect_location(&r, "http", "a.io", "/p", None, 8080),
        "http://a.io:8080/p"
    );
}

#[test]
fn retry_policies() {
    let d = RetryPolicy::istio_default();
    assert_eq!(d.retries, 2);
    assert!(d.retries_connect_failure());
    assert!(d.retries_status(503, None));
    assert!(!d.retries_status(500, None));
    assert!(d.retries_status(200, Some(14)), "unavailable");
    assert!(!d.retries_reset());

    let p = RetryPolicy::from_istio(Some(&istio::HttpRetry {
        attempts: Some(3),
        per_try_timeout: None,
        retry_on: Some("gateway-error,409".into()),
        ..Default::default()
    }));
    assert_eq!(p.retries, 3);
    assert!(p.retries_status(502, None) && p.retries_status(409, None));
    assert!(!p.retries_status(500, None) && !p.retries_status(503 - 100, None));
    assert!(p.retries_reset() && p.retries_connect_failure());

    let off = RetryPolicy::from_istio(Some(&istio::HttpRetry {
        attempts: Some(0),
        ..Default::default()
    }));
    assert_eq!(off.retries, 0);
    let (_, unknown) = parse_retry_on("5xx,bogus");
    assert_eq!(unknown, ["bogus"]);

    // Back-off: exponential from the base, capped at 10x, scaled by jitter.
    assert_eq!(d.backoff(1, 1.0), Duration::from_millis(25));
    assert_eq!(d.backoff(3, 1.0), Duration::from_millis(100));
    assert_eq!(d.backoff(9, 1.0), Duration::from_millis(250));
    assert_eq!(d.backoff(2, 0.5), Duration::from_millis(25));
    let b = RetryPolicy {
        backoff: Some(Duration::from_millis(100)),
        ..d.clone()
    };
    assert_eq!(b.backoff(2, 1.0), Duration::from_millis(200));
}

#[test]
fn tls_server_by_sni() {
    let y = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: a, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: c}
    hosts: ["a.example.com"]
  - port: {number: 443, name: wild, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: c}
    hosts: ["*.example.com"]
  - port: {number: 443, name: pass, protocol: TLS}
    tls: {mode: PASSTHROUGH}
    hosts: ["p.example.com"]
---
apiVersion: v1
kind: Secret
metadata: {name: c, namespace: istio-system}
type: kubernetes.io/tls
stringData: {tls.crt: x, tls.key: y}
"#;
    let s = snapshot(y);
    let l = &s.listeners[0];
    assert_eq!(tls_server_for(l, Some("a.example.com")), Some(0));
    assert_eq!(tls_server_for(l, Some("B.example.com")), Some(1));
    assert_eq!(tls_server_for(l, Some("other.org")), None);
    assert_eq!(
        tls_server_for(l, None),
        None,
        "no SNI and no server with host `*`: no filter chain matches (Envoy closes)"
    );
    assert!(crate::plan::http::terminates(l, Some("x.example.com")));
    assert!(!crate::plan::http::terminates(l, Some("other.org")));
    assert!(!crate::plan::http::terminates(l, None));
}

/// Without SNI, only Envoy's chain without `server_names` matches: the first HTTPS
/// server with host `*` (`ns/*` too), not the first server of the port. With an SNI no
/// name matches, the same server takes it.
#[test]
fn no_sni_takes_the_server_with_host_star() {
    let y = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: a, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: c}
    hosts: ["a.example.com"]
  - port: {number: 443, name: star, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: c}
    hosts: ["b.example.com", "*/*"]
  - port: {number: 443, name: star2, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: c}
    hosts: ["*"]
---
apiVersion: v1
kind: Secret
metadata: {name: c, namespace: istio-system}
type: kubernetes.io/tls
stringData: {tls.crt: x, tls.key: y}
"#;
    let s = snapshot(y);
    let l = &s.listeners[0];
    let index = TlsServers::new(l);
    for (sni, want) in [
        (None, Some(1)),
        (Some("a.example.com"), Some(0)),
        (Some("b.example.com"), Some(1)),
        (Some("other.org"), Some(1)),
    ] {
        assert_eq!(tls_server_for(l, sni), want, "{sni:?}");
        assert_eq!(index.get(sni), want, "{sni:?}");
    }
    assert!(crate::plan::http::terminates(l, None));
}

/// `%ROUTE_NAME%`: Istio's `TranslateRoute` names the Envoy route `http[].name`, plus
/// `.<match name>` for a named match block; unnamed is no name at all (`-`).
#[test]
fn envoy_route_names_as_istio_translates_them() {
    let mut y = GATEWAY.to_string();
    y += &vs(
        "names",
        "[a.example.com]",
        &format!(
            "  - name: api\n    match:\n    - name: v1\n      uri: {{prefix: /v1}}\n    - uri: {{prefix: /v2}}\n{}  - match:\n    - name: only-match\n      uri: {{prefix: /m}}\n{}  - match:\n    - uri: {{prefix: /anon}}\n{}  - name: catch-all\n{}",
            route_to(1001),
            route_to(1002),
            route_to(1003),
            route_to(1004)
        ),
    );
    let t = table(&y);
    let name = |path: &'static str| {
        let headers = HeaderMap::new();
        let view = RequestView {
            method: "GET",
            scheme: "http",
            path,
            query: None,
            host: "a.example.com",
            port: 80,
            headers: &headers,
        };
        let vh = find_vhost(&t, "a.example.com").unwrap();
        let (route, matched) = find_route(vh, &view).unwrap();
        route.envoy_name(matched)
    };
    assert_eq!(name("/v1/x").as_deref(), Some("api.v1"));
    assert_eq!(name("/v2/x").as_deref(), Some("api"));
    assert_eq!(name("/m").as_deref(), Some(".only-match"));
    assert_eq!(name("/anon"), None);
    assert_eq!(name("/other").as_deref(), Some("catch-all"));
}

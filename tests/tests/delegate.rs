//! Issue 13: `delegate` VirtualServices through a real gateway and curl. The delegate's
//! routes reach their destinations with their matches merged with the root's, a delegate
//! route outside the root's match is left out (GW1009 at its file:line:col), and a
//! missing delegate leaves its root entry out (GW2005): requests go on to the next
//! route, or get 404 NR when there is none, as in Istio. Config:
//! tests/fixtures/http/delegate.yaml.
mod http_common;

use std::time::Duration;

use gateway_tests::gateway::{gateway_bin, validate};
use gateway_tests::netns::{NetNs, privileged};
use http_common::*;

#[test]
fn delegate_routes_are_merged_with_their_root() {
    if !privileged("delegate_routes_are_merged_with_their_root") {
        return;
    }
    let ns = NetNs::new("deleg");
    let _b = start_backends(
        &ns,
        vec![
            App::Http(18080, "api-v1"),
            App::Http(18081, "api-v2"),
            App::Http(18082, "web"),
            App::Http(18083, "api-rest"),
        ],
    );
    let cfg = fixture("delegate.yaml");
    let gw = start_gateway(&ns, &[&cfg]);
    let get = |host: &str, path: &str| {
        let url = format!("http://127.0.0.1{path}");
        let host = format!("Host: {host}");
        curl(&ns, &["-H", &host, &url])
    };

    // (path, backend, x-root from the root's headers, x-route from the delegate's)
    let cases: &[(&str, &str, Option<&str>, Option<&str>)] = &[
        ("/api/v1", "api-v1", Some("api"), None),
        ("/api/v1/items?a=1", "api-v1", Some("api"), None),
        // The delegate's own `headers` replace the root's (Istio's mergeHTTPRoute).
        ("/api/v2", "api-v2", None, Some("v2")),
        // Exact /api/v2 only; the unmatched delegate route takes the root's /api match.
        ("/api/v2/x", "api-rest", Some("api"), None),
        ("/api", "api-rest", Some("api"), None),
        ("/apiary", "api-rest", Some("api"), None),
        // `stray` (/web) is not within /api: left out, so /web is the root's catch-all.
        ("/web", "web", None, None),
        // The missing delegate's entry is left out: /gone goes on to the catch-all.
        ("/gone", "web", None, None),
        ("/", "web", None, None),
    ];
    for (path, backend, root_hdr, route_hdr) in cases {
        let r = get("shop.delegate.test", path);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.header("x-backend"), Some(*backend), "{path}: {r:?}");
        assert_eq!(r.header("x-root"), *root_hdr, "{path}: {r:?}");
        assert_eq!(r.header("x-route"), *route_hdr, "{path}: {r:?}");
    }
    // A VirtualService whose only entry names a missing delegate has no route: 404 NR.
    let r = curl(
        &ns,
        &[
            "-H",
            "Host: lone.delegate.test",
            "-H",
            "x-request-id: lone-1",
            "http://127.0.0.1/",
        ],
    );
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.header("x-backend"), None, "{r:?}");
    let line = log_line(&gw, "lone-1");
    assert!(line.contains("response_flags=NR "), "{line}");

    // Both problems are told at their positions in the run log.
    let file = cfg.display().to_string();
    let log = gw.wait_log(Duration::from_secs(5), |l| {
        l.contains(&format!("{file}:51:5: warning[GW1009]: VirtualService team/api: spec.http[2].match: not within the match of the root route"))
    });
    assert!(
        log.contains(&format!("{file}:25:"))
            && log.contains("warning[GW2005]: VirtualService default/shop: delegate virtual service \"default/nope\" not found"),
        "{log}"
    );
    assert!(log.contains(&format!("{file}:36:")), "{log}");

    // proxy-config route shows the merged routes, named root-delegate.
    let out = ns
        .cmd(gateway_bin().to_str().unwrap())
        .args([
            "proxy-config",
            "route",
            "--admin-addr",
            "127.0.0.1:15000",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let mut routes = Vec::new();
    collect_routes(&v, &mut routes);
    let named = |n: &str| routes.iter().find(|r| r["name"] == n).copied();
    let v1 = named("api-v1").unwrap_or_else(|| panic!("no api-v1 in {json}"));
    assert_eq!(v1["match"]["prefix"], "/api/v1", "{v1}");
    let rest = named("api-rest").unwrap_or_else(|| panic!("no api-rest in {json}"));
    assert_eq!(rest["match"]["prefix"], "/api", "{rest}");
    assert!(named("api-stray").is_none(), "{json}");
    assert!(named("gone").is_none(), "{json}");

    // `gateway validate` fails on the missing delegate, at its position.
    let (code, out) = validate(&[&cfg]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{file}:25:")) && out.contains("[GW2005]"),
        "{out}"
    );
}

/// Every object with a `match` and a `name` (an Envoy route) anywhere in `v`.
fn collect_routes<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    match v {
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_routes(x, out)),
        serde_json::Value::Object(o) => {
            if o.contains_key("match") && o.contains_key("name") {
                out.push(v);
            }
            o.values().for_each(|x| collect_routes(x, out));
        }
        _ => {}
    }
}

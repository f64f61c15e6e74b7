//! Every VirtualService `http[]` feature through a real gateway and curl, table-driven
//! over HTTP/1.1 and h2c: match fields, redirect, rewrite, header operations, timeout,
//! retries, direct response, faults, upstream failures (UF/UH/UT/URX), and a weighted
//! split over 2,000 requests. Config: tests/fixtures/http/routing.yaml.
mod http_common;

use std::time::Duration;

use gateway_tests::netns::{NetNs, privileged};
use http_common::*;

struct Case {
    host: &'static str,
    path: &'static str,
    args: &'static [&'static str],
    status: u16,
    /// The `x-route` the matched route stamps (None: must be absent).
    route: Option<&'static str>,
    /// `response_flags=` in the access log line.
    flags: &'static str,
    check: Option<fn(&Resp)>,
}

const M: &str = "match.routing.test";
const A: &str = "actions.routing.test";

fn case(host: &'static str, path: &'static str, status: u16, route: Option<&'static str>) -> Case {
    Case {
        host,
        path,
        args: &[],
        status,
        route,
        flags: "-",
        check: None,
    }
}

fn cases() -> Vec<Case> {
    vec![
        // --- match fields (routes in match-vs order; `default` catches the rest)
        case(M, "/exact", 200, Some("uri-exact")),
        case(M, "/exact/more", 200, Some("default")),
        case(M, "/case/ANY", 200, Some("uri-prefix-icase")),
        case(M, "/re/42", 200, Some("uri-regex")),
        case(M, "/re/4x", 200, Some("default")),
        Case {
            args: &["-H", "x-user: alice"],
            ..case(M, "/", 200, Some("header-exact"))
        },
        Case {
            args: &["-H", "x-user: bob"],
            ..case(M, "/", 200, Some("header-prefix"))
        },
        Case {
            args: &["-H", "x-user: charlie"],
            ..case(M, "/", 200, Some("header-regex"))
        },
        Case {
            args: &["-H", "x-user: dave"],
            ..case(M, "/", 200, Some("default"))
        },
        // `-H "x-flag;"` sends the header with an empty value: presence still matches.
        Case {
            args: &["-H", "x-flag;"],
            ..case(M, "/", 200, Some("header-present"))
        },
        case(M, "/without", 200, Some("without-header")),
        Case {
            args: &["-H", "x-block: 1"],
            ..case(M, "/without", 200, Some("default"))
        },
        Case {
            args: &["-d", "hello"],
            check: Some(|r| assert_eq!(r.echo()["body_bytes"], 5, "{r:?}")),
            ..case(M, "/", 200, Some("method"))
        },
        case(M, "/?v=2", 200, Some("query")),
        case(M, "/?v=3", 200, Some("default")),
        case(M, "/port", 200, Some("port")),
        case(M, "/or-a", 200, Some("or-blocks")),
        case(M, "/or-b", 200, Some("or-blocks")),
        case(M, "/or-c", 200, Some("default")),
        Case {
            args: &["-H", "x-and: 1"],
            ..case(M, "/and", 200, Some("and-fields"))
        },
        case(M, "/and", 200, Some("default")),
        case("x.wild.routing.test", "/", 200, Some("authority")),
        case("y.wild.routing.test", "/", 200, Some("wild-default")),
        Case {
            flags: "NR",
            check: Some(|r| assert_eq!(r.body, "")),
            ..case("nope.routing.test", "/", 404, None)
        },
        // --- actions
        Case {
            check: Some(|r| {
                assert_eq!(
                    r.header("location"),
                    Some("http://other.routing.test/moved")
                )
            }),
            ..case(A, "/redirect", 302, None)
        },
        Case {
            check: Some(|r| {
                assert_eq!(
                    r.header("location"),
                    Some("https://actions.routing.test:8443/to-https?a=b")
                )
            }),
            ..case(A, "/to-https?a=b", 301, None)
        },
        Case {
            check: Some(|r| {
                let e = r.echo();
                assert_eq!(e["path"], "/new/path", "{e}");
                assert_eq!(e["query"], "q=1");
                assert_eq!(e["authority"], "rewritten.routing.test");
            }),
            ..case(A, "/old/path?q=1", 200, None)
        },
        Case {
            args: &[
                "-H",
                "x-remove: 1",
                "-H",
                "x-add: orig",
                "-H",
                "x-set: overwritten",
            ],
            check: Some(|r| {
                let h = &r.echo()["headers"];
                assert_eq!(h["x-set"], "s", "{h}");
                assert_eq!(h["x-add"], "orig,a", "{h}");
                assert_eq!(h["x-dest"], "v1", "{h}");
                assert!(h.get("x-remove").is_none(), "{h}");
                assert_eq!(r.header("x-resp-set"), Some("rs"));
                assert_eq!(r.header("x-resp-add"), Some("ra"));
                assert_eq!(r.header("x-backend"), None, "removed from the response");
            }),
            ..case(A, "/headers", 200, None)
        },
        Case {
            flags: "UT",
            check: Some(|r| {
                assert_eq!(r.body, "upstream request timeout");
                assert!(r.duration() < Duration::from_millis(900), "{r:?}");
            }),
            ..case(A, "/delay/1500", 504, None)
        },
        case(A, "/delay/10", 200, None),
        Case {
            // Three tries of 150 ms each, then the retry budget is spent.
            flags: "UT,URX",
            check: Some(|r| {
                assert!(r.duration() >= Duration::from_millis(450), "{r:?}");
                assert!(r.duration() < Duration::from_millis(1500), "{r:?}");
            }),
            ..case(A, "/per-try", 504, None)
        },
        Case {
            flags: "URX",
            ..case(A, "/status/503", 503, None)
        },
        case(A, "/status/404", 404, None),
        // One endpoint of `flaky` refuses: Istio's default retry (connect-failure) hides it.
        case(A, "/flaky/1", 200, None),
        case(A, "/flaky/2", 200, None),
        case(A, "/flaky/3", 200, None),
        Case {
            check: Some(|r| {
                assert_eq!(r.body, "short and stout\n");
                assert!(r.header("x-envoy-upstream-service-time").is_none());
            }),
            ..case(A, "/direct", 418, None)
        },
        Case {
            flags: "DI",
            check: Some(|r| assert!(r.duration() >= Duration::from_millis(400), "{r:?}")),
            ..case(A, "/fault-delay", 200, None)
        },
        Case {
            flags: "FI",
            check: Some(|r| assert_eq!(r.body, "fault filter abort")),
            ..case(A, "/fault-abort", 503, None)
        },
        case(A, "/fault-never", 200, None),
        Case {
            flags: "UF,URX",
            check: Some(|r| assert!(r.body.contains("connection failure"), "{}", r.body)),
            ..case(A, "/down", 503, None)
        },
        Case {
            flags: "UH",
            check: Some(|r| assert_eq!(r.body, "no healthy upstream")),
            ..case(A, "/empty", 503, None)
        },
    ]
}

fn routing_env(ns: &NetNs) -> (Backends, gateway_tests::gateway::GatewayProc) {
    let b = start_backends(
        ns,
        vec![
            App::Http(18080, "app-v1"),
            App::Http(18081, "app-v2"),
            App::Upgrade(18082),
        ],
    );
    let gw = start_gateway(ns, &[&fixture("routing.yaml")]);
    (b, gw)
}

#[test]
fn every_match_and_route_feature() {
    if !privileged("every_match_and_route_feature") {
        return;
    }
    let ns = NetNs::new("http-route");
    let (_b, gw) = routing_env(&ns);
    for (proto, flag) in [("h1", "--http1.1"), ("h2c", "--http2-prior-knowledge")] {
        for (i, c) in cases().into_iter().enumerate() {
            let id = format!("{proto}-{i}");
            let url = format!("http://127.0.0.1{}", c.path);
            let host = format!("Host: {}", c.host);
            let xid = format!("x-request-id: {id}");
            let mut args = vec![flag, url.as_str(), "-H", host.as_str(), "-H", xid.as_str()];
            args.extend_from_slice(c.args);
            let mut r = curl(&ns, &args);
            let what = format!("case {id} ({} {}{:?})", c.host, c.path, c.args);
            assert_eq!(r.status, c.status, "{what}: {r:?}");
            assert_eq!(r.header("x-route"), c.route, "{what}: {r:?}");
            // Times are the gateway's (its log line), not a clock around curl's spawn.
            let line = log_line(&gw, &id);
            r.logged_duration = Some(duration_of(&line));
            if let Some(check) = c.check {
                check(&r);
            }
            assert!(
                line.contains(&format!("response_flags={} ", c.flags)),
                "{what}: want flags {} in {line}",
                c.flags
            );
            assert!(
                line.contains(&format!("status={}", c.status)),
                "{what}: {line}"
            );
        }
    }

    // Without retries the refusing endpoint of `flaky` shows: round robin alternates.
    let mut got: Vec<u16> = (0..2)
        .map(|i| {
            let id = format!("noretry-{i}");
            let xid = format!("x-request-id: {id}");
            let r = curl(
                &ns,
                &[
                    "http://127.0.0.1/noretry",
                    "-H",
                    "Host: actions.routing.test",
                    "-H",
                    &xid,
                ],
            );
            if r.status == 503 {
                assert!(log_line(&gw, &id).contains("response_flags=UF "));
            }
            r.status
        })
        .collect();
    got.sort();
    assert_eq!(got, [200, 503]);
}

#[test]
fn weighted_split_within_five_percent() {
    if !privileged("weighted_split_within_five_percent") {
        return;
    }
    let ns = NetNs::new("http-split");
    let (_b, _gw) = routing_env(&ns);
    // One curl, 2,000 requests on keep-alive connections.
    let out = ns
        .cmd("curl")
        .args([
            "-sS",
            "--resolve",
            "split.test:80:127.0.0.1",
            "http://split.test/w[1-2000]",
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let v1 = text
        .lines()
        .filter(|l| l.starts_with("app-v1: GET /w"))
        .count();
    let v2 = text
        .lines()
        .filter(|l| l.starts_with("app-v2: GET /w"))
        .count();
    assert_eq!(
        v1 + v2,
        2000,
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // weight 20 / 80, within ±5 percentage points.
    assert!(
        (300..=500).contains(&v1),
        "app-v1 got {v1} of 2000 (want 20% ± 5%)"
    );
}

#[test]
fn websocket_upgrade_is_tunnelled() {
    if !privileged("websocket_upgrade_is_tunnelled") {
        return;
    }
    let ns = NetNs::new("http-ws");
    let (_b, gw) = routing_env(&ns);
    let (head, echoed) = ns.run(|| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("127.0.0.1:80").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            b"GET /chat HTTP/1.1\r\nHost: ws.routing.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nx-request-id: ws-1\r\n\r\n",
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).unwrap(), 1, "closed during the handshake");
            head.push(b[0]);
        }
        // Past the handshake, bytes flow both ways untouched.
        let mut echoed = Vec::new();
        for msg in [&b"\x81\x05hello"[..], b"second frame"] {
            s.write_all(msg).unwrap();
            let mut got = vec![0u8; msg.len()];
            s.read_exact(&mut got).unwrap();
            echoed.push(got);
        }
        (String::from_utf8_lossy(&head).into_owned(), echoed)
    });
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    assert_eq!(
        echoed,
        [b"\x81\x05hello".to_vec(), b"second frame".to_vec()]
    );
    assert!(log_line(&gw, "ws-1").contains("status=101"));
    // A plain request to the same route is not upgraded.
    let r = curl(&ns, &["http://127.0.0.1/", "-H", "Host: ws.routing.test"]);
    assert_eq!(r.status, 400);
}

//! Issue 16: HTTP/1.1 upgrades cannot open a raw tunnel past routing and
//! AuthorizationPolicy (h2c smuggling), an upstream cannot switch protocols unasked,
//! a client cannot make the gateway drop its own headers, and `x-request-id` follows
//! Envoy's edge rule. Real gateway, real clients (curl and raw sockets), and a backend
//! that accepts every upgrade (`gateway_tests::upgrade_probe`).
mod http_common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::GatewayProc,
    netns::{NetNs, privileged},
    upgrade_probe::UpgradeProbe,
};
use http_common::*;

const PROBE: &str = "probe.upgrade.test";
const PLAIN: &str = "plain.upgrade.test";
const WS_KEY: &str = "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// The probe (:18090) on a namespace runtime, the plain app (:18091), the gateway.
struct Env {
    ns: NetNs,
    probe: UpgradeProbe,
    _rt: tokio::runtime::Runtime,
    _plain: Backends,
}

fn env(tag: &str) -> Env {
    let ns = NetNs::new(tag);
    let rt = ns.runtime();
    let probe = NetNs::block_on(&rt, UpgradeProbe::start("127.0.0.1:18090".parse().unwrap()))
        .expect("start the upgrade probe");
    let plain = start_backends(&ns, vec![App::Http(18091, "plain")]);
    Env {
        ns,
        probe,
        _rt: rt,
        _plain: plain,
    }
}

fn gateway(e: &Env, extra: &[&str]) -> GatewayProc {
    start_gateway_with(&e.ns, &[&fixture("upgrade.yaml")], extra)
}

/// What a raw client got: everything the gateway sent, and whether it closed.
#[derive(Debug)]
struct Raw {
    text: String,
    closed: bool,
}

impl Raw {
    /// Status codes of the responses, in order.
    fn statuses(&self) -> Vec<u16> {
        self.text
            .match_indices("HTTP/1.1 ")
            .filter_map(|(i, _)| self.text[i + 9..].get(..3)?.parse().ok())
            .collect()
    }
}

/// Connects to the gateway's :80 in the namespace, writes `bytes` in one go, and reads
/// until the gateway closes or nothing arrived for `quiet`.
fn raw(ns: &NetNs, bytes: String, quiet: Duration) -> Raw {
    ns.run(move || {
        let mut s = TcpStream::connect("127.0.0.1:80").expect("connect to the gateway");
        s.set_read_timeout(Some(quiet)).unwrap();
        s.write_all(bytes.as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        Raw {
            text: String::from_utf8_lossy(&got).into_owned(),
            closed,
        }
    })
}

/// An upgrade request: `upgrade` is the whole `Upgrade` section (one or more lines).
fn offer(host: &str, path: &str, upgrade: &str, id: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade, HTTP2-Settings\r\n{upgrade}HTTP2-Settings: AAMAAABkAAQAAP__\r\n{WS_KEY}x-request-id: {id}\r\n\r\n"
    )
}

/// The request an attacker hides behind the upgrade.
fn smuggled(host: &str) -> String {
    format!("GET /admin/secret HTTP/1.1\r\nHost: {host}\r\nx-request-id: smuggled\r\n\r\n")
}

#[test]
fn h2c_upgrade_is_stripped_and_served_as_http11() {
    if !privileged("h2c_upgrade_is_stripped_and_served_as_http11") {
        return;
    }
    let e = env("up-h2c");
    let gw = gateway(&e, &[]);

    // The textbook offer, then a second request on the same connection: the first is an
    // ordinary HTTP/1.1 exchange, the second is routed and authorized like any other.
    let got = raw(
        &e.ns,
        offer(PROBE, "/h2c", "Upgrade: h2c\r\n", "h2c-1") + &smuggled(PROBE),
        Duration::from_secs(2),
    );
    assert_eq!(got.statuses(), [200, 403], "{got:?}\n{}", gw.log());
    assert!(got.text.contains("RBAC: access denied"), "{got:?}");
    let seen = e.probe.wait_for("/h2c", Duration::from_secs(5), |_| true);
    assert!(!seen.switched, "{seen:?}");
    for h in ["upgrade", "http2-settings"] {
        assert_eq!(seen.header(h), None, "upstream saw {h}: {seen:?}");
    }
    // Nor do the stripped names survive in Connection.
    let conn = seen.header("connection").unwrap_or("").to_ascii_lowercase();
    assert!(
        !conn.contains("upgrade") && !conn.contains("http2-settings"),
        "{seen:?}"
    );
    assert!(!e.probe.saw("/admin"), "{:#?}", e.probe.seen());
    assert!(log_line(&gw, "h2c-1").contains("status=200"));

    // curl's own h2c upgrade (`--http2` on http://) gets an HTTP/1.1 answer.
    let r = curl(
        &e.ns,
        &[
            "--http2",
            "http://127.0.0.1/h2c-curl",
            "-H",
            &format!("Host: {PROBE}"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.verbose.contains("101"), "{r:?}");
    let seen = e
        .probe
        .wait_for("/h2c-curl", Duration::from_secs(5), |_| true);
    assert_eq!(seen.header("upgrade"), None, "{seen:?}");
    assert_eq!(seen.header("http2-settings"), None, "{seen:?}");
}

#[test]
fn deny_cannot_be_bypassed_through_any_upgrade_token() {
    if !privileged("deny_cannot_be_bypassed_through_any_upgrade_token") {
        return;
    }
    let e = env("up-deny");
    let gw = gateway(&e, &[]);
    // (Upgrade lines, host of the allowed route to try it on, status expected there).
    // The probe accepts any offer it is sent; the plain app speaks no WebSocket, so
    // `websocket` there is "websocket to a non-WebSocket route".
    let cases: &[(&str, &str, u16)] = &[
        ("Upgrade: h2c\r\n", PROBE, 200),
        ("Upgrade: H2C\r\n", PROBE, 200),
        ("Upgrade: websocket\r\n", PLAIN, 200),
        ("Upgrade: WebSocket\r\n", PLAIN, 200),
        ("Upgrade: foo\r\n", PROBE, 403),
        ("Upgrade: FoO/2\r\n", PROBE, 403),
        ("Upgrade: h2c, websocket\r\n", PROBE, 403),
        ("Upgrade: websocket, h2c\r\n", PROBE, 403),
        ("Upgrade: foo, h2c\r\n", PROBE, 403),
        ("Upgrade: websocket\r\nUpgrade: h2c\r\n", PROBE, 403),
    ];
    for (i, (upgrade, host, first)) in cases.iter().enumerate() {
        let what = format!("case {i} ({upgrade:?} on {host})");
        // The denied path itself, whatever the offer: 403, never a switch.
        for h in [PROBE, PLAIN] {
            let id = format!("deny-{i}-{h}");
            let got = raw(
                &e.ns,
                offer(h, "/admin", upgrade, &id) + &smuggled(h),
                Duration::from_secs(2),
            );
            let statuses = got.statuses();
            assert_eq!(statuses.first(), Some(&403), "{what}: {got:?}");
            assert!(!statuses.contains(&101), "{what}: {got:?}");
        }
        // An allowed path, with a denied request smuggled behind it.
        let id = format!("allowed-{i}");
        let got = raw(
            &e.ns,
            offer(host, "/", upgrade, &id) + &smuggled(host),
            Duration::from_secs(2),
        );
        let statuses = got.statuses();
        assert_eq!(statuses.first(), Some(first), "{what}: {got:?}");
        assert!(!statuses.contains(&101), "{what}: {got:?}");
        // The smuggled request is either refused by the policy or never read: a
        // connection that offered an upgrade it did not get is closed after the answer.
        assert!(statuses.len() == 1 || statuses[1] == 403, "{what}: {got:?}");
        if statuses.len() == 1 {
            assert!(got.closed, "{what}: not closed: {got:?}");
        }
        let line = log_line(&gw, &id);
        if *first == 403 {
            assert!(
                line.contains("details=\"upgrade_failed\""),
                "{what}: {line}"
            );
            assert!(
                got.closed,
                "{what}: refused upgrade, connection open: {got:?}"
            );
        }
    }
    assert!(!e.probe.saw("/admin"), "{:#?}", e.probe.seen());
    assert!(
        e.probe.seen().iter().all(|s| !s.switched),
        "the probe switched protocols: {:#?}",
        e.probe.seen()
    );
    assert!(
        gw.log()
            .contains("upgrade refused: not a configured upgrade type"),
        "{}",
        gw.log()
    );
}

#[test]
fn websocket_on_an_allowed_route_works_end_to_end() {
    if !privileged("websocket_on_an_allowed_route_works_end_to_end") {
        return;
    }
    let e = env("up-ws");
    let gw = gateway(&e, &[]);
    let (head, echoed) = e.ns.run(|| {
        let mut s = TcpStream::connect("127.0.0.1:80").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET /chat HTTP/1.1\r\nHost: {PROBE}\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n{WS_KEY}x-request-id: ws-ok\r\n\r\n"
        )
        .unwrap();
        let head = read_head(&mut s);
        let mut echoed = Vec::new();
        for msg in [&b"\x81\x05hello"[..], b"GET /payload HTTP/1.1\r\n\r\n"] {
            s.write_all(msg).unwrap();
            let mut got = vec![0u8; msg.len()];
            s.read_exact(&mut got).unwrap();
            echoed.push(got);
        }
        (head, echoed)
    });
    assert!(head.starts_with("HTTP/1.1 101"), "{head}\n{}", gw.log());
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    // Past the handshake the bytes are WebSocket payload, opaque to the gateway.
    assert_eq!(
        echoed,
        [
            b"\x81\x05hello".to_vec(),
            b"GET /payload HTTP/1.1\r\n\r\n".to_vec()
        ]
    );
    let seen = e
        .probe
        .wait_for("/chat", Duration::from_secs(5), |s| s.switched);
    assert_eq!(seen.header("upgrade"), Some("WebSocket"), "{seen:?}");
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "{seen:?}"
    );
    assert!(log_line(&gw, "ws-ok").contains("status=101"));

    // The upgrade request is routed and authorized first: a WebSocket to a denied path
    // or an unknown host never reaches a backend.
    let got = raw(
        &e.ns,
        offer(PROBE, "/admin/ws", "Upgrade: websocket\r\n", "ws-denied"),
        Duration::from_secs(2),
    );
    assert_eq!(got.statuses(), [403], "{got:?}");
    assert!(log_line(&gw, "ws-denied").contains("response_flags=RBAC"));
    let got = raw(
        &e.ns,
        offer("nowhere.test", "/", "Upgrade: websocket\r\n", "ws-nr"),
        Duration::from_secs(2),
    );
    assert_eq!(got.statuses(), [404], "{got:?}");
    assert!(!e.probe.saw("/admin"), "{:#?}", e.probe.seen());
}

fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "closed during the handshake");
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn upstream_switching_protocols_unasked_is_closed_and_logged() {
    if !privileged("upstream_switching_protocols_unasked_is_closed_and_logged") {
        return;
    }
    let e = env("up-101");
    let gw = gateway(&e, &[]);
    // No offer; an h2c offer (stripped, so not asked upstream); a websocket offer the
    // upstream answers with another protocol.
    let offers = [
        ("none", ""),
        ("h2c", "Upgrade: h2c\r\n"),
        ("ws", "Upgrade: websocket\r\n"),
    ];
    for (tag, upgrade) in offers {
        let id = format!("unasked-{tag}");
        let path = format!("/unasked-{tag}");
        let req = if upgrade.is_empty() {
            format!("GET {path} HTTP/1.1\r\nHost: {PROBE}\r\nx-request-id: {id}\r\n\r\n")
        } else {
            offer(PROBE, &path, upgrade, &id)
        };
        let got = raw(&e.ns, req, Duration::from_secs(3));
        assert_eq!(got.statuses(), [502], "{tag}: {got:?}\n{}", gw.log());
        assert!(got.text.contains("protocol error"), "{tag}: {got:?}");
        let line = log_line(&gw, &id);
        for want in [
            "status=502",
            "response_flags=UPE",
            "upstream_reset_before_response_started{protocol_error}",
        ] {
            assert!(line.contains(want), "{tag}: {want} not in {line}");
        }
        // The gateway closed the connection the 101 came on.
        let seen = e.probe.wait_for(&path, Duration::from_secs(12), |s| {
            s.closed_after_switch.is_some()
        });
        assert_eq!(seen.closed_after_switch, Some(true), "{tag}: {seen:?}");
        assert!(seen.tunnelled.is_empty(), "{tag}: {seen:?}");
    }
    assert!(
        gw.log().contains("upstream switched protocols unasked"),
        "{}",
        gw.log()
    );
    // The probe still serves ordinary requests (a fresh upstream connection).
    let r = curl(
        &e.ns,
        &["http://127.0.0.1/after", "-H", &format!("Host: {PROBE}")],
    );
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn connection_cannot_remove_the_gateways_own_headers() {
    if !privileged("connection_cannot_remove_the_gateways_own_headers") {
        return;
    }
    let e = env("up-hop");
    let _gw = gateway(&e, &[]);
    let host = format!("Host: {PROBE}");
    let r = curl(
        &e.ns,
        &[
            "http://127.0.0.1/hop",
            "-H",
            &host,
            "-H",
            "Connection: close, X-Forwarded-For, X-Forwarded-Proto, X-Request-Id, X-Hop",
            "-H",
            "X-Hop: 1",
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = e.probe.wait_for("/hop", Duration::from_secs(5), |_| true);
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "{seen:?}"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"), "{seen:?}");
    assert!(
        seen.header("x-request-id").is_some_and(|id| id.len() == 36),
        "{seen:?}"
    );
    // What Connection names is hop-by-hop: dropped.
    assert_eq!(seen.header("x-hop"), None, "{seen:?}");
    // A client's X-Forwarded-For that is not named is kept and appended to.
    let r = curl(
        &e.ns,
        &[
            "http://127.0.0.1/hop2",
            "-H",
            &host,
            "-H",
            "X-Forwarded-For: 203.0.113.7",
            "-H",
            "Connection: close, X-Forwarded-Proto",
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = e.probe.wait_for("/hop2", Duration::from_secs(5), |_| true);
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1"),
        "{seen:?}"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"), "{seen:?}");
}

#[test]
fn request_id_is_replaced_at_the_edge_and_kept_for_internal_requests() {
    if !privileged("request_id_is_replaced_at_the_edge_and_kept_for_internal_requests") {
        return;
    }
    let e = env("up-rid");
    let host = format!("Host: {PROBE}");
    let get = |path: &str, extra: &[&str]| {
        let url = format!("http://127.0.0.1{path}");
        let mut args = vec![url.as_str(), "-H", host.as_str()];
        args.extend_from_slice(extra);
        let r = curl(&e.ns, &args);
        assert_eq!(r.status, 200, "{r:?}");
        e.probe.wait_for(path, Duration::from_secs(5), |_| true)
    };
    let uuid = |id: Option<&str>| id.is_some_and(|id| id.len() == 36 && id.split('-').count() == 5);

    // An edge gateway (no --internal-address: the default): every client is external.
    {
        let gw = GatewayProc::start(
            &e.ns,
            &[&fixture("upgrade.yaml")],
            &["--splice", "userspace"],
        );
        let seen = get(
            "/edge",
            &[
                "-H",
                "x-request-id: mine-edge",
                "-H",
                "x-envoy-internal: true",
            ],
        );
        let id = seen.header("x-request-id");
        assert!(uuid(id), "external id not replaced: {seen:?}");
        assert_eq!(seen.header("x-envoy-internal"), None, "{seen:?}");
        // The access log has the id the upstream got, not the client's.
        assert!(log_line(&gw, id.unwrap()).contains("path=/edge"));
        assert!(!gw.log().contains("mine-edge"), "{}", gw.log());
    }

    // 127.0.0.0/8 internal: a loopback client without X-Forwarded-For keeps its id...
    {
        let gw = gateway(&e, &[]);
        let seen = get("/internal", &["-H", "x-request-id: mine-internal"]);
        assert_eq!(
            seen.header("x-request-id"),
            Some("mine-internal"),
            "{seen:?}"
        );
        assert_eq!(seen.header("x-envoy-internal"), Some("true"), "{seen:?}");
        assert!(log_line(&gw, "mine-internal").contains("path=/internal"));
        // ... and gets one when it brought none.
        let seen = get("/internal-none", &[]);
        assert!(uuid(seen.header("x-request-id")), "{seen:?}");
        // One that came through another proxy (X-Forwarded-For) is external.
        let seen = get(
            "/forwarded",
            &[
                "-H",
                "x-request-id: mine-forwarded",
                "-H",
                "X-Forwarded-For: 198.51.100.1",
            ],
        );
        assert!(uuid(seen.header("x-request-id")), "{seen:?}");
        assert_eq!(seen.header("x-envoy-internal"), None, "{seen:?}");
    }
}

#[test]
fn idle_websocket_tunnel_is_closed() {
    if !privileged("idle_websocket_tunnel_is_closed") {
        return;
    }
    let e = env("up-idle");
    let gw = gateway(&e, &["--upgrade-idle-timeout", "1s"]);
    let (kept_alive, idle_for) = e.ns.run(|| {
        let mut s = TcpStream::connect("127.0.0.1:80").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /idle HTTP/1.1\r\nHost: {PROBE}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{WS_KEY}x-request-id: ws-idle\r\n\r\n"
        )
        .unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // Traffic every 300 ms for 2.4 s keeps the tunnel open past its 1 s timeout.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(2400) {
            s.write_all(b"ping").unwrap();
            let mut got = [0u8; 4];
            s.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"ping");
            std::thread::sleep(Duration::from_millis(300));
        }
        let kept_alive = start.elapsed();
        // Then silence: the gateway closes it.
        let quiet = Instant::now();
        let mut b = [0u8; 16];
        let n = s.read(&mut b).unwrap_or(0);
        assert_eq!(n, 0, "expected EOF after the idle timeout");
        (kept_alive, quiet.elapsed())
    });
    assert!(kept_alive >= Duration::from_millis(2400));
    assert!(
        idle_for >= Duration::from_millis(700) && idle_for < Duration::from_secs(5),
        "closed after {idle_for:?} of silence"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw
        .log()
        .contains("upgraded connection closed: idle timeout")
    {
        assert!(Instant::now() < deadline, "{}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

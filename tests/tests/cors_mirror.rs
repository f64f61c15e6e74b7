//! Issue 13 (VirtualService leftovers): `corsPolicy` answered as Envoy's CORS filter
//! answers, and `mirror` / `mirrors` sending fire-and-forget copies. A real gateway in a
//! namespace, curl as the client, and recorders (tests/src/recorder.rs) as the primary
//! and mirror upstreams, so every assertion is about what really reached a socket.
mod http_common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::GatewayProc,
    netns::{NetNs, privileged},
    recorder::Recorder,
};
use http_common::*;

const PRIMARY: u16 = 18100;
const MIRROR: u16 = 18101;
const SLOW: u16 = 18103;
const ZERO: u16 = 18104;
const HALF: u16 = 18105;
const TWO_A: u16 = 18106;
const TWO_B: u16 = 18107;
const SENTINEL: u16 = 18108;

/// The namespace, its recorders (on a namespace runtime) and the gateway.
struct Env {
    ns: NetNs,
    gw: GatewayProc,
    recorders: Vec<(u16, Recorder)>,
    _rt: tokio::runtime::Runtime,
}

impl Env {
    fn rec(&self, port: u16) -> &Recorder {
        &self
            .recorders
            .iter()
            .find(|(p, _)| *p == port)
            .expect("a recorder on that port")
            .1
    }

    fn curl(&self, host: &str, path: &str, extra: &[&str]) -> Resp {
        let url = format!("http://127.0.0.1{path}");
        let host = format!("Host: {host}");
        let mut args = vec!["-H", host.as_str()];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&self.ns, &args)
    }

    /// `gateway_mirror_requests_total{outcome}`; a missing series fails the test.
    fn mirror_metric(&self, outcome: &str) -> u64 {
        let m = self.gw.admin_get("/stats/prometheus");
        let key = format!("gateway_mirror_requests_total{{outcome=\"{outcome}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in:\n{m}"))
    }

    /// Waits up to 10 s for the metric to reach `n`.
    fn wait_mirror_metric(&self, outcome: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.mirror_metric(outcome);
            if got >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mirror {outcome}: {got} of {n} within 10 s\n{}",
                self.gw.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn env(tag: &str) -> Env {
    let ns = NetNs::new(tag);
    let rt = ns.runtime();
    let mut recorders = Vec::new();
    for (port, name, delay) in [
        (PRIMARY, "primary", 0),
        (MIRROR, "mirror", 0),
        (SLOW, "slow", 5000),
        (ZERO, "zero", 0),
        (HALF, "half", 0),
        (TWO_A, "two-a", 0),
        (TWO_B, "two-b", 0),
        (SENTINEL, "sentinel", 0),
    ] {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let r = NetNs::block_on(
            &rt,
            Recorder::start(addr, name, Duration::from_millis(delay)),
        )
        .expect("start a recorder");
        recorders.push((port, r));
    }
    let gw = start_gateway(&ns, &[&fixture("cors-mirror.yaml")]);
    Env {
        ns,
        gw,
        recorders,
        _rt: rt,
    }
}

fn preflight<'a>(origin: &'a str, method: &'a str) -> Vec<String> {
    vec![
        "-X".into(),
        "OPTIONS".into(),
        "-H".into(),
        format!("Origin: {origin}"),
        "-H".into(),
        format!("Access-Control-Request-Method: {method}"),
        "-H".into(),
        "Access-Control-Request-Headers: x-token".into(),
    ]
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn cors_preflights_and_simple_requests_as_envoy() {
    if !privileged("cors_preflights_and_simple_requests_as_envoy") {
        return;
    }
    let e = env("cors");
    let primary = e.rec(PRIMARY);

    // A preflight from an allowed origin (exact, prefix, regex): answered by the gateway,
    // never forwarded. The recorder records before it answers, so a forwarded preflight
    // would be in its list by the time curl has its response.
    for origin in [
        "https://app.example.com",
        "https://dev.anything.test",
        "https://shop.example.org",
    ] {
        let pf = preflight(origin, "POST");
        let mut args = as_strs(&pf);
        args.extend(["-H", "x-request-id: pf-ok"]);
        let r = e.curl("cors.test", "/api", &args);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(origin),
            "{r:?}"
        );
        assert_eq!(r.header("access-control-allow-methods"), Some("GET,POST"));
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("x-token,content-type")
        );
        assert_eq!(r.header("access-control-max-age"), Some("3600"));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(r.header("x-backend"), None, "{r:?}");
        assert!(r.body.is_empty(), "{r:?}");
    }
    assert_eq!(primary.count(), 0, "{:#?}", primary.seen());
    // The config dump shows the route's CORS filter config as Istio writes it.
    let dump = e.gw.admin_json("/config_dump").to_string();
    assert!(
        dump.contains(r#""allow_methods":"GET,POST""#)
            && dump.contains(r#""forward_not_matching_preflights":true"#)
            && dump.contains(r#""max_age":"3600""#),
        "{dump}"
    );
    let l = log_line(&e.gw, "pf-ok");
    assert!(l.contains("details=\"cors_response\""), "{l}");
    assert!(l.contains("status=200"), "{l}");

    // Disallowed origins, including near misses of each matcher: the preflight is
    // forwarded (unmatchedPreflights FORWARD, the default) and gets no CORS header.
    for origin in [
        "https://evil.example.com",
        "http://app.example.com",
        "https://shop.example.org.evil.test",
        "https://dev",
    ] {
        let pf = preflight(origin, "POST");
        let r = e.curl("cors.test", "/forwarded", &as_strs(&pf));
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-backend"), Some("primary"), "{r:?}");
        assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
        assert_eq!(r.header("access-control-allow-credentials"), None, "{r:?}");
    }
    let forwarded: Vec<_> = primary.seen();
    assert_eq!(forwarded.len(), 4, "{forwarded:#?}");
    assert!(forwarded.iter().all(|s| s.method == "OPTIONS"));
    assert_eq!(
        forwarded[0].header("origin"),
        Some("https://evil.example.com")
    );

    // A simple request from an allowed origin: forwarded, and the answer carries
    // allow-origin, allow-credentials and expose-headers.
    let r = e.curl(
        "cors.test",
        "/simple",
        &["-H", "Origin: https://app.example.com"],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-backend"), Some("primary"));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-backend,x-request-id")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    // Preflight-only headers are not on simple responses.
    assert_eq!(r.header("access-control-allow-methods"), None);
    assert_eq!(r.header("access-control-max-age"), None);
    // OPTIONS without Access-Control-Request-Method is no preflight: forwarded, decorated.
    let r = e.curl(
        "cors.test",
        "/plain-options",
        &["-X", "OPTIONS", "-H", "Origin: https://dev.x"],
    );
    assert_eq!(r.header("x-backend"), Some("primary"), "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://dev.x")
    );
    // A disallowed origin, or none: no CORS header at all.
    for extra in [&["-H", "Origin: https://evil.test"][..], &[][..]] {
        let r = e.curl("cors.test", "/simple", extra);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            !r.headers
                .iter()
                .any(|(k, _)| k.starts_with("access-control-")),
            "{r:?}"
        );
    }
    assert_eq!(primary.count(), 8, "{:#?}", primary.seen());

    // unmatchedPreflights: IGNORE answers an unmatched preflight at the gateway without
    // allow-origin (and does not forward it); the deprecated allowOrigin still matches.
    let pf = preflight("https://other.test", "GET");
    let r = e.curl("cors-ignore.test", "/ignored", &as_strs(&pf));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-backend"), None, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
    assert_eq!(r.header("access-control-allow-methods"), Some("GET"));
    let pf = preflight("https://app.example.com", "GET");
    let r = e.curl("cors-ignore.test", "/matched", &as_strs(&pf));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com"),
        "{r:?}"
    );
    assert_eq!(r.header("access-control-allow-credentials"), None, "{r:?}");
    assert_eq!(primary.count(), 8, "{:#?}", primary.seen());
}

#[test]
fn mirror_sends_a_copy_and_the_client_sees_only_the_primary() {
    if !privileged("mirror_sends_a_copy_and_the_client_sees_only_the_primary") {
        return;
    }
    let e = env("mirror");
    let (primary, mirror) = (e.rec(PRIMARY), e.rec(MIRROR));

    // A POST with a body: the client gets the primary's answer; the mirror gets the
    // same method, rewritten path, headers and body, with Host suffixed "-shadow".
    let r = e.curl(
        "mirror.test",
        "/orig?q=1",
        &[
            "-X",
            "POST",
            "--data-binary",
            "hello-mirror",
            "-H",
            "x-request-id: m-1",
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-backend"), Some("primary"));
    assert_eq!(r.body, "primary");
    let dump = e.gw.admin_json("/config_dump").to_string();
    assert!(
        dump.contains(r#""request_mirror_policies":[{"cluster":"outbound|18105||127.0.0.1","runtime_fraction":{"default_value":{"denominator":"MILLION","numerator":500000}}}]"#),
        "{dump}"
    );
    let p = primary.wait_count(1, Duration::from_secs(5)).remove(0);
    let m = mirror.wait_count(1, Duration::from_secs(5)).remove(0);
    assert_eq!(
        (p.method.as_str(), p.path.as_str()),
        ("POST", "/rewritten?q=1")
    );
    assert_eq!(
        (m.method.as_str(), m.path.as_str()),
        ("POST", "/rewritten?q=1")
    );
    assert_eq!(m.body, b"hello-mirror");
    assert_eq!(p.header("host"), Some("mirror.test"));
    assert_eq!(m.header("host"), Some("mirror.test-shadow"));
    assert_eq!(m.header("x-added"), Some("by-route"));
    assert_eq!(m.header("x-request-id"), Some("m-1"));
    assert_eq!(m.header("x-forwarded-for"), p.header("x-forwarded-for"));
    assert_eq!(m.header("content-length"), Some("12"));

    // "-shadow" goes before the port.
    e.curl("mirror.test:80", "/port", &[]);
    let m = mirror.wait_count(2, Duration::from_secs(5)).remove(1);
    assert_eq!(m.header("host"), Some("mirror.test-shadow:80"), "{m:?}");

    // A chunked body (no content-length) is mirrored whole.
    let r = e.curl(
        "mirror.test",
        "/chunked",
        &[
            "-X",
            "PUT",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            "chunked-body",
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let m = mirror.wait_count(3, Duration::from_secs(5)).remove(2);
    assert_eq!(
        (m.method.as_str(), m.body.as_slice()),
        ("PUT", &b"chunked-body"[..])
    );

    // A body the primary gets streamed (over the 64 KiB retry buffer) but within the
    // mirror buffer: the copy has all of it.
    let mid = scratch(&e.ns).join("mid.bin");
    std::fs::write(&mid, vec![b'm'; 512 * 1024]).unwrap();
    let at = format!("@{}", mid.display());
    let r = e.curl("mirror.test", "/mid", &["--data-binary", &at]);
    assert_eq!(r.status, 200, "{r:?}");
    let m = mirror.wait_count(4, Duration::from_secs(5)).remove(3);
    assert_eq!(m.body.len(), 512 * 1024);

    // A body over the mirror buffer (1 MiB) reaches the primary whole; its copy is
    // abandoned and counted.
    let big = scratch(&e.ns).join("big.bin");
    std::fs::write(&big, vec![b'x'; 2 * 1024 * 1024]).unwrap();
    let at = format!("@{}", big.display());
    let r = e.curl("mirror.test", "/big", &["--data-binary", &at]);
    assert_eq!(r.status, 200, "{r:?}");
    let p = primary.wait_count(5, Duration::from_secs(5)).remove(4);
    assert_eq!(p.body.len(), 2 * 1024 * 1024);
    e.wait_mirror_metric("abandoned", 1);
    assert_eq!(mirror.count(), 4, "{:#?}", mirror.seen());
    e.wait_mirror_metric("answered", 4);
}

#[test]
fn a_down_or_slow_mirror_never_touches_the_primary() {
    if !privileged("a_down_or_slow_mirror_never_touches_the_primary") {
        return;
    }
    let e = env("mirror-slow");
    let slow = e.rec(SLOW);
    // Warm the primary's pooled connection so the timings below are the request's own.
    assert_eq!(e.curl("mirror.test", "/warm", &[]).status, 200);

    // Nothing listens on the mirror's port: the primary still answers, at once.
    for i in 0..5 {
        let id = format!("down-{i}");
        let r = e.curl(
            "mirror.test",
            "/down",
            &[
                "-X",
                "POST",
                "-d",
                "x",
                "-H",
                &format!("x-request-id: {id}"),
            ],
        );
        assert_eq!(
            (r.status, r.header("x-backend")),
            (200, Some("primary")),
            "{r:?}"
        );
        let l = log_line(&e.gw, &id);
        let took = duration_of(&l);
        eprintln!("mirror down: primary {took:?} in the gateway");
        assert!(took < Duration::from_secs(1), "{took:?}: {l}");
        assert!(!l.contains("response_flags=U"), "{l}");
    }
    e.wait_mirror_metric("failed", 5);

    // The mirror answers after 5 s: the primary's answer does not wait for it.
    for i in 0..3 {
        let id = format!("slow-{i}");
        let r = e.curl(
            "mirror.test",
            "/slow",
            &["-H", &format!("x-request-id: {id}")],
        );
        assert_eq!(
            (r.status, r.header("x-backend")),
            (200, Some("primary")),
            "{r:?}"
        );
        // Well under the mirror's 5 s, whatever the machine's load.
        assert!(r.elapsed < Duration::from_secs(2), "{:?}", r.elapsed);
        let took = duration_of(&log_line(&e.gw, &id));
        eprintln!(
            "slow mirror: primary {took:?} in the gateway, {:?} for curl",
            r.elapsed
        );
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    // And the slow mirror did get its copies (so the timing above is meaningful).
    let got = slow.wait_count(3, Duration::from_secs(5));
    assert!(got.iter().all(|s| s.path == "/slow"), "{got:#?}");
    e.wait_mirror_metric("answered", 3);
}

#[test]
fn mirror_percentages_and_several_mirrors() {
    if !privileged("mirror_percentages_and_several_mirrors") {
        return;
    }
    let e = env("mirror-pct");
    let (primary, half, zero, sentinel) =
        (e.rec(PRIMARY), e.rec(HALF), e.rec(ZERO), e.rec(SENTINEL));
    const N: usize = 200;

    // One curl, N requests on a keep-alive connection (bounded: 20 s max-time each
    // invocation, in http_common::curl).
    let many = |prefix: &str| {
        let urls: Vec<String> = (0..N)
            .map(|i| format!("http://127.0.0.1/{prefix}/{i}"))
            .collect();
        let out =
            e.ns.cmd("curl")
                .args([
                    "-sS",
                    "-o",
                    "/dev/null",
                    "--max-time",
                    "60",
                    "-H",
                    "Host: mirror.test",
                ])
                .args(&urls)
                .output()
                .expect("curl");
        assert!(out.status.success(), "{out:?}");
    };

    // mirrorPercentage 50: a plausible share of N (binomial: mean 100, sd 7.1; the
    // bound is ±5.6 sd, so a correct gateway fails it about once in 10^8 runs).
    many("half");
    primary.wait_count(N, Duration::from_secs(20));
    e.wait_mirror_metric("answered", 1);
    let mut last = (half.count(), Instant::now());
    let deadline = Instant::now() + Duration::from_secs(10);
    // Copies trail the primary's answers: wait until the count stops moving (500 ms).
    while last.1.elapsed() < Duration::from_millis(500) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = half.count();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let copies = half.count();
    eprintln!("mirrorPercentage 50: {copies} of {N} requests copied");
    assert!(
        (60..=140).contains(&copies),
        "{copies} of {N} mirrored at 50 %"
    );
    assert!(
        half.seen().iter().all(|s| s.path.starts_with("/half/")),
        "{:#?}",
        half.seen()
    );

    // A mirror at 0 % gets nothing, while its 100 % sibling gets every copy: once the
    // sentinel has all N, the zero mirror's copies (sent with them) would be in too.
    many("zero");
    sentinel.wait_count(N, Duration::from_secs(20));
    assert_eq!(zero.count(), 0, "{:#?}", zero.seen());

    // Two mirrors both receive every request.
    for i in 0..5 {
        let r = e.curl("mirror.test", &format!("/two/{i}"), &[]);
        assert_eq!(r.header("x-backend"), Some("primary"), "{r:?}");
    }
    for port in [TWO_A, TWO_B] {
        let got = e.rec(port).wait_count(5, Duration::from_secs(5));
        let mut paths: Vec<_> = got.iter().map(|s| s.path.clone()).collect();
        paths.sort();
        assert_eq!(paths, ["/two/0", "/two/1", "/two/2", "/two/3", "/two/4"]);
    }
}

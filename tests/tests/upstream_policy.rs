//! DestinationRule `outlierDetection` and `connectionPool` through a real gateway and
//! real backends (config: tests/fixtures/http/upstream_policy.yaml):
//! - an endpoint answering 500 is ejected after `consecutive5xxErrors: 3` (every later
//!   request goes to the other one), shows OUTLIER CHECK FAILED in `proxy-config
//!   endpoint` and in the metrics, and comes back after `baseEjectionTime: 2s`;
//! - with `splitExternalLocalOriginErrors`, an endpoint nobody listens on is ejected
//!   after `consecutiveLocalOriginFailures: 2` connect failures (Istio's default retry
//!   takes every request to the other endpoint meanwhile);
//! - `maxConnections: 1` + `http1MaxPendingRequests: 1` against a slow endpoint: one
//!   request runs, one waits, the others get 503 `UO` at once;
//! - `maxRetries: 1` with a 4 s retry back-off: of four failing requests at once, one
//!   retries (waiting out its back-off), those finding the slot taken answer the 500
//!   at once with `UO`;
//! - on a TCP route `maxConnections: 1`: a second connection is closed (`UO`) while
//!   the first is open, and accepted once it has closed.
mod http_common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gateway_tests::gateway::{GatewayProc, gateway_bin};
use gateway_tests::netns::{NetNs, privileged};
use http_common::*;
use hyper::body::Bytes;

/// How long the slow endpoint takes to answer.
const SLOW: Duration = Duration::from_millis(1000);

/// An HTTP/1.1 backend named `name`: 500 while `failing` is set, else 200, after `delay`.
async fn backend(addr: SocketAddr, name: &'static str, failing: Arc<AtomicBool>, delay: Duration) {
    let l = tokio::net::TcpListener::bind(addr).await.expect("bind");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let failing = failing.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let failing = failing.load(Ordering::Relaxed);
                    async move {
                        tokio::time::sleep(delay).await;
                        let mut r = hyper::Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"hi\n"),
                        ));
                        if failing {
                            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        r.headers_mut().insert("x-backend", name.parse().unwrap());
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

struct Env {
    ns: NetNs,
    rt: tokio::runtime::Runtime,
    gw: GatewayProc,
    failing: Arc<AtomicBool>,
    _echo: gateway_tests::backends::Backend,
}

fn env(tag: &str) -> Env {
    let ns = NetNs::new(tag);
    let rt = ns.runtime();
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let echo = NetNs::block_on(&rt, async move {
        let ok = Arc::new(AtomicBool::new(false));
        let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        backend(at(18280), "good", ok.clone(), Duration::ZERO).await;
        backend(at(18281), "flaky", f, Duration::ZERO).await;
        backend(at(18282), "slow", ok, SLOW).await;
        backend(
            at(18284),
            "broken",
            Arc::new(AtomicBool::new(true)),
            Duration::ZERO,
        )
        .await;
        gateway_tests::backends::tcp_echo(at(18283))
            .await
            .expect("tcp echo")
    });
    let gw = start_gateway(&ns, &[&fixture("upstream_policy.yaml")]);
    Env {
        ns,
        rt,
        gw,
        failing,
        _echo: echo,
    }
}

fn get(e: &Env, host: &str, id: &str) -> Resp {
    curl(
        &e.ns,
        &[
            "-H",
            &format!("Host: {host}"),
            "-H",
            &format!("x-request-id: {id}"),
            "http://127.0.0.1/x",
        ],
    )
}

/// `gateway proxy-config endpoint` rows for `cluster`: (endpoint, status, outlier check).
fn endpoints(e: &Env, cluster: &str) -> Vec<(String, String, String)> {
    let out =
        e.ns.cmd(gateway_bin().to_str().unwrap())
            .args([
                "proxy-config",
                "endpoint",
                "--admin-addr",
                "127.0.0.1:15000",
                "--cluster",
                cluster,
            ])
            .output()
            .expect("proxy-config");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].into(), f[1].into(), f[2].into())
        })
        .collect()
}

/// The value of a metric line starting with `prefix` (a missing metric fails).
fn metric(gw: &GatewayProc, prefix: &str) -> u64 {
    let text = gw.admin_get("/stats/prometheus");
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {prefix}:\n{text}"))
}

const OUTLIER: &str = "outbound|80||outlier.test";

#[test]
fn a_failing_endpoint_is_ejected_and_comes_back() {
    if !privileged("a_failing_endpoint_is_ejected_and_comes_back") {
        return;
    }
    let e = env("uppol-outlier");
    // ROUND_ROBIN over good and flaky: flaky answers 500 three times in a row (its own
    // count), then it is ejected and every request goes to good.
    let mut answers = Vec::new();
    let mut ejected_at = None;
    for i in 0..20 {
        let r = get(&e, "outlier.test", &format!("od-{i}"));
        answers.push((r.status, r.header("x-backend").unwrap_or("").to_string()));
        // The gateway ejects when it reports the third 500, before curl has it.
        if r.status == 500 && answers.iter().filter(|(s, _)| *s == 500).count() == 3 {
            ejected_at = Some(Instant::now());
        }
    }
    let ejected_at = ejected_at.unwrap_or_else(|| panic!("no third 500: {answers:?}"));
    let failed: Vec<_> = answers.iter().filter(|(s, _)| *s == 500).collect();
    assert_eq!(failed.len(), 3, "{answers:?}");
    assert!(failed.iter().all(|(_, b)| b == "flaky"), "{answers:?}");
    // The third 500 is answer 5 at the latest (good, flaky alternate): all later ones good.
    assert!(
        answers[6..].iter().all(|(s, b)| *s == 200 && b == "good"),
        "{answers:?}"
    );
    e.gw.wait_log(Duration::from_secs(5), |l| {
        l.contains("endpoint ejected") && l.contains("127.0.0.1:18281")
    });
    assert_eq!(
        endpoints(&e, OUTLIER),
        [
            ("127.0.0.1:18280".into(), "HEALTHY".into(), "OK".into()),
            ("127.0.0.1:18281".into(), "HEALTHY".into(), "FAILED".into()),
        ]
    );
    let label = format!("{{cluster=\"{OUTLIER}\"}}");
    assert_eq!(
        metric(&e.gw, &format!("gateway_outlier_ejections_total{label}")),
        1
    );
    assert_eq!(
        metric(&e.gw, &format!("gateway_outlier_ejections_active{label}")),
        1
    );
    let dump = e.gw.admin_json("/config_dump");
    let od = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| {
            c["dynamic_active_clusters"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .find(|c| c["cluster"]["name"] == OUTLIER)
        .map(|c| c["cluster"]["outlier_detection"].clone())
        .expect("cluster in dump");
    assert_eq!(od["consecutive_5xx"], 3, "{od}");
    assert_eq!(od["base_ejection_time"], "2s", "{od}");
    assert_eq!(od["interval"], "0.250s", "{od}");

    // flaky recovers; it is used again once the 2 s ejection has passed (at the next
    // 250 ms sweep), not before.
    e.failing.store(false, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut i = 0;
    let back = loop {
        let r = get(&e, "outlier.test", &format!("back-{i}"));
        assert_eq!(r.status, 200, "{r:?}");
        if r.header("x-backend") == Some("flaky") {
            break ejected_at.elapsed();
        }
        assert!(Instant::now() < deadline, "flaky never came back");
        i += 1;
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("flaky back after {back:?} (baseEjectionTime 2s, interval 250ms)");
    // Not before the 2 s; by the first sweep after them (250 ms), plus slack for
    // curl's start on a loaded machine.
    assert!(back >= Duration::from_millis(1950), "back after {back:?}");
    assert!(back < Duration::from_secs(5), "back after {back:?}");
    let line = e.gw.wait_log(Duration::from_secs(5), |l| {
        l.contains("endpoint returned from ejection") && l.contains("127.0.0.1:18281")
    });
    assert!(line.contains(OUTLIER), "{line}");
    assert_eq!(endpoints(&e, OUTLIER)[1].2, "OK");
    assert_eq!(
        metric(&e.gw, &format!("gateway_outlier_ejections_active{label}")),
        0
    );
}

#[test]
fn connection_pool_overflow_is_503_uo() {
    if !privileged("connection_pool_overflow_is_503_uo") {
        return;
    }
    let e = env("uppol-pool");
    // Four at once against the slow endpoint: one runs, one waits for the connection
    // (http1MaxPendingRequests: 1), two overflow.
    let codes = concurrent(&e, "capped.test", "pool", 4);
    assert_eq!(codes, ["200", "200", "503", "503"]);
    let mut overflowed = 0;
    for i in 0..4 {
        let line = log_line(&e.gw, &format!("pool-{i}"));
        if line.contains("status=503") {
            assert!(line.contains("response_flags=UO "), "{line}");
            assert!(
                line.contains("details=\"upstream_reset_before_response_started{overflow}\""),
                "{line}"
            );
            // At once, not after the slow endpoint.
            assert!(duration_of(&line) < Duration::from_millis(500), "{line}");
            overflowed += 1;
        } else {
            // The waiting one took about two slow answers.
            assert!(line.contains("status=200"), "{line}");
        }
    }
    assert_eq!(overflowed, 2);
    assert_eq!(
        metric(
            &e.gw,
            "gateway_upstream_rq_pending_overflow_total{cluster=\"outbound|80||capped.test\"}"
        ),
        2
    );
    // Not over the limit: served.
    let r = get(&e, "capped.test", "pool-after");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("hi"), "{r:?}");
}

#[test]
fn tcp_max_connections_closes_the_extra_connection() {
    if !privileged("tcp_max_connections_closes_the_extra_connection") {
        return;
    }
    let e = env("uppol-tcp");
    let refused_again = NetNs::block_on(&e.rt, async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let gw = SocketAddr::from(([127, 0, 0, 1], 31400));
        let echo = |mut s: tokio::net::TcpStream, msg: &'static [u8]| async move {
            s.write_all(msg).await.unwrap();
            let mut buf = vec![0; msg.len()];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
                .await
                .expect("echo in time")
                .expect("echo");
            assert_eq!(buf, msg);
            s
        };
        let first = echo(tokio::net::TcpStream::connect(gw).await.unwrap(), b"one").await;
        // The second: closed by the gateway without reaching the endpoint.
        let mut second = tokio::net::TcpStream::connect(gw).await.unwrap();
        let _ = second.write_all(b"two").await;
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        drop(first);
        // Once the first has closed, a new connection gets through (the slot is freed
        // when the gateway sees the close).
        // Attempts made before the gateway saw the close are refused too: counted.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut refused = 0;
        loop {
            let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
            let _ = s.write_all(b"three").await;
            let mut buf = [0u8; 5];
            match tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await {
                Ok(Ok(_)) if &buf == b"three" => break refused,
                other => assert!(Instant::now() < deadline, "never admitted again: {other:?}"),
            }
            refused += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    e.gw.wait_log(Duration::from_secs(5), |l| {
        l.contains("circuit breaker maxConnections reached (UO)")
    });
    assert_eq!(
        metric(
            &e.gw,
            "gateway_upstream_rq_pending_overflow_total{cluster=\"outbound|2701||capped.test\"}"
        ),
        1 + refused_again
    );
}

/// Four requests at once with curl in threads; (status codes sorted).
fn concurrent(e: &Env, host: &str, tag: &str, n: usize) -> Vec<String> {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let ns = e.ns.name.clone();
            let (host, id) = (host.to_string(), format!("{tag}-{i}"));
            std::thread::spawn(move || {
                let out = std::process::Command::new("ip")
                    .args(["netns", "exec", &ns, "curl", "-sS", "-o", "/dev/null"])
                    .args(["-w", "%{http_code}", "--max-time", "15"])
                    .args(["-H", &format!("x-request-id: {id}")])
                    .args(["-H", &format!("Host: {host}"), "http://127.0.0.1/r"])
                    .output()
                    .expect("curl");
                String::from_utf8_lossy(&out.stdout).into_owned()
            })
        })
        .collect();
    let mut codes: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    codes.sort();
    codes
}

#[test]
fn max_retries_overflow_skips_the_retry_with_uo() {
    if !privileged("max_retries_overflow_skips_the_retry_with_uo") {
        return;
    }
    let e = env("uppol-retry");
    assert_eq!(concurrent(&e, "retry.test", "rt", 4), ["500"; 4]);
    // The first to fail holds the only retry slot for its back-off (0-4 s, Envoy's
    // jitter); the others fail within milliseconds of it and find the slot taken
    // unless its pause was shorter than that.
    let mut uo = 0;
    for i in 0..4 {
        let line = log_line(&e.gw, &format!("rt-{i}"));
        assert!(line.contains("status=500"), "{line}");
        if line.contains("response_flags=UO ") {
            // No back-off, no second try.
            assert!(duration_of(&line) < Duration::from_millis(500), "{line}");
            uo += 1;
        } else {
            // Retried once, and out of tries.
            assert!(line.contains("response_flags=URX "), "{line}");
        }
    }
    eprintln!("{uo} of 4 retries refused by maxRetries: 1");
    assert!((1..4).contains(&uo), "{uo}");
    assert_eq!(
        metric(
            &e.gw,
            "gateway_upstream_rq_retry_overflow_total{cluster=\"outbound|80||retry.test\"}"
        ),
        uo
    );
}

#[test]
fn connect_failures_eject_when_split_from_answers() {
    if !privileged("connect_failures_eject_when_split_from_answers") {
        return;
    }
    let e = env("uppol-split");
    let cluster = "outbound|80||split.test";
    for i in 0..8 {
        let r = get(&e, "split.test", &format!("split-{i}"));
        // Istio's default retry (connect-failure) goes to the other endpoint.
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-backend"), Some("good"), "{r:?}");
    }
    let line = e.gw.wait_log(Duration::from_secs(5), |l| {
        l.contains("endpoint ejected") && l.contains("127.0.0.1:18289")
    });
    assert!(line.contains("consecutive local origin failures"), "{line}");
    assert_eq!(
        endpoints(&e, cluster),
        [
            ("127.0.0.1:18280".into(), "HEALTHY".into(), "OK".into()),
            ("127.0.0.1:18289".into(), "HEALTHY".into(), "FAILED".into()),
        ]
    );
    let label = format!("{{cluster=\"{cluster}\"}}");
    assert_eq!(
        metric(&e.gw, &format!("gateway_outlier_ejections_total{label}")),
        1
    );
    // Ejected: requests no longer try it. Something listens there now and counts
    // the connections it gets: none (ROUND_ROBIN would send it every other one).
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    NetNs::block_on(&e.rt, async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:18289")
            .await
            .unwrap();
        tokio::spawn(async move {
            while let Ok((_s, _)) = l.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
    });
    for i in 0..4 {
        let r = get(&e, "split.test", &format!("after-{i}"));
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-backend"), Some("good"), "{r:?}");
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 0);
}

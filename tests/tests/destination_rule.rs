//! DestinationRule through a real gateway and real HTTP backends that say which
//! endpoint answered (`x-backend`): subsets selecting labelled ServiceEntry endpoints
//! with a weighted split (and a TCP route to a subset), a missing subset (503 `NC`),
//! consistent hashing by header, cookie (generated when absent), source IP and query
//! parameter, and LEAST_REQUEST (the default) against ROUND_ROBIN with one slow endpoint. `proxy-config cluster` shows a
//! cluster per subset. Config: tests/fixtures/http/destination_rule.yaml.
mod http_common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gateway_tests::gateway::GatewayProc;
use gateway_tests::netns::{NetNs, privileged};
use http_body_util::{BodyExt, Empty};
use http_common::*;
use hyper::body::Bytes;

/// How long the slow endpoint takes to answer.
const SLOW: Duration = Duration::from_millis(150);

struct Env {
    ns: NetNs,
    rt: tokio::runtime::Runtime,
    gw: GatewayProc,
    _b: Backends,
}

fn env(tag: &str) -> Env {
    let ns = NetNs::new(tag);
    let b = start_backends(
        &ns,
        vec![
            App::Http(18180, "v1a"),
            App::Http(18181, "v1b"),
            App::Http(18182, "v2"),
        ],
    );
    let rt = ns.runtime();
    NetNs::block_on(&rt, slow_backend(SocketAddr::from(([127, 0, 0, 1], 18183))));
    let gw = start_gateway(&ns, &[&fixture("destination_rule.yaml")]);
    Env { ns, rt, gw, _b: b }
}

/// An HTTP/1.1 backend that waits [`SLOW`] before every answer (`x-backend: slow`).
async fn slow_backend(addr: SocketAddr) {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind slow");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    tokio::time::sleep(SLOW).await;
                    let mut r = hyper::Response::new(http_body_util::Full::new(
                        Bytes::from_static(b"slow\n"),
                    ));
                    r.headers_mut().insert("x-backend", "slow".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

/// One answer: which backend, its status, and a `Set-Cookie` if any.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    backend: String,
    set_cookie: Option<String>,
}

/// Sends `n` requests for `host` over `workers` keep-alive connections to the gateway
/// (from `src` if given); `headers(i)` and `path(i)` make request `i`. Bounded: the
/// whole run must end within 60 s.
fn load(
    e: &Env,
    host: &str,
    n: usize,
    workers: usize,
    src: Option<IpAddr>,
    req: impl Fn(usize) -> (String, Vec<(String, String)>) + Send + Sync + 'static,
) -> (Vec<Answer>, Duration) {
    let host = host.to_string();
    let req = Arc::new(req);
    NetNs::block_on(&e.rt, async move {
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let (next, req, host) = (next.clone(), req.clone(), host.clone());
            tasks.spawn(async move {
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                if let Some(ip) = src {
                    sock.bind(SocketAddr::new(ip, 0)).unwrap();
                }
                let s = sock
                    .connect(SocketAddr::from(([127, 0, 0, 1], 80)))
                    .await
                    .unwrap();
                let (mut send, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let (path, headers) = req(i);
                    let mut r = hyper::Request::get(path).header("host", &host);
                    for (k, v) in headers {
                        r = r.header(k, v);
                    }
                    let resp = send
                        .send_request(r.body(Empty::<Bytes>::new()).unwrap())
                        .await
                        .unwrap();
                    let h = resp.headers();
                    let a = Answer {
                        status: resp.status().as_u16(),
                        backend: h
                            .get("x-backend")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default(),
                        set_cookie: h.get("set-cookie").map(|v| v.to_str().unwrap().to_string()),
                    };
                    resp.into_body().collect().await.unwrap();
                    out.push((i, a));
                }
                out
            });
        }
        let all = tokio::time::timeout(Duration::from_secs(60), tasks.join_all())
            .await
            .expect("load did not finish within 60 s");
        let mut all: Vec<_> = all.into_iter().flatten().collect();
        all.sort_by_key(|(i, _)| *i);
        assert_eq!(all.len(), n);
        (all.into_iter().map(|(_, a)| a).collect(), started.elapsed())
    })
}

fn count(answers: &[Answer]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        assert_eq!(a.status, 200, "{a:?}");
        *m.entry(a.backend.clone()).or_default() += 1;
    }
    m
}

#[test]
fn subsets_route_only_to_their_labelled_endpoints() {
    if !privileged("subsets_route_only_to_their_labelled_endpoints") {
        return;
    }
    let e = env("dr-subsets");
    // 80/20 between v1 (two endpoints) and v2 (one), over 1 000 requests.
    let (a, _) = load(&e, "split.dr.test", 1000, 4, None, |i| {
        (format!("/s{i}"), vec![])
    });
    let m = count(&a);
    let v1 = m.get("v1a").copied().unwrap_or(0) + m.get("v1b").copied().unwrap_or(0);
    let v2 = m.get("v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, 1000, "{m:?}");
    assert!(
        (750..=850).contains(&v1),
        "v1 got {v1} of 1000, want 80 % ± 5: {m:?}"
    );
    // Both v1 endpoints serve the v1 subset (LEAST_REQUEST over them).
    assert!(m["v1a"] > 100 && m["v1b"] > 100, "{m:?}");
    // A route to subset v1 only never reaches v2.
    let (a, _) = load(&e, "v1.dr.test", 200, 2, None, |i| {
        (format!("/o{i}"), vec![])
    });
    let m = count(&a);
    assert_eq!(m.keys().collect::<Vec<_>>(), ["v1a", "v1b"], "{m:?}");

    // A TCP route to subset v2: every connection reaches the v2 endpoint.
    for i in 0..20 {
        let r = curl(
            &e.ns,
            &["http://127.0.0.1:31400/tcp", "-H", "Host: tcp.dr.test"],
        );
        assert_eq!(r.header("x-backend"), Some("v2"), "connection {i}: {r:?}");
    }

    // A subset no DestinationRule defines: the warning with its position at run, and
    // Envoy's answer for a cluster that does not exist.
    e.gw.wait_log(Duration::from_secs(5), |l| {
        l.contains("destination_rule.yaml:125:48: warning[GW2004]")
            && l.contains("has no subset \"v9\"")
    });
    let r = curl(
        &e.ns,
        &[
            "-H",
            "Host: nosub.dr.test",
            "-H",
            "x-request-id: nosub-1",
            "http://127.0.0.1/x",
        ],
    );
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.body, "", "{r:?}");
    let line = log_line(&e.gw, "nosub-1");
    assert!(line.contains("response_flags=NC "), "{line}");

    // proxy-config: a cluster per subset, named as Istio names them, with the rule.
    let out =
        e.ns.cmd(gateway_tests::gateway::gateway_bin().to_str().unwrap())
            .args([
                "proxy-config",
                "cluster",
                "--admin-addr",
                "127.0.0.1:15000",
                "--fqdn",
                "shop.default",
            ])
            .output()
            .expect("proxy-config");
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec![
                "shop.default.svc.cluster.local",
                "80",
                "-",
                "outbound",
                "EDS",
                "shop.default"
            ],
            vec![
                "shop.default.svc.cluster.local",
                "80",
                "v1",
                "outbound",
                "EDS",
                "shop.default"
            ],
            vec![
                "shop.default.svc.cluster.local",
                "80",
                "v2",
                "outbound",
                "EDS",
                "shop.default"
            ],
        ],
        "{text}"
    );
    let dump = e.gw.admin_json("/config_dump");
    let clusters = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|c| c["dynamic_active_clusters"].as_array())
        .expect("clusters in config_dump");
    let policy = |name: &str| {
        let c = clusters
            .iter()
            .find(|c| c["cluster"]["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"));
        c["cluster"]["lb_policy"]
            .as_str()
            .unwrap_or("ROUND_ROBIN")
            .to_string()
    };
    assert_eq!(
        policy("outbound|80|v1|shop.default.svc.cluster.local"),
        "LEAST_REQUEST"
    );
    assert_eq!(
        policy("outbound|80|v2|shop.default.svc.cluster.local"),
        "ROUND_ROBIN"
    );
    assert_eq!(policy("outbound|80||by-cookie.pool.test"), "MAGLEV");
    assert_eq!(policy("outbound|80||by-ip.pool.test"), "RING_HASH");
}

#[test]
fn consistent_hashing_pins_each_key_to_one_endpoint() {
    if !privileged("consistent_hashing_pins_each_key_to_one_endpoint") {
        return;
    }
    let e = env("dr-hash");
    // Header: 20 users, 50 requests each, interleaved over 4 connections.
    let (a, _) = load(&e, "header.dr.test", 1000, 4, None, |i| {
        (
            "/h".into(),
            vec![("x-user".into(), format!("user-{}", i % 20))],
        )
    });
    let mut by_user: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for (i, a) in a.iter().enumerate() {
        assert_eq!(a.status, 200, "{a:?}");
        by_user.entry(i % 20).or_default().insert(a.backend.clone());
    }
    assert!(
        by_user.values().all(|b| b.len() == 1),
        "a user moved: {by_user:?}"
    );
    let used: BTreeSet<_> = by_user.values().flatten().collect();
    assert!(used.len() >= 2, "20 users all on one endpoint: {by_user:?}");

    // Query parameter: the same.
    let (a, _) = load(&e, "query.dr.test", 300, 3, None, |i| {
        (format!("/q?x=1&user=u{}", i % 10), vec![])
    });
    let mut by_user: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for (i, a) in a.iter().enumerate() {
        by_user.entry(i % 10).or_default().insert(a.backend.clone());
    }
    assert!(by_user.values().all(|b| b.len() == 1), "{by_user:?}");

    // Cookie: absent -> the gateway sets it (Envoy's generated cookie); sent back, it
    // pins the client.
    let (a, _) = load(&e, "cookie.dr.test", 1, 1, None, |_| ("/c".into(), vec![]));
    let set = a[0].set_cookie.clone().expect("a generated cookie");
    let value = set
        .strip_prefix("sticky=\"")
        .and_then(|v| v.split_once('"'))
        .map(|(v, rest)| (v.to_string(), rest.to_string()))
        .unwrap_or_else(|| panic!("{set}"));
    assert_eq!(value.0.len(), 16, "{set}");
    assert_eq!(value.1, "; Max-Age=60; Path=/; HttpOnly", "{set}");
    let cookie = format!("sticky={}", value.0);
    let (a, _) = load(&e, "cookie.dr.test", 200, 2, None, move |_| {
        ("/c".into(), vec![("cookie".into(), cookie.clone())])
    });
    let m = count(&a);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        a.iter().all(|a| a.set_cookie.is_none()),
        "cookie set although sent"
    );
    // Different cookies spread.
    let (a, _) = load(&e, "cookie.dr.test", 60, 2, None, |i| {
        ("/c".into(), vec![("cookie".into(), format!("sticky=k{i}"))])
    });
    assert!(count(&a).len() >= 2);

    // Source IP: each of 8 client addresses pinned, over fresh connections.
    let mut used = BTreeSet::new();
    for k in 2..10u8 {
        let ip = IpAddr::from([127, 0, 0, k]);
        let (a, _) = load(&e, "ip.dr.test", 40, 4, Some(ip), |_| ("/i".into(), vec![]));
        let m = count(&a);
        assert_eq!(m.len(), 1, "{ip}: {m:?}");
        used.extend(m.into_keys());
    }
    assert!(used.len() >= 2, "every source on one endpoint: {used:?}");
}

#[test]
fn least_request_avoids_a_slow_endpoint_round_robin_does_not() {
    if !privileged("least_request_avoids_a_slow_endpoint_round_robin_does_not") {
        return;
    }
    let e = env("dr-lr");
    // 300 requests over 12 connections; one endpoint of three takes 150 ms per answer.
    let run = |host: &str| {
        let (a, took) = load(&e, host, 300, 12, None, |i| (format!("/l{i}"), vec![]));
        let m = count(&a);
        (m.get("slow").copied().unwrap_or(0), took, m)
    };
    let (rr_slow, rr_took, rr) = run("rr.dr.test");
    let (lr_slow, lr_took, lr) = run("lr.dr.test");
    eprintln!("ROUND_ROBIN: {rr:?} in {rr_took:?}; LEAST_REQUEST: {lr:?} in {lr_took:?}");
    // Round robin gives the slow endpoint its third whatever it costs.
    assert_eq!(rr_slow, 100, "{rr:?}");
    // Power of two choices sends it a request only when both picks are it or it is no
    // busier: far fewer, and the run ends sooner.
    assert!(
        lr_slow * 2 < rr_slow,
        "LEAST_REQUEST sent {lr_slow} to the slow endpoint: {lr:?}"
    );
    assert!(
        lr_took < rr_took,
        "LEAST_REQUEST {lr_took:?} vs ROUND_ROBIN {rr_took:?}"
    );
}

//! Endpoints that change, through a real gateway: DNS clusters re-resolved every
//! `--dns-refresh-rate` (the namespace's /etc/hosts is rewritten: `ip netns exec`,
//! which starts the gateway, bind-mounts /etc/netns/<ns>/hosts over /etc/hosts, and
//! glibc reads it on every lookup), for HTTP and TCP routes and `proxy-config endpoint`
//! (a request in flight to the old address finishes there); a name that stops
//! resolving keeps its last addresses and is counted; a name absent at start serves
//! once it resolves. And ServiceEntry endpoint weights under ROUND_ROBIN and ring hash.
//! Config: tests/fixtures/http/dns_refresh.yaml.
mod http_common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use gateway_tests::backends;
use gateway_tests::gateway::{GatewayProc, gateway_bin};
use gateway_tests::netns::{NetNs, privileged};
use http_common::*;

const SVC: &str = "outbound|18400||svc.example.test";

/// /etc/netns/<ns>/: the files `ip netns exec` mounts over /etc; removed on drop.
struct EtcNetns(PathBuf);

impl EtcNetns {
    fn new(ns: &NetNs) -> EtcNetns {
        let dir = PathBuf::from("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir).expect("mkdir /etc/netns/<ns>");
        // No DNS server in the namespace: a name missing from hosts fails at once
        // (connection refused on 127.0.0.1:53) instead of timing out.
        std::fs::write(
            dir.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .expect("write resolv.conf");
        EtcNetns(dir)
    }

    /// Rewrites the hosts file in place (the bind mount follows the inode, so the
    /// file is truncated and written, never replaced).
    fn hosts(&self, lines: &str) {
        std::fs::write(
            self.0.join("hosts"),
            format!("127.0.0.1 localhost\n{lines}"),
        )
        .expect("write hosts");
    }
}

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts HTTP backends (`x-backend: <name>`) on `addrs` in the namespace; they run
/// until the returned runtime is dropped.
fn http_backends(ns: &NetNs, apps: &[(&str, &'static str)]) -> tokio::runtime::Runtime {
    let rt = ns.runtime();
    for (addr, name) in apps {
        let addr: SocketAddr = addr.parse().unwrap();
        let b = NetNs::block_on(&rt, backends::http_app(addr, name)).expect("start backend");
        std::mem::forget(b);
    }
    rt
}

/// `x-backend` of one request for `host` on port 80, or `"<status>"` without one.
fn backend_of(ns: &NetNs, host: &str) -> String {
    let r = curl(ns, &["-H", &format!("host: {host}"), "http://127.0.0.1/"]);
    r.header("x-backend")
        .map(str::to_string)
        .unwrap_or_else(|| r.status.to_string())
}

/// `x-backend` of a request through the TCP route (port 31400).
fn tcp_backend(ns: &NetNs) -> String {
    let r = curl(ns, &["http://127.0.0.1:31400/"]);
    r.header("x-backend")
        .map(str::to_string)
        .unwrap_or_else(|| format!("exit {}", r.exit))
}

/// Polls `f` until it returns `want`, for at most `within`; panics with the log if not.
fn wait_for(gw: &GatewayProc, within: Duration, want: &str, f: impl Fn() -> String) {
    let deadline = Instant::now() + within;
    let mut got = f();
    while got != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        got = f();
    }
    assert_eq!(got, want, "gateway log:\n{}", gw.log());
}

/// The value of a metric line `name{cluster="<cluster>"}`, if present.
fn metric(gw: &GatewayProc, name: &str, cluster: &str) -> Option<u64> {
    let text = gw.admin_get("/stats/prometheus");
    let prefix = format!("{name}{{cluster=\"{cluster}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().expect("metric value"))
}

/// The ENDPOINT column of `gateway proxy-config endpoint --cluster <cluster>`.
fn shown_endpoints(ns: &NetNs, cluster: &str) -> Vec<String> {
    let out = ns
        .cmd(gateway_bin().to_str().unwrap())
        .args([
            "proxy-config",
            "endpoint",
            "--admin-addr",
            "127.0.0.1:15000",
        ])
        .args(["--cluster", cluster])
        .output()
        .expect("proxy-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn dns_clusters_follow_the_resolver() {
    if !privileged("dns_clusters_follow_the_resolver") {
        return;
    }
    let ns = NetNs::new("dns");
    let etc = EtcNetns::new(&ns);
    etc.hosts("127.0.0.2 svc.example.test\n");
    let _rt = http_backends(
        &ns,
        &[
            ("127.0.0.2:18400", "a"),
            ("127.0.0.3:18400", "b"),
            ("127.0.0.4:18400", "c"),
        ],
    );
    let gw = start_gateway_with(
        &ns,
        &[&fixture("dns_refresh.yaml")],
        &["--dns-refresh-rate", "1s"],
    );
    // late.example.test did not resolve at start: a warning, and 503 UH.
    gw.wait_log(Duration::from_secs(5), |l| {
        l.contains("GW2003") && l.contains("late.example.test")
    });
    assert_eq!(backend_of(&ns, "late.test"), "503");
    assert_eq!(backend_of(&ns, "svc.test"), "a");
    assert_eq!(tcp_backend(&ns), "a");
    assert_eq!(shown_endpoints(&ns, SVC), ["127.0.0.2:18400"]);

    // A slow request in flight to a while the name moves: it finishes there.
    let ns_name = ns.name.clone();
    let slow = std::thread::spawn(move || {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns_name,
                "curl",
                "-sS",
                "-i",
                "--max-time",
                "20",
            ])
            .args(["-H", "host: svc.test", "http://127.0.0.1/delay/2500"])
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    std::thread::sleep(Duration::from_millis(500));

    // The name moves: HTTP and TCP routes follow within a few refreshes.
    etc.hosts("127.0.0.3 svc.example.test\n");
    let moved = Instant::now();
    wait_for(&gw, Duration::from_secs(15), "b", || {
        backend_of(&ns, "svc.test")
    });
    eprintln!(
        "svc.test moved to b {:?} after the hosts file changed",
        moved.elapsed()
    );
    wait_for(&gw, Duration::from_secs(5), "b", || tcp_backend(&ns));
    assert_eq!(shown_endpoints(&ns, SVC), ["127.0.0.3:18400"]);
    for _ in 0..10 {
        assert_eq!(backend_of(&ns, "svc.test"), "b", "{}", gw.log());
    }
    let slow = slow.join().expect("slow request thread");
    assert!(slow.starts_with("HTTP/1.1 200"), "{slow}");
    assert!(slow.to_ascii_lowercase().contains("x-backend: a"), "{slow}");

    // The name stops resolving: counted, and the last list keeps serving. The name
    // absent at start appears and serves.
    let failures_before = metric(&gw, "gateway_dns_refresh_failures_total", SVC)
        .expect("gateway_dns_refresh_failures_total for the DNS cluster");
    assert_eq!(failures_before, 0);
    etc.hosts("127.0.0.4 late.example.test\n");
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&gw, "gateway_dns_refresh_failures_total", SVC) == Some(0)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        metric(&gw, "gateway_dns_refresh_failures_total", SVC).unwrap() >= 1,
        "no failure counted:\n{}",
        gw.log()
    );
    assert!(metric(&gw, "gateway_dns_refreshes_total", SVC).unwrap() >= 2);
    wait_for(&gw, Duration::from_secs(15), "c", || {
        backend_of(&ns, "late.test")
    });
    for _ in 0..10 {
        assert_eq!(backend_of(&ns, "svc.test"), "b", "{}", gw.log());
    }
    assert_eq!(tcp_backend(&ns), "b");
    assert_eq!(shown_endpoints(&ns, SVC), ["127.0.0.3:18400"]);
    assert!(
        gw.log()
            .contains("DNS refresh failed; keeping the last addresses")
    );
    drop(gw);
    drop(etc);
}

/// `n` requests over one curl (one keep-alive connection); how many each backend took.
fn spread(ns: &NetNs, host: &str, url: &str) -> std::collections::BTreeMap<String, usize> {
    let out = ns
        .cmd("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-", "--max-time", "60"])
        .args(["-H", &format!("host: {host}"), url])
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut m = std::collections::BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(v) = l.strip_prefix("x-backend: ") {
            *m.entry(v.trim().to_string()).or_default() += 1;
        }
    }
    m
}

#[test]
fn endpoint_weights() {
    if !privileged("endpoint_weights") {
        return;
    }
    let ns = NetNs::new("weights");
    let _rt = http_backends(
        &ns,
        &[("127.0.0.1:18401", "light"), ("127.0.0.1:18402", "heavy")],
    );
    let gw = start_gateway(&ns, &[&fixture("dns_refresh.yaml")]);

    // ROUND_ROBIN with weights 1 and 3: Envoy's EDF scheduler, 100 / 300 of 400.
    let m = spread(&ns, "rr.test", "http://127.0.0.1/[1-400]");
    eprintln!("ROUND_ROBIN, weights 1 and 3: {m:?}");
    assert_eq!(m.values().sum::<usize>(), 400, "{m:?}");
    let light = m.get("light").copied().unwrap_or(0);
    assert!((90..=110).contains(&light), "{m:?}");

    // Ring hash by query parameter: each endpoint owns ring entries in proportion to
    // its weight, so 400 users split about 1:3 (equal weights would give 1:1)...
    let m = spread(&ns, "hash.test", "http://127.0.0.1/?user=u[1-400]");
    eprintln!("RING_HASH, weights 1 and 3, 400 users: {m:?}");
    assert_eq!(m.values().sum::<usize>(), 400, "{m:?}");
    let light = m.get("light").copied().unwrap_or(0);
    assert!((75..=125).contains(&light), "{m:?}");
    // ...and one user stays on one endpoint.
    let m = spread(&ns, "hash.test", "http://127.0.0.1/?user=u7&n=[1-50]");
    assert_eq!(m.len(), 1, "{m:?}");

    // proxy-config shows the weights (Envoy's load_balancing_weight).
    let dump = gw.admin_get("/config_dump");
    assert!(
        dump.contains("\"load_balancing_weight\": 3")
            || dump.contains("\"load_balancing_weight\":3"),
        "{dump}"
    );
}

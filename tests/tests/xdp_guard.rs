//! The XDP ingress guard and AuthorizationPolicy end to end: a gateway namespace and a
//! client namespace joined by a veth pair, several client addresses (IPv4 and IPv6),
//! the real binary with `--xdp-iface veth-gw`, real curl, and raw SYNs counted against
//! the kernel's counters.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use gateway_tests::{
    backends,
    gateway::GatewayProc,
    netns::{NetNs, privileged},
    xdpbench::{accept_denied, prom_value, prom_value_opt, send_syns, xdp_drop_bench, xdp_dropped},
};

const GATEWAY: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [edge]
  http: [{route: [{destination: {host: 127.0.0.1, port: {number: 18080}}}]}]
"#;

const DENY: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-block, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {ipBlocks: [10.77.9.0/24, "fd00:77::9:0/112"]}}]
"#;

const ALLOW_API: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-only, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: ALLOW
  rules:
  - to: [{operation: {hosts: [api.example.com], paths: ["/api/*"], methods: [GET]}}]
"#;

const RULE: &str = "istio-system/deny-block#0";

struct Net {
    gw: NetNs,
    cl: NetNs,
    dir: PathBuf,
    _backend: std::thread::JoinHandle<()>,
}

/// Gateway namespace (10.77.0.1/16, fd00:77::1/64) with an HTTP backend on
/// 127.0.0.1:18080; client namespace with allowed (10.77.1.2, fd00:77::2) and denied
/// (10.77.9.2-3, fd00:77::9:2-3) addresses.
fn net(tag: &str) -> Net {
    let gw = NetNs::new(&format!("{tag}g"));
    let cl = NetNs::new(&format!("{tag}c"));
    gw.link(
        &cl,
        "10.77.0.1/16",
        &["10.77.1.2/16", "10.77.9.2/16", "10.77.9.3/16"],
    );
    gw.add_addr6("veth-gw", "fd00:77::1/64");
    for a in ["fd00:77::2/64", "fd00:77::9:2/64", "fd00:77::9:3/64"] {
        cl.add_addr6("veth-cl", a);
    }
    let dir = std::env::temp_dir().join(format!("{}-xdp", gw.name));
    std::fs::create_dir_all(&dir).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let ns_name = gw.name.clone();
    let backend = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns_name}")).unwrap();
        // SAFETY: setns on our own thread with a valid namespace fd.
        assert_eq!(
            unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) },
            0
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let b = backends::http_app("127.0.0.1:18080".parse().unwrap(), "app")
                .await
                .unwrap();
            tx.send(()).unwrap();
            // Lives until the namespace goes away with the test.
            tokio::time::sleep(Duration::from_secs(120)).await;
            drop(b);
        });
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("backend up");
    Net {
        gw,
        cl,
        dir,
        _backend: backend,
    }
}

impl Net {
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// curl from source address `src` (-w: status), 2 s connect timeout.
    fn curl(&self, src: &str, url: &str, host: &str) -> Output {
        self.cl
            .cmd("curl")
            .args([
                "-sS",
                "-g",
                "--connect-timeout",
                "2",
                "--max-time",
                "5",
                "--interface",
                src,
            ])
            .args(["-H", &format!("Host: {host}"), "-w", "\n%{http_code}", url])
            .output()
            .unwrap()
    }
}

fn status(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_string()
}

fn start(n: &Net, configs: &[&Path], xdp: bool) -> GatewayProc {
    let mut args = vec!["--bind", "::"];
    if xdp {
        args.extend(["--xdp-iface", "veth-gw"]);
    }
    GatewayProc::start(&n.gw, configs, &args)
}

const V4: &str = "http://10.77.0.1:80/";
const V6: &str = "http://[fd00:77::1]:80/";

/// Must-show 1, 3 and 4: a DENY on ipBlocks drops the block's SYNs in XDP (counted
/// exactly), everyone else gets full service, over IPv4 and IPv6; without the policy
/// the same clients get in.
#[test]
fn xdp_deny_ip_blocks_drops_syns_and_counts_them() {
    if !privileged("xdp_deny_ip_blocks_drops_syns_and_counts_them") {
        return;
    }
    let n = net("xdeny");
    let gw_cfg = n.write("gw.yaml", GATEWAY);
    let deny = n.write("deny.yaml", DENY);
    let gw = start(&n, &[&gw_cfg, &deny], true);
    let log = gw.log();
    assert!(log.contains("dropped by XDP on veth-gw"), "{log}");
    let view = gw.admin_json("/xdp");
    assert_eq!(view["mode"], "xdp", "{view:#}");

    // Outside the block: full service, v4 and v6.
    for (src, url) in [("10.77.1.2", V4), ("fd00:77::2", V6)] {
        let o = n.curl(src, url, "app.example.com");
        assert_eq!(status(&o), "200", "{src}: {o:?}");
    }
    // Inside: the SYN never reaches a socket, so curl times out connecting.
    let mut attempts = 0;
    for (src, url) in [("10.77.9.2", V4), ("fd00:77::9:2", V6)] {
        let o = n.curl(src, url, "app.example.com");
        attempts += 1;
        assert_eq!(o.status.code(), Some(28), "{src} should time out: {o:?}");
    }
    let by_curl = xdp_dropped(&gw, RULE, 80);
    // curl's SYN plus the kernel's retransmits within 2 s (at 1 s; a second at 3 s is
    // past the timeout): 1..=3 per attempt.
    assert!(
        (attempts..=attempts * 3).contains(&by_curl),
        "dropped {by_curl} for {attempts} connects"
    );

    // Exactly counted: 300 raw SYNs from each family's second denied address.
    let mac = n.gw.mac("veth-gw");
    let v4: IpAddr = "10.77.9.3".parse().unwrap();
    let v6: IpAddr = "fd00:77::9:3".parse().unwrap();
    let s4 = send_syns(
        &n.cl,
        "veth-cl",
        mac,
        &[v4],
        "10.77.0.1".parse().unwrap(),
        80,
        300,
        Duration::from_secs(10),
    );
    let s6 = send_syns(
        &n.cl,
        "veth-cl",
        mac,
        &[v6],
        "fd00:77::1".parse().unwrap(),
        80,
        300,
        Duration::from_secs(10),
    );
    assert_eq!((s4, s6), (300, 300));
    // The frames cross the veth pair asynchronously: wait for the counter to get there.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut dropped = xdp_dropped(&gw, RULE, 80);
    while dropped - by_curl < 600 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        dropped = xdp_dropped(&gw, RULE, 80);
    }
    assert_eq!(dropped - by_curl, 600, "XDP drop counter vs SYNs sent");
    // ...and to a port the gateway doesn't serve: passed, not counted. Passed means the
    // gateway namespace's TCP answers each with a RST (nothing listens on 2222): once
    // all 50 RSTs are counted, every frame has been through XDP, and only then is "not
    // counted" worth checking.
    let rsts_before = tcp_out_rsts(&n.gw);
    let s2222 = send_syns(
        &n.cl,
        "veth-cl",
        mac,
        &[v4],
        "10.77.0.1".parse().unwrap(),
        2222,
        50,
        Duration::from_secs(5),
    );
    assert_eq!(s2222, 50);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tcp_out_rsts(&n.gw) - rsts_before < 50 {
        assert!(
            Instant::now() < deadline,
            "SYNs to :2222 not passed to the stack: {} RSTs",
            tcp_out_rsts(&n.gw) - rsts_before
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let prom = gw.admin_get("/stats/prometheus");
    assert_eq!(
        xdp_dropped(&gw, RULE, 80),
        dropped,
        "SYNs to :2222 counted as drops on :80"
    );
    assert!(
        prom_value(
            &prom,
            "gateway_xdp_port_packets_total{port=\"80\",action=\"drop\"}"
        ) == dropped,
        "{prom}"
    );
    assert!(
        prom_value(
            &prom,
            "gateway_xdp_packets_total{rule=\"none\",port=\"80\",action=\"pass\"}"
        ) > 0
    );
    assert!(
        prom_value(
            &prom,
            &format!("gateway_xdp_bytes_total{{rule=\"{RULE}\",port=\"80\",action=\"drop\"}}")
        ) >= dropped * 54
    );
    assert!(
        !prom.contains("port=\"2222\""),
        "unserved port counted:\n{prom}"
    );
    // The gateway never saw them: nothing refused at accept.
    assert_eq!(accept_denied(&gw, 80), 0);
    drop(gw);

    // Must-show 4: without the policy, the same clients get in.
    let gw = start(&n, &[&gw_cfg], true);
    for (src, url) in [("10.77.9.2", V4), ("fd00:77::9:2", V6)] {
        let o = n.curl(src, url, "app.example.com");
        assert_eq!(status(&o), "200", "{src} after removing the policy: {o:?}");
    }
    // The rule is gone with its policy (no series: it can't drop), and the guard dropped
    // nothing on :80.
    let prom = gw.admin_get("/stats/prometheus");
    let series =
        format!("gateway_xdp_packets_total{{rule=\"{RULE}\",port=\"80\",action=\"drop\"}}");
    assert_eq!(prom_value_opt(&prom, &series), None, "{prom}");
    assert_eq!(
        prom_value(
            &prom,
            "gateway_xdp_port_packets_total{port=\"80\",action=\"drop\"}"
        ),
        0,
        "{prom}"
    );
}

/// `Tcp: OutRsts` of the namespace's TCP stack (/proc/net/snmp there).
fn tcp_out_rsts(ns: &NetNs) -> u64 {
    let out = ns.cmd("cat").arg("/proc/net/snmp").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap_or(""), tcp.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(k, _)| *k == "OutRsts")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no Tcp OutRsts in /proc/net/snmp of {}:\n{text}", ns.name))
}

/// Without XDP the same rule is enforced at accept: the meaning doesn't change.
#[test]
fn without_xdp_the_same_rule_is_enforced_at_accept() {
    if !privileged("without_xdp_the_same_rule_is_enforced_at_accept") {
        return;
    }
    let n = net("xuser");
    let gw = start(
        &n,
        &[&n.write("gw.yaml", GATEWAY), &n.write("deny.yaml", DENY)],
        false,
    );
    assert!(
        gw.log()
            .contains("no XDP guard: address rules enforced in userspace at accept"),
        "{}",
        gw.log()
    );
    for (src, url) in [("10.77.1.2", V4), ("fd00:77::2", V6)] {
        assert_eq!(status(&n.curl(src, url, "a")), "200");
    }
    for (src, url) in [("10.77.9.2", V4), ("fd00:77::9:2", V6)] {
        let o = n.curl(src, url, "a");
        assert_ne!(status(&o), "200", "{src}: {o:?}");
        assert!(
            matches!(o.status.code(), Some(52 | 56)),
            "{src}: closed at accept expected: {o:?}"
        );
    }
    assert_eq!(accept_denied(&gw, 80), 2);

    // An XDP interface that doesn't exist: logged, and userspace takes over.
    drop(gw);
    let gw = GatewayProc::start(
        &n.gw,
        &[&n.dir.join("gw.yaml"), &n.dir.join("deny.yaml")],
        &["--xdp-iface", "nonexistent0"],
    );
    assert!(
        gw.log().contains("XDP guard not attached to nonexistent0"),
        "{}",
        gw.log()
    );
    assert_ne!(status(&n.curl("10.77.9.2", V4, "a")), "200");
    assert_eq!(status(&n.curl("10.77.1.2", V4, "a")), "200");
}

/// Must-show 2: an ALLOW policy on host + path: allowed requests 200, others 403
/// `RBAC: access denied` with flag RBAC; XDP passes them all to userspace.
#[test]
fn allow_host_and_path_answers_403_rbac() {
    if !privileged("allow_host_and_path_answers_403_rbac") {
        return;
    }
    let n = net("xallow");
    let gw = start(
        &n,
        &[
            &n.write("gw.yaml", GATEWAY),
            &n.write("allow.yaml", ALLOW_API),
        ],
        true,
    );
    let ok = n.curl("10.77.1.2", "http://10.77.0.1/api/items", "api.example.com");
    assert_eq!(status(&ok), "200", "{ok:?}");
    let ok6 = n.curl(
        "fd00:77::9:2",
        "http://[fd00:77::1]/api/x",
        "api.example.com:80",
    );
    assert_eq!(status(&ok6), "200", "{ok6:?}");
    for (url, host) in [
        ("http://10.77.0.1/admin", "api.example.com"),
        ("http://10.77.0.1/api/items", "www.example.com"),
    ] {
        let o = n.curl("10.77.1.2", url, host);
        let body = String::from_utf8_lossy(&o.stdout);
        assert_eq!(status(&o), "403", "{url} {host}: {o:?}");
        assert!(body.starts_with("RBAC: access denied"), "{body}");
    }
    // Each line is written as its response ends, which can be just after curl is done.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut log = gw.log();
    while log
        .lines()
        .filter(|l| l.contains("403") && l.contains("RBAC"))
        .count()
        < 2
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
        log = gw.log();
    }
    let denied: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("403") && l.contains("RBAC"))
        .collect();
    assert_eq!(
        denied.len(),
        2,
        "access log lines with 403 and RBAC:\n{log}"
    );
    // XDP can't decide host/path: every source on port 80 is passed to userspace.
    let view = gw.admin_json("/xdp");
    let entries = view["entries"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .filter(|e| e["port"] == 80)
            .all(|e| e["action"] == "pass" && e["rule"] == "userspace"),
        "{view:#}"
    );
}

/// Must-show 5, small: the bench function runs and XDP drops what it is sent.
#[test]
fn xdp_drop_bench_runs() {
    if !privileged("xdp_drop_bench_runs") {
        return;
    }
    let r = xdp_drop_bench(Duration::from_millis(500), 20_000);
    eprintln!("xdp_drop_bench: {r:?}");
    assert!(r.xdp_sent > 0 && r.xdp_dropped == r.xdp_sent, "{r:?}");
    assert!(r.userspace_refused > 0, "{r:?}");
}

/// `ip -d link show dev veth-gw` in the gateway's namespace.
fn link_details(n: &Net) -> String {
    let o =
        n.gw.cmd("ip")
            .args(["-d", "link", "show", "dev", "veth-gw"])
            .output()
            .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// No state left behind by a crash (issue 10): the guard attaches through a BPF link
/// owned by the gateway process (aya's `Xdp::attach` uses `BPF_LINK_CREATE` on kernels
/// from 5.9 on: `link_create` in kernel/bpf/syscall.c, `bpf_xdp_link_attach` in
/// net/core/dev.c), so a SIGKILLed gateway's program is detached by the kernel when
/// its last fd closes, and the next gateway attaches to the same interface at once.
#[test]
fn a_killed_gateway_leaves_no_xdp_program_behind() {
    if !privileged("a_killed_gateway_leaves_no_xdp_program_behind") {
        return;
    }
    let n = net("xkill");
    let gw_cfg = n.write("gw.yaml", GATEWAY);
    let deny = n.write("deny.yaml", DENY);
    let gw = start(&n, &[&gw_cfg, &deny], true);
    let attached = link_details(&n);
    assert!(attached.contains("prog/xdp"), "not attached: {attached}");

    // SAFETY: kill(2) on the gateway's own pid, a child this test spawned and has not
    // reaped (so the pid cannot have been reused).
    assert_eq!(
        unsafe { libc::kill(gw.pid() as libc::pid_t, libc::SIGKILL) },
        0
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = link_details(&n);
        if !now.contains("prog/xdp") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "XDP program still attached 10 s after the gateway was killed: {now}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(gw);

    // A new gateway attaches and enforces at once.
    let gw = start(&n, &[&gw_cfg, &deny], true);
    let log = gw.log();
    assert!(log.contains("dropped by XDP on veth-gw"), "{log}");
    assert!(link_details(&n).contains("prog/xdp"));
    let o = n.curl("10.77.1.2", V4, "app.example.com");
    assert_eq!(status(&o), "200", "{o:?}");
    let o = n.curl("10.77.9.2", V4, "app.example.com");
    assert_eq!(o.status.code(), Some(28), "denied source got in: {o:?}");
}

/// The XDP program attached to `iface` in `ns` (its id), None when none is.
fn xdp_prog_id(ns: &NetNs, iface: &str) -> Option<String> {
    let out = ns
        .cmd("ip")
        .args(["-d", "link", "show", iface])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let after = text.split("prog/xdp").nth(1)?;
    let mut words = after.split_whitespace();
    while let Some(w) = words.next() {
        if w == "id" {
            return words.next().map(str::to_string);
        }
    }
    None
}

/// Issue 11, must-show 6: a DENY added by a reload (a new file in the config directory)
/// drops the next SYN from that source in XDP; removed by a reload, the source connects
/// again; the same program stays attached throughout (its maps rewritten in place).
#[test]
fn a_reload_adds_and_removes_a_deny_with_the_guard_attached() {
    if !privileged("a_reload_adds_and_removes_a_deny_with_the_guard_attached") {
        return;
    }
    let n = net("xreload");
    let dir = n.dir.join("config");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("gw.yaml"), GATEWAY).unwrap();
    let gw = start(&n, &[&dir], true);
    let prog = xdp_prog_id(&n.gw, "veth-gw").expect("the guard is attached");
    let generation = |want: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let prom = gw.admin_get("/stats/prometheus");
            if prom_value_opt(&prom, "gateway_config_generation") == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "generation {want} never served:\n{}",
                gw.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    };
    let o = n.curl("10.77.9.2", V4, "app.example.com");
    assert_eq!(status(&o), "200", "before the policy: {o:?}");

    // Added by reload: the next connect from the block is dropped in XDP.
    let tmp = n.dir.join("deny.tmp");
    std::fs::write(&tmp, DENY).unwrap();
    std::fs::rename(&tmp, dir.join("deny.yaml")).unwrap();
    generation(2);
    let before = prom_value_opt(
        &gw.admin_get("/stats/prometheus"),
        &format!("gateway_xdp_packets_total{{rule=\"{RULE}\",port=\"80\",action=\"drop\"}}"),
    )
    .unwrap_or(0);
    let o = n.curl("10.77.9.2", V4, "app.example.com");
    assert_eq!(
        o.status.code(),
        Some(28),
        "denied source should time out: {o:?}"
    );
    assert!(
        xdp_dropped(&gw, RULE, 80) > before,
        "the SYNs were not dropped by XDP"
    );
    let o = n.curl("10.77.1.2", V4, "app.example.com");
    assert_eq!(status(&o), "200", "an allowed source: {o:?}");
    assert_eq!(accept_denied(&gw, 80), 0, "refused at accept, not in XDP");
    assert_eq!(xdp_prog_id(&n.gw, "veth-gw").as_ref(), Some(&prog));

    // Removed by reload: the source connects again.
    std::fs::remove_file(dir.join("deny.yaml")).unwrap();
    generation(3);
    let o = n.curl("10.77.9.2", V4, "app.example.com");
    assert_eq!(status(&o), "200", "after removing the policy: {o:?}");
    assert_eq!(xdp_prog_id(&n.gw, "veth-gw").as_ref(), Some(&prog));
    let view = gw.admin_json("/xdp");
    assert_eq!(view["mode"], "xdp", "{view:#}");
    let log = gw.wait_log(Duration::from_secs(5), |l| {
        l.contains("XDP guard maps rewritten in place")
    });
    assert!(log.contains("XDP guard maps rewritten in place"), "{log}");
}

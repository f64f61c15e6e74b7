//! Traffic for the XDP guard's tests and its benchmark row: a bounded TCP SYN generator
//! (hand-built frames on an AF_PACKET socket, so any source address of the client
//! namespace can be used and exactly N packets leave), a bounded connect flood, and
//! [`xdp_drop_bench`]: SYNs dropped per second by XDP vs. connections refused per
//! second at accept in userspace, for the same DENY rule.
//!
//! Everything runs inside namespaces created here (10.78.0.0/16 on a veth pair); every
//! loop is bounded in count and in time.
use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use crate::{gateway::GatewayProc, netns::NetNs};

// === SYN frames ===

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying a TCP SYN from `src:sport` to `dst:dport`, checksums
/// valid (so a stack that receives it answers it).
pub fn syn_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&(0x1000_0000u32 ^ sport as u32).to_be_bytes());
    tcp[12] = 5 << 4; // data offset: 5 words
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut f = Vec::with_capacity(80);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&40u16.to_be_bytes());
            ip[6] = 0x40; // DF
            ip[8] = 64;
            ip[9] = 6;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let c = csum_fold(csum_add(0, &ip));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let mut sum = csum_add(0, &s.octets());
            sum = csum_add(sum, &d.octets());
            sum += 6 + 20;
            let c = csum_fold(csum_add(sum, &tcp));
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&20u16.to_be_bytes());
            ip[6] = 6;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            let mut sum = csum_add(0, &s.octets());
            sum = csum_add(sum, &d.octets());
            sum += 20 + 6;
            let c = csum_fold(csum_add(sum, &tcp));
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        _ => panic!("syn_frame: {src} and {dst} are of different families"),
    }
    f.extend_from_slice(&tcp);
    f
}

/// Sends up to `count` SYNs from `srcs` (round-robin, source ports cycling from 20000)
/// to `dst:dport` out of `iface` of `ns`, for at most `max_time`. Returns how many
/// frames the kernel took.
#[allow(clippy::too_many_arguments)]
pub fn send_syns(
    ns: &NetNs,
    iface: &str,
    dst_mac: [u8; 6],
    srcs: &[IpAddr],
    dst: IpAddr,
    dport: u16,
    count: u64,
    max_time: Duration,
) -> u64 {
    let src_mac = ns.mac(iface);
    let iface = iface.to_string();
    let srcs = srcs.to_vec();
    ns.run(move || {
        // Precomputed frames: 1024 source ports per address, reused in a cycle.
        let frames: Vec<Vec<u8>> = (0..1024u16)
            .flat_map(|i| {
                srcs.iter()
                    .map(move |s| syn_frame(dst_mac, src_mac, *s, dst, 20000 + i, dport))
            })
            .collect();
        let cname = std::ffi::CString::new(iface.clone()).expect("iface name");
        // SAFETY: plain libc calls with valid arguments; the fd is closed below.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert!(ifindex != 0, "no interface {iface}");
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: an all-zero sockaddr_ll is valid; the fields we need are set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&dst_mac);
        let deadline = Instant::now() + max_time;
        let mut sent = 0u64;
        while sent < count && (!sent.is_multiple_of(256) || Instant::now() < deadline) {
            let f = &frames[(sent % frames.len() as u64) as usize];
            // SAFETY: f and sll outlive the call; lengths are theirs.
            let rc = unsafe {
                libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOBUFS)
                    || e.kind() == std::io::ErrorKind::WouldBlock
                {
                    std::thread::yield_now();
                    continue;
                }
                panic!("sendto: {e}");
            }
            sent += 1;
        }
        // SAFETY: our own fd.
        unsafe { libc::close(fd) };
        sent
    })
}

/// Opens TCP connections from `srcs` (round-robin) to `dst` for at most `max_time` or
/// `count` attempts, closing each at once with a reset (no TIME_WAIT to run out of
/// ports). Returns the attempts whose handshake completed.
pub fn connect_flood(
    ns: &NetNs,
    srcs: &[IpAddr],
    dst: SocketAddr,
    count: u64,
    max_time: Duration,
) -> u64 {
    let srcs = srcs.to_vec();
    ns.run(move || {
        let deadline = Instant::now() + max_time;
        let mut ok = 0u64;
        let mut i = 0u64;
        while i < count && Instant::now() < deadline {
            let src = srcs[(i % srcs.len() as u64) as usize];
            i += 1;
            let s = socket2::Socket::new(
                socket2::Domain::for_address(dst),
                socket2::Type::STREAM,
                None,
            )
            .expect("socket");
            let _ = s.bind(&SocketAddr::new(src, 0).into());
            if s.connect_timeout(&dst.into(), Duration::from_millis(500))
                .is_ok()
            {
                ok += 1;
            }
            let _ = s.set_linger(Some(Duration::ZERO));
        }
        ok
    })
}

// === reading the gateway's counters ===

/// A counter from `/stats/prometheus` by exact series (`name{labels}`). A series that is
/// not there panics, naming it: read as 0 it would make every `== 0` check pass.
pub fn prom_value(prom: &str, series: &str) -> u64 {
    prom_value_opt(prom, series)
        .unwrap_or_else(|| panic!("series {series} missing from /stats/prometheus:\n{prom}"))
}

/// A counter by exact series, None when the gateway doesn't export it.
pub fn prom_value_opt(prom: &str, series: &str) -> Option<u64> {
    prom.lines()
        .find_map(|l| {
            // The whole series: `name{labels}` then the value, not a longer name.
            l.strip_prefix(series)
                .filter(|rest| rest.starts_with(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map(|v| v as u64)
}

/// XDP packets dropped for `rule` on `port`.
pub fn xdp_dropped(gw: &GatewayProc, rule: &str, port: u16) -> u64 {
    prom_value(
        &gw.admin_get("/stats/prometheus"),
        &format!("gateway_xdp_packets_total{{rule=\"{rule}\",port=\"{port}\",action=\"drop\"}}"),
    )
}

/// Connections refused at accept by userspace on `port`.
pub fn accept_denied(gw: &GatewayProc, port: u16) -> u64 {
    prom_value(
        &gw.admin_get("/stats/prometheus"),
        &format!("gateway_authz_denied_total{{stage=\"accept\",port=\"{port}\"}}"),
    )
}

// === the benchmark ===

#[derive(Debug, Clone)]
pub struct XdpBenchResult {
    /// SYNs dropped by XDP per second (the kernel's own drop counter / elapsed).
    pub xdp_pps: f64,
    /// Connections refused at accept per second in userspace (one SYN each, plus the
    /// handshake the kernel completes before accept), same rule, same namespaces.
    pub userspace_pps: f64,
    pub xdp_dropped: u64,
    pub xdp_sent: u64,
    pub userspace_refused: u64,
    /// "driver" or "skb" (from the gateway's /xdp view).
    pub xdp_mode: String,
}

const BENCH_POLICY: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bench, namespace: istio-system}
spec:
  servers:
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bench, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [bench]
  tcp: [{route: [{destination: {host: 127.0.0.1, port: {number: 9}}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-bench, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {ipBlocks: [10.78.9.0/24]}}]}]
"#;

/// Runs both halves for `duration` each (at most `max_packets` SYNs / connection
/// attempts each) and returns the rates. Needs root and the gateway binary
/// (`$GATEWAY_BIN`, else next to the calling test binary). Creates and deletes its
/// own namespaces; no traffic leaves them.
pub fn xdp_drop_bench(duration: Duration, max_packets: u64) -> XdpBenchResult {
    let gw_ns = NetNs::new("xbgw");
    let cl_ns = NetNs::new("xbcl");
    gw_ns.link(
        &cl_ns,
        "10.78.0.1/16",
        &[
            "10.78.9.2/16",
            "10.78.9.3/16",
            "10.78.9.4/16",
            "10.78.9.5/16",
        ],
    );
    let dir = std::env::temp_dir().join(format!("{}-xdpbench", gw_ns.name));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let cfg = dir.join("bench.yaml");
    std::fs::File::create(&cfg)
        .and_then(|mut f| f.write_all(BENCH_POLICY.as_bytes()))
        .expect("write bench config");
    let srcs: Vec<IpAddr> = (2..=5).map(|i| IpAddr::from([10, 78, 9, i])).collect();
    let dst = IpAddr::from([10, 78, 0, 1]);
    let rule = "istio-system/deny-bench#0";

    // XDP: the kernel drops the SYNs; the drop counter says how many and how fast.
    let (xdp_dropped, xdp_sent, elapsed, xdp_mode) = {
        let gw = GatewayProc::start(&gw_ns, &[cfg.as_path()], &["--xdp-iface", "veth-gw"]);
        let mode = gw.admin_json("/xdp")["interfaces"][0]["mode"]
            .as_str()
            .unwrap_or("none")
            .to_string();
        let mac = gw_ns.mac("veth-gw");
        let before = xdp_dropped(&gw, rule, 31400);
        let t = Instant::now();
        let sent = send_syns(
            &cl_ns,
            "veth-cl",
            mac,
            &srcs,
            dst,
            31400,
            max_packets,
            duration,
        );
        let elapsed = t.elapsed();
        // The frames cross the veth pair asynchronously: wait (a bounded time) until the
        // drop counter has every frame sent, rather than read it after a fixed sleep.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut dropped = xdp_dropped(&gw, rule, 31400) - before;
        while dropped < sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            dropped = xdp_dropped(&gw, rule, 31400) - before;
        }
        (dropped, sent, elapsed, mode)
    };
    // Userspace: the same rule checked at accept; every attempt is a full handshake.
    let (userspace_refused, u_elapsed) = {
        let gw = GatewayProc::start(&gw_ns, &[cfg.as_path()], &[]);
        let before = accept_denied(&gw, 31400);
        let t = Instant::now();
        connect_flood(
            &cl_ns,
            &srcs,
            SocketAddr::new(dst, 31400),
            max_packets,
            duration,
        );
        let elapsed = t.elapsed();
        std::thread::sleep(Duration::from_millis(200));
        (accept_denied(&gw, 31400) - before, elapsed)
    };
    let _ = std::fs::remove_dir_all(&dir);
    XdpBenchResult {
        xdp_pps: xdp_dropped as f64 / elapsed.as_secs_f64(),
        userspace_pps: userspace_refused as f64 / u_elapsed.as_secs_f64(),
        xdp_dropped,
        xdp_sent,
        userspace_refused,
        xdp_mode,
    }
}

/// For callers that want the binary path spelled out (the xtask bench).
pub fn xdp_drop_bench_with(
    gateway_bin: &Path,
    duration: Duration,
    max_packets: u64,
) -> XdpBenchResult {
    // SAFETY: set before any thread of ours reads it; the bench is single-threaded here.
    unsafe { std::env::set_var("GATEWAY_BIN", gateway_bin) };
    xdp_drop_bench(duration, max_packets)
}

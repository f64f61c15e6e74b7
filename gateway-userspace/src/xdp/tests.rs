use std::net::IpAddr;

use gateway_common::{XDP_ACT_DROP, XDP_ACT_PASS};

use super::*;
use crate::{
    authz::Enforcer,
    config::{GatewayIdentity, load_str},
};

const GW: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{route: [{destination: {host: 127.0.0.1, port: {number: 9000}}}]}]
  tcp: [{match: [{port: 31400}], route: [{destination: {host: 127.0.0.1, port: {number: 9001}}}]}]
"#;

fn compiled(yaml: &str) -> Compiled {
    let snap = load_str(
        "p.yaml",
        &format!("{GW}---\n{yaml}"),
        &GatewayIdentity::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Enforcer::new(&snap).compiled
}

/// (action, rule name) XDP gives a packet, None when it is not judged at all.
fn verdict(c: &Compiled, src: &str, port: u16) -> Option<(u32, String)> {
    let v = c.lookup(src.parse::<IpAddr>().unwrap(), port)?;
    Some((v.action, c.slots[v.rule as usize].0.clone()))
}

#[test]
fn no_policy_passes_everything_on_served_ports_only() {
    let c = compiled("");
    assert_eq!(
        verdict(&c, "10.0.0.1", 80),
        Some((XDP_ACT_PASS, RULE_NONE.into()))
    );
    assert_eq!(verdict(&c, "10.0.0.1", 22), None);
    assert!(c.overflow.is_none());
}

#[test]
fn deny_blocks_nested_prefixes_exactly() {
    let c = compiled(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {ipBlocks: [10.9.0.0/16, "fd00:9::/32"], notIpBlocks: [10.9.5.0/24]}}]
  - from: [{source: {ipBlocks: [192.0.2.0/24]}}]
    to: [{operation: {ports: ["22"]}}]
"#,
    );
    let drop = |r: &str| Some((XDP_ACT_DROP, r.to_string()));
    assert_eq!(verdict(&c, "10.9.1.1", 80), drop("istio-system/deny#0"));
    assert_eq!(verdict(&c, "10.9.1.1", 31400), drop("istio-system/deny#0"));
    assert_eq!(
        verdict(&c, "10.9.5.1", 80),
        Some((XDP_ACT_PASS, RULE_NONE.into()))
    );
    assert_eq!(
        verdict(&c, "10.8.0.1", 80),
        Some((XDP_ACT_PASS, RULE_NONE.into()))
    );
    assert_eq!(verdict(&c, "fd00:9::1", 80), drop("istio-system/deny#0"));
    assert_eq!(
        verdict(&c, "fd00:8::1", 80),
        Some((XDP_ACT_PASS, RULE_NONE.into()))
    );
    // Port 22 is not served, but a rule names it: judged there, for that rule only.
    assert_eq!(verdict(&c, "192.0.2.9", 22), drop("istio-system/deny#1"));
    assert_eq!(
        verdict(&c, "10.9.1.1", 22),
        Some((XDP_ACT_PASS, RULE_NONE.into()))
    );
    assert_eq!(
        verdict(&c, "192.0.2.9", 80),
        Some((XDP_ACT_PASS, RULE_NONE.into()))
    );
    assert_eq!(verdict(&c, "192.0.2.9", 23), None);
}

#[test]
fn allow_with_l7_fields_passes_to_userspace_and_drops_the_rest() {
    let c = compiled(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: istio-system}
spec:
  rules:
  - from: [{source: {ipBlocks: [10.1.0.0/16]}}]
    to: [{operation: {paths: ["/api/*"]}}]
  - from: [{source: {ipBlocks: [10.2.0.0/16]}}]
"#,
    );
    // 10.1/16 depends on the path: userspace decides.
    assert_eq!(
        verdict(&c, "10.1.1.1", 80),
        Some((XDP_ACT_PASS, RULE_USERSPACE.into()))
    );
    // ...but on the TCP port Istio's TCP rule settles it: no ALLOW rule can match.
    assert_eq!(
        verdict(&c, "10.1.1.1", 31400),
        Some((XDP_ACT_DROP, RULE_DEFAULT_DENY.into()))
    );
    assert_eq!(
        verdict(&c, "10.2.1.1", 31400),
        Some((XDP_ACT_PASS, "istio-system/api#1".into()))
    );
    // Anyone else matches no ALLOW rule on any port.
    assert_eq!(
        verdict(&c, "10.3.1.1", 80),
        Some((XDP_ACT_DROP, RULE_DEFAULT_DENY.into()))
    );
    assert_eq!(
        verdict(&c, "fd00::1", 80),
        Some((XDP_ACT_DROP, RULE_DEFAULT_DENY.into()))
    );
}

#[test]
fn every_compiled_verdict_agrees_with_the_evaluator() {
    // The same policy judged per address by the evaluator and by the compiled tables.
    let yaml = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: istio-system}
spec:
  rules:
  - from: [{source: {ipBlocks: [10.0.0.0/8], notRemoteIpBlocks: [10.1.0.0/16]}}]
  - when: [{key: remote.ip, values: [10.1.2.0/24]}, {key: destination.port, notValues: ["31400"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: d, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {ipBlocks: [10.1.2.128/25]}}]}]
"#;
    let snap = load_str(
        "p.yaml",
        &format!("{GW}---\n{yaml}"),
        &GatewayIdentity::default(),
    )
    .unwrap();
    let e = Enforcer::new(&snap);
    for src in [
        "10.0.0.1",
        "10.1.0.1",
        "10.1.2.1",
        "10.1.2.200",
        "10.200.0.1",
        "11.0.0.1",
        "fd00::1",
    ] {
        for port in [80u16, 31400] {
            let peer = std::net::SocketAddr::new(src.parse().unwrap(), 1);
            let userspace = e.allow_accept(peer, port);
            let (action, _) = verdict(&e.compiled, src, port).unwrap();
            assert_eq!(userspace, action == XDP_ACT_PASS, "{src} -> {port}");
        }
    }
}

/// An Ethernet frame carrying a TCP SYN from `src` to `port` (IPv4 or IPv6 by `src`).
fn syn(src: &str, port: u16) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    let tcp = {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&port.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = 0x02; // SYN
        t
    };
    match src.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
            f.extend_from_slice(&a.octets());
            f.extend_from_slice(&[10, 77, 0, 1]);
        }
        IpAddr::V6(a) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, 6, 64]);
            f.extend_from_slice(&a.octets());
            f.extend_from_slice(&"fd00:77::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        }
    }
    f.extend_from_slice(&tcp);
    f
}

/// Found by the xdp fuzz target (on a frame added to its seeds by hand; the fuzzer had
/// not reached it alone): an IPv6 packet from an IPv4-mapped source (`::ffff:10.77.9.5`)
/// was looked up in the IPv6 trie, where the compiler never puts such prefixes (a
/// `Cidr` holds them as IPv4), so the kernel passed it while `Compiled::lookup` — and
/// the policy — deny it. Runs the real program through BPF_PROG_TEST_RUN (root).
#[test]
fn kernel_judges_v4_mapped_sources_as_ipv4() {
    const XDP_DROP: u32 = 1;
    const XDP_PASS: u32 = 2;
    if !gateway_tests::netns::privileged("kernel_judges_v4_mapped_sources_as_ipv4") {
        return;
    }
    let c = compiled(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {ipBlocks: [10.77.9.0/24]}}]
"#,
    );
    let guard = match XdpGuard::attach(&[], c.clone()) {
        Err(XdpError::NotBuilt) if std::env::var("GATEWAY_REQUIRE_EBPF").as_deref() != Ok("1") => {
            eprintln!(
                "SKIPPED kernel_judges_v4_mapped_sources_as_ipv4: built without the kernel object"
            );
            return;
        }
        r => r.unwrap_or_else(|e| panic!("loading the XDP guard: {e}")),
    };
    for (src, want) in [
        ("::ffff:10.77.9.5", XDP_DROP),
        ("10.77.9.5", XDP_DROP),
        ("::ffff:10.77.1.5", XDP_PASS),
        ("fd00:77::9:5", XDP_PASS),
    ] {
        let got = guard.test_run(&syn(src, 80)).unwrap();
        assert_eq!(got, want, "{src}");
        let model = c.lookup(src.parse().unwrap(), 80).unwrap().action;
        assert_eq!(
            model == XDP_ACT_DROP,
            want == XDP_DROP,
            "{src}: lookup disagrees"
        );
    }
}

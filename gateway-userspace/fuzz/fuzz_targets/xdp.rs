//! The XDP ingress guard (gateway-ebpf `xdp.rs`) on arbitrary frames, run in the kernel
//! with `BPF_PROG_TEST_RUN`, against the userspace model of the same rules
//! (`gateway_fuzz::xdp_model`, verdicts from `Compiled::lookup`).
//!
//! It must never pass a frame the model drops, nor drop one it passes.
//!
//! Needs root (or CAP_BPF + CAP_NET_ADMIN) and a gateway built with its kernel object:
//! the init hook compiles fuzz/fixtures/xdp-policy.yaml, loads the real program with
//! `XdpGuard::attach(&[], ..)` (maps filled, attached to no interface) and panics with
//! the reason if it can't. Frames shorter than an Ethernet header are skipped and longer
//! ones cut to the largest the kernel takes (it refuses both with EINVAL).
#![no_main]

use std::sync::OnceLock;

use gateway::{
    authz::Enforcer,
    config::{GatewayIdentity, load},
    xdp::{Compiled, XdpGuard},
};
use gateway_fuzz::xdp_model;
use libfuzzer_sys::fuzz_target;

struct Kernel {
    guard: XdpGuard,
    compiled: Compiled,
    max_frame: usize,
}

fn kernel() -> &'static Kernel {
    static K: OnceLock<Kernel> = OnceLock::new();
    K.get_or_init(|| {
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/xdp-policy.yaml");
        let snap = load(&[fixture.into()], &GatewayIdentity::default())
            .unwrap_or_else(|e| panic!("{fixture} does not load:\n{e}"));
        let compiled = Enforcer::new(&snap).compiled;
        assert!(compiled.overflow.is_none(), "{:?}", compiled.overflow);
        let guard = XdpGuard::attach(&[], compiled.clone()).unwrap_or_else(|e| {
            panic!("xdp fuzz target: cannot load the XDP guard ({e}); it needs root and a gateway built with its kernel object (cargo xtask setup)")
        });
        // The largest frame BPF_PROG_TEST_RUN takes (a page minus XDP head/tailroom).
        let (mut ok, mut bad) = (14usize, 65_536usize);
        while bad - ok > 1 {
            let mid = (ok + bad) / 2;
            if guard.test_run(&vec![0u8; mid]).is_ok() {
                ok = mid;
            } else {
                bad = mid;
            }
        }
        Kernel {
            guard,
            compiled,
            max_frame: ok,
        }
    })
}

fuzz_target!(
    init: {
        kernel();
    },
    |data: &[u8]| {
        let k = kernel();
        if data.len() < 14 {
            return;
        }
        let frame = &data[..data.len().min(k.max_frame)];
        let got = k
            .guard
            .test_run(frame)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN failed on a {}-byte frame: {e}", frame.len()));
        let want = xdp_model::verdict(&k.compiled, frame);
        if got != want {
            let name = |a| match a {
                xdp_model::XDP_DROP => "XDP_DROP",
                xdp_model::XDP_PASS => "XDP_PASS",
                _ => "other",
            };
            panic!(
                "kernel says {} ({got}), model says {} for (source, port) {:?}",
                name(got),
                name(want),
                xdp_model::judged(frame)
            );
        }
    }
);

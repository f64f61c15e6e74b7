//! `xdp-bench GATEWAY_BIN SECONDS MAX_PACKETS`: the XDP guard's benchmark row (issue 6):
//! SYNs dropped per second by XDP vs connections refused per second at accept in
//! userspace, same DENY rule, inside namespaces it creates. Prints one JSON object.
//! Needs root. Run by `cargo xtask bench`.
use std::{path::PathBuf, time::Duration};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: xdp-bench GATEWAY_BIN SECONDS MAX_PACKETS");
        std::process::exit(2);
    }
    let bin = PathBuf::from(&args[1]);
    let secs: u64 = args[2].parse().expect("SECONDS");
    let max: u64 = args[3].parse().expect("MAX_PACKETS");
    // Bounded: at most 60 s and 5 M packets per half, whatever the caller asks.
    let r = gateway_tests::xdpbench::xdp_drop_bench_with(
        &bin,
        Duration::from_secs(secs.min(60)),
        max.min(5_000_000),
    );
    println!(
        "{}",
        serde_json::json!({
            "xdp_mode": r.xdp_mode,
            "xdp_pps": r.xdp_pps,
            "xdp_dropped": r.xdp_dropped,
            "xdp_sent": r.xdp_sent,
            "userspace_pps": r.userspace_pps,
            "userspace_refused": r.userspace_refused,
            "ratio": if r.userspace_pps > 0.0 { r.xdp_pps / r.userspace_pps } else { 0.0 },
        })
    );
}

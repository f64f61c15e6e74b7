//! `scale-bench GATEWAY_BIN SECONDS RUNS N...`: the routing-scale benchmark row (issue
//! 17), inside a namespace it creates; prints the Markdown table to stderr and one JSON
//! object (the table included) to stdout. Needs root, nginx and wrk. Run by `cargo xtask bench`.
//!
//! `scale-bench gen N FILE`: only writes the configuration for N VirtualServices (upstream
//! 127.0.0.1:8081), e.g. for `gateway validate` or perf by hand.
use std::{net::SocketAddr, path::PathBuf};

use gateway_tests::{scale, scalebench};

fn usage() -> ! {
    eprintln!("usage: scale-bench GATEWAY_BIN SECONDS RUNS N...\n       scale-bench gen N FILE");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("gen") {
        let (Some(n), Some(file)) = (args.get(1).and_then(|n| n.parse().ok()), args.get(2)) else {
            usage()
        };
        let upstream: SocketAddr = "127.0.0.1:8081".parse().expect("addr");
        std::fs::write(file, scale::config(n, upstream)).expect("write config");
        return;
    }
    if args.len() < 4 {
        usage();
    }
    let parse = |s: &str| s.parse::<u64>().unwrap_or_else(|_| usage());
    let settings = scalebench::Settings {
        gateway_bin: PathBuf::from(&args[0]),
        // Bounded whatever the caller asks: 60 s per measurement, 5 passes, 100 000 VS.
        secs: parse(&args[1]).clamp(1, 60),
        runs: (parse(&args[2]) as usize).clamp(1, 5),
        counts: args[3..]
            .iter()
            .map(|n| (parse(n) as usize).clamp(1, 100_000))
            .collect(),
        work_dir: std::env::temp_dir().join(format!("scale-bench-{}", std::process::id())),
    };
    let rows = scalebench::run(&settings);
    let md = scalebench::to_markdown(&rows, &settings);
    eprintln!("{md}");
    let mut json = scalebench::to_json(&rows, &settings);
    json["markdown"] = md.into();
    println!("{json}");
    let _ = std::fs::remove_dir_all(&settings.work_dir);
}

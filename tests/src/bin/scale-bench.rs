//! `scale-bench [--kind http|https|passthrough|authz] GATEWAY_BIN SECONDS RUNS N...`: one
//! routing-scale benchmark row (issue 17; `http` by default), inside a namespace it
//! creates; prints the Markdown table to stderr and one JSON object (the table
//! included) to stdout. Needs root, nginx and wrk; the TLS rows run `tls-load` from the
//! same directory as this binary and keep their certificates in `$SCALE_BENCH_CACHE`
//! (default: the work directory, so not kept). Run by `cargo xtask bench --rows scale`.
//!
//! `scale-bench gen N FILE`: only writes the configuration for N VirtualServices (upstream
//! 127.0.0.1:8081), e.g. for `gateway validate` or perf by hand.
use std::{net::SocketAddr, path::PathBuf};

use gateway_tests::{scale, scalebench};

fn usage() -> ! {
    eprintln!(
        "usage: scale-bench [--kind http|https|passthrough|authz] GATEWAY_BIN SECONDS RUNS N...\n       scale-bench gen N FILE"
    );
    std::process::exit(2);
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("gen") {
        let (Some(n), Some(file)) = (args.get(1).and_then(|n| n.parse().ok()), args.get(2)) else {
            usage()
        };
        let upstream: SocketAddr = "127.0.0.1:8081".parse().expect("addr");
        std::fs::write(file, scale::config(n, upstream)).expect("write config");
        return;
    }
    let mut kind = scalebench::Kind::Http;
    if args.first().map(String::as_str) == Some("--kind") {
        kind = args
            .get(1)
            .and_then(|k| scalebench::Kind::parse(k))
            .unwrap_or_else(|| usage());
        args.drain(..2);
    }
    if args.len() < 4 {
        usage();
    }
    let work_dir = std::env::temp_dir().join(format!("scale-bench-{}", std::process::id()));
    let here = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()))
        .unwrap_or_default();
    let parse = |s: &str| s.parse::<u64>().unwrap_or_else(|_| usage());
    let settings = scalebench::Settings {
        kind,
        gateway_bin: PathBuf::from(&args[0]),
        tls_load_bin: here.join("tls-load"),
        cache_dir: std::env::var_os("SCALE_BENCH_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| work_dir.clone()),
        // Bounded whatever the caller asks: 60 s per measurement, 9 passes, 100 000 VS.
        secs: parse(&args[1]).clamp(1, 60),
        runs: (parse(&args[2]) as usize).clamp(1, 9),
        counts: args[3..]
            .iter()
            .map(|n| (parse(n) as usize).clamp(1, 100_000))
            .collect(),
        work_dir,
    };
    let rows = scalebench::run(&settings);
    let md = scalebench::to_markdown(&rows, &settings);
    eprintln!("{md}");
    let mut json = scalebench::to_json(&rows, &settings);
    json["markdown"] = md.into();
    println!("{json}");
    let _ = std::fs::remove_dir_all(&settings.work_dir);
}

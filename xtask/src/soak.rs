//! `cargo xtask soak --minutes N [--out-dir D] [--flows F] [--http H]`: builds the
//! release gateway (with its eBPF object) and the soak driver (tests/src/bin/soak.rs),
//! then runs the soak as root in its own network namespace. The driver writes
//! `soak.{json,md,svg}` to the out dir (default `target/soak/`) and exits non-zero when
//! a bound is broken; so does this command.
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::{build_release_with, is_root, root, run_cmd, step, target_dir};

#[derive(clap::Args)]
pub struct SoakArgs {
    /// How long the connections are held under churn, kill/restart and the burst
    /// (ramp-up and the return to baseline come on top, ~10-30 s).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Where soak.{json,md,svg} go (default: target/soak/).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Idle spliced flows held (default: 10,000, scaled down to fit the hard open-file
    /// limit when neither --flows nor --http is given).
    #[arg(long)]
    flows: Option<usize>,
    /// Idle HTTP keep-alive connections held (default as for --flows).
    #[arg(long)]
    http: Option<usize>,
    /// The gateway's `--splice` mode.
    #[arg(long, default_value = "ebpf")]
    splice: String,
}

pub fn soak(args: SoakArgs) -> Result<()> {
    if !is_root() {
        bail!("the soak needs root (a network namespace and the eBPF splice): run it as root");
    }
    step(
        "soak: build gateway (release, with the eBPF object) and the soak driver",
        || build_release_with("soak"),
    )?;
    let out_dir = args
        .out_dir
        .map(|p| if p.is_relative() { root().join(p) } else { p })
        .unwrap_or_else(|| target_dir().join("soak"));
    step(&format!("soak: {} min", args.minutes), || {
        let bin = target_dir().join("release");
        let mut c = std::process::Command::new(bin.join("soak"));
        c.arg("--minutes")
            .arg(args.minutes.to_string())
            .arg("--out-dir")
            .arg(&out_dir)
            .args(["--splice", &args.splice])
            .env("GATEWAY_BIN", bin.join("gateway"));
        if let Some(n) = args.flows {
            c.args(["--flows", &n.to_string()]);
        }
        if let Some(n) = args.http {
            c.args(["--http", &n.to_string()]);
        }
        run_cmd(&mut c).context("the soak broke a bound (see the table above and soak.md)")
    })
}

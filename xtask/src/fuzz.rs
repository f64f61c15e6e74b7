//! `cargo xtask fuzz [--seconds N] [--target T]...`: builds the cargo-fuzz (libFuzzer)
//! targets in gateway-userspace/fuzz and runs each for N seconds, one at a time, then
//! prints one line per target (runs, coverage, crashes). Fails if any target crashed.
//!
//! - cargo-fuzz is installed (pinned version) when missing; it needs nightly flags,
//!   which `RUSTC_BOOTSTRAP=1` unlocks on the stable toolchain.
//! - Seeds come from the committed `fuzz/corpus/<target>/` (read only); what a run
//!   learns goes to `target/fuzz/corpus/<target>/`, so later runs start from it, and
//!   crashing inputs to `target/fuzz/artifacts/<target>/`.
//! - The `xdp` target loads the real XDP program and needs root; without root it is
//!   skipped (an error when `CI` is set).
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{cargo, ebpf_toolchain, is_root, output, root, run_cmd, show, step, target_dir};

const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Targets that load eBPF programs.
const ROOT_TARGETS: &[&str] = &["xdp"];

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Run only this target (repeatable); default: every target in gateway-userspace/fuzz.
    #[arg(long)]
    target: Vec<String>,
    /// libFuzzer's sanitizer: `none` (the default: the targets are safe Rust, and it
    /// builds and runs fastest) or `address` (memory errors in the unsafe code below
    /// them, e.g. unsafe-libyaml; its own build, about twice as slow to run).
    #[arg(long, default_value = "none", value_parser = ["none", "address"])]
    sanitizer: String,
    /// Unoptimized build: compiles in about a third of the time, fuzzes several times
    /// slower. What CI's bounded smoke run uses.
    #[arg(long)]
    dev: bool,
}

/// What one libFuzzer run reported.
struct Outcome {
    target: String,
    runs: u64,
    cov: u64,
    features: u64,
    corpus: u64,
    crash: Option<String>,
    log: PathBuf,
}

pub fn fuzz(args: FuzzArgs) -> Result<()> {
    let fuzz_dir = root().join("gateway-userspace/fuzz");
    step("fuzz: cargo-fuzz", install_cargo_fuzz)?;
    let root_ok = is_root();
    if root_ok {
        // The xdp target embeds the kernel object: the same toolchain as the tests.
        let mut missing = Vec::new();
        step("fuzz: eBPF toolchain", || ebpf_toolchain(&mut missing))?;
    }
    let all = list_targets()?;
    let wanted: Vec<String> = if args.target.is_empty() {
        all.clone()
    } else {
        for t in &args.target {
            if !all.contains(t) {
                bail!("no fuzz target {t:?} (there are: {})", all.join(", "));
            }
        }
        args.target.clone()
    };
    let (run, skipped): (Vec<String>, Vec<String>) = wanted
        .into_iter()
        .partition(|t| root_ok || !ROOT_TARGETS.contains(&t.as_str()));
    if !skipped.is_empty() && env::var_os("CI").is_some() {
        bail!(
            "CI is set but not running as root: fuzz target(s) {} need root",
            skipped.join(", ")
        );
    }

    if run.is_empty() {
        for t in &skipped {
            println!("fuzz {t}: skipped (needs root to load the XDP program)");
        }
        return Ok(());
    }

    let out = target_dir().join("fuzz");
    // One target dir per build flavour: switching flags would otherwise rebuild all.
    let build_dir = out.join(format!(
        "{}-{}",
        args.sanitizer,
        if args.dev { "dev" } else { "release" }
    ));
    let triple = host_triple()?;
    step("fuzz: build", || {
        let mut c = cargo_fuzz();
        c.current_dir(root().join("gateway-userspace"))
            .args(["build", "--sanitizer", &args.sanitizer, "--target", &triple])
            .arg("--target-dir")
            .arg(&build_dir);
        if args.dev {
            c.arg("--dev");
        }
        if run.len() == 1 {
            c.arg(&run[0]);
        }
        if root_ok {
            c.env("GATEWAY_REQUIRE_EBPF", "1");
        }
        run_cmd(&mut c).context("building the fuzz targets failed")
    })?;
    let bin_dir = build_dir
        .join(&triple)
        .join(if args.dev { "debug" } else { "release" });

    let mut outcomes = Vec::new();
    for t in &run {
        let o = step(&format!("fuzz: {t} for {}s", args.seconds), || {
            run_target(t, &bin_dir.join(t), &fuzz_dir, &out, args.seconds)
        })?;
        outcomes.push(o);
    }

    println!("==> fuzz summary ({} s per target)", args.seconds);
    for o in &outcomes {
        println!(
            "fuzz {}: {} runs, cov {} (features {}), corpus {}, {} crash{}",
            o.target,
            o.runs,
            o.cov,
            o.features,
            o.corpus,
            u8::from(o.crash.is_some()),
            match &o.crash {
                Some(c) => format!(": {c}"),
                None => "es".into(),
            }
        );
    }
    for t in &skipped {
        println!("fuzz {t}: skipped (needs root to load the XDP program)");
    }
    let crashed: Vec<&Outcome> = outcomes.iter().filter(|o| o.crash.is_some()).collect();
    if !crashed.is_empty() {
        for o in &crashed {
            eprintln!("    {}: full output in {}", o.target, o.log.display());
        }
        eprintln!(
            "    reproduce: <binary> <crash file>; minimize: <binary> -minimize_crash=1 -runs=10000 <crash file>\n    binaries in {}",
            bin_dir.display()
        );
        bail!(
            "{} fuzz target(s) crashed: {}",
            crashed.len(),
            crashed
                .iter()
                .map(|o| o.target.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// `cargo fuzz` with nightly flags unlocked on stable.
fn cargo_fuzz() -> Command {
    let mut c = cargo();
    c.arg("fuzz").env("RUSTC_BOOTSTRAP", "1");
    c
}

fn install_cargo_fuzz() -> Result<()> {
    let want = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    let have = output(cargo_fuzz().arg("--version"));
    if have.as_deref().map(str::trim) == Some(want.as_str()) {
        println!("    already there: {want}");
        return Ok(());
    }
    if let Some(v) = &have {
        println!("    found {}, want {want}", v.trim());
    }
    run_cmd(cargo().args([
        "install",
        "--locked",
        &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
    ]))
    .context("installing cargo-fuzz failed")?;
    match output(cargo_fuzz().arg("--version")) {
        Some(v) if v.trim() == want => Ok(()),
        other => bail!("cargo-fuzz installed but `cargo fuzz --version` says {other:?}"),
    }
}

fn list_targets() -> Result<Vec<String>> {
    let mut c = cargo_fuzz();
    c.current_dir(root().join("gateway-userspace")).arg("list");
    let list = output(&mut c).with_context(|| format!("`{}` failed", show(&c)))?;
    let targets: Vec<String> = list.lines().map(|l| l.trim().to_string()).collect();
    if targets.is_empty() {
        bail!("`cargo fuzz list` found no targets");
    }
    Ok(targets)
}

fn host_triple() -> Result<String> {
    let v = output(Command::new("rustc").arg("-vV")).context("`rustc -vV` failed")?;
    v.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_string())
        .context("no host line in `rustc -vV`")
}

fn run_target(t: &str, bin: &Path, fuzz_dir: &Path, out: &Path, secs: u64) -> Result<Outcome> {
    let corpus = out.join("corpus").join(t);
    let artifacts = out.join("artifacts").join(t);
    let logs = out.join("logs");
    for d in [&corpus, &artifacts, &logs] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let seeds = fuzz_dir.join("corpus").join(t);
    let log = logs.join(format!("{t}.log"));
    let mut c = Command::new(bin);
    c.arg(format!("-max_total_time={secs}"))
        // A slow input is a finding too, but not one to wait 20 minutes for.
        .arg("-timeout=30")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&corpus);
    if seeds.is_dir() {
        c.arg(&seeds);
    }
    println!("    $ {} 2> {}", show(&c), log.display());
    let started = Instant::now();
    let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let status = c
        .stdout(Stdio::null())
        .stderr(file)
        .status()
        .with_context(|| format!("could not start {}", bin.display()))?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    let stat = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    // The last status line: `#N  DONE  cov: C ft: F corp: K/..`.
    let last = text
        .lines()
        .rev()
        .find(|l| l.starts_with('#') && l.contains(" cov: "))
        .unwrap_or_default();
    let field = |name: &str| -> u64 {
        last.split_whitespace()
            .skip_while(|w| *w != name)
            .nth(1)
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let crash = if status.success() {
        None
    } else {
        let what = text
            .lines()
            .skip_while(|l| !l.contains("panicked at"))
            .nth(1)
            .or_else(|| text.lines().find(|l| l.contains("ERROR: libFuzzer")))
            .unwrap_or("see the log")
            .trim()
            .to_string();
        let input = text
            .lines()
            .find_map(|l| l.split("Test unit written to ").nth(1))
            .unwrap_or("no input saved")
            .trim()
            .to_string();
        println!(
            "    CRASH after {:.0}s: {what}",
            started.elapsed().as_secs_f64()
        );
        println!("    input: {input}");
        Some(format!("{what} (input: {input})"))
    };
    Ok(Outcome {
        target: t.to_string(),
        runs: stat("number_of_executed_units"),
        cov: field("cov:"),
        features: field("ft:"),
        corpus: field("corp:"),
        crash,
        log,
    })
}

//! The walkthrough's upstream services on 127.0.0.1, for `cargo xtask run`:
//! webapp :18080, catalog :18081, tcp-echo :2701, simple-tls-service-1 :18443,
//! simple-tls-service-2 :18444. Runs until SIGINT/SIGTERM.
//!
//!     demo-backends [--config-dir DIR]   (DIR/certs holds the TLS certificates)
use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use anyhow::{Context, Result, bail};
use gateway_tests::backends;
use tokio::signal::unix::{SignalKind, signal};

fn parse_args() -> Result<PathBuf> {
    let mut config_dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config-dir" => {
                config_dir = Some(PathBuf::from(
                    args.next().context("--config-dir needs a directory")?,
                ))
            }
            "-h" | "--help" => {
                println!("usage: demo-backends [--config-dir DIR]   (default: ./config)");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; usage: demo-backends [--config-dir DIR]"),
        }
    }
    // Default: ./config when run from the repository root, else the source tree's.
    Ok(config_dir.unwrap_or_else(|| {
        let here = PathBuf::from("config");
        if here.join("certs").is_dir() {
            here
        } else {
            backends::config_dir()
        }
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let config_dir = parse_args()?;
    let running = backends::start_demo(IpAddr::V4(Ipv4Addr::LOCALHOST), &config_dir)
        .await
        .with_context(|| {
            format!(
                "starting the demo backends (certificates from {}/certs)",
                config_dir.display()
            )
        })?;
    for (name, what, b) in &running {
        println!(
            "demo-backends: {name:<22} {:<16} {what}",
            b.addr.to_string()
        );
    }
    // `cargo xtask run` waits for this line before starting the gateway.
    println!("demo-backends: ready");
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("demo-backends: stopping");
    drop(running);
    Ok(())
}

//! `gateway`: parses the command line, sets up logging, and hands over to the library.
use std::io::IsTerminal;

use clap::Parser;
use gateway::cli::{self, Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `run` logs through a bounded queue and a thread of its own (a stderr nobody reads
    // must not block the data path); the short-lived commands write directly.
    let _log_guard = match cli.command {
        Command::Run(_) => Some(gateway::telemetry::stderr_log::init()),
        _ => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .init();
            None
        }
    };
    match cli.command {
        Command::Validate(_) | Command::Run(_) if cli.namespace.is_some() => {
            eprintln!(
                "-n before the subcommand is istioctl's pod namespace, for proxy-config; the gateway's own namespace is `--namespace` after run/validate"
            );
            std::process::exit(cli::EXIT_BAD_CONFIG);
        }
        Command::Validate(args) => {
            cli::validate(&args);
            Ok(())
        }
        Command::ProxyConfig(args) => {
            cli::proxy_config(&args);
            Ok(())
        }
        // The main runtime is worker 0 (sys::workers starts the others).
        Command::Run(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(cli::run(args)),
    }
}

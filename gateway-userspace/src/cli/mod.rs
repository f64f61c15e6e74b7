//! The command line: `gateway run`, `gateway validate` and `gateway proxy-config`
//! (`args`: the flags; `run`: start and serve; `validate`: check a config).

use clap::{Parser, Subcommand};

use crate::config;

/// Exit status for invalid configuration (EX_USAGE, as linkerd does).
pub const EXIT_BAD_CONFIG: i32 = 64;

mod args;
mod run;
mod validate;

pub use args::{ConfigArgs, Files, PortOrOff, RunArgs};
pub use run::run;
pub use validate::validate;

#[derive(Parser, Debug)]
#[command(
    name = "gateway",
    version,
    about = "Istio-compatible ingress gateway with an eBPF-spliced L4 data path"
)]
pub struct Cli {
    /// istioctl's global `-n`, given before the subcommand
    /// (`gateway -n istio-system proxy-config listener ...`): the namespace of
    /// proxy-config's pod argument, which selects nothing here. `run` and `validate`
    /// take the gateway's namespace as `--namespace` after the subcommand.
    #[arg(short = 'n', long = "namespace", value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

// `RunArgs` is by far the largest variant, but a `Command` is built once, at start-up,
// and moved once: boxing it would buy nothing and cost clap's derive a wrapper.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the Gateways, VirtualServices and ServiceEntries in the given config.
    Run(RunArgs),
    /// Check config: every error as file:line:col: message (exit 64), every warning
    /// (fields read and not acted on; --strict makes them errors). References to
    /// missing things are errors here; `run` serves the rest without them.
    Validate(ConfigArgs),
    /// Show the running gateway's listeners, routes, clusters, endpoints or secrets,
    /// as `istioctl proxy-config` does (asks the admin API): istioctl's command lines
    /// work with only the binary renamed.
    #[command(visible_alias = "pc")]
    ProxyConfig(ProxyConfigArgs),
}

pub use crate::proxyconfig::cli::ProxyConfigArgs;

/// Prints `lines` (the last is the count: "...; nothing was started") and exits 64.
fn exit_with(lines: &[String]) -> ! {
    let (count, rest) = match lines.split_last() {
        Some((c, rest)) => (c.as_str(), rest),
        None => ("configuration error(s)", &[][..]),
    };
    for l in rest {
        eprintln!("{l}");
    }
    eprintln!("{count}; nothing was started");
    std::process::exit(EXIT_BAD_CONFIG);
}

/// Prints every error sorted by file and position, then the count; exits 64.
fn exit_config_errors(errors: Vec<config::ConfigError>) -> ! {
    exit_with(&config::ConfigErrors(errors).lines())
}

/// `gateway proxy-config`: prints the table (or JSON), or the error and exits 1.
pub fn proxy_config(args: &ProxyConfigArgs) {
    match crate::proxyconfig::cli::output(args) {
        Ok(out) => print!("{out}"),
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests;

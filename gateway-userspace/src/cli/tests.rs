use clap::Parser;
use std::time::Duration;

use super::{args::*, run::*, *};
use crate::kernel::splice::SpliceMode;

fn run_args(extra: &[&str]) -> RunArgs {
    let mut argv = vec!["gateway", "run", "--config", "x.yaml"];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).expect("parses").command {
        Command::Run(r) => r,
        _ => panic!("not run"),
    }
}

#[test]
fn splice_modes_and_the_userspace_alias() {
    assert_eq!(run_args(&[]).splice, SpliceMode::Auto);
    for (arg, mode) in [
        ("ebpf", SpliceMode::Ebpf),
        ("splice", SpliceMode::Splice),
        ("userspace", SpliceMode::Splice),
        ("uring", SpliceMode::Uring),
    ] {
        assert_eq!(run_args(&["--splice", arg]).splice, mode, "{arg}");
    }
}

#[test]
fn upgrade_types_idle_timeout_and_internal_addresses() {
    let d = http_options(&run_args(&[]));
    assert_eq!(d.upgrade_types, ["websocket"]);
    assert_eq!(d.upgrade_idle_timeout, Some(Duration::from_secs(300)));
    assert!(d.internal_addresses.is_empty());
    let o = http_options(&run_args(&[
        "--upgrade-type",
        "CONNECT",
        "--upgrade-type",
        "WebSocket",
        "--upgrade-idle-timeout",
        "0",
        "--internal-address",
        "127.0.0.0/8",
        "--internal-address",
        "fd00::/8",
    ]));
    assert_eq!(o.upgrade_types, ["websocket", "connect"]);
    assert_eq!(o.upgrade_idle_timeout, None);
    assert_eq!(o.internal_addresses.len(), 2);
    for bad in [
        &["--upgrade-type", "h2c"][..],
        &["--internal-address", "10.0.0.1/8"],
    ] {
        let mut argv = vec!["gateway", "run", "--config", "x.yaml"];
        argv.extend_from_slice(bad);
        assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
    }
}

#[test]
fn status_and_prometheus_ports() {
    let d = run_args(&[]);
    assert_eq!(
        (d.status_port, d.prometheus_port),
        (PortOrOff(Some(15021)), PortOrOff(Some(15090)))
    );
    let o = run_args(&["--status-port", "25021", "--prometheus-port", "off"]);
    assert_eq!(
        (o.status_port, o.prometheus_port),
        (PortOrOff(Some(25021)), PortOrOff(None))
    );
    assert_eq!(
        run_args(&["--status-port", "0"]).status_port,
        PortOrOff(None)
    );
    let mut argv = vec!["gateway", "run", "--config", "x.yaml"];
    argv.extend_from_slice(&["--status-port", "70000"]);
    assert!(Cli::try_parse_from(argv).is_err());
}

#[test]
fn drain_duration() {
    assert_eq!(
        run_args(&[]).drain_duration,
        crate::sys::drain::DEFAULT_DRAIN_DURATION
    );
    assert_eq!(
        run_args(&["--drain-duration", "5s"]).drain_duration,
        Duration::from_secs(5)
    );
    assert_eq!(
        run_args(&["--drain-duration", "0"]).drain_duration,
        Duration::ZERO
    );
}

#[test]
fn pipe_sizes() {
    assert_eq!(run_args(&[]).splice_pipe_size, 256 * 1024);
    assert_eq!(parse_size("65536"), Ok(65536));
    assert_eq!(parse_size("64k"), Ok(65536));
    assert_eq!(parse_size("1M"), Ok(1 << 20));
    for bad in ["", "0", "k", "1g", "-1", "99999999999999999999m"] {
        assert!(parse_size(bad).is_err(), "{bad:?}");
    }
}

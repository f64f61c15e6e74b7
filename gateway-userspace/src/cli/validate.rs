//! `gateway validate`: every error of every phase, located.
use std::collections::HashSet;

use crate::config::{self};

use super::*;

/// What `validate` compiles the way `run` does, every error of it: the route tables,
/// certificates, keys, CAs and CRLs (`file:line:col` of the field or Secret key), and
/// the access-log formats and filters. A DestinationRule `tls` whose material does not
/// load is an error too; `run` serves without that cluster's TLS (its requests fail
/// closed, 503 UF).
fn compile_errors(args: &ConfigArgs, snap: &config::Snapshot) -> Vec<config::ConfigError> {
    let id = args.identity(&snap.mesh);
    let mut errors = crate::telemetry::access_log::compile(snap, &id)
        .err()
        .unwrap_or_default();
    if let Err(e) = crate::plan::http::HttpState::build(snap) {
        errors.extend(e.0);
    }
    errors.extend(crate::plan::tls_client::problems(snap));
    errors
}

pub fn validate(args: &ConfigArgs) {
    // The `--mesh-config` file is loaded and checked with the config files.
    let (mut loaded, mesh) = args.load_files(config::Missing::Error);
    // Every error of every phase in one run: with errors in the config files, what
    // compiling the rest finds too. Where the config phase reported a place already,
    // what the compile says there follows from it (the same TLS settings check, for
    // one) and is left out.
    if let (Err(errors), Some(mut partial)) = (&mut loaded.result, loaded.partial.take()) {
        if let Ok(mesh) = &mesh {
            partial.mesh = mesh.clone();
        }
        let reported: HashSet<config::Loc> = errors.0.iter().map(|e| e.loc.clone()).collect();
        errors.0.extend(
            compile_errors(args, &partial)
                .into_iter()
                .filter(|e| !reported.contains(&e.loc)),
        );
    }
    let snap = match args.finish_load(loaded, mesh) {
        Ok(snap) => snap,
        Err(lines) => exit_with(&lines),
    };
    for w in &snap.warnings {
        eprintln!("{w}");
    }
    let errors = compile_errors(args, &snap);
    if !errors.is_empty() {
        exit_config_errors(errors);
    }
    if !snap.warnings.is_empty() {
        eprintln!(
            "{} warning(s): see above (--strict makes them errors)",
            snap.warnings.len()
        );
    }
    println!(
        "config OK: {} listener(s) on port(s) {}, {} cluster(s)",
        snap.listeners.len(),
        snap.listeners
            .iter()
            .map(|l| l.port.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        snap.clusters.len()
    );
}

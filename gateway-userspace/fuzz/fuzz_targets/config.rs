//! The config loader on arbitrary YAML text: `config::load_str` (Istio resources) and
//! `config::mesh::parse` (MeshConfig).
//!
//! - Either a Snapshot / MeshConfig or errors; never a panic.
//! - Every error carries `file:line:col` pointing into the text: the file name given,
//!   line 1..=lines+1 and column >= 1, and its Display starts with that position. So does
//!   every warning (fields not acted on; missing references, loaded as `run` loads them:
//!   isolated), and each warning's code is in the README's table (`warnings::CODES`).
//! - A Snapshot the loader accepts goes through everything the gateway then compiles
//!   from it (`Plan::compile`: route tables, certificates, the authorization enforcer
//!   and its XDP compilation; the access-log targets) without a panic; what that compile
//!   refuses is errors with positions inside the text, like the loader's.
//!
//! The loader resolves destination hosts that no ServiceEntry names with the system
//! resolver. The init hook moves the process into a fresh network namespace first (as
//! root, or through a user namespace), so a fuzzed host name is looked up in /etc/hosts
//! and then fails at once instead of sending DNS queries.
#![no_main]

use std::path::Path;

use gateway::{
    config::{ConfigErrors, GatewayIdentity, Loc, Missing, load_str_with, mesh, warnings},
    plan::Plan,
    telemetry::access_log,
};
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzz.yaml";

fuzz_target!(
    init: {
        offline();
    },
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let id = GatewayIdentity::default();
        let loaded = load_str_with(FILE, text, &id, Missing::Isolate);
        for w in loaded.warnings.iter().chain(&warnings::scan_mesh(Path::new(FILE), text)) {
            check_loc(text, &w.loc, &w.to_string());
            assert!(
                warnings::CODES.iter().any(|(c, ..)| *c == w.code),
                "warning code not in the table: {w}"
            );
        }
        match loaded.result {
            Ok(snapshot) => {
                if let Err(errors) = access_log::compile(&snapshot, &id) {
                    check_errors(text, &ConfigErrors(errors));
                }
                if let Err(errors) = Plan::compile(snapshot, 1) {
                    check_errors(text, &errors);
                }
            }
            Err(errors) => check_errors(text, &errors),
        }
        match mesh::parse(Path::new(FILE), text) {
            Ok(_) => {}
            Err(errors) => check_errors(text, &errors),
        }
    }
);

fn check_errors(text: &str, errors: &ConfigErrors) {
    assert!(!errors.0.is_empty(), "Err with no errors");
    for e in &errors.0 {
        check_loc(text, &e.loc, &e.to_string());
    }
}

/// `loc` is in the text and `shown` (an error's or warning's Display) starts with it.
fn check_loc(text: &str, loc: &Loc, shown: &str) {
    // Lines end at LF, CRLF or a lone CR (YAML 1.2); an error may sit just past the end.
    let b = text.as_bytes();
    let breaks = (0..b.len())
        .filter(|&i| b[i] == b'\n' || (b[i] == b'\r' && b.get(i + 1) != Some(&b'\n')))
        .count();
    let lines = breaks + 1;
    assert_eq!(loc.file, Path::new(FILE), "names another file: {shown}");
    assert!(
        (1..=lines).contains(&loc.line) && loc.col >= 1,
        "position outside the {lines}-line text: {shown}"
    );
    let prefix = format!("{FILE}:{}:{}: ", loc.line, loc.col);
    assert!(
        shown.starts_with(&prefix),
        "does not start with its position: {shown}"
    );
}

/// Gives the process a network namespace of its own (nothing but a down loopback), so
/// name resolution cannot leave the machine. Without the privilege for it, the real
/// resolver is used and the run is only slower.
fn offline() {
    // SAFETY: unshare(2) only changes this process's namespaces. It runs in libFuzzer's
    // initialize hook, before libFuzzer starts any thread (CLONE_NEWUSER needs that).
    let ok = unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0
        || unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } == 0;
    if !ok {
        eprintln!(
            "config fuzz: could not enter a network namespace ({}); fuzzed host names go to the system resolver",
            std::io::Error::last_os_error()
        );
    }
}

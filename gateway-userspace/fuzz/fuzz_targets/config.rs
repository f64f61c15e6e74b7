//! The config loader on arbitrary YAML text: `config::load_str` (Istio resources) and
//! `config::mesh::parse` (MeshConfig).
//!
//! - Either a Snapshot / MeshConfig or errors; never a panic.
//! - Every error carries `file:line:col` pointing into the text: the file name given,
//!   line 1..=lines+1 and column >= 1, and its Display starts with that position. So does
//!   every warning (fields not acted on; missing references, loaded as `run` loads them:
//!   isolated), and each warning's code is in the README's table (`warnings::CODES`).
//! - A Snapshot the loader accepts goes through everything the gateway then builds from
//!   it (`HttpState::build`, the authorization enforcer and its XDP compilation, the
//!   access-log targets) without a panic, and without an error the loader should have
//!   reported with a position: route tables and access-log settings must build.
//!
//! The loader resolves destination hosts that no ServiceEntry names with the system
//! resolver. The init hook moves the process into a fresh network namespace first (as
//! root, or through a user namespace), so a fuzzed host name is looked up in /etc/hosts
//! and then fails at once instead of sending DNS queries.
#![no_main]

use std::path::Path;

use gateway::{
    authz::Enforcer,
    config::{
        ConfigErrors, GatewayIdentity, ListenerProtocol, Loc, Missing, ServerKind, load_str_with,
        mesh, warnings,
    },
    http::{HttpState, routing::build_table},
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
                // The route tables `HttpState::build` makes: compile errors there would
                // be config errors without a position.
                for l in &snapshot.listeners {
                    if l.protocol == ListenerProtocol::Http
                        && let Err(e) = build_table(l, None)
                    {
                        panic!("loader accepted port {} but its route table fails: {e}", l.port);
                    }
                    for (i, s) in l.servers.iter().enumerate() {
                        if s.kind == ServerKind::HttpsTerminate
                            && let Err(e) = build_table(l, Some(i))
                        {
                            panic!("loader accepted port {} server {i} but its route table fails: {e}", l.port);
                        }
                    }
                }
                // Certificates and keys are parsed here (`gateway validate` reports their
                // errors as they come): it may fail, never panic.
                let _ = HttpState::build(&snapshot);
                let _ = Enforcer::new(&snapshot);
                let mesh = mesh::MeshConfig::default();
                if let Err(e) = access_log::resolve(&mesh, &snapshot.resources.telemetry, &id) {
                    panic!("loader accepted the Telemetry resources but access logs fail: {e}");
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

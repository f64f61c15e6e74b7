//! Every field the gateway reads but does not act on, said out loud.
//!
//! Istio's API has fields this gateway does not implement (`statPrefix`, Telemetry `tracing`, ...). Kubernetes (structural CRD schemas,
//! `kubectl apply`'s strict field validation) accepts them, so the loader does too,
//! but never silently: each one set (not null, empty, `false` or its default) gives a
//! [`Warning`] with its position, its path, a stable code (`GW1xxx`, as `istioctl
//! analyze`'s `IST0xxx`) and what happens instead. Fields that are not part of Istio's
//! API at all stay errors (`unknown field`), as `kubectl apply` rejects them.
//!
//! References to something missing (`GW2xxx`: a credential Secret, a Gateway, a
//! destination host) are made by `validate` and `resolve`: errors for `gateway
//! validate`, warnings at `gateway run`, where only the part that refers to the missing
//! thing is inactive (Istio's failure isolation).
//!
//! The table [`CODES`] is the README's; a test keeps them in step.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde_yaml::Value;

use super::source::{DocText, Positions, Source};
use super::{ConfigError, Loc};

mod table;
use table::{
    AUTHORIZATION_POLICY, DESTINATION_RULE, GATEWAY, SECRET, SERVICE_ENTRY, TELEMETRY,
    TRAFFIC_POLICY, TRAFFIC_POLICY_AT, VIRTUAL_SERVICE,
};
pub use table::{CODES, effect};

/// One warning: where, which field, which code, what happens instead.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Warning {
    pub loc: Loc,
    /// `GW1001`, ...: see [`CODES`].
    pub code: &'static str,
    /// `Kind namespace/name` (empty for MeshConfig).
    pub subject: String,
    /// The field's path: `spec.http[0].corsPolicy`.
    pub path: String,
    /// What is wrong and what happens instead (field warnings start with the path).
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: warning[{}]: ", self.loc, self.code)?;
        if !self.subject.is_empty() {
            write!(f, "{}: ", self.subject)?;
        }
        f.write_str(&self.message)
    }
}

impl Warning {
    /// A field warning at the key naming `path` in `src`'s document.
    pub(crate) fn at(src: &Source, path: &str, code: &'static str, what: &str) -> Warning {
        Warning {
            loc: src.key_loc(path),
            code,
            subject: src.subject.to_string(),
            path: path.to_string(),
            message: format!("{path}: {what}; {}", effect(code)),
        }
    }

    /// A missing reference (`GW2xxx`) at the value of `path`: `problem`, then what
    /// happens at run.
    pub(crate) fn missing(src: &Source, path: &str, code: &'static str, problem: &str) -> Warning {
        Warning {
            loc: src.loc(path),
            code,
            subject: src.subject.to_string(),
            path: path.to_string(),
            message: format!("{problem}; {}", effect(code)),
        }
    }

    /// The same problem as an error (`gateway validate`, `--strict`).
    pub fn to_error(&self) -> ConfigError {
        ConfigError {
            loc: self.loc.clone(),
            message: format!("{} [{}]", self.message, self.code),
        }
    }
}

/// Set to something other than nothing: not null, not empty, not `false`.
fn is_set(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        _ => true,
    }
}

/// Every node `pattern` names in `root`, with its concrete path.
fn select<'a>(root: &'a Value, pattern: &str) -> Vec<(String, &'a Value)> {
    let mut cur = vec![(String::new(), root)];
    for seg in pattern.split('.') {
        let (name, each) = match seg.strip_suffix("[*]") {
            Some(n) => (n, true),
            None => (seg, false),
        };
        let mut next = Vec::new();
        for (path, node) in cur {
            let Some(child) = node.as_mapping().and_then(|m| m.get(name)) else {
                continue;
            };
            let p = if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}.{name}")
            };
            if !each {
                next.push((p, child));
            } else if let Some(items) = child.as_sequence() {
                next.extend(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| (format!("{p}[{i}]"), item)),
                );
            }
        }
        cur = next;
    }
    cur
}

/// The warnings of one resource document of `kind`, already deserialized.
pub(crate) fn scan(kind: &str, value: &Value, src: &Source, out: &mut Vec<Warning>) {
    let rules = match kind {
        "VirtualService" => VIRTUAL_SERVICE,
        "Gateway" => GATEWAY,
        "ServiceEntry" => SERVICE_ENTRY,
        "Telemetry" => TELEMETRY,
        "AuthorizationPolicy" => AUTHORIZATION_POLICY,
        "Secret" => SECRET,
        "DestinationRule" => DESTINATION_RULE,
        _ => return,
    };
    for r in rules {
        for (path, v) in select(value, r.pattern) {
            if is_set(v) && r.when.is_none_or(|w| w(v)) {
                out.push(Warning::at(src, &path, r.code, r.what));
            }
        }
    }
    if kind == "DestinationRule" {
        for at in TRAFFIC_POLICY_AT {
            for r in TRAFFIC_POLICY {
                for (path, v) in select(value, &format!("{at}.{}", r.pattern)) {
                    if is_set(v) && r.when.is_none_or(|w| w(v)) {
                        out.push(Warning::at(src, &path, r.code, r.what));
                    }
                }
            }
        }
    }
}

/// Istio rejects these (its validation webhook), so they are errors here too.
pub(crate) fn refused(kind: &str, value: &Value, src: &Source, errors: &mut Vec<ConfigError>) {
    if kind != "VirtualService" {
        return;
    }
    for (path, v) in select(value, "spec.http[*].fault.delay.exponentialDelay") {
        if is_set(v) {
            errors.push(src.error(
                &path,
                "exponentialDelay is not supported (Istio's validation rejects it too: \"exponentialDelay not supported yet\"); use fixedDelay",
            ));
        }
    }
}

/// MeshConfig keys the gateway uses; every other key set gives GW1070.
const MESH_USED: &[&str] = &[
    "dnsRefreshRate",
    "accessLogFile",
    "accessLogEncoding",
    "accessLogFormat",
    "rootNamespace",
    "defaultProviders",
    "extensionProviders",
    "pathNormalization",
];

/// The warnings of a MeshConfig file (`--mesh-config`).
pub fn scan_mesh(file: &Path, text: &str) -> Vec<Warning> {
    let Ok(value) = serde_yaml::from_str::<Value>(text) else {
        return Vec::new(); // the parse error is reported by mesh::parse
    };
    let src = Source {
        file: file.to_path_buf(),
        positions: Positions::build(&DocText {
            text: text.to_string(),
            line_offset: 0,
        }),
        subject: "".into(),
    };
    let mut out = Vec::new();
    let mut warn = |path: String, what: String| {
        out.push(Warning::at(&src, &path, "GW1070", &what));
    };
    let Some(map) = value.as_mapping() else {
        return out;
    };
    for (k, v) in map {
        let Some(key) = k.as_str() else { continue };
        if !MESH_USED.contains(&key) && is_set(v) {
            warn(
                key.to_string(),
                format!("MeshConfig {key} is not supported"),
            );
        }
    }
    if let Some(dp) = map.get("defaultProviders").and_then(Value::as_mapping) {
        for (k, v) in dp {
            let Some(key) = k.as_str().filter(|k| *k != "accessLogging") else {
                continue;
            };
            if is_set(v) {
                warn(
                    format!("defaultProviders.{key}"),
                    format!("default {key} providers are not supported"),
                );
            }
        }
    }
    for (path, p) in select(&value, "extensionProviders[*]") {
        let Some(m) = p.as_mapping() else { continue };
        for (k, v) in m {
            let Some(key) = k
                .as_str()
                .filter(|k| !matches!(*k, "name" | "envoyFileAccessLog"))
            else {
                continue;
            };
            if is_set(v) {
                warn(
                    format!("{path}.{key}"),
                    format!(
                        "{key} extension providers are not supported (only envoyFileAccessLog)"
                    ),
                );
            }
        }
    }
    out
}

/// How many of `warnings` each code has (`gateway_config_warnings{code}`, rendered by
/// `telemetry::metrics::render_config_warnings`).
pub fn count_by_code(warnings: &[Warning]) -> BTreeMap<&'static str, u64> {
    let mut by_code: BTreeMap<&'static str, u64> = BTreeMap::new();
    for w in warnings {
        *by_code.entry(w.code).or_default() += 1;
    }
    by_code
}

#[cfg(test)]
mod tests;

//! Gateway configuration: loads Istio/Kubernetes YAML, validates it the way
//! Istio would, and builds an immutable [`Snapshot`] for the data plane.
//!
//! Every problem is reported as `file:line:col: message`, and all of them are
//! collected (one serde error per document at most, plus every validation
//! error) rather than stopping at the first.
//!
//! Module map: [`istio`] serde types, `source` document splitting and node
//! positions, `parse` document -> typed resource, `validate` Istio rules and
//! snapshot assembly (`source_match`: `sourceLabels` against the gateway itself),
//! `resolve` destinations -> clusters, `hosts` host-name
//! rules, [`host_map`] the host lookup the data path uses, [`snapshot`] the output
//! types.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub mod authz;
pub mod cors;
mod delegate;
pub mod dest_rules;
pub mod destination_rule;
pub mod host_map;
pub mod hosts;
pub mod istio;
pub mod mesh;
pub mod mirror;
mod parse;
pub mod pem;
pub mod regex;
pub(crate) mod resolve;
pub mod snapshot;
mod source;
mod source_match;
pub mod tls_settings;
pub mod upstream_policy;
mod upstream_tls;
mod validate;
pub mod warnings;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_server_tests;

pub use host_map::{HostMap, Semantics as HostSemantics};
pub use snapshot::{
    Cluster, HttpRouteEntry, HttpVirtualHost, InactiveServer, Listener, ListenerProtocol,
    MirrorCluster, Origin, Resources, Secret, ServerKind, ServerRef, Snapshot, TcpRoute, TlsMode,
    TlsRoute, WeightedCluster,
};
pub use warnings::Warning;

/// Who we are, as Istio's Gateway `selector` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayIdentity {
    /// Namespace of the gateway workload; `credentialName` secrets live here.
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// MeshConfig `rootNamespace` (default `istio-system`): an AuthorizationPolicy there
    /// applies to every gateway its selector matches.
    pub root_namespace: String,
}

impl Default for GatewayIdentity {
    /// The stock `istio-ingressgateway` in the root namespace.
    fn default() -> Self {
        GatewayIdentity {
            namespace: "istio-system".into(),
            labels: [("istio", "ingressgateway"), ("app", "istio-ingressgateway")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            root_namespace: mesh::DEFAULT_ROOT_NAMESPACE.into(),
        }
    }
}

/// A 1-based position in a file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Loc {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{loc}: {message}")]
pub struct ConfigError {
    pub loc: Loc,
    pub message: String,
}

/// All errors of one load, sorted by file then position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// What to print or log: every error on its own line, sorted by file then
    /// position, then the count (`N configuration error(s)`).
    pub fn lines(mut self) -> Vec<String> {
        self.0.sort_by(|a, b| a.loc.cmp(&b.loc));
        let n = self.0.len();
        let mut lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        lines.push(format!("{n} configuration error(s)"));
        lines
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// What a reference to something that does not exist (a credential Secret, a
/// Gateway, a destination host: codes GW2xxx) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// An error (`gateway validate`; and [`load`]).
    Error,
    /// A warning, and the part that refers to it inactive while the rest is served
    /// (`gateway run`: Istio's failure isolation).
    Isolate,
}

/// The outcome of a load: the snapshot or every error, and every warning either way
/// (sorted by position; the snapshot holds them too).
#[derive(Debug)]
pub struct Loaded {
    pub result: Result<Snapshot, ConfigErrors>,
    pub warnings: Vec<Warning>,
    /// With errors: the snapshot as far as it was built, what was wrong left out. Never
    /// to serve; `gateway validate` compiles it to report the next phase's errors (route
    /// tables, certificates) in the same run.
    pub partial: Option<Snapshot>,
}

/// Loads files, and directories (their `*.yaml` / `*.yml` files, sorted by
/// name, not recursive), in the order given. Missing references are errors.
pub fn load(paths: &[PathBuf], id: &GatewayIdentity) -> Result<Snapshot, ConfigErrors> {
    load_with(paths, id, Missing::Error).result
}

/// [`load`], saying what missing references are, with the warnings.
pub fn load_with(paths: &[PathBuf], id: &GatewayIdentity, missing: Missing) -> Loaded {
    let mut errors = Vec::new();
    let mut parsed = parse::Parsed::default();
    for file in expand_paths(paths, &mut errors) {
        match std::fs::read_to_string(&file) {
            Ok(text) => parsed.add_file(&file, &text, &mut errors),
            Err(e) => errors.push(io_error(&file, format!("cannot read file: {e}"))),
        }
    }
    finish(parsed, id, errors, missing)
}

/// Loads YAML text as if it were a file called `name` (for tests and tools).
pub fn load_str(name: &str, yaml: &str, id: &GatewayIdentity) -> Result<Snapshot, ConfigErrors> {
    load_str_with(name, yaml, id, Missing::Error).result
}

/// [`load_str`], saying what missing references are, with the warnings.
pub fn load_str_with(name: &str, yaml: &str, id: &GatewayIdentity, missing: Missing) -> Loaded {
    let mut errors = Vec::new();
    let mut parsed = parse::Parsed::default();
    parsed.add_file(Path::new(name), yaml, &mut errors);
    finish(parsed, id, errors, missing)
}

fn finish(
    parsed: parse::Parsed,
    id: &GatewayIdentity,
    mut errors: Vec<ConfigError>,
    mode: Missing,
) -> Loaded {
    let mut missing = Vec::new();
    let mut snapshot = validate::build(parsed, id, &mut errors, &mut missing);
    let mut warnings = std::mem::take(&mut snapshot.warnings);
    match mode {
        Missing::Error => errors.extend(missing.iter().map(Warning::to_error)),
        Missing::Isolate => warnings.append(&mut missing),
    }
    warnings.sort();
    warnings.dedup();
    if errors.is_empty() {
        snapshot.warnings = warnings.clone();
        return Loaded {
            result: Ok(snapshot),
            warnings,
            partial: None,
        };
    }
    // Stable: keeps discovery order for errors at the same place.
    errors.sort_by(|a, b| a.loc.cmp(&b.loc));
    errors.dedup();
    Loaded {
        result: Err(ConfigErrors(errors)),
        warnings,
        partial: Some(snapshot),
    }
}

fn io_error(file: &Path, message: String) -> ConfigError {
    ConfigError {
        loc: Loc {
            file: file.to_path_buf(),
            line: 1,
            col: 1,
        },
        message,
    }
}

fn expand_paths(paths: &[PathBuf], errors: &mut Vec<ConfigError>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        let entries = match std::fs::read_dir(path) {
            Ok(entries) => entries,
            Err(e) => {
                errors.push(io_error(path, format!("cannot read directory: {e}")));
                continue;
            }
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
            })
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

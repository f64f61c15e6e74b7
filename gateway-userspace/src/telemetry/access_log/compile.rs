//! Which access logs are on: MeshConfig `accessLogFile`/`accessLogFormat`/providers and
//! Telemetry resources, compiled once per config with every error located.
use std::{collections::BTreeMap, path::PathBuf};

use crate::config::{
    ConfigError, GatewayIdentity, Origin, Snapshot,
    istio::Telemetry as TelemetryResource,
    mesh::{MeshConfig, ProviderKind},
};

use crate::telemetry::{filter::Filter, format::Format};

/// One active access log: where it goes, its format and its filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The Telemetry provider name (`envoy`, or a MeshConfig extension provider), or
    /// `mesh` for MeshConfig's own `accessLogFile`.
    pub provider: String,
    pub path: PathBuf,
    pub format: Format,
    pub filter: Option<Filter>,
    /// Which resource turned it on, for the startup log line and config_dump.
    pub source: String,
}

/// The access logs one config turns on, compiled: formats and filters parsed once.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AccessLogConfig {
    pub targets: Vec<Target>,
}

impl AccessLogConfig {
    /// Says which access logs are on (at start, and when a reload changes them).
    pub fn log_summary(&self) {
        if self.targets.is_empty() {
            tracing::info!(
                "access logs off (no MeshConfig accessLogFile, no Telemetry turning them on)"
            );
        }
        for t in &self.targets {
            tracing::info!(
                provider = %t.provider,
                file = %t.path.display(),
                filter = t.filter.is_some(),
                "access log on ({})",
                t.source
            );
        }
    }
}

/// Compiles the access-log setup of `snap` for the gateway `id`: the formats of its
/// MeshConfig (`accessLogFormat`, every `envoyFileAccessLog` provider's `logFormat`)
/// and the filters of every Telemetry resource, each error with the `file:line:col` of
/// the field; then which logs are on ([`resolve`]).
pub fn compile(snap: &Snapshot, id: &GatewayIdentity) -> Result<AccessLogConfig, Vec<ConfigError>> {
    compile_parts(
        &snap.mesh,
        &snap.resources.telemetry,
        &snap.resources.telemetry_origins,
        id,
    )
}

/// [`compile`] of the parts: `origins[i]` is where `telemetry[i]` is written.
pub fn compile_parts(
    mesh: &MeshConfig,
    telemetry: &[TelemetryResource],
    origins: &[Origin],
    id: &GatewayIdentity,
) -> Result<AccessLogConfig, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let error = |origin: &Origin, field: &str, message: String| ConfigError {
        loc: origin.loc(field),
        message,
    };
    let mesh_format = Format::for_mesh(mesh.access_log_encoding, &mesh.access_log_format)
        .map_err(|e| {
            errors.push(error(
                &mesh.origin,
                "accessLogFormat",
                format!("accessLogFormat: {e}"),
            ))
        })
        .ok();
    let mut provider_formats: BTreeMap<&str, Format> = BTreeMap::new();
    for (i, p) in mesh.extension_providers.iter().enumerate() {
        let Some(f) = &p.envoy_file_access_log else {
            continue;
        };
        match Format::for_provider(f.log_format.as_ref()) {
            // The first provider of a name is the one used (`MeshConfig::provider`).
            Ok(format) => {
                provider_formats.entry(&p.name).or_insert(format);
            }
            Err(e) => errors.push(error(
                &mesh.origin,
                &format!("extensionProviders[{i}].envoyFileAccessLog.logFormat"),
                format!("extensionProviders \"{}\": logFormat: {e}", p.name),
            )),
        }
    }
    let no_origin = Origin::default();
    let filters: Vec<Vec<Option<Filter>>> = telemetry
        .iter()
        .enumerate()
        .map(|(t, res)| {
            let origin = origins.get(t).unwrap_or(&no_origin);
            res.spec
                .access_logging
                .iter()
                .enumerate()
                .map(|(i, al)| {
                    let f = al.filter.as_ref()?;
                    Filter::parse(&f.expression)
                        .map_err(|e| {
                            errors.push(error(
                                origin,
                                &format!("spec.accessLogging[{i}].filter.expression"),
                                format!("unsupported filter expression: {e}"),
                            ))
                        })
                        .ok()
                })
                .collect()
        })
        .collect();
    match mesh_format {
        Some(mesh_format) if errors.is_empty() => Ok(AccessLogConfig {
            targets: resolve(
                mesh,
                telemetry,
                &Compiled {
                    mesh_format,
                    provider_formats,
                    filters,
                },
                id,
            ),
        }),
        _ => Err(errors),
    }
}

/// The formats and filters [`resolve`] picks from, compiled once.
struct Compiled<'a> {
    mesh_format: Format,
    provider_formats: BTreeMap<&'a str, Format>,
    /// Per Telemetry resource, per `accessLogging` entry.
    filters: Vec<Vec<Option<Filter>>>,
}

/// Istio's precedence: for each provider, the narrowest Telemetry that mentions it wins —
/// workload (selector matching the gateway's labels, in the gateway's namespace) over
/// namespace (the gateway's namespace, no selector) over mesh-wide (root namespace, no
/// selector). With no Telemetry access-log setting at all, MeshConfig `accessLogFile`
/// decides. Within a level, the first resource in load order is used (Istio: oldest).
fn resolve(
    mesh: &MeshConfig,
    telemetry: &[TelemetryResource],
    compiled: &Compiled<'_>,
    id: &GatewayIdentity,
) -> Vec<Target> {
    let root = mesh.root_namespace();
    let selects = |t: &TelemetryResource| {
        t.spec.selector.as_ref().is_some_and(|s| {
            s.match_labels
                .iter()
                .all(|(k, v)| id.labels.get(k) == Some(v))
        })
    };
    let no_selector = |t: &TelemetryResource| {
        t.spec.selector.is_none() && t.spec.target_ref.is_none() && t.spec.target_refs.is_empty()
    };
    let with_logging = |(_, t): &(usize, &TelemetryResource)| !t.spec.access_logging.is_empty();
    let mesh_wide = telemetry
        .iter()
        .enumerate()
        .filter(with_logging)
        .find(|(_, t)| t.metadata.namespace() == root && no_selector(t));
    let namespace = (id.namespace != root)
        .then(|| {
            telemetry
                .iter()
                .enumerate()
                .filter(with_logging)
                .find(|(_, t)| t.metadata.namespace() == id.namespace && no_selector(t))
        })
        .flatten();
    let workload = telemetry
        .iter()
        .enumerate()
        .filter(with_logging)
        .find(|(_, t)| t.metadata.namespace() == id.namespace && selects(t));

    // provider -> (enabled, filter, source), overwritten level by level.
    let mut chosen: BTreeMap<String, (bool, Option<Filter>, String)> = BTreeMap::new();
    let default_providers = if mesh.default_providers.access_logging.is_empty() {
        vec!["envoy".to_string()]
    } else {
        mesh.default_providers.access_logging.clone()
    };
    for (ti, t) in [mesh_wide, namespace, workload].into_iter().flatten() {
        // Istio's mergeLogs: an entry whose `match.mode` is not the proxy's is skipped;
        // a gateway's mode is CLIENT (model/telemetry.go workloadMode).
        for (i, al) in t
            .spec
            .access_logging
            .iter()
            .enumerate()
            .filter(|(_, al)| al.applies_to_gateway())
        {
            let names: Vec<String> = if al.providers.is_empty() {
                default_providers.clone()
            } else {
                al.providers.iter().map(|p| p.name.clone()).collect()
            };
            let filter = compiled
                .filters
                .get(ti)
                .and_then(|f| f.get(i))
                .cloned()
                .flatten();
            for n in names {
                chosen.insert(
                    n,
                    (
                        !al.disabled.unwrap_or(false),
                        filter.clone(),
                        format!("Telemetry {}", t.key()),
                    ),
                );
            }
        }
    }

    let mut targets = Vec::new();
    if chosen.is_empty() {
        if !mesh.access_log_file.is_empty() {
            targets.push(Target {
                provider: "mesh".into(),
                path: mesh.access_log_file.clone().into(),
                format: compiled.mesh_format.clone(),
                filter: None,
                source: "MeshConfig accessLogFile".into(),
            });
        }
        return targets;
    }
    for (name, (enabled, filter, source)) in chosen {
        if !enabled {
            continue;
        }
        let (path, format) = match mesh.provider_kind(&name) {
            ProviderKind::Envoy => (
                // Istio's built-in `envoy` provider: MeshConfig's file, else stdout.
                if mesh.access_log_file.is_empty() {
                    "/dev/stdout".into()
                } else {
                    mesh.access_log_file.clone()
                },
                compiled.mesh_format.clone(),
            ),
            ProviderKind::File(f) => match compiled.provider_formats.get(name.as_str()) {
                Some(format) => (f.path.clone(), format.clone()),
                None => continue, // not compiled: reported by `compile`
            },
            ProviderKind::Unsupported => {
                tracing::warn!(
                    provider = %name,
                    "{source}: access-log provider is not an envoyFileAccessLog provider of the mesh config; ignored"
                );
                continue;
            }
        };
        targets.push(Target {
            provider: name,
            path: path.into(),
            format,
            filter,
            source,
        });
    }
    targets
}

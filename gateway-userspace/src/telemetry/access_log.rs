//! Access logs: which ones are on (MeshConfig and Telemetry resources, resolved once per
//! config), and the writers of the lines each request or L4 flow yields.
//!
//! The data path formats a line and hands it to a bounded channel with `try_send`; a
//! writer thread per file does the I/O. A sink that can't keep up (a full disk, a pipe
//! nobody reads) loses lines, counted in `gateway_access_log_dropped_total`, and never
//! slows traffic down.
use std::{
    collections::BTreeMap,
    io::Write as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
};

use crate::config::{
    ConfigError, GatewayIdentity, Origin, Snapshot,
    istio::Telemetry as TelemetryResource,
    mesh::{MeshConfig, ProviderKind},
};

use super::{AccessRecord, filter::Filter, format::Format};

/// Lines a sink may have queued before new ones are dropped (`--access-log-buffer`).
pub const DEFAULT_BUFFER_LINES: usize = 4096;

// === which logs are on ===

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

// === writers ===

/// A file the access log is written to, by its own thread.
pub struct Sink {
    pub path: PathBuf,
    tx: SyncSender<String>,
    pub written: Arc<AtomicU64>,
    pub dropped: Arc<AtomicU64>,
    /// Lines queued, and lines the writer has finished with (written or failed): equal
    /// once the queue is empty.
    queued: AtomicU64,
    finished: Arc<AtomicU64>,
}

impl Sink {
    /// Starts the writer thread. The file is opened there, so that a FIFO without a
    /// reader (whose open blocks) can't hold up the start.
    pub fn start(path: PathBuf, capacity: usize) -> Sink {
        let (tx, rx) = sync_channel::<String>(capacity.max(1));
        let written = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let finished = Arc::new(AtomicU64::new(0));
        let (w, d, p) = (written.clone(), dropped.clone(), path.clone());
        let f = finished.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(p, rx, [w, d, f]));
        if let Err(e) = spawned {
            tracing::error!(path = %path.display(), "access log writer thread: {e}");
        }
        Sink {
            path,
            tx,
            written,
            dropped,
            queued: AtomicU64::new(0),
            finished,
        }
    }

    /// Queues a line; never blocks.
    pub fn send(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits (blocking, at most `within`) until the writer has taken care of every line
    /// queued so far: before the process exits.
    pub fn flush(&self, within: std::time::Duration) {
        let until = std::time::Instant::now() + within;
        while self.finished.load(Ordering::Relaxed) < self.queued.load(Ordering::Relaxed)
            && std::time::Instant::now() < until
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// `counters`: lines written, dropped, finished with.
fn write_loop(path: PathBuf, rx: Receiver<String>, counters: [Arc<AtomicU64>; 3]) {
    let [written, dropped, finished] = counters;
    enum Out {
        Stdout,
        Stderr,
        File(std::io::BufWriter<std::fs::File>),
    }
    // /dev/stdout is the process's fd 1 itself: reopening it would start at offset 0 of
    // a redirected file and overwrite what is there.
    let mut out = match path.to_str() {
        Some("/dev/stdout") => Out::Stdout,
        Some("/dev/stderr") => Out::Stderr,
        _ => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(f) => Out::File(std::io::BufWriter::with_capacity(64 * 1024, f)),
            Err(e) => {
                tracing::error!(path = %path.display(), "access log: cannot open: {e}; lines are dropped");
                for _ in rx {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    finished.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        },
    };
    let mut failed = false;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 256 {
                break;
            }
        }
        let n = batch.len() as u64;
        let result = match &mut out {
            // One write per line: a line never interleaves with the gateway's own log.
            Out::Stdout => {
                let mut o = std::io::stdout().lock();
                batch
                    .iter()
                    .try_for_each(|l| o.write_all(l.as_bytes()))
                    .and_then(|_| o.flush())
            }
            Out::Stderr => {
                let mut o = std::io::stderr().lock();
                batch.iter().try_for_each(|l| o.write_all(l.as_bytes()))
            }
            Out::File(f) => batch
                .iter()
                .try_for_each(|l| f.write_all(l.as_bytes()))
                .and_then(|_| f.flush()),
        };
        match result {
            Ok(()) => {
                written.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                dropped.fetch_add(n, Ordering::Relaxed);
                if !failed {
                    tracing::warn!(path = %path.display(), "access log write failed: {e}");
                    failed = true;
                }
            }
        }
        finished.fetch_add(n, Ordering::Relaxed);
    }
}

/// The access logs of a running gateway.
pub struct AccessLogs {
    pub targets: Vec<(Target, Arc<Sink>)>,
}

impl AccessLogs {
    pub fn off() -> AccessLogs {
        AccessLogs { targets: vec![] }
    }

    /// One sink per distinct path, shared by the targets writing there; a path `old`
    /// writes keeps its sink (no line of its queue lost, none written twice).
    pub fn start(config: AccessLogConfig, capacity: usize, old: &AccessLogs) -> AccessLogs {
        let mut sinks: BTreeMap<PathBuf, Arc<Sink>> = old
            .targets
            .iter()
            .map(|(t, s)| (t.path.clone(), s.clone()))
            .collect();
        let targets = config
            .targets
            .into_iter()
            .map(|t| {
                let sink = sinks
                    .entry(t.path.clone())
                    .or_insert_with(|| Arc::new(Sink::start(t.path.clone(), capacity)))
                    .clone();
                (t, sink)
            })
            .collect();
        AccessLogs { targets }
    }

    pub fn enabled(&self) -> bool {
        !self.targets.is_empty()
    }

    /// Whether these are the logs `config` turns on.
    pub fn is(&self, config: &AccessLogConfig) -> bool {
        self.targets
            .iter()
            .map(|(t, _)| t)
            .eq(config.targets.iter())
    }

    pub fn log(&self, r: &AccessRecord) {
        for (t, sink) in &self.targets {
            if t.filter.as_ref().is_none_or(|f| f.matches(r)) {
                sink.send(t.format.render(r));
            }
        }
    }

    /// Distinct sinks (for the metrics).
    pub fn sinks(&self) -> Vec<Arc<Sink>> {
        let mut seen: Vec<Arc<Sink>> = Vec::new();
        for (_, s) in &self.targets {
            if !seen.iter().any(|x| Arc::ptr_eq(x, s)) {
                seen.push(s.clone());
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::istio::{
        AccessLogging, ObjectMeta, ProviderRef, Resource, TelemetrySpec, WorkloadSelector,
    };

    fn tel(ns: &str, selector: Option<(&str, &str)>, disabled: bool) -> TelemetryResource {
        Resource {
            api_version: "telemetry.istio.io/v1".into(),
            kind: "Telemetry".into(),
            metadata: ObjectMeta {
                name: format!("t-{ns}-{}", selector.is_some()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: TelemetrySpec {
                selector: selector.map(|(k, v)| WorkloadSelector {
                    match_labels: [(k.to_string(), v.to_string())].into(),
                }),
                access_logging: vec![AccessLogging {
                    providers: vec![ProviderRef {
                        name: "envoy".into(),
                    }],
                    disabled: Some(disabled),
                    ..Default::default()
                }],
                ..Default::default()
            },
            status: None,
        }
    }

    fn on(mesh: &MeshConfig, t: &[TelemetryResource], id: &GatewayIdentity) -> bool {
        !compile_parts(mesh, t, &[], id).unwrap().targets.is_empty()
    }

    /// Istio's mergeLogs for a gateway (mode CLIENT): a SERVER entry does not apply.
    #[test]
    fn match_mode_server_does_not_apply_to_a_gateway() {
        use crate::config::istio::{LogSelector, WorkloadMode};
        let mesh = MeshConfig::default();
        let id = GatewayIdentity::default();
        for (mode, logs) in [
            (None, true),
            (Some(WorkloadMode::Client), true),
            (Some(WorkloadMode::ClientAndServer), true),
            (Some(WorkloadMode::Server), false),
        ] {
            let mut t = tel("istio-system", None, false);
            t.spec.access_logging[0].match_ = Some(LogSelector { mode });
            assert_eq!(on(&mesh, &[t], &id), logs, "{mode:?}");
        }
    }

    #[test]
    fn istio_precedence() {
        let id = GatewayIdentity::default();
        let other_ns = GatewayIdentity {
            namespace: "ingress".into(),
            ..GatewayIdentity::default()
        };
        let mesh = MeshConfig::default();
        // Off by default.
        assert!(!on(&mesh, &[], &id));
        // The walkthrough: a selector on our labels turns it on; on other labels, not.
        assert!(on(
            &mesh,
            &[tel(
                "istio-system",
                Some(("app", "istio-ingressgateway")),
                false
            )],
            &id
        ));
        assert!(!on(
            &mesh,
            &[tel("istio-system", Some(("app", "other")), false)],
            &id
        ));
        // Mesh-wide on, workload off: off. Mesh-wide off, namespace on: on.
        assert!(!on(
            &mesh,
            &[
                tel("istio-system", None, false),
                tel("istio-system", Some(("istio", "ingressgateway")), true)
            ],
            &id
        ));
        assert!(on(
            &mesh,
            &[tel("istio-system", None, true), tel("ingress", None, false)],
            &other_ns
        ));
        assert!(!on(
            &mesh,
            &[tel("istio-system", None, false), tel("ingress", None, true)],
            &other_ns
        ));
        // A Telemetry in another namespace doesn't apply.
        assert!(!on(&mesh, &[tel("default", None, false)], &other_ns));
        // MeshConfig's file is the fallback; a Telemetry that disables wins over it.
        let mesh_on = MeshConfig {
            access_log_file: "/dev/stdout".into(),
            ..Default::default()
        };
        assert!(on(&mesh_on, &[], &id));
        assert!(!on(&mesh_on, &[tel("istio-system", None, true)], &id));
    }

    /// Filters and formats are compiled here, once: every bad one an error at its
    /// field (a Telemetry's filter expression, the MeshConfig's formats).
    #[test]
    fn bad_filters_and_formats_are_errors_with_positions() {
        let id = GatewayIdentity::default();
        let yaml = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: istio-system}\nspec:\n  accessLogging:\n  - filter:\n      expression: source.workload == 'x'\n";
        let snap = crate::config::load_str("t.yaml", yaml, &id).expect("loads");
        let e = crate::config::ConfigErrors(compile(&snap, &id).unwrap_err()).to_string();
        assert!(
            e.starts_with("t.yaml:7:19: unsupported filter expression"),
            "{e}"
        );
        let typo = yaml.replace(
            "filter:\n      expression: source.workload == 'x'",
            "disable: true",
        );
        let e = crate::config::load_str("t.yaml", &typo, &id)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `disable`"), "{e}");

        let mesh = "accessLogFile: /dev/stdout\naccessLogFormat: \"%NOPE%\"\nextensionProviders:\n- name: f\n  envoyFileAccessLog:\n    path: /tmp/f.log\n    logFormat: {text: \"%ALSO_NOPE%\"}\n";
        let mut snap = crate::config::load_str("t.yaml", yaml, &id).expect("loads");
        snap.mesh = crate::config::mesh::parse(std::path::Path::new("mesh.yaml"), mesh).unwrap();
        let e = crate::config::ConfigErrors(compile(&snap, &id).unwrap_err()).lines();
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(
            e[0].starts_with("mesh.yaml:2:18: accessLogFormat: ")
                && e[0].contains("unsupported operator %NOPE%"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("mesh.yaml:7:17: extensionProviders \"f\": logFormat: "),
            "{e:?}"
        );
        assert!(e[2].starts_with("t.yaml:7:19: "), "{e:?}");
        let json = crate::config::mesh::parse(
            std::path::Path::new("mesh.yaml"),
            "accessLogEncoding: JSON\naccessLogFormat: \"not json\"\n",
        )
        .unwrap();
        let e = compile_parts(&json, &[], &[], &id).unwrap_err();
        assert!(e[0].message.contains("JSON object"), "{e:?}");
    }
}

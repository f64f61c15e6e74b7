//! Changing config while running: SIGHUP, or a change to a `--config` path or the
//! `--mesh-config` file (inotify, debounced), compiles a new [`Plan`] and access-log
//! setup completely (every file parsed, certificates loaded, formats and filters
//! compiled, new ports bound) and swaps them in at once; anything wrong rejects the whole
//! reload, logs every error with its `file:line:col`, counts it, and leaves the running
//! Plan (and `/config_dump`) as they were.
//!
//! What a swap changes (Envoy's LDS/RDS/CDS update, as Istio pushes one): new
//! connections and every new request use the new Plan, including the next request on
//! an open keep-alive or HTTP/2 connection; requests in flight finish on the Plan they
//! started with; spliced flows and tunnels keep going (their sockets and sockhash
//! entries are not touched). New TLS handshakes use the new certificates. Ports are
//! added and removed by [`crate::runtime::ports::Ports`]. Clusters defined the same keep
//! their balancers and upstream pools ([`Plan::carry_from`]).
//!
//! The access logs (MeshConfig `accessLogFile`/`Encoding`/`Format`, its providers,
//! Telemetry resources) are swapped with the Plan ([`crate::telemetry::Telemetry::apply`]):
//! a file that stays keeps its writer, so no line is lost or written twice. MeshConfig
//! `pathNormalization` and `rootNamespace` come with the Plan's snapshot.
//!
//! Not reloaded (read at start only): the command line, and MeshConfig
//! `dnsRefreshRate` (a change is logged).
use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config,
    plan::Plan,
    server::Gateway,
    telemetry::{Telemetry, access_log::AccessLogConfig},
};

/// How long the config paths must be quiet after a change before the reload runs
/// (an editor or `kubectl cp` writes a file in several steps).
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// `gateway_config_reloads_total{result}` and `gateway_config_generation`.
pub fn render_prometheus(gw: &Gateway, out: &mut String) {
    use crate::sys::prom::{Kind, Prom};
    let mut p = Prom::new(out);
    p.family(
        "gateway_config_reloads_total",
        Kind::Counter,
        "Config reloads (SIGHUP or a changed --config file) by result: applied, rejected (the running config kept), unchanged.",
    );
    for (result, c) in [
        ("applied", &gw.reloads.applied),
        ("rejected", &gw.reloads.rejected),
        ("unchanged", &gw.reloads.unchanged),
    ] {
        p.sample(
            "gateway_config_reloads_total",
            &[("result", &result)],
            c.load(Ordering::Relaxed),
        );
    }
    p.family(
        "gateway_config_generation",
        Kind::Gauge,
        "The serving config's generation: 1 at start, +1 per applied reload.",
    )
    .sample("gateway_config_generation", &[], gw.plan().generation);
}

/// Where config comes from, and says when it changed: files today
/// (`crate::cli::Files`); a
/// Kubernetes watch of Istio's CRDs (kube-rs) can implement it later. N gateway hosts
/// then follow one cluster's config as Istio's gateways do: each host watches the API
/// server itself (list+watch of Gateway, VirtualService, DestinationRule, ServiceEntry,
/// AuthorizationPolicy, Telemetry and the Secrets of its namespace, filtered by its
/// own `--label`s as `selector`s are), and compiles and swaps its own Plan; no host
/// depends on another, and a bad push is rejected by each host with the running config
/// kept, as here.
pub trait ConfigSource: Send + Sync + 'static {
    /// The whole config now: the snapshot, or every line to log (each error with its
    /// location, then a count).
    fn load(&self) -> Result<config::Snapshot, Vec<String>>;
    /// Starts sending on `changed` whenever the config may have changed; watching lasts
    /// as long as the returned value lives.
    fn watch(
        &self,
        changed: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> Result<Box<dyn Send>, String>;
}

/// What a reload needs besides the gateway.
pub struct Source {
    pub config: Arc<dyn ConfigSource>,
    /// How long a removed listener's connections drain (`--drain-duration`).
    pub drain_duration: Duration,
    /// `--dns-refresh-rate` was given (MeshConfig `dnsRefreshRate` is then not used).
    pub dns_refresh_rate_flag: bool,
}

/// Reloads on SIGHUP and on changes to the config paths, for the life of the process.
pub async fn run(gw: Arc<Gateway>, source: Source) {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("SIGHUP does not reload: {e}");
            None
        }
    };
    let (tx, mut changed) = tokio::sync::mpsc::unbounded_channel();
    let _watcher = match source.config.watch(tx) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!("config files are not watched ({e}); send SIGHUP to reload");
            None
        }
    };
    loop {
        let why = tokio::select! {
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
            Some(()) = changed.recv() => {
                // Debounce: wait until the paths are quiet.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, changed.recv()).await {}
                "config file changed"
            }
        };
        reload(&gw, &source, why).await;
    }
}

/// Watches every config path: a directory and what is in it, a file through its
/// directory (editors and Kubernetes' ConfigMap volumes replace files by renaming, which
/// a watch on the file itself would miss).
pub fn watch_paths(
    paths: &[PathBuf],
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let files: BTreeSet<PathBuf> = paths.iter().filter(|p| !p.is_dir()).cloned().collect();
    let dirs: Vec<PathBuf> = paths.iter().filter(|p| p.is_dir()).cloned().collect();
    let wanted = {
        let (files, dirs) = (files.clone(), dirs.clone());
        move |p: &std::path::Path| files.contains(p) || dirs.iter().any(|d| p.starts_with(d))
    };
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return;
        }
        if ev.paths.iter().any(|p| wanted(p)) {
            let _ = tx.send(());
        }
    })?;
    for d in &dirs {
        w.watch(d, RecursiveMode::NonRecursive)?;
    }
    let parents: BTreeSet<PathBuf> = files
        .iter()
        .map(|f| match f.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect();
    for p in &parents {
        w.watch(p, RecursiveMode::NonRecursive)?;
    }
    Ok(w)
}

/// One reload: compile (off the workers: a large config takes a while), bind, swap,
/// or reject with every error.
pub async fn reload(gw: &Arc<Gateway>, source: &Source, why: &str) {
    let old = gw.plan();
    let compiled = {
        let (config, old) = (source.config.clone(), old.clone());
        let telemetry = gw.telemetry.clone();
        tokio::task::spawn_blocking(move || compile(&*config, &old, &telemetry)).await
    };
    let (mut plan, access) = match compiled {
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) => {
            gw.reloads.unchanged.fetch_add(1, Ordering::Relaxed);
            tracing::info!(target: "gateway::reload", reason = why, generation = old.generation, "reload: config unchanged");
            return;
        }
        Ok(Err(lines)) => return rejected(gw, &old, why, &lines),
        Err(e) => return rejected(gw, &old, why, &[format!("the config compiler failed: {e}")]),
    };
    plan.carry_from(&old);
    // New ports are bound before anything changes: a port in use rejects the reload.
    let served: BTreeSet<u16> = gw.ports.served().into_iter().collect();
    let wanted: BTreeSet<u16> = plan.ports().collect();
    let added: Vec<u16> = wanted.difference(&served).copied().collect();
    let removed: Vec<u16> = served.difference(&wanted).copied().collect();
    let bound = match crate::listener::bind_all(gw, added.iter().copied(), gw.ports.worker_count())
    {
        Ok(b) => b,
        Err(e) => return rejected(gw, &old, why, &[format!("binding a new Gateway port: {e}")]),
    };
    if let Err(e) = plan.adopt_kernel_state(&old) {
        return rejected(
            gw,
            &old,
            why,
            &[format!(
                "the XDP guard's maps cannot take the new policies: {e}"
            )],
        );
    }
    let generation = plan.generation;
    let plan = Arc::new(plan);
    gw.swap_plan(plan.clone());
    // The access logs of the new config, right behind its routes.
    gw.telemetry.apply(access, &plan.snapshot);
    mesh_changes(&old.snapshot.mesh, &plan.snapshot.mesh, source);
    for (port, socks) in bound {
        if let Err(e) = crate::runtime::ports::start(gw, port, socks) {
            tracing::error!(target: "gateway::reload", port, "new listener not started: {e}");
        }
    }
    for port in &removed {
        gw.ports.remove(*port, source.drain_duration);
    }
    gw.reloads.applied.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        target: "gateway::reload",
        reason = why,
        generation,
        ports = ?wanted,
        added = ?added,
        removed = ?removed,
        "config reloaded"
    );
}

/// Loads and compiles the config (the Plan, and the access logs for `telemetry`);
/// None when it is the running one.
fn compile(
    source: &dyn ConfigSource,
    old: &Plan,
    telemetry: &Telemetry,
) -> Result<Option<(Plan, AccessLogConfig)>, Vec<String>> {
    let snapshot = source.load()?;
    if snapshot == *old.snapshot {
        return Ok(None);
    }
    for w in &snapshot.warnings {
        tracing::warn!("{w}");
    }
    compile_all(snapshot, old.generation + 1, telemetry)
        .map(Some)
        .map_err(|errors| errors.lines())
}

/// Everything compiled from one config, as the start and every reload compile it: the
/// Plan, and the access logs for `telemetry`; or every error of both.
pub fn compile_all(
    snapshot: config::Snapshot,
    generation: u64,
    telemetry: &Telemetry,
) -> Result<(Plan, AccessLogConfig), config::ConfigErrors> {
    let access = telemetry.compile(&snapshot);
    match (Plan::compile(snapshot, generation), access) {
        (Ok(plan), Ok(access)) => Ok((plan, access)),
        (plan, access) => {
            let mut errors = plan.err().map(|e| e.0).unwrap_or_default();
            errors.extend(access.err().unwrap_or_default());
            Err(config::ConfigErrors(errors))
        }
    }
}

/// Says what an applied MeshConfig change does: `pathNormalization` applies from the
/// next request; `dnsRefreshRate` is read at start only.
fn mesh_changes(was: &config::mesh::MeshConfig, now: &config::mesh::MeshConfig, source: &Source) {
    if now.normalization() != was.normalization() {
        tracing::info!(target: "gateway::reload", "request paths normalized as pathNormalization {} (MeshConfig) from the next request", now.normalization().name());
    }
    if now.dns_refresh_rate() != was.dns_refresh_rate() && !source.dns_refresh_rate_flag {
        tracing::warn!(target: "gateway::reload", "MeshConfig dnsRefreshRate changed: the DNS refresh interval is read at start; the new one takes effect at the next start");
    }
}

fn rejected(gw: &Gateway, old: &Plan, why: &str, lines: &[String]) {
    gw.reloads.rejected.fetch_add(1, Ordering::Relaxed);
    for l in lines {
        tracing::error!(target: "gateway::reload", "{l}");
    }
    tracing::error!(
        target: "gateway::reload",
        reason = why,
        generation = old.generation,
        "reload rejected: the running config is kept"
    );
}

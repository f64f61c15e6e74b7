//! The command line: `gateway run` and `gateway validate`.
use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::{
    admin,
    config::{self, GatewayIdentity},
    kernel::splice::{
        SpliceMode, SpliceOptions, Splicer,
        pipe::{OffloadPolicy, PipeConfig},
    },
    listener,
    server::{Gateway, Options},
};

/// Exit status for invalid configuration (EX_USAGE, as linkerd does).
pub const EXIT_BAD_CONFIG: i32 = 64;

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

#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// YAML files or directories of them (multi-document, as for `kubectl apply -f`).
    #[arg(long, short = 'c', required = true, num_args = 1..)]
    pub config: Vec<PathBuf>,
    /// The gateway's own namespace (where credentialName Secrets live).
    #[arg(long, default_value = "istio-system")]
    pub namespace: String,
    /// The gateway's labels, matched by Gateway `selector`s (repeatable k=v). Default:
    /// istio=ingressgateway and app=istio-ingressgateway, like Istio's default gateway.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// MeshConfig YAML (accessLogFile, accessLogEncoding, accessLogFormat, ...).
    #[arg(long)]
    pub mesh_config: Option<PathBuf>,
    /// Warnings are errors (exit 64): fields read and not acted on (GW1xxx) and, at
    /// run, references to things that do not exist (GW2xxx). See the README's table.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// How TCP and TLS-passthrough payload is moved: eBPF in the kernel, splice(2)
    /// through pipes (zero-copy, in userspace; `userspace` is an alias), or io_uring
    /// copies. `auto`: every flow starts on splice(2) and is handed to the kernel once
    /// it proves bulk (see --offload-bytes), when eBPF loads.
    #[arg(long, value_enum, default_value = "auto")]
    pub splice: SpliceMode,
    /// Kernel splice: bytes of one direction a peer socket may hold (psock backlog +
    /// send queue) before the flow pauses and the sender's TCP window closes.
    #[arg(long, default_value = "32m", value_parser = parse_size)]
    pub splice_budget: usize,
    /// `--splice auto`: a flow is handed to the kernel once one direction moved this
    /// many bytes...
    #[arg(long, default_value = "1m", value_parser = parse_size)]
    pub offload_bytes: usize,
    /// ...at an average of at least this many bytes per read wake-up (bulk transfers
    /// find large chunks; request/response flows one message per wake-up).
    #[arg(long, default_value = "16k", value_parser = parse_size)]
    pub offload_min_chunk: usize,
    /// `--splice auto`: also offload flows whose packets arrive on CPUs outside this
    /// process's affinity (the kernel splice then runs there). Off by default: an
    /// operator who pinned the gateway gave it those cores, not the others.
    #[arg(long)]
    pub offload_foreign_cpus: bool,
    /// Capacity of each pipe of `--splice splice` (bytes; k/m suffixes for KiB/MiB),
    /// capped by /proc/sys/fs/pipe-max-size. One pipe per direction per busy flow.
    #[arg(long, default_value = "256k", value_parser = parse_size)]
    pub splice_pipe_size: usize,
    /// Empty pipes `--splice splice` keeps for reuse (2 fds each).
    #[arg(long, default_value_t = crate::kernel::splice::pipe::DEFAULT_POOL_MAX)]
    pub splice_pipe_pool: usize,
    /// Admin API address (/ready, /stats/prometheus, /config_dump).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Istio's status port: `/healthz/ready` (200 once the config serves, 503 before and
    /// while draining), on the addresses the Gateway ports use. `0` or `off`: not served.
    #[arg(long, default_value = "15021", value_name = "PORT|off", value_parser = parse_port_or_off)]
    pub status_port: PortOrOff,
    /// Istio's Prometheus port: `/stats/prometheus` (the admin port's text), on the
    /// addresses the Gateway ports use. `0` or `off`: not served.
    #[arg(long, default_value = "15090", value_name = "PORT|off", value_parser = parse_port_or_off)]
    pub prometheus_port: PortOrOff,
    /// Address the Gateway ports are bound on. Default: dual stack, every IPv4 and IPv6
    /// address (0.0.0.0 and [::], as Istio's dual-stack gateways listen); 0.0.0.0 for
    /// IPv4 only, :: as the system binds it (IPv4 too, v4-mapped, unless
    /// net.ipv6.bindv6only=1), or one address.
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// How long a TLS port waits for a complete ClientHello.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub client_hello_timeout: Duration,
    /// Upstream connect timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Close an L4 flow (TCP, TLS passthrough) in which no byte moved either way for this
    /// long (Istio's TCP idleTimeout, 1 h by default): a FIN each way, or a reset when
    /// bytes were still waiting for a stalled reader. 0: never. A DestinationRule's
    /// `connectionPool.tcp.idleTimeout` overrides it for the routes to its service.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub tcp_idle_timeout: Duration,
    /// Downstream connections open at once, all listeners together; past it new ones are
    /// reset at accept and counted (gateway_downstream_cx_overflow_total). Default: what
    /// the open-file limit allows (each connection needs two sockets, plus a pipe's two
    /// fds while busy): (RLIMIT_NOFILE - 256) / 3. 0: no cap.
    #[arg(long)]
    pub max_connections: Option<u64>,
    /// The same, per listener (default: no cap).
    #[arg(long)]
    pub listener_max_connections: Option<u64>,
    /// Also tunnel HTTP/1.1 upgrades of this type (repeatable; the whole `Upgrade` value
    /// is compared, ignoring case). `websocket` is always on, as Istio configures it;
    /// any other offer gets 403 and `Upgrade: h2c` is stripped (served as HTTP/1.1).
    #[arg(long = "upgrade-type", value_name = "NAME", value_parser = crate::http::upgrade::parse_upgrade_type)]
    pub upgrade_types: Vec<String>,
    /// Close an upgraded (WebSocket) connection in which no byte moved either way for
    /// this long (Envoy's stream idle timeout, 5 min in Istio's gateway). 0: never.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub upgrade_idle_timeout: Duration,
    /// Clients in this CIDR that send no X-Forwarded-For are internal: their
    /// x-request-id is kept and `x-envoy-internal: true` is added (repeatable). Every
    /// other request gets a fresh x-request-id. Default: none (Envoy >= 1.33).
    #[arg(long = "internal-address", value_name = "CIDR", value_parser = crate::authz::Cidr::parse)]
    pub internal_addresses: Vec<crate::authz::Cidr>,
    /// A request whose client sends no body bytes for this long, before the response
    /// started, gets 408 (flag SI): Envoy's stream idle timeout, 5 min. 0: never.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub stream_idle_timeout: Duration,
    /// An HTTP/2 connection with no open stream for this long gets GOAWAY and is
    /// closed, an HTTP/1.1 keep-alive connection idle this long since its last response
    /// is closed (Envoy's HTTP idle_timeout, 1 h). 0: never.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub http_idle_timeout: Duration,
    /// Send an HTTP/2 PING this often on every downstream HTTP/2 connection and close
    /// it when one goes unanswered for --http2-keepalive-timeout (Envoy's
    /// connection_keepalive; off by default, as in Istio). 0: off.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,
    /// Access-log lines queued per file before new ones are dropped (and counted).
    #[arg(long, default_value_t = crate::telemetry::access_log::DEFAULT_BUFFER_LINES)]
    pub access_log_buffer: usize,
    /// Attach the XDP ingress guard (AuthorizationPolicy address rules) to these
    /// interfaces; native mode, else generic. Without it: enforced at accept.
    #[arg(long = "xdp-iface", num_args = 1.., value_name = "IFACE")]
    pub xdp_iface: Vec<String>,
    /// After SIGTERM or SIGINT, how long connections may take to finish before the rest
    /// are closed and the process exits (it exits sooner once none is left). Istio's
    /// ProxyConfig `drainDuration`, 45 s; Istio's `terminationDrainDuration` (5 s) is
    /// the same idea for Envoy on SIGTERM: `--drain-duration 5s` mirrors it. 0: close
    /// everything and exit at once. A second signal exits at once.
    #[arg(long, default_value = "45s", value_parser = humantime::parse_duration)]
    pub drain_duration: Duration,
    /// Look this often at the heap and give freed memory back to the kernel when the
    /// arenas hold a lot of it free (after connections close; `sys::heap`). 0: never.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub heap_trim_interval: Duration,
    /// Worker threads, each with its own event loop and its own SO_REUSEPORT socket of
    /// every Gateway port; a connection stays on the worker that accepted it (Envoy's
    /// --concurrency). Default: the CPUs this process may run on.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// How often DNS clusters (ServiceEntry `resolution: DNS` / `DNS_ROUND_ROBIN`,
    /// hostname endpoints) are resolved again (Istio's MeshConfig `dnsRefreshRate`;
    /// default: the `--mesh-config`'s, else 60 s). 0: resolve once at start.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub dns_refresh_rate: Option<Duration>,
}

/// A port, or none (`0`, `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortOrOff(pub Option<u16>);

fn parse_port_or_off(s: &str) -> Result<PortOrOff, String> {
    match s.trim() {
        "off" | "0" => Ok(PortOrOff(None)),
        p => p
            .parse::<u16>()
            .map(|p| PortOrOff(Some(p)))
            .map_err(|_| format!("expected a port (1-65535), 0 or off, got {s:?}")),
    }
}

/// "65536", "64k", "1m" (KiB and MiB).
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.strip_suffix(['k', 'm']) {
        Some(n) if t.ends_with('k') => (n, 1024),
        Some(n) => (n, 1024 * 1024),
        None => (t.as_str(), 1),
    };
    num.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("expected a size in bytes like 65536, 256k or 1m, got {s:?}"))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

impl ConfigArgs {
    /// The gateway's namespace and labels, and the root namespace of `mesh`.
    pub fn identity(&self, mesh: &config::mesh::MeshConfig) -> GatewayIdentity {
        let mut id = GatewayIdentity {
            namespace: self.namespace.clone(),
            root_namespace: mesh.root_namespace().to_string(),
            ..GatewayIdentity::default()
        };
        if !self.labels.is_empty() {
            id.labels = self.labels.iter().cloned().collect::<BTreeMap<_, _>>();
        }
        id
    }

    /// Loads and validates: the snapshot (with the `--mesh-config` file) and its
    /// warnings, or every line to print (the warnings, then every error of the config
    /// files and the MeshConfig with its `file:line:col`, then a count). Warnings (the
    /// MeshConfig's too) are errors with `--strict`. `missing`: what references to
    /// missing things are (errors for `validate`).
    pub fn load(&self, missing: config::Missing) -> Result<config::Snapshot, Vec<String>> {
        let (loaded, mesh) = self.load_files(missing);
        self.finish_load(loaded, mesh)
    }

    /// The MeshConfig, then the config files: the MeshConfig's `rootNamespace` decides
    /// which resources apply.
    fn load_files(
        &self,
        missing: config::Missing,
    ) -> (
        config::Loaded,
        Result<config::mesh::MeshConfig, config::ConfigErrors>,
    ) {
        let mesh = match &self.mesh_config {
            Some(p) => config::mesh::load(p),
            None => Ok(config::mesh::MeshConfig::default()),
        };
        let id = self.identity(mesh.as_ref().unwrap_or(&Default::default()));
        (config::load_with(&self.config, &id, missing), mesh)
    }

    /// [`ConfigArgs::load`], from what [`ConfigArgs::load_files`] loaded.
    fn finish_load(
        &self,
        loaded: config::Loaded,
        mesh: Result<config::mesh::MeshConfig, config::ConfigErrors>,
    ) -> Result<config::Snapshot, Vec<String>> {
        let mut warnings = loaded.warnings;
        if let Some(p) = &self.mesh_config {
            warnings.extend(config::mesh::warnings(p));
        }
        let (mut snap, mesh) = match (loaded.result, mesh) {
            (Ok(s), Ok(m)) => (s, m),
            (result, mesh) => {
                let mut errors = result.err().map(|e| e.0).unwrap_or_default();
                errors.extend(mesh.err().map(|e| e.0).unwrap_or_default());
                let mut lines: Vec<String> = warnings.iter().map(ToString::to_string).collect();
                lines.extend(config::ConfigErrors(errors).lines());
                return Err(lines);
            }
        };
        snap.mesh = mesh;
        if self.strict && !warnings.is_empty() {
            let mut lines: Vec<String> =
                warnings.iter().map(|w| w.to_error().to_string()).collect();
            lines.push(format!(
                "{} warning(s), errors with --strict",
                warnings.len()
            ));
            return Err(lines);
        }
        snap.warnings = warnings;
        Ok(snap)
    }

    /// [`ConfigArgs::load`]; on failure prints every line and exits 64, binding nothing.
    /// Warnings go to `report`.
    pub fn load_or_exit(
        &self,
        missing: config::Missing,
        report: impl Fn(&config::Warning),
    ) -> config::Snapshot {
        match self.load(missing) {
            Ok(snap) => {
                for w in &snap.warnings {
                    report(w);
                }
                snap
            }
            Err(lines) => exit_with(&lines),
        }
    }
}

/// `--config` files and directories and the `--mesh-config` file (and `--namespace`,
/// `--label`, `--strict`, as at start).
pub struct Files(pub ConfigArgs);

impl crate::runtime::reload::ConfigSource for Files {
    fn load(&self) -> Result<config::Snapshot, Vec<String>> {
        self.0.load(config::Missing::Isolate)
    }

    fn watch(
        &self,
        changed: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> Result<Box<dyn Send>, String> {
        let paths: Vec<std::path::PathBuf> = self
            .0
            .config
            .iter()
            .chain(&self.0.mesh_config)
            .cloned()
            .collect();
        crate::runtime::reload::watch_paths(&paths, changed)
            .map(|w| Box::new(w) as Box<dyn Send>)
            .map_err(|e| e.to_string())
    }
}

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

fn http_options(args: &RunArgs) -> crate::http::HttpOptions {
    let mut http = crate::http::HttpOptions {
        upgrade_idle_timeout: Some(args.upgrade_idle_timeout).filter(|d| !d.is_zero()),
        internal_addresses: args.internal_addresses.clone(),
        stream_idle_timeout: Some(args.stream_idle_timeout).filter(|d| !d.is_zero()),
        idle_timeout: Some(args.http_idle_timeout).filter(|d| !d.is_zero()),
        http2_keepalive_interval: Some(args.http2_keepalive_interval).filter(|d| !d.is_zero()),
        http2_keepalive_timeout: args.http2_keepalive_timeout,
        ..Default::default()
    };
    for t in &args.upgrade_types {
        if !http.upgrade_types.contains(t) {
            http.upgrade_types.push(t.clone());
        }
    }
    http
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // From here on SIGTERM and SIGINT start the drain instead of killing the process.
    let signals = crate::runtime::shutdown::Signals::install()
        .context("installing SIGTERM/SIGINT handlers")?;
    // Istio's failure isolation: a reference to something missing leaves that server or
    // route inactive, with a warning, and the rest is served.
    let snapshot = args
        .config
        .load_or_exit(config::Missing::Isolate, |w| tracing::warn!("{w}"));
    for s in &snapshot.inactive {
        tracing::warn!(
            "gateway {} server {} (port {}, hosts {}) is inactive: its credential Secret {:?} does not exist",
            s.gateway,
            s.name.clone().unwrap_or_else(|| s.index.to_string()),
            s.port,
            s.hosts.join(","),
            s.credential_name
        );
    }
    // Access logs and metrics; the access logs are compiled with the Plan, below.
    let id = args.config.identity(&snapshot.mesh);
    let telemetry = Arc::new(crate::telemetry::Telemetry::new(
        &id,
        args.access_log_buffer,
    ));
    let access = telemetry.compile(&snapshot);
    tracing::info!(
        "request paths normalized as pathNormalization {} (MeshConfig)",
        snapshot.mesh.normalization().name()
    );
    let mesh_dns_refresh_rate = snapshot.mesh.dns_refresh_rate();
    let splice_opts = SpliceOptions {
        pipe: PipeConfig {
            pipe_size: args.splice_pipe_size,
            pool_max: args.splice_pipe_pool,
            idle_timeout: None,
        },
        idle_timeout: Some(args.tcp_idle_timeout).filter(|d| !d.is_zero()),
        budget: args.splice_budget as u64,
        offload: OffloadPolicy {
            min_bytes: args.offload_bytes as u64,
            min_chunk: args.offload_min_chunk as u64,
            retry_bytes: (args.offload_bytes as u64 / 4).max(1),
            own_cpus_only: !args.offload_foreign_cpus,
        },
    };
    let splicer = Splicer::with_options(args.splice, splice_opts).context(
        "the splice could not start (eBPF needs root or CAP_BPF+CAP_NET_ADMIN, and a binary built after `cargo xtask setup`); try --splice splice",
    )?;
    let nofile = match listener::raise_nofile() {
        Ok((old, new)) => {
            if old != new {
                tracing::info!("open-file limit raised from {old} to {new}");
            }
            new
        }
        Err(e) => {
            tracing::warn!("open-file limit unchanged: {e}");
            1024
        }
    };
    let max_connections = match args.max_connections {
        Some(0) => None,
        Some(n) => Some(n),
        None => Some(nofile.saturating_sub(256).max(64) / 3),
    };
    let opts = Options {
        bind: args.bind.unwrap_or(IpAddr::from([0, 0, 0, 0])),
        dual_stack: args.bind.is_none(),
        client_hello_timeout: args.client_hello_timeout,
        connect_timeout: args.connect_timeout,
        max_connections,
        listener_max_connections: args.listener_max_connections.filter(|&n| n > 0),
        http: http_options(&args),
        istio_ports: crate::server::IstioPorts {
            status: args.status_port.0,
            prometheus: args.prometheus_port.0,
        },
    };
    let (plan, access) = match (crate::plan::Plan::compile(snapshot, 1), access) {
        (Ok(plan), Ok(access)) => (plan, access),
        (plan, access) => {
            let mut errors = plan.err().map(|e| e.0).unwrap_or_default();
            errors.extend(access.err().unwrap_or_default());
            exit_config_errors(errors)
        }
    };
    telemetry.apply(access, &plan.snapshot);
    let mut gw = Gateway::new(plan, splicer, opts);
    gw.telemetry = telemetry;
    let gw = Arc::new(gw);
    gw.plan().authz.start(&args.xdp_iface);
    let ports: Vec<u16> = gw.plan().ports().collect();
    let workers = args
        .workers
        .map_or_else(crate::sys::workers::default_count, usize::from);
    let listeners = listener::bind_all(&gw, ports.iter().copied(), workers)
        .context("binding the Gateway ports")?;
    let admin = admin::bind(args.admin_addr)
        .await
        .context("binding the admin API")?;
    // Istio's status and Prometheus ports: bound like the Gateway ports, served from
    // now on (/healthz/ready answers 503 until the accept loops run).
    let istio_ports = [
        (
            gw.opts.istio_ports.status,
            admin::IstioPort::Status,
            "--status-port",
        ),
        (
            gw.opts.istio_ports.prometheus,
            admin::IstioPort::Prometheus,
            "--prometheus-port",
        ),
    ];
    for (port, which, flag) in istio_ports {
        let Some(port) = port else { continue };
        let socks = listener::bind_port(&gw, port).with_context(|| {
            format!("binding {which:?} port {port} (move it with {flag} PORT, or {flag} off)")
        })?;
        for sock in socks {
            tokio::spawn(admin::serve_istio_port(gw.clone(), sock, which));
        }
    }
    tokio::spawn(admin::serve(gw.clone(), admin));
    if !args.heap_trim_interval.is_zero() {
        let g = gw.clone();
        tokio::spawn(crate::sys::heap::run(args.heap_trim_interval, move || {
            crate::sys::heap::look(&g.stats.heap);
        }));
    }
    let dns_rate = args
        .dns_refresh_rate
        .or(mesh_dns_refresh_rate)
        .unwrap_or(crate::runtime::dns::DEFAULT_REFRESH_RATE);
    tokio::spawn(crate::runtime::dns::run(gw.clone(), dns_rate));
    let runtimes = crate::sys::workers::start(workers).context("starting the workers")?;
    let per_worker = (0..workers).map(|_| Default::default()).collect();
    let _ = gw.stats.worker_accepted.set(per_worker);
    gw.ports.set_workers(runtimes);
    for (port, socks) in listeners {
        crate::runtime::ports::start(&gw, port, socks)?;
    }
    let reload = crate::runtime::reload::Source {
        config: Arc::new(Files(args.config.clone())),
        drain_duration: args.drain_duration,
        dns_refresh_rate_flag: args.dns_refresh_rate.is_some(),
    };
    tokio::spawn(crate::runtime::reload::run(gw.clone(), reload));
    gw.readiness.set(crate::server::ReadyState::Serving);
    tracing::info!(
        splice = gw.splicer.name(),
        admin = %args.admin_addr,
        ports = ?ports,
        workers,
        status_port = ?gw.opts.istio_ports.status,
        prometheus_port = ?gw.opts.istio_ports.prometheus,
        "gateway ready"
    );
    crate::runtime::shutdown::on_signals(gw.clone(), signals, args.drain_duration).await;
    // Access-log lines of the last connections, before the process exits.
    gw.telemetry.flush(std::time::Duration::from_secs(2));
    tracing::info!("exiting");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

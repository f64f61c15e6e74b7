//! The flags of `gateway run` and `gateway validate`, and the config they load.
use std::{collections::BTreeMap, net::IpAddr, net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

use crate::{
    config::{self, GatewayIdentity},
    kernel::splice::SpliceMode,
};

use super::*;

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

pub(super) fn parse_port_or_off(s: &str) -> Result<PortOrOff, String> {
    match s.trim() {
        "off" | "0" => Ok(PortOrOff(None)),
        p => p
            .parse::<u16>()
            .map(|p| PortOrOff(Some(p)))
            .map_err(|_| format!("expected a port (1-65535), 0 or off, got {s:?}")),
    }
}

/// "65536", "64k", "1m" (KiB and MiB).
pub(super) fn parse_size(s: &str) -> Result<usize, String> {
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

pub(super) fn parse_label(s: &str) -> Result<(String, String), String> {
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
    pub(super) fn load_files(
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
    pub(super) fn finish_load(
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

//! The running gateway: one snapshot of config, the splice, the counters, and the
//! listeners that serve them.
use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;

use crate::{kernel::splice::Splicer, plan::Plan, telemetry::metrics::Stats};

/// Runtime knobs from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address every Gateway port is bound on (Istio's ingress listens on 0.0.0.0).
    pub bind: IpAddr,
    /// Also listen on `[::]` (IPv6-only socket beside the IPv4 one): `--bind` not given.
    pub dual_stack: bool,
    /// How long a TLS listener waits for a complete ClientHello (Envoy: 15 s; we: 10 s).
    pub client_hello_timeout: Duration,
    /// Upstream connect timeout (Istio's default connectTimeout: 10 s).
    pub connect_timeout: Duration,
    /// Downstream connections open at once, all listeners together; past it new ones
    /// are refused at accept (None: no cap).
    pub max_connections: Option<u64>,
    /// The same per listener.
    pub listener_max_connections: Option<u64>,
    /// Upgrade types, the tunnel idle timeout and internal addresses.
    pub http: crate::http::HttpOptions,
    /// Istio's status port (`/healthz/ready`, 15021) and Prometheus port
    /// (`/stats/prometheus`, 15090); None: not served.
    pub istio_ports: IstioPorts,
}

/// The ports Istio's proxy serves besides the Gateway's (Envoy's bootstrap listeners
/// `0.0.0.0_15021` and `0.0.0.0_15090`, tools/packaging/common/envoy_bootstrap.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IstioPorts {
    /// `/healthz/ready` (`--status-port`, Istio's `envoy_status_port`).
    pub status: Option<u16>,
    /// `/stats/prometheus` (`--prometheus-port`, Istio's `envoy_prometheus_port`).
    pub prometheus: Option<u16>,
}

impl Default for IstioPorts {
    fn default() -> Self {
        IstioPorts {
            status: Some(15021),
            prometheus: Some(15090),
        }
    }
}

/// Where the gateway is in its life, as readiness reports it: `/healthz/ready` on the
/// status port answers 200 only while [`ReadyState::Serving`] (503 before the config
/// serves and while draining), and the admin `/ready` answers as Envoy's does (`LIVE`,
/// else 503 with the state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReadyState {
    /// Listeners not yet accepting.
    Starting = 0,
    /// The config serves: every Gateway port accepts.
    Serving = 1,
    /// Shutting down (`runtime::drain` sets this first, so load balancers stop sending
    /// before the listeners close).
    Draining = 2,
}

/// The gateway's [`ReadyState`], shared by the readiness handlers and whoever changes it.
#[derive(Debug, Default)]
pub struct Readiness(AtomicU8);

impl Readiness {
    pub fn get(&self) -> ReadyState {
        match self.0.load(Ordering::Acquire) {
            0 => ReadyState::Starting,
            1 => ReadyState::Serving,
            _ => ReadyState::Draining,
        }
    }

    pub fn set(&self, state: ReadyState) {
        self.0.store(state as u8, Ordering::Release);
    }

    /// 200 on `/healthz/ready`.
    pub fn is_ready(&self) -> bool {
        self.get() == ReadyState::Serving
    }

    /// `gateway_server_state`, with Envoy's `server.state` values (0 LIVE, 1 DRAINING,
    /// 3 INITIALIZING; envoy/admin/v3/server_info.proto). While draining,
    /// `gateway_downstream_cx_active` says how many connections are left.
    pub fn render_prometheus(&self, out: &mut String) {
        let v = match self.get() {
            ReadyState::Serving => 0,
            ReadyState::Draining => 1,
            ReadyState::Starting => 3,
        };
        out.push_str(&format!(
            "# HELP gateway_server_state Envoy's server.state: 0 live, 1 draining (after SIGTERM/SIGINT), 3 initializing.\n# TYPE gateway_server_state gauge\ngateway_server_state {v}\n"
        ));
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_connections: None,
            listener_max_connections: None,
            bind: IpAddr::from([0, 0, 0, 0]),
            dual_stack: false,
            client_hello_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            http: crate::http::HttpOptions::default(),
            istio_ports: IstioPorts::default(),
        }
    }
}

pub struct Gateway {
    /// The compiled config; a reload swaps it whole (`runtime::reload`).
    plan: ArcSwap<Plan>,
    pub splicer: Splicer,
    pub stats: Stats,
    /// Access logs and Istio metrics (logs off until `cli::run` applies the config's;
    /// a reload applies its own). Requests reach it through their connection.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    pub opts: Options,
    /// What `/healthz/ready` answers.
    pub readiness: Readiness,
    /// SIGTERM's drain, as accept loops and connections see it.
    pub drain: crate::runtime::drain::Drain,
    /// The ports accepting now, and the drains of their connections.
    pub ports: crate::runtime::ports::Ports,
    /// Reload outcomes (`gateway_config_reloads_total`).
    pub reloads: crate::runtime::reload::ReloadStats,
}

impl Gateway {
    pub fn new(plan: Plan, splicer: Splicer, opts: Options) -> Gateway {
        let stats = Stats::new(plan.ports());
        let drain = crate::runtime::drain::Drain::default();
        Gateway {
            ports: crate::runtime::ports::Ports::new(&drain),
            plan: ArcSwap::from_pointee(plan),
            splicer,
            stats,
            telemetry: Arc::new(crate::telemetry::Telemetry::off(
                &crate::config::GatewayIdentity::default(),
            )),
            opts,
            readiness: Readiness::default(),
            reloads: Default::default(),
            drain,
        }
    }

    /// The Plan serving now. A connection takes it once, and a request on a keep-alive
    /// connection again, so each sees one config from start to end.
    pub fn plan(&self) -> Arc<Plan> {
        self.plan.load_full()
    }

    /// Makes `plan` the one new connections and requests see; returns the old one.
    pub fn swap_plan(&self, plan: Arc<Plan>) -> Arc<Plan> {
        for port in plan.ports() {
            self.stats.add_listener(port);
        }
        self.plan.swap(plan)
    }

    /// The addresses every Gateway port listens on: `--bind`, and `::` when dual-stack.
    pub fn listen_addrs(&self) -> Vec<IpAddr> {
        let mut v = vec![self.opts.bind];
        if self.opts.dual_stack {
            v.push(IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED));
        }
        v
    }

    /// Istio's listener name for a port: `0.0.0.0_31400`.
    pub fn listener_name(&self, port: u16) -> String {
        format!("{}_{port}", self.opts.bind)
    }
}

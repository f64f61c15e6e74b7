//! The running gateway: one snapshot of config, the splice, the counters, and the
//! listeners that serve them.
use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
};

use arc_swap::ArcSwap;

pub mod options;
pub mod ports;

pub use options::{IstioPorts, Options};

use crate::{kernel::splice::Splicer, plan::Plan, telemetry::metrics::Stats};

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
    /// Shutting down (`sys::drain` sets this first, so load balancers stop sending
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
        crate::sys::prom::Prom::new(out)
            .family(
                "gateway_server_state",
                crate::sys::prom::Kind::Gauge,
                "Envoy's server.state: 0 live, 1 draining (after SIGTERM/SIGINT), 3 initializing.",
            )
            .sample("gateway_server_state", &[], v);
    }
}

/// Config reloads by outcome (`gateway_config_reloads_total`, rendered by
/// [`crate::runtime::reload::render_prometheus`]).
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub applied: std::sync::atomic::AtomicU64,
    pub rejected: std::sync::atomic::AtomicU64,
    pub unchanged: std::sync::atomic::AtomicU64,
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
    pub drain: crate::sys::drain::Drain,
    /// The ports accepting now, and the drains of their connections.
    pub ports: ports::Ports,
    /// Reload outcomes (`gateway_config_reloads_total`).
    pub reloads: ReloadStats,
}

impl Gateway {
    pub fn new(plan: Plan, splicer: Splicer, opts: Options) -> Gateway {
        let stats = Stats::new(plan.ports());
        let drain = crate::sys::drain::Drain::default();
        Gateway {
            ports: ports::Ports::new(&drain),
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

/// Counts a connection as accepted and active until dropped — also when its task
/// panics, so the gauges, the caps and the drain never drift.
pub struct Active {
    gw: Arc<Gateway>,
    port: u16,
}

impl Active {
    /// A connection accepted on `port`.
    pub fn enter(gw: &Arc<Gateway>, port: u16) -> Active {
        if let Some(s) = gw.stats.listener(port) {
            s.accepted.fetch_add(1, Ordering::Relaxed);
        }
        Active::hold(gw, port)
    }

    /// Counts as active (not accepted again) a downstream connection that outlives its
    /// connection task: an upgraded HTTP/1.1 connection (WebSocket) in its tunnel, which
    /// the drain must wait for too.
    pub fn hold(gw: &Arc<Gateway>, port: u16) -> Active {
        gw.stats.active_total.fetch_add(1, Ordering::Relaxed);
        if let Some(s) = gw.stats.listener(port) {
            s.active.fetch_add(1, Ordering::Relaxed);
        }
        Active {
            gw: gw.clone(),
            port,
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.gw.stats.active_total.fetch_sub(1, Ordering::Relaxed);
        if let Some(s) = self.gw.stats.listener(self.port) {
            s.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

//! The running gateway: one snapshot of config, the splice, the counters, and the
//! listeners that serve them.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::{config::Snapshot, kernel::splice::Splicer, telemetry::metrics::Stats};

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
    /// MeshConfig `pathNormalization.normalization` (Istio's default: BASE).
    pub path_normalization: crate::config::mesh::PathNormalization,
    /// Upgrade types, the tunnel idle timeout and internal addresses.
    pub http: crate::http::HttpOptions,
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
            path_normalization: crate::config::mesh::PathNormalization::Base,
            http: crate::http::HttpOptions::default(),
        }
    }
}

pub struct Gateway {
    pub snapshot: Arc<Snapshot>,
    /// Route tables, certificates and pools of the HTTP listeners.
    pub http: crate::http::HttpState,
    pub splicer: Splicer,
    pub stats: Stats,
    /// Access logs and Istio metrics (logs off until `cli::run` sets them up).
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    pub opts: Options,
    /// AuthorizationPolicy enforcement; `cli::run` attaches the XDP guard to it.
    pub authz: Arc<crate::authz::Enforcer>,
    /// TLS passthrough routes by SNI, per port.
    pub sni_routes: crate::tls::routes::SniRoutes,
    /// Round-robin position per cluster.
    rr: BTreeMap<String, AtomicUsize>,
}

impl Gateway {
    pub fn new(
        snapshot: Snapshot,
        http: crate::http::HttpState,
        splicer: Splicer,
        opts: Options,
    ) -> Gateway {
        let stats = Stats::new(snapshot.listeners.iter().map(|l| l.port));
        let authz = Arc::new(crate::authz::Enforcer::new(&snapshot));
        let sni_routes = crate::tls::routes::SniRoutes::new(&snapshot);
        let rr = snapshot
            .clusters
            .keys()
            .map(|k| (k.clone(), AtomicUsize::new(0)))
            .collect();
        Gateway {
            snapshot: Arc::new(snapshot),
            http,
            splicer,
            stats,
            telemetry: Arc::new(crate::telemetry::Telemetry::off(
                &crate::config::GatewayIdentity::default(),
            )),
            opts,
            authz,
            sni_routes,
            rr,
        }
    }

    /// The next endpoint of `cluster`, round-robin.
    pub fn next_endpoint(&self, cluster: &str) -> Option<SocketAddr> {
        let c = self.snapshot.clusters.get(cluster)?;
        if c.endpoints.is_empty() {
            return None;
        }
        let i = self.rr.get(cluster)?.fetch_add(1, Ordering::Relaxed);
        Some(c.endpoints[i % c.endpoints.len()])
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

//! The Plan: everything compiled from one config, immutable once built, and swapped
//! whole ([`crate::server::Gateway::swap_plan`]) so a connection or a request sees one
//! config from start to end, never half of two.
//!
//! What is compiled here: the snapshot (routes, clusters, secrets, policies), the HTTP
//! route tables and TLS server configs, the AuthorizationPolicy enforcer (with the XDP
//! verdicts it compiled), the TLS-passthrough SNI tables, the clusters' load balancers
//! and TCP TLS origination. What is not (it lives for the process, in the `Gateway`):
//! the listening sockets, the splice and its kernel maps, the counters, the access-log
//! writers, readiness and the drain.
//!
//! Reload ([`crate::runtime::reload`]) compiles a new Plan completely before the swap;
//! state that must survive it is carried from the old Plan by [`Plan::carry_from`].
pub mod cors;
pub mod hash_policy;
pub mod http;
pub mod normalize;
pub mod routing;
pub mod tcp_tls;
pub mod tls;
pub mod tls_client;
pub mod tls_server;

use std::{collections::BTreeMap, sync::Arc};

use crate::config::{ConfigErrors, Listener, Snapshot};

pub struct Plan {
    /// 1 for the config the process started with, +1 per reload that was applied.
    pub generation: u64,
    pub snapshot: Arc<Snapshot>,
    /// The Gateway ports and what each serves, as the accept loops look them up.
    pub listeners: BTreeMap<u16, Arc<Listener>>,
    /// Route tables, certificates and the upstream client of the HTTP listeners.
    pub http: http::HttpState,
    /// AuthorizationPolicy enforcement (and the XDP guard once attached).
    pub authz: Arc<crate::authz::Enforcer>,
    /// TLS passthrough routes by SNI, per port.
    pub sni_routes: crate::tls::routes::SniRoutes,
    /// Each cluster's load balancer (DestinationRule `loadBalancer`).
    pub balancers: crate::lb::Balancers,
    /// TLS origination of TCP flows, per cluster (DestinationRule `tls`).
    pub tcp_tls: tcp_tls::TcpOrigination,
}

impl Plan {
    /// Compiles everything `snapshot` needs to serve; certificates and keys that do
    /// not load are errors (the old Plan keeps serving on a reload).
    pub fn compile(snapshot: Snapshot, generation: u64) -> Result<Plan, ConfigErrors> {
        let http = http::HttpState::build(&snapshot)?;
        let listeners = snapshot
            .listeners
            .iter()
            .map(|l| (l.port, Arc::new(l.clone())))
            .collect();
        Ok(Plan {
            generation,
            authz: Arc::new(crate::authz::Enforcer::new(&snapshot)),
            sni_routes: crate::tls::routes::SniRoutes::new(&snapshot),
            balancers: crate::lb::Balancers::new(&snapshot),
            tcp_tls: tcp_tls::TcpOrigination::new(&snapshot),
            listeners,
            http,
            snapshot: Arc::new(snapshot),
        })
    }

    /// What a reload keeps from the Plan it replaces, as Envoy keeps a cluster that
    /// a CDS update did not change: the load balancer of every cluster defined the same
    /// (its LEAST_REQUEST counts, outlier ejections, circuit-breaker admission and
    /// DNS-refreshed endpoints), and the upstream connection pools when no cluster and
    /// no Secret changed (a changed cluster's connections are not reused).
    ///
    /// The AuthorizationPolicy refusal counters carry over too (Prometheus counters
    /// never go back); the XDP guard moves over in [`Plan::adopt_kernel_state`].
    pub fn carry_from(&mut self, old: &Plan) {
        // Not shared yet: the Plan was compiled for this reload and is swapped in after.
        if let Some(authz) = Arc::get_mut(&mut self.authz) {
            authz.carry_counters(&old.authz);
        }
        self.balancers
            .carry_from(&old.balancers, &old.snapshot, &self.snapshot);
        if old.snapshot.clusters == self.snapshot.clusters
            && old.snapshot.secrets == self.snapshot.secrets
        {
            self.http.carry_upstream_from(&old.http);
        }
    }

    /// Takes over `old`'s XDP guard, its maps rewritten in place with this Plan's
    /// verdicts while the program stays attached (`xdp::XdpGuard::update`). The last
    /// step that can fail before a reload's swap: on an error the guard still holds
    /// `old`'s verdicts, which keep serving with `old`.
    pub fn adopt_kernel_state(&self, old: &Plan) -> Result<(), crate::xdp::XdpError> {
        if let Some(stats) = self.authz.adopt_guard(&old.authz)? {
            tracing::info!(target: "gateway::reload", ?stats, "XDP guard maps rewritten in place");
        }
        Ok(())
    }

    /// An endpoint of `cluster` by its load balancer; `hash` for consistent hashing.
    pub fn pick_endpoint(&self, cluster: &str, hash: Option<u64>) -> crate::lb::Pick {
        use crate::lb::Pick;
        match self.balancers.get(cluster) {
            None => Pick::NoCluster,
            Some(b) => b.pick(hash).map_or(Pick::NoHealthy, Pick::Endpoint),
        }
    }

    pub fn listener(&self, port: u16) -> Option<&Arc<Listener>> {
        self.listeners.get(&port)
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.listeners.keys().copied()
    }
}

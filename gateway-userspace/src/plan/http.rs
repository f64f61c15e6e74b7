//! The compiled HTTP side of a Plan: per port, the route tables (an HTTP port's
//! merged one, each HTTPS server's own), the rustls config of every terminating server,
//! and which server an SNI selects.
use std::{
    any::Any,
    collections::{HashMap, HashSet},
    sync::{Arc, OnceLock},
};

use rustls::ServerConfig;

use super::{routing, tls_server};
use crate::config::{ConfigErrors, Listener, ListenerProtocol, ServerKind, Snapshot};

/// Everything the HTTP data path needs that is built once per snapshot (route tables,
/// certificate configs), and its upstream pools.
#[derive(Default)]
pub struct HttpState {
    listeners: HashMap<u16, Arc<ListenerHttp>>,
    /// The HTTP data path's upstream client (`crate::http::upstream::UpstreamClient`,
    /// its connection pools), built on the first request, when the connect timeout is
    /// known. Kept here so it lives, and is carried by a reload, as the Plan is; typed
    /// by the layer that builds it, which the Plan sits below and cannot name.
    upstream: OnceLock<Arc<dyn Any + Send + Sync>>,
}

/// One HTTP or HTTPS port.
pub struct ListenerHttp {
    /// The merged table of an HTTP port.
    pub merged: Arc<routing::RouteTable>,
    /// Per HTTPS-terminating server (index in `Listener::servers`): its own table and
    /// rustls config, as Istio gives each HTTPS server its own route config and chain.
    pub servers: HashMap<usize, HttpsServer>,
    /// Per TLS-terminating server of protocol TLS: its rustls config (the plaintext
    /// goes to its `tcp` route, proxy::tls_terminate).
    pub tcp_servers: HashMap<usize, Arc<ServerConfig>>,
    /// Which of them an SNI selects.
    pub by_sni: routing::TlsServers,
}

pub struct HttpsServer {
    pub table: Arc<routing::RouteTable>,
    pub tls: Arc<ServerConfig>,
    /// Its hosts, for the 421 check of every request on its connections.
    pub hosts: Arc<routing::ServerHosts>,
}

impl HttpState {
    /// Builds the route tables and the TLS config of every terminating server, or
    /// returns every problem found (every certificate, key, CA and CRL of every server
    /// is read), sorted by file then position.
    pub fn build(snapshot: &Snapshot) -> Result<HttpState, ConfigErrors> {
        let mut tls_problems = tls_server::Problems::default();
        let mut errors = Vec::new();
        // A route that does not compile is reported at its fields; the table is built
        // without it, so every other table's errors are found too.
        let mut table = |l: &Listener, only: Option<usize>| {
            routing::build_table(l, only)
                .map_err(|e| errors.extend(e))
                .unwrap_or_default()
        };
        let mut listeners = HashMap::new();
        for l in &snapshot.listeners {
            if matches!(l.protocol, ListenerProtocol::Tcp) {
                continue;
            }
            let merged = if l.protocol == ListenerProtocol::Http {
                table(l, None)
            } else {
                routing::RouteTable::default()
            };
            let mut servers = HashMap::new();
            let mut tcp_servers = HashMap::new();
            for (i, s) in l.servers.iter().enumerate() {
                if !matches!(
                    s.kind,
                    ServerKind::TlsTerminate | ServerKind::HttpsTerminate
                ) {
                    continue;
                }
                let cfg = tls_server::server_config(
                    s,
                    l.port,
                    &snapshot.secrets,
                    &snapshot.namespace,
                    &mut tls_problems,
                );
                if s.kind == ServerKind::TlsTerminate {
                    tcp_servers.extend(cfg.map(|cfg| (i, cfg)));
                    continue;
                }
                let t = table(l, Some(i));
                let Some(cfg) = cfg else { continue };
                servers.insert(
                    i,
                    HttpsServer {
                        table: Arc::new(t),
                        tls: cfg,
                        hosts: Arc::new(routing::ServerHosts::new(&routing::server_hosts(s))),
                    },
                );
            }
            if l.protocol == ListenerProtocol::Http
                || !servers.is_empty()
                || !tcp_servers.is_empty()
            {
                listeners.insert(
                    l.port,
                    Arc::new(ListenerHttp {
                        merged: Arc::new(merged),
                        servers,
                        tcp_servers,
                        by_sni: routing::TlsServers::new(l),
                    }),
                );
            }
        }
        errors.extend(tls_problems.into_errors());
        if !errors.is_empty() {
            // Stable: keeps discovery order for errors at the same place. A route bound
            // to several servers or ports is compiled, and reported, for each.
            errors.sort_by(|a, b| a.loc.cmp(&b.loc));
            let mut seen = HashSet::new();
            errors.retain(|e| seen.insert((e.loc.clone(), e.message.clone())));
            return Err(ConfigErrors(errors));
        }
        Ok(HttpState {
            listeners,
            upstream: OnceLock::new(),
        })
    }

    /// The upstream client, built by `init` on first use. One type is ever kept here
    /// (the HTTP data path's client); asking for another is a bug.
    pub fn upstream<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> &T {
        self.upstream
            .get_or_init(|| Arc::new(init()))
            .downcast_ref()
            .expect("the Plan keeps one upstream client type: the HTTP data path's")
    }

    /// Keeps `old`'s upstream client, pools included (see `Plan::carry_from`).
    pub fn carry_upstream_from(&mut self, old: &HttpState) {
        if let Some(c) = old.upstream.get() {
            self.upstream = OnceLock::from(c.clone());
        }
    }

    /// What an HTTP or HTTPS port serves.
    pub fn listener(&self, port: u16) -> Option<&Arc<ListenerHttp>> {
        self.listeners.get(&port)
    }

    /// The route table of `port` (an HTTP port's merged one), or of its HTTPS server
    /// `server`.
    pub fn route_table(
        &self,
        port: u16,
        server: Option<usize>,
    ) -> Option<Arc<routing::RouteTable>> {
        let lh = self.listeners.get(&port)?;
        match server {
            None => Some(lh.merged.clone()),
            Some(i) => lh.servers.get(&i).map(|s| s.table.clone()),
        }
    }

    /// [`terminates`], from the port's SNI table built with this state.
    pub fn terminates(&self, listener: &Listener, sni: Option<&str>) -> bool {
        let Some(lh) = self.listeners.get(&listener.port) else {
            return false;
        };
        let https = |i: usize| lh.servers.contains_key(&i);
        match sni {
            Some(_) => lh.by_sni.get(sni).is_some_and(https),
            None => listener.tcp.is_none() && lh.by_sni.get(None).is_some_and(https),
        }
    }

    /// The TLS-terminating server of protocol TLS this SNI selects, with its rustls
    /// config: `(index in Listener::servers, config)`. Without SNI only a server with
    /// host `*`, and only when no plain TCP route takes the connection, as
    /// [`HttpState::terminates`].
    pub fn terminates_tcp(
        &self,
        listener: &Listener,
        sni: Option<&str>,
    ) -> Option<(usize, Arc<ServerConfig>)> {
        let lh = self.listeners.get(&listener.port)?;
        if sni.is_none() && listener.tcp.is_some() {
            return None;
        }
        let i = lh.by_sni.get(sni)?;
        lh.tcp_servers.get(&i).map(|c| (i, c.clone()))
    }
}

/// True when a TLS connection on this listener with this SNI (None: no SNI) is to be
/// terminated here by an HTTPS server, rather than passed through or sent to TCP.
/// Without SNI it is terminated only by an HTTPS server with host `*` (Envoy's filter
/// chain without `server_names`, [`routing::tls_server_for`]), and only when no TCP
/// route would take it (the port's match-all TCP chain). A scan of the servers; the
/// data path asks [`HttpState::terminates`].
pub fn terminates(listener: &Listener, sni: Option<&str>) -> bool {
    let https = |i: usize| listener.servers[i].kind == ServerKind::HttpsTerminate;
    match sni {
        Some(_) => routing::tls_server_for(listener, sni).is_some_and(https),
        None => {
            listener.tcp.is_none() && routing::tls_server_for(listener, None).is_some_and(https)
        }
    }
}

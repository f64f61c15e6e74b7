//! Route tables and the pure decisions over them: which virtual host a `Host` /
//! `:authority` selects, which `http[]` entry a request matches, which weighted
//! destination takes it, which retry policy applies. Built once per snapshot from the
//! validated Istio resources; nothing here does I/O.
//!
//! By job: `table` the compiled tables (virtual hosts, routes, matches, header
//! operations, retry policies), `lookup` the per-request decisions over them,
//! `compile` building them from the snapshot (and where a route that does not compile
//! is wrong); here the TLS-terminating servers of a port by SNI, and their hosts.
mod compile;
mod lookup;
mod table;

pub use crate::config::regex::compile as compile_regex;
pub use compile::{build_table, problems};
pub use lookup::{
    RequestView, find_route, find_vhost, https_redirect_location, pick_weighted, query_value,
    redirect_location, rewrite_path, total_weight,
};
pub use table::{
    Action, Destination, Fault, HeaderOps, Match, Redirect, RetryOn, RetryPolicy, Rewrite, Route,
    RouteTable, StrMatch, VirtualHost, parse_retry_on,
};

use crate::config::{HostMap, HostSemantics, Listener, ServerKind, ServerRef, hosts};

// === hosts ===

pub use crate::config::hosts::{authority_port, host_score, normalize_host, valid_request_host};

/// The lowercase host patterns of a Gateway server, namespaces dropped.
pub fn server_hosts(server: &ServerRef) -> Vec<String> {
    let gw_ns = server.gateway.split('/').next().unwrap_or_default();
    server
        .hosts
        .iter()
        .map(|h| hosts::split_server_host(h, gw_ns).1.to_ascii_lowercase())
        .collect()
}

/// Servers whose TLS is terminated here: HTTPS ones (routed by `http`) and TLS ones
/// (routed by `tcp`).
pub fn terminating(kind: ServerKind) -> bool {
    matches!(kind, ServerKind::HttpsTerminate | ServerKind::TlsTerminate)
}

/// The TLS-terminating server a TLS connection with this SNI belongs to, as Envoy's
/// filter-chain match picks among the chains Istio builds for the port's servers.
///
/// Istio gives each HTTPS server a filter chain whose `server_names` are its hosts,
/// sorted, and none at all when one of them is `*` (pilot/pkg/networking/core/
/// listener.go `toFilterChainMatch`: `fullWildcardFound`; gateway.go passes
/// `GetSNIHostsForServer`, the hosts without their `ns/`), and a gateway listener has
/// no default filter chain (listener.go `buildGatewayListener`). Envoy's
/// `FilterChainManagerImpl::findFilterChainForServerName` then takes, for an SNI, the
/// exact name, else the longest `*.` suffix, else a chain without `server_names`; for a
/// ClientHello **without SNI only a chain without `server_names`**: the first HTTPS
/// server with host `*`. Otherwise no chain matches and Envoy closes the connection
/// (no certificate is served). Ties go to the first server.
///
/// TLS-terminating servers of protocol TLS ([`ServerKind::TlsTerminate`]) take part:
/// Istio gives them a filter chain with the same `server_names` on the same listener,
/// so the caller looks at the kind of the server picked.
///
/// A scan of every server: the data path asks [`TlsServers`], built once per port,
/// which answers the same; this stays as its reference.
pub fn tls_server_for(listener: &Listener, sni: Option<&str>) -> Option<usize> {
    let mut candidates = listener
        .servers
        .iter()
        .enumerate()
        .filter(|(_, s)| terminating(s.kind));
    let Some(sni) = sni else {
        return candidates
            .find(|(_, s)| server_hosts(s).iter().any(|h| h == "*"))
            .map(|(i, _)| i);
    };
    let sni = normalize_host(sni);
    let mut best: Option<((u8, usize), usize)> = None;
    for (i, s) in candidates {
        for h in server_hosts(s) {
            if let Some(score) = host_score(&h, &sni)
                && best.is_none_or(|(b, _)| score > b)
            {
                best = Some((score, i));
            }
        }
    }
    best.map(|(_, i)| i)
}

/// The host patterns of one HTTPS server, indexed once: does a request's host belong to
/// this server (else 421, see `proxy`)? A hash lookup per label of the host instead of
/// a [`host_score`] per pattern on every request ([`serves_scan`], its reference).
#[derive(Debug)]
pub struct ServerHosts(HostMap<()>);

impl ServerHosts {
    /// Over lowercase patterns (what [`server_hosts`] gives).
    pub fn new(patterns: &[String]) -> ServerHosts {
        let mut m = HostMap::new(HostSemantics::Host);
        for p in patterns {
            m.insert(p, ());
        }
        ServerHosts(m)
    }

    /// True if some pattern matches the (normalized) host.
    pub fn serves(&self, host: &str) -> bool {
        self.0.get(host).is_some()
    }
}

/// What [`ServerHosts::serves`] answers, by a scan of the patterns.
pub fn serves_scan(patterns: &[String], host: &str) -> bool {
    patterns.iter().any(|p| host_score(p, host).is_some())
}

/// A port's HTTPS-terminating servers by SNI, built once: what [`tls_server_for`]
/// answers, at a cost independent of how many servers and hosts the port has.
#[derive(Debug)]
pub struct TlsServers {
    by_name: HostMap<usize>,
    /// For a ClientHello without SNI: the first server with host `*` (Envoy's chain
    /// without `server_names`), if any.
    catch_all: Option<usize>,
}

impl TlsServers {
    pub fn new(listener: &Listener) -> TlsServers {
        let mut by_name = HostMap::new(HostSemantics::Host);
        let mut catch_all = None;
        for (i, s) in listener.servers.iter().enumerate() {
            if !terminating(s.kind) {
                continue;
            }
            for h in server_hosts(s) {
                if h == "*" && catch_all.is_none() {
                    catch_all = Some(i);
                }
                by_name.insert(&h, i);
            }
        }
        TlsServers { by_name, catch_all }
    }

    /// The server (index in `Listener::servers`) for a ClientHello's SNI.
    pub fn get(&self, sni: Option<&str>) -> Option<usize> {
        match sni {
            Some(sni) => self.by_name.get(&normalize_host(sni)).copied(),
            None => self.catch_all,
        }
    }
}

#[cfg(test)]
mod lookup_tests;
#[cfg(test)]
mod tests;

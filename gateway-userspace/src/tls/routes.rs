//! TLS passthrough routes by SNI, one table per port, built once per snapshot: what
//! [`Listener::route_sni`] answers (exact name, else the longest `*.` suffix, else `*`;
//! ties to the first route), with a hash lookup per label of the SNI instead of a scan
//! of every route.
use std::collections::HashMap;

use crate::config::{HostMap, HostSemantics, Listener, Snapshot, TlsRoute};

#[derive(Debug, Default)]
pub struct SniRoutes {
    /// Per port: index in `Listener::tls`.
    ports: HashMap<u16, HostMap<usize>>,
}

impl SniRoutes {
    pub fn new(snapshot: &Snapshot) -> SniRoutes {
        SniRoutes {
            ports: snapshot
                .listeners
                .iter()
                .filter(|l| !l.tls.is_empty())
                .map(|l| (l.port, table(l)))
                .collect(),
        }
    }

    /// The TLS route of `listener` (the one this table was built from) for an SNI.
    pub fn route<'l>(&self, listener: &'l Listener, sni: &str) -> Option<&'l TlsRoute> {
        let i = *self
            .ports
            .get(&listener.port)?
            .get(&sni.to_ascii_lowercase())?;
        listener.tls.get(i)
    }
}

/// One port's table: routes in order, so a name written by two routes stays the first's.
pub fn table(listener: &Listener) -> HostMap<usize> {
    let mut t = HostMap::new(HostSemantics::Sni);
    for (i, route) in listener.tls.iter().enumerate() {
        for host in &route.sni_hosts {
            t.insert(host, i);
        }
    }
    t
}

#[cfg(test)]
mod tests;

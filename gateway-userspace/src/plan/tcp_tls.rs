//! TLS origination of TCP flows, compiled per cluster with a DestinationRule `tls`:
//! the rustls client config and SNI the L4 path connects with
//! (`crate::proxy::tls_origin`), or why it cannot be built (the flow then fails closed).
use std::{collections::HashMap, sync::Arc};

use rustls::{ClientConfig, pki_types::ServerName};

use crate::config::Snapshot;

/// A cluster's client config and SNI.
#[derive(Clone)]
pub struct Origin {
    pub cfg: Arc<ClientConfig>,
    pub sni: ServerName<'static>,
}

/// The clusters that originate TLS: their config, or why it could not be built.
#[derive(Default)]
pub struct TcpOrigination(HashMap<String, Result<Origin, String>>);

impl TcpOrigination {
    pub fn new(snapshot: &Snapshot) -> TcpOrigination {
        let by_cluster = snapshot
            .clusters
            .values()
            .filter_map(|c| {
                let t = c.tls.as_ref()?;
                let origin =
                    super::tls_client::client_config(t, c, snapshot).map(|(cfg, sni)| Origin {
                        cfg: Arc::new(cfg),
                        sni,
                    });
                Some((c.name.clone(), origin))
            })
            .collect();
        TcpOrigination(by_cluster)
    }

    /// None: the cluster takes plain TCP.
    pub fn get(&self, cluster: &str) -> Option<&Result<Origin, String>> {
        self.0.get(cluster)
    }
}

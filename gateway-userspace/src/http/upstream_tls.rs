//! The upstream HTTP clients: one plain (HTTP/1.1 keep-alive, as Istio speaks to a
//! plain HTTP service port), one per cluster that originates TLS (DestinationRule
//! `tls` SIMPLE or MUTUAL) and HTTP/2 connections per cluster whose port speaks HTTP/2
//! (`http::upstream_h2`), built once per config. A cluster whose DestinationRule sets
//! connection settings (`connectionPool.tcp.connectTimeout`, `tcpKeepalive`,
//! `http.maxRequestsPerConnection`, `idleTimeout`, `h2UpgradePolicy`) gets a client
//! built with them: plain HTTP/1.1 clients are shared by the clusters whose settings
//! are equal (a map keyed by the settings), TLS and HTTP/2 ones are per cluster.
//!
//! TLS origination as Envoy's `UpstreamTlsContext` from Istio (pilot/pkg/networking/
//! core/cluster_tls.go):
//! - SNI: `sni`, else the destination host (what Istio's auto SNI sends for a request
//!   whose Host is the service host).
//! - Verification: the chain against `caCertificates` (or `ca.crt`/`cacert` of the
//!   `credentialName` Secret); the name against `subjectAltNames` (any of them) if set,
//!   else against the SNI (Istio's `VERIFY_CERTIFICATE_AT_CLIENT`, auto SAN validation).
//!   `insecureSkipVerify: true` accepts any certificate.
//! - MUTUAL: the client certificate from the Secret (`tls.crt`/`tls.key`, or
//!   `cert`/`key`) or from `clientCertificate`/`privateKey`.
//!
//! A cluster whose TLS cannot be set up (its Secret missing, say) fails closed: every
//! request to it is 503 `UF`, with the reason logged.
use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use hyper::{Request, Response, Uri, Version, body::Incoming, header};

use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use rustls::pki_types::ServerName;

use super::body::Body;
use super::upstream_conn::{Connector, Reuse, send_limited};
use super::upstream_h2::{H2Pool, SendError};
use crate::config::{Snapshot, upstream_policy::ConnSettings};
/// TCP routes (proxy::tls_origin) build their client config here too.
pub(crate) use crate::plan::tls_client::client_config;

pub type HttpClient = Client<HttpsConnector<Connector>, Body>;

/// The clients, by cluster. Cheap to clone.
#[derive(Clone)]
pub struct UpstreamClient(Arc<Clients>);

struct Clients {
    /// Plain HTTP/1.1 with the gateway's own connection settings: every cluster not below.
    plain: HttpClient,
    /// Clusters that originate TLS, speak HTTP/2 or have their own connection settings
    /// (DestinationRule `connectionPool`): their client, or why there is none.
    special: HashMap<String, Result<Upstream, String>>,
}

enum Upstream {
    /// HTTP/1.1, plain (shared by the clusters with the same settings) or over TLS.
    Http1 {
        client: Box<HttpClient>,
        tls: bool,
        reuse: Reuse,
    },
    /// HTTP/2, h2c or over TLS.
    H2(H2Pool),
    /// `useClientProtocol`: HTTP/2 for a client that spoke HTTP/2, else HTTP/1.1.
    ClientProtocol {
        h1: Box<HttpClient>,
        tls: bool,
        reuse: Reuse,
        h2: H2Pool,
    },
}

/// Where a request to a cluster goes: the HTTP/1.1 client and its URI scheme, or the
/// cluster's HTTP/2 connections.
pub enum Target<'a> {
    Http1 {
        client: &'a HttpClient,
        scheme: &'static str,
        /// `http.maxRequestsPerConnection`, `tcp.maxConnectionDuration`.
        reuse: Reuse,
    },
    H2(&'a H2Pool),
}

impl UpstreamClient {
    /// `connect_timeout`: `--connect-timeout`, for clusters without `tcp.connectTimeout`.
    pub fn new(connect_timeout: Duration, snapshot: &Snapshot) -> UpstreamClient {
        let plain = build(connect_timeout, &ConnSettings::default(), None);
        // One plain client per distinct connection settings.
        let mut plain_by: HashMap<ConnSettings, HttpClient> = HashMap::new();
        let special = snapshot
            .clusters
            .values()
            .filter(|c| c.tls.is_some() || c.http2 || c.conn != ConnSettings::default())
            .map(|c| {
                let tls = match &c.tls {
                    Some(t) => client_config(t, c, snapshot).map(Some),
                    None => Ok(None),
                };
                let upstream = tls
                    .map(|tls| match (c.http2, tls) {
                        // Istio's `setUseDownstreamProtocol` replaces the cluster's
                        // protocol, whatever the port says.
                        (_, tls) if c.conn.use_client_protocol => Upstream::ClientProtocol {
                            h1: Box::new(build(connect_timeout, &c.conn, tls.clone())),
                            tls: tls.is_some(),
                            reuse: reuse(&c.conn),
                            h2: H2Pool::new(connect_timeout, &c.conn, tls, false),
                        },
                        (true, tls) => {
                            Upstream::H2(H2Pool::new(connect_timeout, &c.conn, tls, true))
                        }
                        (false, Some(tls)) => Upstream::Http1 {
                            client: Box::new(build(connect_timeout, &c.conn, Some(tls))),
                            tls: true,
                            reuse: reuse(&c.conn),
                        },
                        (false, None) => Upstream::Http1 {
                            client: Box::new(
                                plain_by
                                    .entry(c.conn)
                                    .or_insert_with(|| build(connect_timeout, &c.conn, None))
                                    .clone(),
                            ),
                            tls: false,
                            reuse: reuse(&c.conn),
                        },
                    })
                    .inspect_err(|e| {
                        tracing::warn!(target: "gateway::http", cluster = %c.name, "TLS origination cannot be set up; requests to this cluster fail (503 UF): {e}");
                    });
                (c.name.clone(), upstream)
            })
            .collect();
        UpstreamClient(Arc::new(Clients { plain, special }))
    }

    /// Where requests to `cluster` go; `client_h2`: the client spoke HTTP/2 (for a
    /// cluster with `useClientProtocol`). Err: the cluster originates TLS but its client
    /// could not be built (why).
    pub fn for_cluster(&self, cluster: &str, client_h2: bool) -> Result<Target<'_>, &str> {
        match self.0.special.get(cluster) {
            None => Ok(Target::Http1 {
                client: &self.0.plain,
                scheme: "http",
                reuse: Reuse::default(),
            }),
            Some(Ok(Upstream::Http1 { client, tls, reuse })) => Ok(Target::Http1 {
                client,
                scheme: if *tls { "https" } else { "http" },
                reuse: *reuse,
            }),
            Some(Ok(Upstream::H2(pool))) => Ok(Target::H2(pool)),
            Some(Ok(Upstream::ClientProtocol { h2, .. })) if client_h2 => Ok(Target::H2(h2)),
            Some(Ok(Upstream::ClientProtocol { h1, tls, reuse, .. })) => Ok(Target::Http1 {
                client: h1,
                scheme: if *tls { "https" } else { "http" },
                reuse: *reuse,
            }),
            Some(Err(e)) => Err(e),
        }
    }
}

impl Target<'_> {
    /// TLS to the endpoint.
    pub fn tls(&self) -> bool {
        match self {
            Target::Http1 { scheme, .. } => *scheme == "https",
            Target::H2(p) => p.tls(),
        }
    }

    /// The request for `endpoint`: HTTP/1.1 to `scheme://endpoint`; HTTP/2 with
    /// `:authority` from `Host` (which HTTP/2 does not carry), as Envoy sends it.
    pub fn request(
        &self,
        endpoint: SocketAddr,
        path_and_query: &str,
        mut req: Request<Body>,
    ) -> Result<Request<Body>, hyper::http::uri::InvalidUri> {
        let (scheme, authority) = match self {
            Target::Http1 { scheme, .. } => {
                *req.version_mut() = Version::HTTP_11;
                (*scheme, endpoint.to_string())
            }
            Target::H2(p) => {
                *req.version_mut() = Version::HTTP_2;
                let host = req
                    .headers_mut()
                    .remove(header::HOST)
                    .and_then(|h| h.to_str().ok().map(str::to_string))
                    .filter(|h| h.parse::<hyper::http::uri::Authority>().is_ok());
                (
                    if p.tls() { "https" } else { "http" },
                    host.unwrap_or_else(|| endpoint.to_string()),
                )
            }
        };
        *req.uri_mut() = format!("{scheme}://{authority}{path_and_query}").parse::<Uri>()?;
        Ok(req)
    }

    pub async fn send(
        &self,
        endpoint: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        match self {
            Target::Http1 { client, reuse, .. } => {
                send_limited(client, req, *reuse)
                    .await
                    .map_err(|e| SendError {
                        connect: e.is_connect(),
                        message: super::upstream::error_chain(&e),
                    })
            }
            Target::H2(pool) => pool.send(endpoint, req).await,
        }
    }
}

/// Envoy's (and so Istio's) default upstream idle timeout is 1 h; the gateway has
/// closed pooled connections idle for 60 s since before DestinationRules, and keeps
/// that when `http.idleTimeout` is not set.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the cluster's HTTP/1.1 connections serve.
fn reuse(conn: &ConnSettings) -> Reuse {
    Reuse {
        max_requests: conn.max_requests_per_connection,
        max_duration: conn.max_connection_duration,
    }
}

fn build(
    connect_timeout: Duration,
    conn: &ConnSettings,
    tls: Option<(rustls::ClientConfig, ServerName<'static>)>,
) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(conn.connect_timeout.unwrap_or(connect_timeout)));
    http.set_nodelay(true);
    http.enforce_http(false);
    let http = Connector {
        http,
        keepalive: conn.keepalive,
    };
    let connector = match tls {
        Some((cfg, sni)) => hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(cfg)
            .https_or_http()
            .with_server_name_resolver(FixedServerNameResolver::new(sni))
            .enable_http1()
            .wrap_connector(http),
        // Only `http://` URIs go to the plain client; its TLS config refuses every
        // certificate, should an `https://` one ever reach it.
        None => hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::plan::tls_client::reject_all())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http),
    };
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        // A zero (`tcp.idleTimeout: 0s`) is Envoy's "disabled": no pool idle timeout.
        // With `maxConnectionDuration` the pool's idle sweep (which also drops the
        // connections it retired, `send_limited`) runs at least that often: a connection
        // idle that long is older than that anyway.
        .pool_idle_timeout(
            [
                Some(conn.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT)).filter(|d| !d.is_zero()),
                conn.max_connection_duration,
            ]
            .into_iter()
            .flatten()
            .min(),
        )
        .build(connector)
}

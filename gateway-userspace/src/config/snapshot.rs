//! The immutable result of loading: what the gateway must serve.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

pub use super::istio::TlsMode;
use super::{Loc, istio};

/// Everything the data plane needs, built once and never mutated.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The gateway workload's namespace (`--namespace`): where credentialName Secrets live.
    pub namespace: String,
    /// One per port, sorted by port.
    pub listeners: Vec<Listener>,
    /// Keyed by the Istio-style cluster name.
    pub clusters: BTreeMap<String, Cluster>,
    /// `"namespace/name"` -> decoded data. Deliberately not in `resources`.
    pub secrets: BTreeMap<String, Secret>,
    /// Who this gateway is (namespace, labels, MeshConfig root namespace): which
    /// AuthorizationPolicies apply to it is decided from this when the Plan compiles them.
    pub identity: super::GatewayIdentity,
    /// The raw typed resources, for later milestones and config_dump.
    pub resources: Resources,
    /// Fields read and not acted on, and (at `run`) references to missing things:
    /// logged, counted in `gateway_config_warnings`, listed in `/config_dump`.
    pub warnings: Vec<super::warnings::Warning>,
    /// Gateway servers left out because their credential Secret does not exist.
    pub inactive: Vec<InactiveServer>,
    /// The `--mesh-config` file (default: an empty MeshConfig). Its access-log fields
    /// are compiled with the Telemetry resources (`telemetry::access_log::compile`).
    pub mesh: super::mesh::MeshConfig,
}

/// A Gateway server that is not served: a reference of it names something missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InactiveServer {
    /// `namespace/name` of the Gateway.
    pub gateway: String,
    /// Index in the Gateway's `servers`.
    pub index: usize,
    pub name: Option<String>,
    pub port: u32,
    pub hosts: Vec<String>,
    /// The `credentialName` Secret that does not exist.
    pub credential_name: String,
    /// The warning, as logged.
    pub reason: String,
}

impl Snapshot {
    pub fn listener(&self, port: u16) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.port == port)
    }
}

/// All loaded resources as written (after defaulting), in load order.
/// Serializable for a config dump; secrets appear by name only.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    pub gateways: Vec<istio::Gateway>,
    pub virtual_services: Vec<istio::VirtualService>,
    pub service_entries: Vec<istio::ServiceEntry>,
    pub destination_rules: Vec<super::destination_rule::DestinationRule>,
    pub telemetry: Vec<istio::Telemetry>,
    /// Where each of `telemetry` is written (its filters are compiled later).
    #[serde(skip)]
    pub telemetry_origins: Vec<Origin>,
    pub authorization_policies: Vec<istio::AuthorizationPolicy>,
    /// `"namespace/name"` of each Secret.
    pub secret_names: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ListenerProtocol {
    /// Only plain TCP servers.
    Tcp,
    /// SNI-selected: TLS passthrough, possibly with HTTPS-terminating
    /// servers and/or a TCP fallback for connections no SNI route matches.
    Tls,
    /// Plain HTTP servers.
    Http,
    /// Only HTTPS-terminating servers.
    Https,
}

/// How a single Gateway server is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ServerKind {
    /// HTTP, HTTP2, GRPC, GRPC-WEB.
    Http,
    /// HTTPS with SIMPLE / MUTUAL / OPTIONAL_MUTUAL / ISTIO_MUTUAL.
    HttpsTerminate,
    /// TLS, or HTTPS with PASSTHROUGH / AUTO_PASSTHROUGH.
    TlsPassthrough,
    /// TLS with SIMPLE / MUTUAL / OPTIONAL_MUTUAL: terminated here, the plaintext sent
    /// by the VirtualService `tcp` route (Istio's "TCP with TLS termination").
    TlsTerminate,
    /// TCP and TCP-based protocols (MONGO, MYSQL, REDIS).
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerRef {
    /// `namespace/name` of the Gateway.
    pub gateway: String,
    /// Index in the Gateway's `servers`.
    pub index: usize,
    pub name: Option<String>,
    /// Upper-cased as Istio compares it.
    pub protocol: String,
    /// As written (`ns/host`, `./host`, `*/host` or `host`).
    pub hosts: Vec<String>,
    pub tls_mode: TlsMode,
    pub kind: ServerKind,
    pub bind: Option<String>,
    pub tls: Option<istio::ServerTlsSettings>,
    /// Where the server is written (`spec.servers[i]` of its Gateway), for the errors
    /// found when its certificates are loaded.
    #[serde(skip)]
    pub origin: Origin,
}

/// Where a resource, or a part of one, is written: for errors found after loading
/// (certificates, keys and CRLs are parsed when the TLS configs are built). The file's
/// positions are indexed only when a location is asked for.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    src: Option<super::source::Source>,
    /// The node path of the part (`spec.servers[1]`; empty: the whole document).
    path: String,
}

impl Origin {
    pub(crate) fn new(src: &super::source::Source, path: &str) -> Origin {
        Origin {
            src: Some(src.clone()),
            path: path.to_string(),
        }
    }

    /// The part `field` below this one (`tls`, `portLevelSettings[0]`).
    pub fn child(&self, field: &str) -> Origin {
        Origin {
            src: self.src.clone(),
            path: if self.path.is_empty() {
                field.to_string()
            } else {
                format!("{}.{field}", self.path)
            },
        }
    }

    /// Where `field` (a path below this part: `tls.credentialName`, `data.tls.crt`) is
    /// written, or its nearest ancestor that is. A part built in code, not loaded from a
    /// file, has the position `<unknown>:1:1`.
    pub fn loc(&self, field: &str) -> Loc {
        let path = match (self.path.is_empty(), field.is_empty()) {
            (_, true) => self.path.clone(),
            (true, false) => field.to_string(),
            (false, false) => format!("{}.{field}", self.path),
        };
        match &self.src {
            Some(src) => src.loc(&path),
            None => Loc {
                file: "<unknown>".into(),
                line: 1,
                col: 1,
            },
        }
    }
}

/// Equal when they name the same part of the same file.
impl PartialEq for Origin {
    fn eq(&self, other: &Origin) -> bool {
        self.path == other.path
            && self.src.as_ref().map(|s| &s.file) == other.src.as_ref().map(|s| &s.file)
    }
}

impl Eq for Origin {}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub port: u16,
    pub protocol: ListenerProtocol,
    pub servers: Vec<ServerRef>,
    /// Plain TCP proxying (and, on a TLS listener, the fallback for
    /// connections no SNI route matches). Chosen from the VS `tcp[]` entries
    /// bound to a TCP server on this port whose `match` is empty or has a
    /// `port` that is unset or equal to this port: VSs are taken in
    /// namespace/name order, entries in `tcp[]` order, and the first wins.
    pub tcp: Option<TcpRoute>,
    /// SNI routes, in VS namespace/name order then `tls[]` order.
    pub tls: Vec<TlsRoute>,
    /// The TCP route of each TLS-terminating server (`ServerKind::TlsTerminate`; index
    /// in `servers`), chosen as `tcp` is but among the routes bound to that server.
    /// A terminating server without one refuses its connections (Istio builds no
    /// filter chain for it).
    pub terminated_tcp: Vec<(usize, TcpRoute)>,
    /// Virtual services bound to the HTTP / HTTPS-terminating servers.
    pub http: Vec<HttpVirtualHost>,
}

impl Listener {
    /// Picks the TLS route for an SNI name the way Envoy's filter chain match
    /// does: exact name first, then the wildcard with the longest suffix,
    /// then `*`. Case-insensitive; ties go to the first route. A scan of every
    /// route: the data path asks the per-port table of `tls::routes`, which answers
    /// the same; this stays as its reference.
    pub fn route_sni(&self, sni: &str) -> Option<&TlsRoute> {
        let sni = sni.to_ascii_lowercase();
        let mut best: Option<((u8, usize), &TlsRoute)> = None;
        for route in &self.tls {
            for host in &route.sni_hosts {
                let score = if *host == sni {
                    Some((2, host.len()))
                } else if host == "*" {
                    Some((0, 0))
                } else if let Some(suffix) = host.strip_prefix('*') {
                    sni.ends_with(suffix).then_some((1, suffix.len()))
                } else {
                    None
                };
                if let Some(score) = score
                    && best.is_none_or(|(b, _)| score > b)
                {
                    best = Some((score, route));
                }
            }
        }
        best.map(|(_, r)| r)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TcpRoute {
    /// `namespace/name` of the VirtualService.
    pub name: String,
    pub destinations: Vec<WeightedCluster>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TlsRoute {
    /// `namespace/name` of the VirtualService.
    pub name: String,
    /// Lowercase; may be `*.x.y` or `*`.
    pub sni_hosts: Vec<String>,
    pub destinations: Vec<WeightedCluster>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
}

/// A VirtualService bound to HTTP(S) servers of a listener. Routes are
/// carried as parsed for the HTTP milestone, with destinations resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpVirtualHost {
    /// `namespace/name` of the VirtualService.
    pub name: String,
    /// Indices into `Listener::servers` this VS is bound to.
    pub servers: Vec<usize>,
    /// The VS hosts, lowercase.
    pub hosts: Vec<String>,
    pub routes: Vec<HttpRouteEntry>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpRouteEntry {
    /// The VirtualService's own `http[]` entry (shared, not copied).
    pub route: std::sync::Arc<istio::HttpRoute>,
    /// Resolved `route[]` destinations (empty for redirect/directResponse).
    pub destinations: Vec<WeightedCluster>,
    /// Resolved `mirror` / `mirrors[]` destinations, those with a share above 0.
    pub mirrors: Vec<MirrorCluster>,
    /// Where the route is written, as written there: its VirtualService's `spec.http[i]`
    /// (before the match blocks of other sources were dropped); for a delegate's route
    /// merged with its root, the delegate's `spec.http[k]`, then the root's
    /// `spec.http[i]`. A route that does not compile is reported at these
    /// (`plan::routing::build_table`).
    pub written: Vec<WrittenRoute>,
}

/// An `http[]` entry of a VirtualService as written, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenRoute {
    /// `spec.http[i]` of its VirtualService.
    pub at: Origin,
    pub route: std::sync::Arc<istio::HttpRoute>,
}

/// A mirror destination and the share of requests copied to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MirrorCluster {
    pub cluster: String,
    /// Per million requests (Istio's FractionalPercent with denominator MILLION).
    pub per_million: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cluster {
    /// Istio style: `outbound|2701||tcp-echo-service.default.svc.cluster.local`.
    pub name: String,
    pub host: String,
    pub port: u16,
    /// The DestinationRule subset (`""`: the whole service).
    pub subset: String,
    pub endpoints: Vec<SocketAddr>,
    /// Each endpoint's weight (ServiceEntry `endpoints[].weight`, Envoy's
    /// `load_balancing_weight`; 1 when unset), parallel to `endpoints`.
    pub weights: Vec<u32>,
    /// A DNS cluster: the names to look up again every `--dns-refresh-rate`
    /// (`runtime::dns`); `None`: the endpoints are fixed addresses.
    pub dns: Option<DnsRefresh>,
    /// From the DestinationRule (Istio's default without one: LEAST_REQUEST).
    pub lb: super::dest_rules::LbPolicy,
    /// `connectionPool`'s circuit breakers (`None`: no DestinationRule sets one, no limits).
    pub circuit_breakers: Option<super::upstream_policy::CircuitBreakers>,
    /// `connectionPool`'s connection settings (connect timeout, keepalive, reuse, idle,
    /// HTTP/2 upgrade); default: the gateway's own.
    pub conn: super::upstream_policy::ConnSettings,
    /// The idle timeout of a TCP/TLS route to this service (Envoy's tcp_proxy
    /// `idle_timeout`): the DestinationRule's top-level `connectionPool.tcp.idleTimeout`,
    /// as Istio's `buildOutboundNetworkFiltersWithSingleDestination` reads it (subset and
    /// port levels do not reach the tcp_proxy). `Some(ZERO)`: never; `None`:
    /// `--tcp-idle-timeout`.
    pub tcp_idle_timeout: Option<std::time::Duration>,
    /// The longest a TCP/TLS route's flow to this service lives (Envoy's tcp_proxy
    /// `max_downstream_connection_duration`): the same rule's top-level
    /// `connectionPool.tcp.maxConnectionDuration` (networkfilter.go, as
    /// `tcp_idle_timeout`). None: no limit.
    pub tcp_max_duration: Option<std::time::Duration>,
    /// `outlierDetection` (`None`: no endpoint is ever ejected).
    pub outlier: Option<super::upstream_policy::OutlierPolicy>,
    /// TLS origination (DestinationRule `tls`, SIMPLE or MUTUAL); None: plain TCP.
    pub tls: Option<super::destination_rule::ClientTlsSettings>,
    /// Where that `tls` is written, for the errors found when its certificates load.
    #[serde(skip)]
    pub tls_at: Origin,
    /// HTTP/2 to the endpoints (the ServiceEntry port's protocol HTTP2, GRPC, GRPC-WEB,
    /// or `h2UpgradePolicy: UPGRADE` on an HTTP port).
    pub http2: bool,
    /// `namespace/name` of the DestinationRule that applies, if any.
    pub destination_rule: Option<String>,
}

/// How a DNS cluster's endpoint list is rebuilt (Envoy's STRICT_DNS / LOGICAL_DNS
/// clusters, `resolution: DNS` / `DNS_ROUND_ROBIN`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsRefresh {
    /// In order: each gives its addresses, all with its weight.
    pub targets: Vec<DnsTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsTarget {
    /// The name to resolve (`None`: `addrs` is a fixed IP endpoint).
    pub name: Option<String>,
    pub port: u16,
    pub weight: u32,
    /// LOGICAL_DNS (`DNS_ROUND_ROBIN`): only the first address of each answer is used.
    pub first_only: bool,
    /// The addresses of the last lookup that succeeded (at load: the load's).
    pub addrs: Vec<SocketAddr>,
}

impl DnsRefresh {
    /// The endpoint list and weights the targets give.
    pub fn endpoints(&self) -> (Vec<SocketAddr>, Vec<u32>) {
        let mut eps = Vec::new();
        let mut weights = Vec::new();
        for t in &self.targets {
            eps.extend(&t.addrs);
            weights.extend(std::iter::repeat_n(t.weight, t.addrs.len()));
        }
        (eps, weights)
    }

    /// The same names, ports, weights and modes (the addresses aside).
    pub fn same_targets(&self, other: &DnsRefresh) -> bool {
        let key = |t: &DnsTarget| (t.name.clone(), t.port, t.weight, t.first_only);
        self.targets.len() == other.targets.len()
            && self
                .targets
                .iter()
                .map(key)
                .eq(other.targets.iter().map(key))
    }
}

/// Decoded Secret data (`tls.crt`, `tls.key`, `ca.crt`, ...).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// `namespace/name`.
    pub name: String,
    pub type_: Option<String>,
    pub data: BTreeMap<String, Vec<u8>>,
    /// The Secret's document.
    pub origin: Origin,
    /// The keys of `data` that came from `stringData` (which Kubernetes merges over
    /// `data`).
    pub string_data_keys: std::collections::BTreeSet<String>,
}

impl Secret {
    /// Where the value of data key `key` is written (`data.<key>` or
    /// `stringData.<key>`), or the document when it has no such key.
    pub fn key_loc(&self, key: &str) -> Loc {
        let field = if self.string_data_keys.contains(key) {
            "stringData"
        } else {
            "data"
        };
        self.origin.loc(&format!("{field}.{key}"))
    }
}

/// Never prints key material.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("type_", &self.type_)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

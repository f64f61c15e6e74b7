//! Istio's standard metrics (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`, `istio_tcp_*`) with Istio's labels, as a
//! gateway reports them (`reporter="source"`, the gateway as source workload).
//!
//! Labels and their order are those of Istio's stats filter for a client-side reporter
//! (istio/proxy `source/extensions/filters/http/istio_stats/istio_stats.cc` before its
//! move to Envoy, 86a72d0 `d13a386d7^`, `Reporter::ClientSidecar`; the order its e2e
//! goldens `testdata/metric/client_request_total.yaml.tmpl` and
//! `tcp_client_connection_open.yaml.tmpl` list): reporter, source_workload,
//! source_canonical_service, source_canonical_revision, source_workload_namespace,
//! source_principal, source_app, source_version, source_cluster, destination_workload,
//! destination_workload_namespace, destination_principal, destination_app,
//! destination_version, destination_service, destination_canonical_service,
//! destination_canonical_revision, destination_service_name,
//! destination_service_namespace, destination_cluster, request_protocol, then
//! response_code, grpc_response_status (HTTP only), response_flags,
//! connection_security_policy.
//!
//! Canonical service and revision (istio/istio `pkg/kube/labels/labels.go`
//! `CanonicalService`): the first of `service.istio.io/canonical-name`,
//! `app.kubernetes.io/name`, `app`, else the workload name; the first of
//! `service.istio.io/canonical-revision`, `app.kubernetes.io/version`, `version`, else
//! `latest`. The source is the gateway (its `--label`s). The destination is the peer
//! the filter knows from the endpoint's metadata, which Istio writes from the
//! endpoint's labels (`pilot/pkg/networking/util/util.go` `AppendLbEndpointMetadata`:
//! `CanonicalService(labels, workloadName)`; a ServiceEntry's inline endpoint has no
//! workload name): a ServiceEntry endpoint with such labels gives them, any other
//! `unknown` and revision `latest` (the filter's defaults for a missing peer).
//!
//! One series per label set: a read lock finds it and relaxed atomics count; the write
//! lock is taken only the first time a label set is seen.
use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{
    config::GatewayIdentity,
    sys::prom::{Kind, Prom, labels},
};

use super::{AccessRecord, ResponseFlag, ResponseFlags};

/// Istio's default buckets for `istio_request_duration_milliseconds` (ms).
pub const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Istio's buckets for `istio_request_bytes` / `istio_response_bytes`: 1 to 10^9, ×10.
pub const SIZE_BUCKETS: [f64; 10] = [
    1.0,
    10.0,
    100.0,
    1000.0,
    10000.0,
    100000.0,
    1000000.0,
    10000000.0,
    100000000.0,
    1000000000.0,
];

pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    /// In thousandths of the unit (µs for durations), so sums of fractions add up.
    sum_milli: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_milli: AtomicU64::new(0),
        }
    }

    /// `value_milli`: the observation in thousandths of the unit.
    fn observe_milli(&self, value_milli: u64) {
        let v = value_milli as f64 / 1000.0;
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_milli.fetch_add(value_milli, Ordering::Relaxed);
    }

    /// `labels`: rendered by [`labels`].
    fn render(&self, p: &mut Prom<'_>, name: &str, labels: &str) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            p.sample_with(&bucket, labels, &[("le", b)], cumulative);
        }
        let count = self.count.load(Ordering::Relaxed);
        p.sample_with(&bucket, labels, &[("le", &"+Inf")], count);
        let sum = self.sum_milli.load(Ordering::Relaxed) as f64 / 1000.0;
        p.sample_with(&format!("{name}_sum"), labels, &[], sum);
        p.sample_with(&format!("{name}_count"), labels, &[], count);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HttpKey {
    destination: Destination,
    protocol: &'static str,
    response_code: u16,
    response_flags: ResponseFlags,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TcpKey {
    destination: Destination,
    response_flags: ResponseFlags,
}

/// `destination_service*` and `destination_canonical_*` labels, from an Istio cluster
/// name and the endpoint's labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Destination {
    service: String,
    name: String,
    namespace: String,
    canonical_service: String,
    canonical_revision: String,
}

/// Istio's `CanonicalService(labels, workloadName)` (pkg/kube/labels/labels.go): the
/// canonical name (empty when no label gives one and `workload` is empty) and revision.
pub fn canonical_service(
    labels: &std::collections::BTreeMap<String, String>,
    workload: &str,
) -> (String, String) {
    let first = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k)).cloned();
    (
        first(&[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ])
        .unwrap_or_else(|| workload.to_string()),
        first(&[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ])
        .unwrap_or_else(|| "latest".into()),
    )
}

/// The canonical (service, revision) of each endpoint whose labels give one, by cluster
/// host and endpoint IP.
pub type EndpointLabels = HashMap<(String, std::net::IpAddr), (String, String)>;

/// [`EndpointLabels`] of a snapshot: the inline endpoints of its ServiceEntries (IP
/// addresses; a DNS endpoint's addresses are not known here, so it stays `unknown`).
pub fn endpoint_labels(snap: &crate::config::Snapshot) -> EndpointLabels {
    let mut out = EndpointLabels::new();
    for se in &snap.resources.service_entries {
        for e in &se.spec.endpoints {
            let Some(ip) = e.address.as_deref().and_then(|a| a.parse().ok()) else {
                continue;
            };
            let (name, revision) = canonical_service(&e.labels, "");
            if name.is_empty() {
                continue;
            }
            for h in &se.spec.hosts {
                out.insert((h.clone(), ip), (name.clone(), revision.clone()));
            }
        }
    }
    out
}

impl Destination {
    /// `outbound|80||webapp.default.svc.cluster.local` → webapp.default.svc.cluster.local,
    /// webapp, default. No cluster (no route): `unknown`, as Istio reports it. The
    /// canonical labels are the endpoint's (`labels`), else `unknown` and `latest`.
    fn from_cluster(
        cluster: Option<&str>,
        endpoint: Option<std::net::IpAddr>,
        labels: &EndpointLabels,
    ) -> Destination {
        let host = cluster
            .and_then(|c| c.split('|').nth(3))
            .filter(|h| !h.is_empty());
        let Some(host) = host else {
            return Destination {
                service: "unknown".into(),
                name: "unknown".into(),
                namespace: "unknown".into(),
                canonical_service: "unknown".into(),
                canonical_revision: "latest".into(),
            };
        };
        let (canonical_service, canonical_revision) = endpoint
            .and_then(|ip| labels.get(&(host.to_string(), ip)))
            .cloned()
            .unwrap_or_else(|| ("unknown".into(), "latest".into()));
        let (name, namespace) = match host.strip_suffix(".svc.cluster.local") {
            Some(rest) => match rest.split_once('.') {
                Some((n, ns)) => (n.to_string(), ns.to_string()),
                None => (rest.to_string(), "unknown".to_string()),
            },
            None => (host.to_string(), "unknown".to_string()),
        };
        Destination {
            service: host.to_string(),
            name,
            namespace,
            canonical_service,
            canonical_revision,
        }
    }

    /// From `destination_service` to `destination_service_namespace`, in Istio's order.
    fn labels(&self) -> String {
        labels(&[
            ("destination_service", &self.service),
            ("destination_canonical_service", &self.canonical_service),
            ("destination_canonical_revision", &self.canonical_revision),
            ("destination_service_name", &self.name),
            ("destination_service_namespace", &self.namespace),
        ])
    }
}

struct HttpSeries {
    requests: AtomicU64,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

#[derive(Default)]
struct TcpSeries {
    opened: AtomicU64,
    closed: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
}

pub struct IstioMetrics {
    /// Labels every series starts with: reporter, the source (the gateway), and the
    /// destination workload labels (`unknown`), up to `destination_version`.
    fixed: String,
    /// The canonical service and revision of endpoints that have them (the served
    /// config's: replaced on reload).
    endpoints: arc_swap::ArcSwap<EndpointLabels>,
    http: RwLock<HashMap<HttpKey, Arc<HttpSeries>>>,
    tcp: RwLock<HashMap<TcpKey, Arc<TcpSeries>>>,
}

fn get_or_insert<K: std::hash::Hash + Eq + Clone, V>(
    map: &RwLock<HashMap<K, Arc<V>>>,
    key: &K,
    new: impl FnOnce() -> V,
) -> Arc<V> {
    if let Some(s) = map.read().expect("metrics lock").get(key) {
        return s.clone();
    }
    map.write()
        .expect("metrics lock")
        .entry(key.clone())
        .or_insert_with(|| Arc::new(new()))
        .clone()
}

impl IstioMetrics {
    pub fn new(id: &GatewayIdentity) -> IstioMetrics {
        // Istio names the gateway's workload after its Deployment; ours is named by its
        // `app` label (istio-ingressgateway by default).
        let app = id
            .labels
            .get("app")
            .or_else(|| id.labels.get("istio"))
            .cloned()
            .unwrap_or_else(|| "gateway".into());
        let version = id
            .labels
            .get("version")
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        let (canonical_service, canonical_revision) = canonical_service(&id.labels, &app);
        let fixed = labels(&[
            ("reporter", &"source"),
            ("source_workload", &app),
            ("source_canonical_service", &canonical_service),
            ("source_canonical_revision", &canonical_revision),
            ("source_workload_namespace", &id.namespace),
            ("source_principal", &"unknown"),
            ("source_app", &app),
            ("source_version", &version),
            ("source_cluster", &"unknown"),
            ("destination_workload", &"unknown"),
            ("destination_workload_namespace", &"unknown"),
            ("destination_principal", &"unknown"),
            ("destination_app", &"unknown"),
            ("destination_version", &"unknown"),
        ]);
        IstioMetrics {
            fixed,
            endpoints: Default::default(),
            http: RwLock::default(),
            tcp: RwLock::default(),
        }
    }

    /// The endpoints' canonical labels ([`endpoint_labels`] of the served snapshot).
    pub fn set_endpoint_labels(&self, endpoints: EndpointLabels) {
        self.endpoints.store(Arc::new(endpoints));
    }

    /// What one finished request or L4 flow counts. The destination is the record's
    /// cluster and endpoint (its labels give the canonical service). An L4 flow's
    /// close counts when it had been opened ([`IstioMetrics::tcp_opened`]): not when
    /// it was refused (NR, UH, UF, UO, NC), but when it was closed at its
    /// `maxConnectionDuration` (DT).
    pub fn record(&self, r: &AccessRecord) {
        if r.is_http() {
            self.http(r);
        } else if let Some(cluster) = r.upstream_cluster.as_deref()
            && (r.response_flags.is_empty()
                || r.response_flags == ResponseFlag::DurationTimeout.into())
        {
            self.tcp_closed(cluster, r.upstream_host, r.bytes_received, r.bytes_sent);
        }
    }

    fn http(&self, r: &AccessRecord) {
        let key = HttpKey {
            destination: Destination::from_cluster(
                r.upstream_cluster.as_deref(),
                r.upstream_host.map(|a| a.ip()),
                &self.endpoints.load(),
            ),
            protocol: "http",
            response_code: r.status,
            response_flags: r.response_flags,
        };
        let s = get_or_insert(&self.http, &key, || HttpSeries {
            requests: AtomicU64::new(0),
            duration: Histogram::new(&DURATION_BUCKETS),
            request_bytes: Histogram::new(&SIZE_BUCKETS),
            response_bytes: Histogram::new(&SIZE_BUCKETS),
        });
        s.requests.fetch_add(1, Ordering::Relaxed);
        s.duration.observe_milli(r.duration.as_micros() as u64);
        s.request_bytes.observe_milli(r.bytes_received * 1000);
        s.response_bytes.observe_milli(r.bytes_sent * 1000);
    }

    /// The series of flows to `cluster`: Istio counts them without flags.
    fn tcp_series(&self, cluster: &str, endpoint: Option<std::net::SocketAddr>) -> Arc<TcpSeries> {
        let key = TcpKey {
            destination: Destination::from_cluster(
                Some(cluster),
                endpoint.map(|a| a.ip()),
                &self.endpoints.load(),
            ),
            response_flags: ResponseFlags::default(),
        };
        get_or_insert(&self.tcp, &key, TcpSeries::default)
    }

    pub fn tcp_opened(&self, cluster: &str, endpoint: Option<std::net::SocketAddr>) {
        self.tcp_series(cluster, endpoint)
            .opened
            .fetch_add(1, Ordering::Relaxed);
    }

    /// `received`: bytes from the client; `sent`: bytes to it (Istio's request/response).
    fn tcp_closed(
        &self,
        cluster: &str,
        endpoint: Option<std::net::SocketAddr>,
        received: u64,
        sent: u64,
    ) {
        let s = self.tcp_series(cluster, endpoint);
        s.closed.fetch_add(1, Ordering::Relaxed);
        s.received.fetch_add(received, Ordering::Relaxed);
        s.sent.fetch_add(sent, Ordering::Relaxed);
    }

    pub fn render(&self, out: &mut String) {
        let mut p = Prom::new(out);
        // Sorted by destination, code and the flags as printed.
        let mut http: Vec<(HttpKey, String, Arc<HttpSeries>)> = self
            .http
            .read()
            .expect("metrics lock")
            .iter()
            .map(|(k, v)| (k.clone(), k.response_flags.to_string(), v.clone()))
            .collect();
        http.sort_by(|a, b| {
            (&a.0.destination, a.0.response_code, &a.1).cmp(&(
                &b.0.destination,
                b.0.response_code,
                &b.1,
            ))
        });
        let http_labels = |k: &HttpKey, flags: &str| {
            let rest = labels(&[
                ("destination_cluster", &"unknown"),
                ("request_protocol", &k.protocol),
                ("response_code", &k.response_code),
                ("grpc_response_status", &""),
                ("response_flags", &flags),
                ("connection_security_policy", &"unknown"),
            ]);
            format!("{},{},{rest}", self.fixed, k.destination.labels())
        };
        p.family(
            "istio_requests_total",
            Kind::Counter,
            "Requests processed, by destination and response.",
        );
        for (k, flags, s) in &http {
            p.sample_with(
                "istio_requests_total",
                &http_labels(k, flags),
                &[],
                s.requests.load(Ordering::Relaxed),
            );
        }
        type Pick = fn(&HttpSeries) -> &Histogram;
        let hists: [(&str, &str, Pick); 3] = [
            (
                "istio_request_duration_milliseconds",
                "Request duration in milliseconds.",
                |s| &s.duration,
            ),
            ("istio_request_bytes", "Request body sizes in bytes.", |s| {
                &s.request_bytes
            }),
            (
                "istio_response_bytes",
                "Response body sizes in bytes.",
                |s| &s.response_bytes,
            ),
        ];
        for (name, help, pick) in hists {
            p.family(name, Kind::Histogram, help);
            for (k, flags, s) in &http {
                pick(s).render(&mut p, name, &http_labels(k, flags));
            }
        }

        let mut tcp: Vec<(TcpKey, Arc<TcpSeries>)> = self
            .tcp
            .read()
            .expect("metrics lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        tcp.sort_by(|a, b| a.0.destination.cmp(&b.0.destination));
        type TcpPick = fn(&TcpSeries) -> &AtomicU64;
        let counters: [(&str, &str, TcpPick); 4] = [
            (
                "istio_tcp_connections_opened_total",
                "TCP connections opened.",
                |s| &s.opened,
            ),
            (
                "istio_tcp_connections_closed_total",
                "TCP connections closed.",
                |s| &s.closed,
            ),
            (
                "istio_tcp_received_bytes_total",
                "Bytes received from clients on TCP connections.",
                |s| &s.received,
            ),
            (
                "istio_tcp_sent_bytes_total",
                "Bytes sent to clients on TCP connections.",
                |s| &s.sent,
            ),
        ];
        for (name, help, pick) in counters {
            p.family(name, Kind::Counter, help);
            for (k, s) in &tcp {
                let tcp_labels = format!("{},{}", self.fixed, k.destination.labels());
                p.sample_with(
                    name,
                    &tcp_labels,
                    &[
                        ("destination_cluster", &"unknown"),
                        ("request_protocol", &"tcp"),
                        ("response_flags", &k.response_flags),
                        ("connection_security_policy", &"unknown"),
                    ],
                    pick(s).load(Ordering::Relaxed),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;

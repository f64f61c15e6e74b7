//! Istio's standard metrics (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`, `istio_tcp_*`) with Istio's labels, as a
//! gateway reports them (`reporter="source"`, the gateway as source workload).
//!
//! One series per label set: a read lock finds it and relaxed atomics count; the write
//! lock is taken only the first time a label set is seen.
use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::config::GatewayIdentity;

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

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_milli.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HttpKey {
    destination: Destination,
    protocol: &'static str,
    response_code: u16,
    response_flags: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TcpKey {
    destination: Destination,
    response_flags: String,
}

/// `destination_service*` labels, from an Istio cluster name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Destination {
    service: String,
    name: String,
    namespace: String,
}

impl Destination {
    /// `outbound|80||webapp.default.svc.cluster.local` → webapp.default.svc.cluster.local,
    /// webapp, default. No cluster (no route): `unknown`, as Istio reports it.
    fn from_cluster(cluster: Option<&str>) -> Destination {
        let host = cluster
            .and_then(|c| c.split('|').nth(3))
            .filter(|h| !h.is_empty());
        let Some(host) = host else {
            return Destination {
                service: "unknown".into(),
                name: "unknown".into(),
                namespace: "unknown".into(),
            };
        };
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
        }
    }

    fn labels(&self) -> String {
        format!(
            "destination_service=\"{}\",destination_service_name=\"{}\",destination_service_namespace=\"{}\"",
            escape(&self.service),
            escape(&self.name),
            escape(&self.namespace)
        )
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
    /// Labels every series carries (reporter, source workload, unknown destination workload).
    fixed: String,
    http: RwLock<HashMap<HttpKey, Arc<HttpSeries>>>,
    tcp: RwLock<HashMap<TcpKey, Arc<TcpSeries>>>,
}

/// What one finished HTTP request contributes.
pub struct HttpObservation<'a> {
    pub cluster: Option<&'a str>,
    pub protocol: &'static str,
    pub response_code: u16,
    pub response_flags: &'a str,
    pub duration_us: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
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
        let fixed = format!(
            "reporter=\"source\",source_workload=\"{app}\",source_workload_namespace=\"{ns}\",source_principal=\"unknown\",source_app=\"{app}\",source_version=\"{version}\",source_cluster=\"unknown\",destination_workload=\"unknown\",destination_workload_namespace=\"unknown\",destination_principal=\"unknown\",destination_app=\"unknown\",destination_version=\"unknown\",destination_cluster=\"unknown\",connection_security_policy=\"unknown\"",
            app = escape(&app),
            ns = escape(&id.namespace),
            version = escape(&version),
        );
        IstioMetrics {
            fixed,
            http: RwLock::default(),
            tcp: RwLock::default(),
        }
    }

    pub fn http(&self, o: &HttpObservation<'_>) {
        let key = HttpKey {
            destination: Destination::from_cluster(o.cluster),
            protocol: o.protocol,
            response_code: o.response_code,
            response_flags: if o.response_flags.is_empty() {
                "-".into()
            } else {
                o.response_flags.to_string()
            },
        };
        let s = get_or_insert(&self.http, &key, || HttpSeries {
            requests: AtomicU64::new(0),
            duration: Histogram::new(&DURATION_BUCKETS),
            request_bytes: Histogram::new(&SIZE_BUCKETS),
            response_bytes: Histogram::new(&SIZE_BUCKETS),
        });
        s.requests.fetch_add(1, Ordering::Relaxed);
        s.duration.observe_milli(o.duration_us);
        s.request_bytes.observe_milli(o.request_bytes * 1000);
        s.response_bytes.observe_milli(o.response_bytes * 1000);
    }

    fn tcp_series(&self, cluster: Option<&str>, flags: &str) -> Arc<TcpSeries> {
        let key = TcpKey {
            destination: Destination::from_cluster(cluster),
            response_flags: if flags.is_empty() {
                "-".into()
            } else {
                flags.into()
            },
        };
        get_or_insert(&self.tcp, &key, TcpSeries::default)
    }

    pub fn tcp_opened(&self, cluster: &str) {
        self.tcp_series(Some(cluster), "")
            .opened
            .fetch_add(1, Ordering::Relaxed);
    }

    /// `received`: bytes from the client; `sent`: bytes to it (Istio's request/response).
    pub fn tcp_closed(&self, cluster: &str, received: u64, sent: u64) {
        let s = self.tcp_series(Some(cluster), "");
        s.closed.fetch_add(1, Ordering::Relaxed);
        s.received.fetch_add(received, Ordering::Relaxed);
        s.sent.fetch_add(sent, Ordering::Relaxed);
    }

    pub fn render(&self, out: &mut String) {
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let mut http: Vec<(HttpKey, Arc<HttpSeries>)> = self
            .http
            .read()
            .expect("metrics lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        http.sort_by(|a, b| {
            (
                &a.0.destination.service,
                a.0.response_code,
                &a.0.response_flags,
            )
                .cmp(&(
                    &b.0.destination.service,
                    b.0.response_code,
                    &b.0.response_flags,
                ))
        });
        let http_labels = |k: &HttpKey| {
            format!(
                "{},{},request_protocol=\"{}\",response_code=\"{}\",grpc_response_status=\"\",response_flags=\"{}\"",
                self.fixed,
                k.destination.labels(),
                k.protocol,
                k.response_code,
                escape(&k.response_flags)
            )
        };
        header(
            out,
            "istio_requests_total",
            "counter",
            "Requests processed, by destination and response.",
        );
        for (k, s) in &http {
            let _ = writeln!(
                out,
                "istio_requests_total{{{}}} {}",
                http_labels(k),
                s.requests.load(Ordering::Relaxed)
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
            header(out, name, "histogram", help);
            for (k, s) in &http {
                pick(s).render(out, name, &http_labels(k));
            }
        }

        let mut tcp: Vec<(TcpKey, Arc<TcpSeries>)> = self
            .tcp
            .read()
            .expect("metrics lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        tcp.sort_by(|a, b| a.0.destination.service.cmp(&b.0.destination.service));
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
            header(out, name, "counter", help);
            for (k, s) in &tcp {
                let _ = writeln!(
                    out,
                    "{name}{{{},{},request_protocol=\"tcp\",response_flags=\"{}\"}} {}",
                    self.fixed,
                    k.destination.labels(),
                    escape(&k.response_flags),
                    pick(s).load(Ordering::Relaxed)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_labels_from_cluster_names() {
        let d = Destination::from_cluster(Some("outbound|80||webapp.default.svc.cluster.local"));
        assert_eq!(
            (d.service.as_str(), d.name.as_str(), d.namespace.as_str()),
            ("webapp.default.svc.cluster.local", "webapp", "default")
        );
        let d = Destination::from_cluster(Some("outbound|9000||127.0.0.1"));
        assert_eq!(
            (d.name.as_str(), d.namespace.as_str()),
            ("127.0.0.1", "unknown")
        );
        assert_eq!(Destination::from_cluster(None).service, "unknown");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = IstioMetrics::new(&GatewayIdentity::default());
        for (us, code) in [(300, 200), (7_000, 200), (2_000_000, 503)] {
            m.http(&HttpObservation {
                cluster: Some("outbound|80||webapp.default.svc.cluster.local"),
                protocol: "http",
                response_code: code,
                response_flags: if code == 503 { "UF" } else { "" },
                duration_us: us,
                request_bytes: 0,
                response_bytes: 10,
            });
        }
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains(
                "response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\"} 2\n"
            ),
            "{out}"
        );
        assert!(out.contains("le=\"0.5\"} 1\n"), "{out}");
        assert!(out.contains("le=\"10\"} 2\n"), "{out}");
        assert!(
            out.contains("response_flags=\"UF\",le=\"2500\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("source_workload=\"istio-ingressgateway\""));
    }
}

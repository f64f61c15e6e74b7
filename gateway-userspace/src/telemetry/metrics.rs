//! Counters kept by the data path (relaxed atomics: each is independent) and their
//! Prometheus text rendering.
use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
};

use crate::{
    config::warnings::{Warning, count_by_code},
    kernel::splice::Splicer,
    lb::{Balancer, Balancers},
    sys::prom::{Kind, Prom, labels},
};

/// How the ClientHello inspection of one connection ended (Envoy tls_inspector's stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloOutcome {
    SniFound,
    NoSni,
    NotTls,
    TooLarge,
    Timeout,
    /// The client closed or failed before a full ClientHello.
    ClientGone,
}

impl HelloOutcome {
    pub const ALL: [HelloOutcome; 6] = [
        HelloOutcome::SniFound,
        HelloOutcome::NoSni,
        HelloOutcome::NotTls,
        HelloOutcome::TooLarge,
        HelloOutcome::Timeout,
        HelloOutcome::ClientGone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HelloOutcome::SniFound => "sni_found",
            HelloOutcome::NoSni => "sni_not_found",
            HelloOutcome::NotTls => "not_tls",
            HelloOutcome::TooLarge => "client_hello_too_large",
            HelloOutcome::Timeout => "read_timeout",
            HelloOutcome::ClientGone => "connection_closed",
        }
    }
}

#[derive(Debug, Default)]
pub struct ListenerStats {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub no_route: AtomicU64,
    /// Connections refused at a connection cap (Envoy's downstream_cx_overflow).
    pub overflow: AtomicU64,
    /// accept() failures (EMFILE, ENFILE, ENOBUFS, ...).
    pub accept_errors: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Stats {
    /// Per Gateway port, every port any Plan served (a reload adds ports, and the
    /// counters of a removed one stay, as Prometheus counters must).
    listeners: arc_swap::ArcSwap<BTreeMap<u16, &'static ListenerStats>>,
    hello: [AtomicU64; 6],
    pub upstream_connect_failures: AtomicU64,
    pub flows_closed: AtomicU64,
    pub flows_reset: AtomicU64,
    /// Payload bytes forwarded client -> upstream by the splice (ClientHello included).
    pub bytes_downstream_to_upstream: AtomicU64,
    pub bytes_upstream_to_downstream: AtomicU64,
    /// Payload bytes that passed through userspace memory while splicing (0 with eBPF).
    pub userspace_splice_bytes: AtomicU64,
    /// Downstream connections open right now, all listeners together.
    pub active_total: AtomicU64,
    /// The heap trimmer's looks (`crate::sys::heap`).
    pub heap: crate::sys::heap::HeapStats,
    /// Mirror (shadow) requests by outcome (`crate::http::mirror`).
    pub mirror: MirrorStats,
    /// HTTP/1.1 keep-alive connections parked without hyper now, and parks so far
    /// (`crate::http::h1`).
    pub http_parked: AtomicU64,
    pub http_parks: AtomicU64,
    /// Connections accepted per worker thread (`crate::sys::workers`); sized once
    /// the worker count is known.
    pub worker_accepted: std::sync::OnceLock<Box<[AtomicU64]>>,
}

/// What became of the copies `mirror`/`mirrors` asked for.
#[derive(Debug, Default)]
pub struct MirrorStats {
    /// Sent, and the mirror answered (any status; the answer is discarded).
    pub answered: AtomicU64,
    /// Sent, and the mirror failed: connect failure, reset or timeout.
    pub failed: AtomicU64,
    /// Not sent: the mirror cluster had no endpoint.
    pub no_endpoint: AtomicU64,
    /// Not sent: the request body exceeded the mirror buffer (Envoy's
    /// `retry_or_shadow_abandoned`), failed, or was never read to its end.
    pub abandoned: AtomicU64,
}

impl Stats {
    pub fn new(ports: impl IntoIterator<Item = u16>) -> Stats {
        let s = Stats::default();
        for p in ports {
            s.add_listener(p);
        }
        s
    }

    /// Counters for `port` from now on (kept if it had them).
    pub fn add_listener(&self, port: u16) {
        self.listeners.rcu(|m| {
            let mut m = BTreeMap::clone(m);
            // Leaked on purpose: once per distinct port for the life of the process
            // (at most 65,535 of 40 bytes), so the data path borrows them for free.
            m.entry(port).or_insert_with(|| Box::leak(Box::default()));
            m
        });
    }

    pub fn listener(&self, port: u16) -> Option<&'static ListenerStats> {
        self.listeners.load().get(&port).copied()
    }

    /// Counts a connection accepted by `worker`.
    pub fn worker_accepted(&self, worker: usize) {
        if let Some(a) = self.worker_accepted.get().and_then(|w| w.get(worker)) {
            a.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn hello(&self, outcome: HelloOutcome) {
        let i = HelloOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .expect("listed");
        self.hello[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render_prometheus(&self, splicer: &Splicer, bind: &str) -> String {
        let mut out = String::new();
        let mut p = Prom::new(&mut out);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Rows: (labels rendered by `sys::prom::labels`, value).
        let mut family = |name: &str, kind: Kind, help: &str, rows: &[(String, u64)]| {
            p.family(name, kind, help);
            for (labels, v) in rows {
                p.sample_with(name, labels, &[], v);
            }
        };
        let per_listener = |f: fn(&ListenerStats) -> &AtomicU64| -> Vec<(String, u64)> {
            self.listeners
                .load()
                .iter()
                .map(|(p, s)| {
                    (
                        labels(&[("listener", &format_args!("{bind}_{p}"))]),
                        get(f(s)),
                    )
                })
                .collect()
        };
        family(
            "gateway_downstream_cx_total",
            Kind::Counter,
            "Connections accepted per listener.",
            &per_listener(|s| &s.accepted),
        );
        family(
            "gateway_downstream_cx_active",
            Kind::Gauge,
            "Connections open per listener.",
            &per_listener(|s| &s.active),
        );
        family(
            "gateway_downstream_cx_overflow_total",
            Kind::Counter,
            "Connections refused because a connection cap (--max-connections, --listener-max-connections) was reached.",
            &per_listener(|s| &s.overflow),
        );
        family(
            "gateway_accept_errors_total",
            Kind::Counter,
            "accept() failures per listener (EMFILE, ENFILE, ENOBUFS): the listener backs off and retries.",
            &per_listener(|s| &s.accept_errors),
        );
        family(
            "gateway_no_route_total",
            Kind::Counter,
            "Connections closed because no route matched.",
            &per_listener(|s| &s.no_route),
        );
        let hello: Vec<_> = HelloOutcome::ALL
            .iter()
            .zip(&self.hello)
            .map(|(o, a)| (labels(&[("outcome", &o.as_str())]), get(a)))
            .collect();
        family(
            "gateway_tls_inspector_total",
            Kind::Counter,
            "ClientHello inspections by outcome.",
            &hello,
        );
        let plain = |a: &AtomicU64| vec![(String::new(), get(a))];
        family(
            "gateway_upstream_cx_connect_fail_total",
            Kind::Counter,
            "Upstream connects that failed or timed out.",
            &plain(&self.upstream_connect_failures),
        );
        let workers: Vec<_> = self
            .worker_accepted
            .get()
            .map(|w| w.iter().enumerate())
            .into_iter()
            .flatten()
            .map(|(i, a)| (labels(&[("worker", &i)]), get(a)))
            .collect();
        family(
            "gateway_worker_downstream_cx_total",
            Kind::Counter,
            "Connections accepted per worker thread (--workers; each has its own SO_REUSEPORT sockets).",
            &workers,
        );
        family(
            "gateway_http_parked_connections",
            Kind::Gauge,
            "HTTP/1.1 keep-alive connections idle long enough to be parked: held as the socket alone, without hyper's buffers.",
            &plain(&self.http_parked),
        );
        family(
            "gateway_http_parks_total",
            Kind::Counter,
            "Times an idle HTTP/1.1 keep-alive connection was parked.",
            &plain(&self.http_parks),
        );
        family(
            "gateway_mirror_requests_total",
            Kind::Counter,
            "Mirror (shadow) copies of requests by outcome: answered, failed (connect failure, reset, timeout), no_endpoint, abandoned (body too large for the mirror buffer, or not received in full).",
            &[
                (
                    labels(&[("outcome", &"answered")]),
                    get(&self.mirror.answered),
                ),
                (labels(&[("outcome", &"failed")]), get(&self.mirror.failed)),
                (
                    labels(&[("outcome", &"no_endpoint")]),
                    get(&self.mirror.no_endpoint),
                ),
                (
                    labels(&[("outcome", &"abandoned")]),
                    get(&self.mirror.abandoned),
                ),
            ],
        );
        // The arenas' usage now, not at the trimmer's last look: a scrape after a burst
        // of connections sees what they hold (mallinfo2 walks the few arenas).
        let (free, in_use) = crate::sys::heap::usage();
        let now = |v: u64| vec![(String::new(), v)];
        family(
            "gateway_heap_free_bytes",
            Kind::Gauge,
            "Bytes the malloc arenas hold free (returned to the kernel by the heap trimmer, --heap-trim-interval, when worth it).",
            &now(free),
        );
        family(
            "gateway_heap_in_use_bytes",
            Kind::Gauge,
            "Bytes allocated on the malloc heap.",
            &now(in_use),
        );
        family(
            "gateway_heap_trims_total",
            Kind::Counter,
            "Times the heap trimmer returned free heap pages to the kernel (malloc_trim).",
            &plain(&self.heap.trims),
        );

        family(
            "gateway_flows_closed_total",
            Kind::Counter,
            "L4 flows finished.",
            &plain(&self.flows_closed),
        );
        family(
            "gateway_flows_reset_total",
            Kind::Counter,
            "L4 flows ended by a reset.",
            &plain(&self.flows_reset),
        );
        family(
            "gateway_splice_bytes_total",
            Kind::Counter,
            "Payload bytes moved by the L4 splice, by direction.",
            &[
                (
                    labels(&[("direction", &"downstream_to_upstream")]),
                    get(&self.bytes_downstream_to_upstream),
                ),
                (
                    labels(&[("direction", &"upstream_to_downstream")]),
                    get(&self.bytes_upstream_to_downstream),
                ),
            ],
        );
        family(
            "gateway_splice_userspace_bytes_total",
            Kind::Counter,
            "Payload bytes moved by a userspace splice (splice(2) through pipes or io_uring copies; 0 with eBPF).",
            &plain(&self.userspace_splice_bytes),
        );
        let paths = splicer.paths();
        let per_path = |f: fn(&crate::kernel::splice::PathCounters) -> u64| {
            use crate::kernel::splice::Path;
            [Path::Kernel, Path::Splice, Path::Uring, Path::Copy]
                .map(|p| (labels(&[("path", &p.as_str())]), f(paths.path(p))))
        };
        family(
            "gateway_splice_flows_total",
            Kind::Counter,
            "L4 flows ended, by the path that carried them at the end.",
            &per_path(|c| c.flows.load(Ordering::Relaxed)),
        );
        family(
            "gateway_splice_path_bytes_total",
            Kind::Counter,
            "Payload bytes (both directions) of the flows that ended on each path.",
            &per_path(|c| c.bytes.load(Ordering::Relaxed)),
        );
        family(
            "gateway_splice_active_flows",
            Kind::Gauge,
            "L4 flows open right now, by the path carrying them.",
            &per_path(|c| c.active.load(Ordering::Relaxed)),
        );
        family(
            "gateway_splice_offloads_total",
            Kind::Counter,
            "Live flows handed from the userspace splice to the kernel splice.",
            &plain(&paths.offloads),
        );
        family(
            "gateway_splice_pauses_total",
            Kind::Counter,
            "Times a kernel-spliced direction paused because its reader fell a budget behind.",
            &plain(&paths.pauses),
        );
        family(
            "gateway_splice_paused_flows",
            Kind::Gauge,
            "Kernel-spliced directions paused right now (their bytes moved by userspace).",
            &plain(&paths.paused_now),
        );
        family(
            "gateway_splice_undelivered_bytes_total",
            Kind::Counter,
            "Bytes the kernel splice handed to a peer that failed before taking them (each such flow was reset both ways).",
            &plain(&paths.undelivered),
        );
        family(
            "gateway_splice_integrity_resets_total",
            Kind::Counter,
            "Kernel-spliced flows reset because their stream did not add up (an skb out of sequence, or more bytes forwarded than TCP received).",
            &plain(&paths.integrity),
        );
        family(
            "gateway_splice_fallback_total",
            Kind::Counter,
            "Flows (or directions) the kernel splice could not take, by reason.",
            &paths
                .fallbacks()
                .map(|(r, n)| (labels(&[("reason", &r)]), n)),
        );
        if let Some(k) = splicer.kernel() {
            let ks = k.kernel_stats();
            family(
                "gateway_splice_redirected_skbs_total",
                Kind::Counter,
                "skbs redirected by the kernel splice.",
                &[(String::new(), ks.redirected_skbs)],
            );
            family(
                "gateway_splice_redirected_bytes_total",
                Kind::Counter,
                "Bytes redirected by the kernel splice.",
                &[(String::new(), ks.redirected_bytes)],
            );
            family(
                "gateway_splice_redirect_failures_total",
                Kind::Counter,
                "Redirects the kernel refused (each resets its flow both ways).",
                &[(String::new(), ks.redirect_failures)],
            );
            family(
                "gateway_splice_passed_bytes_total",
                Kind::Counter,
                "Bytes the verdict kept on the receiving socket for userspace (paused flows).",
                &[(String::new(), ks.passed_bytes)],
            );
            family(
                "gateway_splice_events_lost_total",
                Kind::Counter,
                "Kernel events that did not fit in the ring buffer.",
                &[(String::new(), ks.events_lost)],
            );
            family(
                "gateway_splice_overlap_skbs_total",
                Kind::Counter,
                "Retransmitted skbs whose head repeated bytes already forwarded; the verdict trimmed them.",
                &[(String::new(), ks.overlap_skbs)],
            );
            family(
                "gateway_splice_overlap_bytes_total",
                Kind::Counter,
                "Bytes trimmed off retransmitted skbs (never forwarded twice).",
                &[(String::new(), ks.overlap_bytes)],
            );
        }
        if let Some(p) = splicer.pipe() {
            let ps = p.stats();
            family(
                "gateway_splice_pipes",
                Kind::Gauge,
                "Pipes of the splice(2) path: held by flows, or pooled empty.",
                &[
                    (labels(&[("state", &"in_use")]), ps.in_use as u64),
                    (labels(&[("state", &"pooled")]), ps.pooled as u64),
                ],
            );
        }
        p.family(
            "gateway_heap_trim_seconds_total",
            Kind::Counter,
            "Time spent in malloc_trim by the heap trimmer.",
        )
        .sample(
            "gateway_heap_trim_seconds_total",
            &[],
            format_args!("{:.6}", get(&self.heap.trim_micros) as f64 / 1e6),
        );
        out
    }
}

/// The clusters' outlier and circuit-breaker metrics (Envoy's
/// `outlier_detection.ejections_enforced_total`, `ejections_active`,
/// `upstream_rq_pending_overflow`) and their DNS refreshes: a series per cluster that
/// has the feature.
pub fn render_balancers(balancers: &Balancers, out: &mut String) {
    let sorted = balancers.sorted();
    let mut p = Prom::new(out);
    let mut rows = |name: &str, kind: Kind, help: &str, v: &dyn Fn(&Balancer) -> Option<u64>| {
        p.family(name, kind, help);
        for (c, b) in &sorted {
            if let Some(v) = v(b) {
                p.sample(name, &[("cluster", c)], v);
            }
        }
    };
    rows(
        "gateway_outlier_ejections_total",
        Kind::Counter,
        "Endpoints ejected by outlier detection, per cluster.",
        &|b| {
            b.outlier
                .as_ref()
                .map(|o| o.ejections_total.load(Ordering::Relaxed))
        },
    );
    rows(
        "gateway_outlier_ejections_active",
        Kind::Gauge,
        "Endpoints ejected now, per cluster.",
        &|b| {
            b.outlier
                .as_ref()
                .map(|o| o.ejected().iter().filter(|e| **e).count() as u64)
        },
    );
    rows(
        "gateway_upstream_rq_retry_overflow_total",
        Kind::Counter,
        "Retries not made because the cluster's maxRetries were waiting (flag UO).",
        &|b| {
            b.pool
                .as_ref()
                .map(|p| p.retry_overflows.load(Ordering::Relaxed))
        },
    );
    rows(
        "gateway_upstream_rq_pending_overflow_total",
        Kind::Counter,
        "Requests and TCP connections refused by the cluster's circuit breakers (503 UO).",
        &|b| b.pool.as_ref().map(|p| p.overflows.load(Ordering::Relaxed)),
    );
    rows(
        "gateway_dns_refreshes_total",
        Kind::Counter,
        "DNS re-resolutions of the cluster's names (Envoy's update_attempt).",
        &|b| b.dns.as_ref().map(|d| d.refreshes.load(Ordering::Relaxed)),
    );
    rows(
        "gateway_dns_refresh_failures_total",
        Kind::Counter,
        "DNS re-resolutions where a name did not resolve; the last good addresses were kept (Envoy's update_failure).",
        &|b| b.dns.as_ref().map(|d| d.failures.load(Ordering::Relaxed)),
    );
}

/// `gateway_config_warnings{code}`: the loaded config's warnings per code. The family is
/// always there; a series per code that fired.
pub fn render_config_warnings(warnings: &[Warning], out: &mut String) {
    let mut p = Prom::new(out);
    p.family(
        "gateway_config_warnings",
        Kind::Gauge,
        "Warnings of the loaded configuration, per code (see the README's Warnings table).",
    );
    for (code, n) in count_by_code(warnings) {
        p.sample("gateway_config_warnings", &[("code", &code)], n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The family is always there, a series per code that fired.
    #[test]
    fn config_warnings_per_code() {
        let w = |code| Warning {
            loc: crate::config::Loc {
                file: "gw.yaml".into(),
                line: 1,
                col: 1,
            },
            code,
            subject: String::new(),
            path: String::new(),
            message: String::new(),
        };
        let mut out = String::new();
        render_config_warnings(&[w("GW1011"), w("GW1006"), w("GW1011")], &mut out);
        assert_eq!(
            out,
            "# HELP gateway_config_warnings Warnings of the loaded configuration, per code (see the README's Warnings table).\n# TYPE gateway_config_warnings gauge\ngateway_config_warnings{code=\"GW1006\"} 1\ngateway_config_warnings{code=\"GW1011\"} 2\n"
        );
        let mut none = String::new();
        render_config_warnings(&[], &mut none);
        assert!(
            none.ends_with("# TYPE gateway_config_warnings gauge\n"),
            "{none}"
        );
    }
}

//! Endpoint picking per cluster, as Envoy's load balancers do it for the policy a
//! DestinationRule gives (`config::dest_rules::LbPolicy`):
//!
//! - LEAST_REQUEST (Istio's default): two random endpoints, the one with fewer active
//!   requests (Envoy `LeastRequestLoadBalancer`, `choice_count` 2; ties: the first).
//! - ROUND_ROBIN, RANDOM.
//! - RING_HASH: each endpoint hashed onto a ring `ceil(minimum_ring_size / n)` times
//!   (xxHash64 of `"<ip:port>_<i>"`), the request's hash takes the first entry at or
//!   after it (Envoy `RingHashLoadBalancer`).
//! - MAGLEV: Envoy's `MaglevTable` (offset = xxHash64(address) mod M, skip from the
//!   address hashed with seed 1), looked up at hash mod M.
//!
//! A request without a hash (the header absent, say) takes a random one, as Envoy does.
//! The tables are built once per config, never per request.
//!
//! Endpoints ejected by outlier detection ([`outlier`]) are skipped by every policy:
//! ROUND_ROBIN, RANDOM and LEAST_REQUEST choose among the others; RING_HASH takes the
//! next usable entry on the ring; MAGLEV probes the following slots (Envoy rebuilds its
//! tables over the healthy hosts instead; the keys of healthy endpoints stay put
//! either way). [`pool`] holds the cluster's circuit breakers.

pub mod outlier;
pub mod pool;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use xxhash_rust::xxh64::xxh64;

use crate::config::Snapshot;
use crate::config::dest_rules::LbPolicy;

/// Envoy's hash of a key (`HashUtil::xxHash64`, seed 0).
pub fn hash(key: &[u8]) -> u64 {
    xxh64(key, 0)
}

/// Every cluster's balancer.
#[derive(Debug, Default)]
pub struct Balancers(HashMap<String, Balancer>);

impl Balancers {
    pub fn new(snapshot: &Snapshot) -> Balancers {
        Balancers(
            snapshot
                .clusters
                .values()
                .map(|c| {
                    let mut b = Balancer::new(c.lb.clone(), c.endpoints.clone());
                    b.outlier = c
                        .outlier
                        .map(|p| Arc::new(outlier::Outlier::new(p, &c.name, &c.endpoints)));
                    b.pool = c.circuit_breakers.map(|l| Arc::new(pool::Pool::new(l)));
                    (c.name.clone(), b)
                })
                .collect(),
        )
    }

    pub fn get(&self, cluster: &str) -> Option<&Balancer> {
        self.0.get(cluster)
    }

    /// Whether each endpoint of `cluster` is ejected now (empty: no outlier detection).
    pub fn ejected(&self, cluster: &str) -> Vec<bool> {
        self.get(cluster)
            .and_then(|b| b.outlier.as_ref())
            .map(|o| o.ejected())
            .unwrap_or_default()
    }

    /// The clusters' outlier and circuit-breaker metrics (Envoy's
    /// `outlier_detection.ejections_enforced_total`, `ejections_active`,
    /// `upstream_rq_pending_overflow`).
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        let mut names: Vec<&String> = self.0.keys().collect();
        names.sort();
        let mut rows =
            |name: &str, kind: &str, help: &str, v: &dyn Fn(&Balancer) -> Option<u64>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for c in &names {
                    if let Some(v) = v(&self.0[*c]) {
                        let _ = writeln!(out, "{name}{{cluster=\"{c}\"}} {v}");
                    }
                }
            };
        rows(
            "gateway_outlier_ejections_total",
            "counter",
            "Endpoints ejected by outlier detection, per cluster.",
            &|b| {
                b.outlier
                    .as_ref()
                    .map(|o| o.ejections_total.load(Ordering::Relaxed))
            },
        );
        rows(
            "gateway_outlier_ejections_active",
            "gauge",
            "Endpoints ejected now, per cluster.",
            &|b| {
                b.outlier
                    .as_ref()
                    .map(|o| o.ejected().iter().filter(|e| **e).count() as u64)
            },
        );
        rows(
            "gateway_upstream_rq_retry_overflow_total",
            "counter",
            "Retries not made because the cluster's maxRetries were waiting (flag UO).",
            &|b| {
                b.pool
                    .as_ref()
                    .map(|p| p.retry_overflows.load(Ordering::Relaxed))
            },
        );
        rows(
            "gateway_upstream_rq_pending_overflow_total",
            "counter",
            "Requests and TCP connections refused by the cluster's circuit breakers (503 UO).",
            &|b| b.pool.as_ref().map(|p| p.overflows.load(Ordering::Relaxed)),
        );
    }
}

/// The outcome of asking for an endpoint.
#[derive(Debug)]
pub enum Pick {
    Endpoint(Picked),
    /// The route names a cluster that does not exist (a missing subset): Envoy's `NC`.
    NoCluster,
    /// The cluster has no endpoints: `UH`.
    NoHealthy,
}

/// A picked endpoint; counts as an active request until dropped.
#[derive(Debug)]
pub struct Picked {
    pub addr: SocketAddr,
    active: Arc<[AtomicU32]>,
    index: usize,
    outlier: Option<Arc<outlier::Outlier>>,
}

impl Picked {
    /// The result of a try on this endpoint, for outlier detection.
    pub fn report(&self, outcome: outlier::Outcome) {
        if let Some(o) = &self.outlier {
            o.report(self.index, outcome);
        }
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.active[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Balancer {
    pub policy: LbPolicy,
    endpoints: Vec<SocketAddr>,
    active: Arc<[AtomicU32]>,
    rr: AtomicUsize,
    /// RING_HASH: (hash, endpoint) sorted by hash. MAGLEV: endpoint per slot.
    ring: Vec<(u64, u32)>,
    maglev: Vec<u32>,
    pub outlier: Option<Arc<outlier::Outlier>>,
    pub pool: Option<Arc<pool::Pool>>,
}

impl Balancer {
    pub fn new(policy: LbPolicy, endpoints: Vec<SocketAddr>) -> Balancer {
        let (ring, maglev) = match &policy {
            LbPolicy::RingHash {
                minimum_ring_size, ..
            } => (ring(&endpoints, *minimum_ring_size), Vec::new()),
            LbPolicy::Maglev { table_size, .. } => (Vec::new(), maglev(&endpoints, *table_size)),
            _ => (Vec::new(), Vec::new()),
        };
        Balancer {
            active: (0..endpoints.len()).map(|_| AtomicU32::new(0)).collect(),
            policy,
            endpoints,
            rr: AtomicUsize::new(0),
            ring,
            maglev,
            outlier: None,
            pool: None,
        }
    }

    /// Picks an endpoint; `hash` is the request's (consistent-hash policies only).
    pub fn pick(&self, hash: Option<u64>) -> Option<Picked> {
        match &self.outlier {
            None => self.pick_among(hash, None),
            Some(o) => o.with_usable(|usable| self.pick_among(hash, usable)),
        }
    }

    /// `usable`: which endpoints may be taken (`None`: all).
    fn pick_among(&self, hash: Option<u64>, usable: Option<&[bool]>) -> Option<Picked> {
        let n = self.endpoints.len();
        let ok = |i: usize| usable.is_none_or(|u| u[i]);
        let count = usable.map_or(n, |u| u.iter().filter(|x| **x).count());
        if count == 0 {
            return None;
        }
        // The k-th usable endpoint.
        let nth = |k: usize| match usable {
            None => k,
            Some(u) => (0..n).filter(|i| u[*i]).nth(k).unwrap_or(0),
        };
        let index = match &self.policy {
            LbPolicy::RoundRobin => nth(self.rr.fetch_add(1, Ordering::Relaxed) % count),
            LbPolicy::Random => nth(fastrand::usize(..count)),
            LbPolicy::LeastRequest => {
                let a = nth(fastrand::usize(..count));
                let b = nth(fastrand::usize(..count));
                let load = |i: usize| self.active[i].load(Ordering::Relaxed);
                if load(b) < load(a) { b } else { a }
            }
            LbPolicy::RingHash { .. } => {
                let h = hash.unwrap_or_else(|| fastrand::u64(..));
                let at = self.ring.partition_point(|(x, _)| *x < h);
                let len = self.ring.len();
                (0..len)
                    .map(|k| self.ring[(at + k) % len].1 as usize)
                    .find(|i| ok(*i))?
            }
            LbPolicy::Maglev { .. } => {
                let h = hash.unwrap_or_else(|| fastrand::u64(..));
                let len = self.maglev.len();
                let at = (h % len as u64) as usize;
                (0..len)
                    .map(|k| self.maglev[(at + k) % len] as usize)
                    .find(|i| ok(*i))?
            }
        };
        self.active[index].fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            addr: self.endpoints[index],
            active: self.active.clone(),
            index,
            outlier: self.outlier.clone(),
        })
    }
}

/// Envoy's ring: every endpoint `ceil(min / n)` times (equal weights), sorted.
fn ring(endpoints: &[SocketAddr], min: u64) -> Vec<(u64, u32)> {
    if endpoints.is_empty() {
        return Vec::new();
    }
    let per_host = min.div_ceil(endpoints.len() as u64).max(1);
    let mut ring = Vec::with_capacity((per_host as usize) * endpoints.len());
    for (i, e) in endpoints.iter().enumerate() {
        let address = e.to_string();
        for k in 0..per_host {
            ring.push((hash(format!("{address}_{k}").as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// Maglev's population (Eisenbud et al., §3.4; Envoy `MaglevTable`): every endpoint in
/// turn takes the next free slot of its permutation until the table is full.
fn maglev(endpoints: &[SocketAddr], size: u64) -> Vec<u32> {
    let n = endpoints.len();
    if n == 0 || size < 2 {
        return Vec::new();
    }
    let m = size as usize;
    let perms: Vec<(u64, u64)> = endpoints
        .iter()
        .map(|e| {
            let a = e.to_string();
            let offset = xxh64(a.as_bytes(), 0) % size;
            let skip = xxh64(a.as_bytes(), 1) % (size - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; n];
    let mut table = vec![u32::MAX; m];
    let mut filled = 0;
    'fill: loop {
        for i in 0..n {
            let (offset, skip) = perms[i];
            let mut c = ((offset + next[i] * skip) % size) as usize;
            while table[c] != u32::MAX {
                next[i] += 1;
                c = ((offset + next[i] * skip) % size) as usize;
            }
            table[c] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests;

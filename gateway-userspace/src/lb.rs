//! Endpoint picking per cluster, as Envoy's load balancers do it for the policy a
//! DestinationRule gives (`config::dest_rules::LbPolicy`):
//!
//! - LEAST_REQUEST (Istio's default): two random endpoints, the one with fewer active
//!   requests (Envoy `LeastRequestLoadBalancer`, `choice_count` 2; ties: the first).
//! - ROUND_ROBIN, RANDOM.
//! - With unequal endpoint weights (ServiceEntry `endpoints[].weight`), ROUND_ROBIN
//!   and LEAST_REQUEST use Envoy's EDF scheduler and the hash tables give each endpoint
//!   a share by weight ([`weighted`]); RANDOM ignores weights, as Envoy's does.
//! - RING_HASH: each endpoint hashed onto a ring `ceil(minimum_ring_size / n)` times
//!   (xxHash64 of `"<ip:port>_<i>"`), the request's hash takes the first entry at or
//!   after it (Envoy `RingHashLoadBalancer`).
//! - MAGLEV: Envoy's `MaglevTable` (offset = xxHash64(address) mod M, skip from the
//!   address hashed with seed 1), looked up at hash mod M.
//!
//! A request without a hash (the header absent, say) takes a random one, as Envoy does.
//! The tables are built once per endpoint list, never per request: a DNS refresh
//! ([`Balancer::update`]) swaps in a new list and its tables atomically.
//!
//! Endpoints ejected by outlier detection ([`outlier`]) are skipped by every policy:
//! ROUND_ROBIN, RANDOM and LEAST_REQUEST choose among the others; RING_HASH takes the
//! next usable entry on the ring; MAGLEV probes the following slots (Envoy rebuilds its
//! tables over the healthy hosts instead; the keys of healthy endpoints stay put
//! either way). [`pool`] holds the cluster's circuit breakers.

pub mod outlier;
pub mod pool;
pub mod weighted;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use xxhash_rust::xxh64::xxh64;

use crate::config::Snapshot;
use crate::config::dest_rules::LbPolicy;

/// Envoy's hash of a key (`HashUtil::xxHash64`, seed 0).
pub fn hash(key: &[u8]) -> u64 {
    xxh64(key, 0)
}

/// Every cluster's balancer.
#[derive(Debug, Default)]
pub struct Balancers(HashMap<String, Arc<Balancer>>);

impl Balancers {
    pub fn new(snapshot: &Snapshot) -> Balancers {
        Balancers(
            snapshot
                .clusters
                .values()
                .map(|c| {
                    let mut b =
                        Balancer::weighted(c.lb.clone(), c.endpoints.clone(), c.weights.clone());
                    b.outlier = c
                        .outlier
                        .map(|p| Arc::new(outlier::Outlier::new(p, &c.name, &c.endpoints)));
                    b.pool = c.circuit_breakers.map(|l| Arc::new(pool::Pool::new(l)));
                    b.dns = c.dns.as_ref().map(|_| DnsStats::default());
                    (c.name.clone(), Arc::new(b))
                })
                .collect(),
        )
    }

    pub fn get(&self, cluster: &str) -> Option<&Balancer> {
        self.0.get(cluster).map(|b| &**b)
    }

    /// Takes `old`'s balancer for every cluster `new` defines exactly as `old` did, so
    /// its state lives on through a reload (see `Plan::carry_from`).
    pub fn carry_from(&mut self, old: &Balancers, old_snap: &Snapshot, new: &Snapshot) {
        for (name, b) in &mut self.0 {
            if let (Some(was), Some(is), Some(kept)) = (
                old_snap.clusters.get(name),
                new.clusters.get(name),
                old.0.get(name),
            ) && was == is
            {
                *b = kept.clone();
            }
        }
    }

    /// A cluster's endpoints now: (address, weight, ejected), for `proxy-config`.
    pub fn live(&self, cluster: &str) -> Option<Vec<(SocketAddr, u32, bool)>> {
        let b = self.get(cluster)?;
        let ejected = b.ejected();
        Some(
            b.endpoints()
                .into_iter()
                .zip(ejected)
                .map(|((a, w), e)| (a, w, e))
                .collect(),
        )
    }

    /// The balancers by cluster name, sorted (their counters are rendered by
    /// `telemetry::metrics::render_balancers`).
    pub fn sorted(&self) -> Vec<(&str, &Balancer)> {
        let mut v: Vec<(&str, &Balancer)> =
            self.0.iter().map(|(c, b)| (c.as_str(), &**b)).collect();
        v.sort_by_key(|(c, _)| *c);
        v
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
    active: Arc<AtomicU32>,
    outlier: Option<Arc<outlier::Outlier>>,
}

impl Picked {
    /// The result of a try on this endpoint, for outlier detection (by address: the
    /// endpoint list may have changed since the pick).
    pub fn report(&self, outcome: outlier::Outcome) {
        if let Some(o) = &self.outlier {
            o.report_addr(self.addr, outcome);
        }
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One endpoint list and the tables built over it; replaced whole when DNS changes it.
#[derive(Debug)]
struct Set {
    endpoints: Vec<SocketAddr>,
    weights: Vec<u32>,
    /// Active requests per endpoint, shared with the next set for endpoints that stay.
    active: Vec<Arc<AtomicU32>>,
    /// ROUND_ROBIN / LEAST_REQUEST with unequal weights: Envoy's EDF scheduler.
    edf: Option<Mutex<weighted::Edf>>,
    /// RING_HASH: (hash, endpoint) sorted by hash. MAGLEV: endpoint per slot.
    ring: Vec<(u64, u32)>,
    maglev: Vec<u32>,
}

impl Set {
    fn new(
        policy: &LbPolicy,
        endpoints: Vec<SocketAddr>,
        weights: Vec<u32>,
        active: Vec<Arc<AtomicU32>>,
    ) -> Set {
        let (ring, maglev) = match policy {
            LbPolicy::RingHash {
                minimum_ring_size, ..
            } => (
                weighted::ring(&endpoints, &weights, *minimum_ring_size),
                Vec::new(),
            ),
            LbPolicy::Maglev { table_size, .. } => (
                Vec::new(),
                weighted::maglev(&endpoints, &weights, *table_size),
            ),
            _ => (Vec::new(), Vec::new()),
        };
        let edf = (matches!(policy, LbPolicy::RoundRobin | LbPolicy::LeastRequest)
            && weighted::unequal(&weights))
        .then(|| {
            Mutex::new(weighted::Edf::new(endpoints.len(), |i| {
                f64::from(weights[i])
            }))
        });
        Set {
            endpoints,
            weights,
            active,
            edf,
            ring,
            maglev,
        }
    }
}

#[derive(Debug)]
pub struct Balancer {
    pub policy: LbPolicy,
    set: ArcSwap<Set>,
    rr: AtomicUsize,
    pub outlier: Option<Arc<outlier::Outlier>>,
    pub pool: Option<Arc<pool::Pool>>,
    /// DNS clusters: refreshes done and failed (`runtime::dns`).
    pub dns: Option<DnsStats>,
}

/// A DNS cluster's refresh counters.
#[derive(Debug, Default)]
pub struct DnsStats {
    pub refreshes: AtomicU64,
    pub failures: AtomicU64,
}

impl Balancer {
    /// Every endpoint with weight 1.
    pub fn new(policy: LbPolicy, endpoints: Vec<SocketAddr>) -> Balancer {
        let weights = vec![1; endpoints.len()];
        Balancer::weighted(policy, endpoints, weights)
    }

    /// `weights[i]` is endpoint `i`'s (Envoy's `load_balancing_weight`, at least 1).
    pub fn weighted(policy: LbPolicy, endpoints: Vec<SocketAddr>, weights: Vec<u32>) -> Balancer {
        let active = endpoints.iter().map(|_| Arc::default()).collect();
        let set = Set::new(&policy, endpoints, weights, active);
        Balancer {
            policy,
            set: ArcSwap::from_pointee(set),
            rr: AtomicUsize::new(0),
            outlier: None,
            pool: None,
            dns: None,
        }
    }

    /// The endpoints now, with their weights.
    pub fn endpoints(&self) -> Vec<(SocketAddr, u32)> {
        let set = self.set.load();
        set.endpoints
            .iter()
            .copied()
            .zip(set.weights.iter().copied())
            .collect()
    }

    /// Whether each endpoint (of [`endpoints`](Self::endpoints)) is ejected now.
    pub fn ejected(&self) -> Vec<bool> {
        let set = self.set.load();
        match &self.outlier {
            Some(o) => o.ejected_for(&set.endpoints),
            None => vec![false; set.endpoints.len()],
        }
    }

    /// Replaces the endpoint list (a DNS refresh). Endpoints that stay keep their
    /// active-request counts and outlier state; new ones start fresh; removed ones get
    /// no new requests (requests in flight to them finish: their [`Picked`] holds its
    /// own counter). The tables are rebuilt over the new list. Returns whether it
    /// changed.
    pub fn update(&self, endpoints: Vec<SocketAddr>, weights: Vec<u32>) -> bool {
        let old = self.set.load();
        if old.endpoints == endpoints && old.weights == weights {
            return false;
        }
        let active = endpoints
            .iter()
            .map(|e| match old.endpoints.iter().position(|o| o == e) {
                Some(i) => old.active[i].clone(),
                None => Arc::default(),
            })
            .collect();
        if let Some(o) = &self.outlier {
            o.set_endpoints(&endpoints);
        }
        self.set
            .store(Arc::new(Set::new(&self.policy, endpoints, weights, active)));
        true
    }

    /// Picks an endpoint; `hash` is the request's (consistent-hash policies only).
    pub fn pick(&self, hash: Option<u64>) -> Option<Picked> {
        let set = self.set.load();
        let usable = self
            .outlier
            .as_ref()
            .and_then(|o| o.usable_for(&set.endpoints));
        self.pick_among(&set, hash, usable.as_deref())
    }

    /// `usable`: which endpoints may be taken (`None`: all).
    fn pick_among(&self, set: &Set, hash: Option<u64>, usable: Option<&[bool]>) -> Option<Picked> {
        let n = set.endpoints.len();
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
        let load = |i: usize| set.active[i].load(Ordering::Relaxed);
        let index = match (&self.policy, &set.edf) {
            (LbPolicy::RoundRobin, Some(edf)) => edf
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pick(ok, |i| f64::from(set.weights[i]))?,
            // Envoy's `hostWeight`: weight / (active_requests + 1)^1.0.
            (LbPolicy::LeastRequest, Some(edf)) => edf
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pick(ok, |i| f64::from(set.weights[i]) / f64::from(load(i) + 1))?,
            (LbPolicy::RoundRobin, None) => nth(self.rr.fetch_add(1, Ordering::Relaxed) % count),
            (LbPolicy::Random, _) => nth(fastrand::usize(..count)),
            (LbPolicy::LeastRequest, None) => {
                let a = nth(fastrand::usize(..count));
                let b = nth(fastrand::usize(..count));
                if load(b) < load(a) { b } else { a }
            }
            (LbPolicy::RingHash { .. }, _) => {
                let h = hash.unwrap_or_else(|| fastrand::u64(..));
                let at = set.ring.partition_point(|(x, _)| *x < h);
                let len = set.ring.len();
                (0..len)
                    .map(|k| set.ring[(at + k) % len].1 as usize)
                    .find(|i| ok(*i))?
            }
            (LbPolicy::Maglev { .. }, _) => {
                let h = hash.unwrap_or_else(|| fastrand::u64(..));
                let len = set.maglev.len();
                let at = (h % len as u64) as usize;
                (0..len)
                    .map(|k| set.maglev[(at + k) % len] as usize)
                    .find(|i| ok(*i))?
            }
        };
        set.active[index].fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            addr: set.endpoints[index],
            active: set.active[index].clone(),
            outlier: self.outlier.clone(),
        })
    }
}

#[cfg(test)]
mod tests;

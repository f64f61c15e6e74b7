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
                    (
                        c.name.clone(),
                        Balancer::new(c.lb.clone(), c.endpoints.clone()),
                    )
                })
                .collect(),
        )
    }

    pub fn get(&self, cluster: &str) -> Option<&Balancer> {
        self.0.get(cluster)
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
        }
    }

    /// Picks an endpoint; `hash` is the request's (consistent-hash policies only).
    pub fn pick(&self, hash: Option<u64>) -> Option<Picked> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let index = match &self.policy {
            LbPolicy::RoundRobin => self.rr.fetch_add(1, Ordering::Relaxed) % n,
            LbPolicy::Random => fastrand::usize(..n),
            LbPolicy::LeastRequest => {
                let a = fastrand::usize(..n);
                let b = fastrand::usize(..n);
                let load = |i: usize| self.active[i].load(Ordering::Relaxed);
                if load(b) < load(a) { b } else { a }
            }
            LbPolicy::RingHash { .. } => {
                let h = hash.unwrap_or_else(|| fastrand::u64(..));
                let at = self.ring.partition_point(|(x, _)| *x < h);
                self.ring[if at == self.ring.len() { 0 } else { at }].1 as usize
            }
            LbPolicy::Maglev { .. } => {
                let h = hash.unwrap_or_else(|| fastrand::u64(..));
                self.maglev[(h % self.maglev.len() as u64) as usize] as usize
            }
        };
        self.active[index].fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            addr: self.endpoints[index],
            active: self.active.clone(),
            index,
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

//! The weight-aware parts of the load balancers (ServiceEntry `endpoints[].weight`,
//! Envoy's `load_balancing_weight`), as Envoy builds them:
//!
//! - [`Edf`]: Envoy's earliest-deadline-first scheduler (`EdfScheduler`,
//!   source/common/upstream/edf_scheduler.h), used by ROUND_ROBIN and LEAST_REQUEST when
//!   the weights differ (`EdfLoadBalancerBase`, load_balancer_impl.cc): each host is due
//!   at `current + 1 / weight`; the earliest (ties: the one added first) is picked and
//!   added again. LEAST_REQUEST's weight is `weight / (active_requests + 1)` (its
//!   `hostWeight` with the default `active_request_bias` 1.0).
//! - [`ring`]: `RingHashLoadBalancer::Ring` (ring_hash_lb.cc): weights normalized to sum
//!   1, `scale = ceil(min_normalized_weight * min_ring_size) / min_normalized_weight`
//!   (at most the 8M maximum), and each host takes entries until the running total of
//!   `scale * weight` is reached, hashing `"<address>_<i>"`.
//! - [`maglev`]: `MaglevTable` (maglev_lb.cc): in iteration `k` a host takes a slot only
//!   if `k * weight >= target`, then its target rises by the largest weight, so a host
//!   with a third of the largest weight fills every third round.
//!
//! RANDOM stays unweighted, as Envoy's `RandomLoadBalancer::peekOrChoose` (it indexes
//! the host list with the random number).

use std::collections::BinaryHeap;
use std::net::SocketAddr;

use xxhash_rust::xxh64::xxh64;

use super::hash;

/// Envoy's `RingHashLoadBalancer` default `maximum_ring_size` (8M).
const MAX_RING_SIZE: f64 = 8_388_608.0;

/// Whether the weights make any difference (Envoy keeps its unweighted balancers when
/// every host has the same weight).
pub fn unequal(weights: &[u32]) -> bool {
    weights.windows(2).any(|w| w[0] != w[1])
}

/// Envoy's ring: (hash, endpoint) sorted by hash.
pub fn ring(endpoints: &[SocketAddr], weights: &[u32], min: u64) -> Vec<(u64, u32)> {
    if endpoints.is_empty() {
        return Vec::new();
    }
    let total: f64 = weights.iter().map(|w| f64::from(*w)).sum();
    let normalized: Vec<f64> = weights.iter().map(|w| f64::from(*w) / total).collect();
    let min_weight = normalized.iter().copied().fold(1.0, f64::min);
    let scale = ((min_weight * min as f64).ceil() / min_weight).min(MAX_RING_SIZE);
    let mut ring = Vec::with_capacity(scale as usize + endpoints.len());
    let (mut current, mut target) = (0.0, 0.0);
    for (i, (e, w)) in endpoints.iter().zip(&normalized).enumerate() {
        let address = e.to_string();
        target += scale * w;
        let mut k = 0u64;
        // (a hair under the target: equal weights give each host exactly
        // `ceil(min / n)` entries despite rounding)
        while current < target - 1e-6 {
            ring.push((hash(format!("{address}_{k}").as_bytes()), i as u32));
            k += 1;
            current += 1.0;
        }
    }
    ring.sort_unstable();
    ring
}

/// Maglev's population (Eisenbud et al., §3.4, with Envoy's weights): every endpoint in
/// turn takes the next free slot of its permutation until the table is full.
pub fn maglev(endpoints: &[SocketAddr], weights: &[u32], size: u64) -> Vec<u32> {
    let n = endpoints.len();
    if n == 0 || size < 2 {
        return Vec::new();
    }
    let m = size as usize;
    let total: f64 = weights.iter().map(|w| f64::from(*w)).sum();
    let weight: Vec<f64> = weights.iter().map(|w| f64::from(*w) / total).collect();
    let max_weight = weight.iter().copied().fold(0.0, f64::max);
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
    let mut target = vec![0.0f64; n];
    let mut table = vec![u32::MAX; m];
    let mut filled = 0;
    let mut iteration = 1u64;
    while filled < m {
        for i in 0..n {
            if filled == m {
                break;
            }
            if (iteration as f64) * weight[i] < target[i] {
                continue;
            }
            target[i] += max_weight;
            let (offset, skip) = perms[i];
            let mut c = ((offset + next[i] * skip) % size) as usize;
            while table[c] != u32::MAX {
                next[i] += 1;
                c = ((offset + next[i] * skip) % size) as usize;
            }
            table[c] = i as u32;
            next[i] += 1;
            filled += 1;
        }
        iteration += 1;
    }
    table
}

/// One host in the scheduler: due at `deadline`; `order` breaks ties (first added first).
#[derive(Debug, Clone, Copy)]
struct Entry {
    deadline: f64,
    order: u64,
    index: u32,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest deadline comes first.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.deadline
            .total_cmp(&self.deadline)
            .then(o.order.cmp(&self.order))
    }
}

/// Envoy's `EdfScheduler` over a cluster's endpoints.
#[derive(Debug)]
pub struct Edf {
    heap: BinaryHeap<Entry>,
    current: f64,
    order: u64,
}

impl Edf {
    /// Every endpoint with its weight (`weight(i)`, > 0).
    pub fn new(n: usize, weight: impl Fn(usize) -> f64) -> Edf {
        let mut edf = Edf {
            heap: BinaryHeap::with_capacity(n),
            current: 0.0,
            order: 0,
        };
        for i in 0..n {
            edf.add(i, weight(i));
        }
        edf
    }

    fn add(&mut self, index: usize, weight: f64) {
        let deadline = self.current + 1.0 / weight.max(f64::MIN_POSITIVE);
        self.heap.push(Entry {
            deadline,
            order: self.order,
            index: index as u32,
        });
        self.order += 1;
    }

    /// Picks the earliest usable endpoint and adds it back with `weight(i)`
    /// (`pickAndAdd`). Unusable (ejected) endpoints passed on the way are added back
    /// as if new, due `1 / weight` from now, as Envoy's scheduler rebuilt over the
    /// healthy hosts would have them; each is passed at most once per pick.
    pub fn pick(
        &mut self,
        usable: impl Fn(usize) -> bool,
        weight: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        let mut skipped = Vec::new();
        let mut found = None;
        while let Some(e) = self.heap.pop() {
            let i = e.index as usize;
            if usable(i) {
                self.current = e.deadline;
                found = Some(i);
                break;
            }
            skipped.push(i);
        }
        if let Some(i) = found {
            self.add(i, weight(i));
        }
        for i in skipped {
            self.add(i, weight(i));
        }
        found
    }
}

/// Istio's weighted route: one of `items` by `weight`, with `r` uniform in
/// `0..sum of weights` (`r` is ignored when every weight is 0: the first is taken). The
/// one pick for HTTP `route[]` and TCP/TLS `route[]` destinations.
pub fn pick_by_weight<T>(items: &[T], weight: impl Fn(&T) -> u64, r: u64) -> Option<&T> {
    let mut n = r;
    for item in items {
        let w = weight(item);
        if n < w {
            return Some(item);
        }
        n -= w;
    }
    items.first()
}

/// The sum of the weights, for drawing `r` of [`pick_by_weight`].
pub fn total_weight<T>(items: &[T], weight: impl Fn(&T) -> u64) -> u64 {
    items.iter().map(weight).sum()
}

/// [`pick_by_weight`] with a fresh random draw.
pub fn pick_random<T>(items: &[T], weight: impl Fn(&T) -> u64 + Copy) -> Option<&T> {
    match total_weight(items, weight) {
        0 => items.first(),
        total => pick_by_weight(items, weight, fastrand::u64(0..total)),
    }
}

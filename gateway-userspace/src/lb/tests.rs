use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::*;
use crate::config::dest_rules::HashKey;

fn eps(n: u16) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 8000 + i)))
        .collect()
}

fn spread(
    b: &Balancer,
    picks: usize,
    hash: impl Fn(usize) -> Option<u64>,
) -> BTreeMap<SocketAddr, usize> {
    let mut m = BTreeMap::new();
    for i in 0..picks {
        *m.entry(b.pick(hash(i)).unwrap().addr).or_default() += 1;
    }
    m
}

#[test]
fn round_robin_cycles() {
    let b = Balancer::new(LbPolicy::RoundRobin, eps(3));
    let got: Vec<_> = (0..6).map(|_| b.pick(None).unwrap().addr.port()).collect();
    assert_eq!(got, [8000, 8001, 8002, 8000, 8001, 8002]);
}

#[test]
fn empty_cluster_picks_nothing() {
    for p in [
        LbPolicy::LeastRequest,
        LbPolicy::RoundRobin,
        LbPolicy::Random,
    ] {
        assert!(Balancer::new(p, Vec::new()).pick(None).is_none());
    }
}

#[test]
fn least_request_avoids_the_busy_endpoint() {
    let b = Balancer::new(LbPolicy::LeastRequest, eps(2));
    // Hold 5 requests on whichever endpoint the first picks land on, until one is busy.
    let busy = b.pick(None).unwrap();
    let busy_addr = busy.addr;
    let held: Vec<_> = (0..4)
        .filter_map(|_| {
            let p = b.pick(None).unwrap();
            (p.addr == busy_addr).then_some(p)
        })
        .collect();
    // With one endpoint busier, a pick lands on it only when both choices are it (1/4).
    let m = spread(&b, 4000, |_| None);
    let on_busy = m.get(&busy_addr).copied().unwrap_or(0);
    assert!(on_busy < 1300, "{m:?}");
    drop(held);
    drop(busy);
    // Every guard dropped: counters back to zero, so the spread is even again.
    assert!(b.active.iter().all(|a| a.load(Ordering::Relaxed) == 0));
}

#[test]
fn random_spreads() {
    let b = Balancer::new(LbPolicy::Random, eps(4));
    let m = spread(&b, 4000, |_| None);
    assert_eq!(m.len(), 4);
    assert!(m.values().all(|n| *n > 700), "{m:?}");
}

fn policies() -> [LbPolicy; 2] {
    [
        LbPolicy::RingHash {
            key: HashKey::SourceIp,
            minimum_ring_size: 1024,
        },
        LbPolicy::Maglev {
            key: HashKey::SourceIp,
            table_size: 65537,
        },
    ]
}

#[test]
fn hashing_is_sticky_and_spreads() {
    for p in policies() {
        let b = Balancer::new(p.clone(), eps(4));
        for key in 0..50u64 {
            let h = hash(&key.to_le_bytes());
            let first = b.pick(Some(h)).unwrap().addr;
            assert!(
                (0..20).all(|_| b.pick(Some(h)).unwrap().addr == first),
                "{p:?}"
            );
        }
        let m = spread(&b, 4000, |i| Some(hash(&(i as u64).to_le_bytes())));
        assert_eq!(m.len(), 4, "{p:?}: {m:?}");
        assert!(m.values().all(|n| *n > 500), "{p:?}: {m:?}");
    }
}

#[test]
fn hashing_moves_few_keys_when_an_endpoint_goes() {
    for p in policies() {
        let all = Balancer::new(p.clone(), eps(5));
        let fewer = Balancer::new(p.clone(), eps(4));
        let moved = (0..2000u64)
            .filter(|k| {
                let h = hash(&k.to_le_bytes());
                let a = all.pick(Some(h)).unwrap().addr;
                a.port() != 8004 && fewer.pick(Some(h)).unwrap().addr != a
            })
            .count();
        // Modulo hashing would move ~80 % of them; consistent hashing few.
        assert!(moved < 300, "{p:?}: {moved} of 2000 keys moved");
    }
}

#[test]
fn maglev_table_is_full_and_even() {
    let t = maglev(&eps(3), 65537);
    assert_eq!(t.len(), 65537);
    let mut n = [0usize; 3];
    for i in t {
        n[i as usize] += 1;
    }
    assert!(n.iter().all(|c| c.abs_diff(65537 / 3) <= 1), "{n:?}");
}

#[test]
fn ring_size_is_the_minimum_rounded_up() {
    assert_eq!(ring(&eps(3), 1024).len(), 342 * 3);
    assert_eq!(ring(&eps(1), 4).len(), 4);
}

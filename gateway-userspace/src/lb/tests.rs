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
    assert!(
        b.set
            .load()
            .active
            .iter()
            .all(|a| a.load(Ordering::Relaxed) == 0)
    );
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
    let t = weighted::maglev(&eps(3), &[1; 3], 65537);
    assert_eq!(t.len(), 65537);
    let mut n = [0usize; 3];
    for i in t {
        n[i as usize] += 1;
    }
    assert!(n.iter().all(|c| c.abs_diff(65537 / 3) <= 1), "{n:?}");
}

#[test]
fn ring_size_is_the_minimum_rounded_up() {
    assert_eq!(weighted::ring(&eps(3), &[1; 3], 1024).len(), 342 * 3);
    assert_eq!(weighted::ring(&eps(1), &[1], 4).len(), 4);
}

fn outlier_policy(interval_ms: u64, base_ms: u64) -> crate::config::upstream_policy::OutlierPolicy {
    crate::config::upstream_policy::OutlierPolicy {
        consecutive_5xx: 3,
        consecutive_gateway: 0,
        interval: std::time::Duration::from_millis(interval_ms),
        base_ejection_time: std::time::Duration::from_millis(base_ms),
        max_ejection_time: std::time::Duration::from_secs(300),
        max_ejection_percent: 100,
        min_health_percent: 0,
        split_local_origin: false,
        consecutive_local_origin: 5,
    }
}

fn with_outlier(
    policy: LbPolicy,
    n: u16,
    p: crate::config::upstream_policy::OutlierPolicy,
) -> Balancer {
    let mut b = Balancer::new(policy, eps(n));
    b.outlier = Some(Arc::new(outlier::Outlier::new(p, "c", &eps(n))));
    b
}

#[test]
fn consecutive_5xx_ejects_and_every_policy_skips_the_ejected() {
    for policy in [
        LbPolicy::RoundRobin,
        LbPolicy::Random,
        LbPolicy::LeastRequest,
        LbPolicy::RingHash {
            key: HashKey::SourceIp,
            minimum_ring_size: 64,
        },
        LbPolicy::Maglev {
            key: HashKey::SourceIp,
            table_size: 251,
        },
    ] {
        let b = with_outlier(policy.clone(), 3, outlier_policy(60_000, 60_000));
        let o = b.outlier.clone().unwrap();
        // Two 5xx, a success (zeroes the count), then three: ejected at the third.
        for s in [500, 503, 200, 500, 502] {
            o.report(1, outlier::Outcome::Response(s));
        }
        assert_eq!(o.ejected(), [false, false, false], "{policy:?}");
        o.report(1, outlier::Outcome::Timeout);
        assert_eq!(o.ejected(), [false, true, false], "{policy:?}");
        let got = spread(&b, 300, |i| {
            Some((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        });
        assert!(!got.contains_key(&eps(3)[1]), "{policy:?}: {got:?}");
        assert_eq!(got.len(), 2, "{policy:?}: {got:?}");
    }
}

#[test]
fn max_ejection_percent_panic_threshold_and_return() {
    // 10%: with 3 endpoints even one ejection is above it (Envoy's check is
    // 100 * (ejected + 1) / hosts <= max).
    let mut p = outlier_policy(60_000, 60_000);
    p.max_ejection_percent = 10;
    let b = with_outlier(LbPolicy::RoundRobin, 3, p);
    let o = b.outlier.clone().unwrap();
    (0..3).for_each(|_| o.report(0, outlier::Outcome::Response(500)));
    assert_eq!(o.ejected(), [false, false, false]);
    // Every endpoint ejected and no panic threshold: nothing to pick (503 UH).
    let b = with_outlier(LbPolicy::RoundRobin, 2, outlier_policy(60_000, 60_000));
    let o = b.outlier.clone().unwrap();
    (0..3).for_each(|_| o.report(0, outlier::Outcome::Response(500)));
    (0..3).for_each(|_| o.report(1, outlier::Outcome::Response(500)));
    assert_eq!(o.ejected(), [true, true]);
    assert!(b.pick(None).is_none());
    // minHealthPercent 60 with one of two ejected (50% healthy): panic, all used.
    let mut p = outlier_policy(60_000, 60_000);
    p.min_health_percent = 60;
    let b = with_outlier(LbPolicy::RoundRobin, 2, p);
    let o = b.outlier.clone().unwrap();
    (0..3).for_each(|_| o.report(0, outlier::Outcome::Response(500)));
    assert_eq!(o.ejected(), [true, false]);
    assert_eq!(spread(&b, 4, |_| None).len(), 2);
    // Back after base_ejection_time, at the next interval sweep.
    let b = with_outlier(LbPolicy::RoundRobin, 2, outlier_policy(20, 100));
    let o = b.outlier.clone().unwrap();
    (0..3).for_each(|_| o.report(0, outlier::Outcome::Response(500)));
    assert_eq!(o.ejected(), [true, false]);
    std::thread::sleep(std::time::Duration::from_millis(60));
    assert_eq!(o.ejected(), [true, false]);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while o.ejected()[0] && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(o.ejected(), [false, false]);
    // Ejected again at once: twice the base time (the multiplier).
    (0..3).for_each(|_| o.report(0, outlier::Outcome::Response(500)));
    let at = std::time::Instant::now();
    while o.ejected()[0] && at.elapsed() < std::time::Duration::from_secs(2) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        at.elapsed() >= std::time::Duration::from_millis(180),
        "{:?}",
        at.elapsed()
    );
}

#[tokio::test]
async fn circuit_breakers_admit_queue_and_overflow() {
    use crate::config::upstream_policy::CircuitBreakers;
    let p = Arc::new(pool::Pool::new(CircuitBreakers {
        max_connections: 1,
        max_pending_requests: 1,
        max_requests: u32::MAX,
        max_retries: u32::MAX,
    }));
    let first = p.admit().await.unwrap();
    // The second waits for the connection; the third overflows.
    let waiting = tokio::spawn({
        let p = p.clone();
        async move { p.admit().await.is_ok() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(p.admit().await.is_err());
    assert!(p.admit_connection().is_err());
    drop(first);
    assert!(waiting.await.unwrap());
    assert_eq!(p.overflows.load(Ordering::Relaxed), 2);
    // max_requests.
    let p = pool::Pool::new(CircuitBreakers {
        max_connections: u32::MAX,
        max_pending_requests: u32::MAX,
        max_requests: 2,
        max_retries: 1,
    });
    let (_a, _b) = (p.admit().await.unwrap(), p.admit().await.unwrap());
    assert!(p.admit().await.is_err());
    // max_retries: one retry in back-off at a time.
    let r = p.retry().expect("first retry");
    assert!(p.retry().is_none());
    drop(r);
    assert!(p.retry().is_some());
    assert_eq!(p.retry_overflows.load(Ordering::Relaxed), 1);
}

#[test]
fn local_origin_errors_count_as_503_504_or_apart_when_split() {
    use outlier::Outcome::*;
    // Not split: a connect failure is a 503 and a timeout a 504 (3 in a row eject);
    // an HTTP answer's connect does not zero the count, a TCP connect does.
    let b = with_outlier(LbPolicy::RoundRobin, 2, outlier_policy(60_000, 60_000));
    let o = b.outlier.clone().unwrap();
    for r in [
        ConnectFailed,
        Timeout,
        Connected,
        ConnectFailed,
        Response(500),
    ] {
        o.report(0, r);
    }
    assert_eq!(o.ejected(), [false, false]);
    o.report(0, Timeout);
    assert_eq!(o.ejected(), [true, false]);
    // Split: local failures count apart (threshold 2 here), an answer's connect zeroes
    // them, and 5xx answers count only as 5xx.
    let mut p = outlier_policy(60_000, 60_000);
    p.split_local_origin = true;
    p.consecutive_local_origin = 2;
    let b = with_outlier(LbPolicy::RoundRobin, 2, p);
    let o = b.outlier.clone().unwrap();
    for r in [ConnectFailed, Response(500), Timeout, Response(500)] {
        o.report(0, r);
    }
    assert_eq!(o.ejected(), [false, false]);
    o.report(0, ConnectFailed);
    assert_eq!(o.ejected(), [false, false]);
    o.report(0, Timeout);
    assert_eq!(o.ejected(), [true, false]);
    // ... and three 5xx answers still eject on their own.
    for _ in 0..3 {
        o.report(1, Response(503));
    }
    assert_eq!(o.ejected(), [true, true]);
}

#[test]
fn weighted_round_robin_follows_the_weights() {
    let b = Balancer::weighted(LbPolicy::RoundRobin, eps(2), vec![1, 3]);
    let m = spread(&b, 400, |_| None);
    assert_eq!(m.values().copied().collect::<Vec<_>>(), [100, 300]);
    // Envoy's EDF interleaves: no run longer than the weight ratio.
    let seq: Vec<u16> = (0..8).map(|_| b.pick(None).unwrap().addr.port()).collect();
    assert_eq!(seq.iter().filter(|p| **p == 8000).count(), 2, "{seq:?}");
}

#[test]
fn weighted_least_request_divides_weight_by_load() {
    let b = Balancer::weighted(LbPolicy::LeastRequest, eps(2), vec![1, 3]);
    // Sequential (nothing in flight): the weights alone.
    let m = spread(&b, 400, |_| None);
    assert_eq!(m.values().copied().collect::<Vec<_>>(), [100, 300]);
    // Three requests held on the heavy endpoint: its weight 3 / 4 is below 1 / 1.
    let held: Vec<_> = std::iter::from_fn(|| b.pick(None))
        .filter(|p| p.addr.port() == 8001)
        .take(3)
        .collect();
    let m = spread(&b, 100, |_| None);
    assert!(
        m[&eps(2)[0]] > m.get(&eps(2)[1]).copied().unwrap_or(0),
        "{m:?}"
    );
    drop(held);
}

#[test]
fn hash_tables_share_by_weight() {
    for p in [
        LbPolicy::RingHash {
            key: HashKey::SourceIp,
            minimum_ring_size: 1024,
        },
        LbPolicy::Maglev {
            key: HashKey::SourceIp,
            table_size: 65537,
        },
    ] {
        let b = Balancer::weighted(p.clone(), eps(2), vec![1, 3]);
        let m = spread(&b, 20_000, |i| Some(hash(i.to_string().as_bytes())));
        let light = m[&eps(2)[0]] as f64 / 20_000.0;
        assert!((light - 0.25).abs() < 0.05, "{p:?}: {m:?}");
    }
}

#[test]
fn equal_weights_build_the_same_ring_as_before() {
    let r = weighted::ring(&eps(3), &[1, 1, 1], 1024);
    assert_eq!(r.len(), 3 * 342);
}

#[test]
fn update_keeps_the_state_of_endpoints_that_stay() {
    let mut p = outlier_policy(10_000, 30_000);
    p.consecutive_5xx = 1;
    let mut b = Balancer::new(LbPolicy::RoundRobin, eps(2));
    let o = Arc::new(outlier::Outlier::new(p, "c", &eps(2)));
    b.outlier = Some(o.clone());
    let held = b.pick(None).unwrap();
    assert_eq!(held.addr, eps(2)[0]);
    o.report_addr(eps(2)[1], outlier::Outcome::Response(500));
    assert_eq!(b.ejected(), [false, true]);
    // 8001 stays (still ejected), 8000 leaves, 8002 comes.
    let new = vec![eps(3)[1], eps(3)[2]];
    assert!(b.update(new.clone(), vec![1, 1]));
    assert!(!b.update(new.clone(), vec![1, 1]));
    assert_eq!(b.ejected(), [true, false]);
    for _ in 0..4 {
        assert_eq!(b.pick(None).unwrap().addr, eps(3)[2]);
    }
    // The request in flight to the removed endpoint finishes; its report is ignored.
    held.report(outlier::Outcome::Response(500));
    drop(held);
    assert_eq!(b.endpoints(), [(eps(3)[1], 1), (eps(3)[2], 1)]);
}

#[test]
fn weighted_round_robin_skips_an_ejected_heavy_endpoint() {
    let mut p = outlier_policy(10_000, 30_000);
    p.consecutive_5xx = 1;
    let mut b = Balancer::weighted(LbPolicy::RoundRobin, eps(2), vec![1000, 1]);
    let o = Arc::new(outlier::Outlier::new(p, "c", &eps(2)));
    b.outlier = Some(o.clone());
    o.report(0, outlier::Outcome::Response(500));
    for _ in 0..10 {
        assert_eq!(b.pick(None).unwrap().addr, eps(2)[1]);
    }
}

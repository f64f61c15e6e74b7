//! Outlier detection of one cluster, as Envoy's `DetectorImpl` does it
//! (source/extensions/clusters/common/outlier_detection_impl.cc) with the settings
//! Istio gives it (`config::upstream_policy::OutlierPolicy`):
//!
//! - each result of a request to an endpoint is reported ([`Outlier::report`]): a 5xx
//!   adds to its consecutive-5xx count, a 502/503/504 also to its consecutive gateway
//!   failures (any other 5xx zeroes those); anything else zeroes both. Connect
//!   failures and resets count as 503, timeouts as 504, a TCP connect as 200, and an
//!   HTTP connect is not counted (Envoy's `resultToHttpCode`, local origin errors not
//!   split: Istio's default). With `splitExternalLocalOriginErrors`, connect failures,
//!   resets and timeouts count only against `consecutiveLocalOriginFailures`, which a
//!   connect zeroes (`putResultWithLocalExternalSplit`).
//! - when a count *reaches* its enforced threshold the endpoint is ejected at once,
//!   unless that would put the ejected share above `max_ejection_percent`
//!   (`100 * (ejected + 1) / endpoints`); the count is zeroed either way.
//! - every `interval` (a sweep; done lazily here, on the next pick, report or read
//!   once the tick is due, as if a timer had run at each tick) an ejected endpoint
//!   whose `base_ejection_time * ejections` (at most `max_ejection_time`) has passed
//!   comes back, and an endpoint not ejected has its multiplier lowered by one.
//! - the load balancers skip ejected endpoints, unless the share of usable ones is
//!   below `min_health_percent` (Envoy's panic threshold): then all are used. Istio's
//!   default threshold is 0: never panic, so with every endpoint ejected a request gets
//!   503 `UH`.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::upstream_policy::OutlierPolicy;

#[derive(Debug)]
pub struct Outlier {
    pub policy: OutlierPolicy,
    cluster: String,
    state: Mutex<State>,
    /// Ejections enforced since start (Envoy `ejections_enforced_total`).
    pub ejections_total: AtomicU64,
}

#[derive(Debug)]
struct State {
    /// The cluster's endpoints now (a DNS refresh replaces them, [`Outlier::set_endpoints`]).
    endpoints: Vec<SocketAddr>,
    hosts: Vec<Host>,
    /// Whether each endpoint is ejected (what the balancers read).
    ejected: Vec<bool>,
    next_sweep: Instant,
}

/// What happened on one try (Envoy's `Outlier::Result` and response codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered (HTTP): its status.
    Response(u16),
    /// The TCP connection was made (a TCP route: nothing more is learnt).
    Connected,
    /// Connect failure, or reset before the answer (Envoy reports both as
    /// LOCAL_ORIGIN_CONNECT_FAILED).
    ConnectFailed,
    /// No answer in time (LOCAL_ORIGIN_TIMEOUT).
    Timeout,
}

impl State {
    fn is_ejected(&self, addr: SocketAddr) -> bool {
        self.endpoints
            .iter()
            .position(|e| *e == addr)
            .is_some_and(|i| self.ejected[i])
    }
}

#[derive(Debug, Default, Clone)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    ejected_at: Option<Instant>,
    /// Envoy's ejection time multiplier (`ejectTimeBackoff`).
    multiplier: u32,
}

/// Sweeps done at most per call (a long idle gap is caught up in one step).
const MAX_CATCH_UP: u32 = 1000;

impl Outlier {
    pub fn new(policy: OutlierPolicy, cluster: &str, endpoints: &[SocketAddr]) -> Outlier {
        let n = endpoints.len();
        Outlier {
            cluster: cluster.to_string(),
            state: Mutex::new(State {
                endpoints: endpoints.to_vec(),
                hosts: vec![Host::default(); n],
                ejected: vec![false; n],
                next_sweep: Instant::now() + policy.interval.max(Duration::from_millis(1)),
            }),
            policy,
            ejections_total: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the counters inconsistent in a
        // way that matters; keep serving.
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.sweep(&mut s, Instant::now());
        s
    }

    /// Which of `endpoints` may be picked: `None` when all may (nothing ejected, or
    /// panic mode). An endpoint this detector does not know is usable.
    pub fn usable_for(&self, endpoints: &[SocketAddr]) -> Option<Vec<bool>> {
        let s = self.lock();
        let n = s.ejected.len();
        let ejected = s.ejected.iter().filter(|e| **e).count();
        if ejected == 0 || n == 0 {
            return None;
        }
        let healthy_percent = 100 * (n - ejected) / n;
        if (healthy_percent as u32) < self.policy.min_health_percent {
            return None;
        }
        Some(endpoints.iter().map(|e| !s.is_ejected(*e)).collect())
    }

    /// Whether each endpoint is ejected now (for `proxy-config endpoint`).
    pub fn ejected(&self) -> Vec<bool> {
        self.lock().ejected.clone()
    }

    /// Whether each of `endpoints` is ejected now.
    pub fn ejected_for(&self, endpoints: &[SocketAddr]) -> Vec<bool> {
        let s = self.lock();
        endpoints.iter().map(|e| s.is_ejected(*e)).collect()
    }

    /// The cluster's endpoints changed (DNS): those that stay keep their counts and
    /// ejection, new ones start clean (Envoy keeps a host's detector state while the
    /// host stays in the cluster and drops it when the host is removed).
    pub fn set_endpoints(&self, endpoints: &[SocketAddr]) {
        let mut s = self.lock();
        let mut hosts = Vec::with_capacity(endpoints.len());
        let mut ejected = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            match s.endpoints.iter().position(|o| o == e) {
                Some(i) => {
                    hosts.push(s.hosts[i].clone());
                    ejected.push(s.ejected[i]);
                }
                None => {
                    hosts.push(Host::default());
                    ejected.push(false);
                }
            }
        }
        s.endpoints = endpoints.to_vec();
        s.hosts = hosts;
        s.ejected = ejected;
    }

    /// The result of a try on the endpoint at `addr` (ignored if it has left the
    /// cluster since it was picked).
    pub fn report_addr(&self, addr: SocketAddr, outcome: Outcome) {
        let index = self.lock().endpoints.iter().position(|e| *e == addr);
        if let Some(i) = index {
            self.report(i, outcome);
        }
    }

    /// The result of a try on endpoint `index`.
    pub fn report(&self, index: usize, outcome: Outcome) {
        let split = self.policy.split_local_origin;
        match outcome {
            Outcome::Response(status) if split => {
                self.local_origin(index, true);
                self.report_status(index, status);
            }
            Outcome::Response(status) => self.report_status(index, status),
            Outcome::Connected if split => self.local_origin(index, true),
            Outcome::Connected => self.report_status(index, 200),
            Outcome::ConnectFailed | Outcome::Timeout if split => self.local_origin(index, false),
            Outcome::ConnectFailed => self.report_status(index, 503),
            Outcome::Timeout => self.report_status(index, 504),
        }
    }

    /// `localOriginFailure` / `localOriginNoFailure`.
    fn local_origin(&self, index: usize, ok: bool) {
        let mut s = self.lock();
        let Some(h) = s.hosts.get_mut(index) else {
            return;
        };
        if ok {
            h.consecutive_local = 0;
            return;
        }
        h.consecutive_local += 1;
        if h.consecutive_local == self.policy.consecutive_local_origin {
            h.consecutive_local = 0;
            self.eject(&mut s, index, "consecutive local origin failures");
        }
    }

    /// `putHttpResponseCode`.
    fn report_status(&self, index: usize, status: u16) {
        let mut s = self.lock();
        let Some(h) = s.hosts.get_mut(index) else {
            return;
        };
        let (mut hit_5xx, mut hit_gateway) = (false, false);
        if (500..600).contains(&status) {
            if matches!(status, 502..=504) {
                h.consecutive_gateway += 1;
                hit_gateway = h.consecutive_gateway == self.policy.consecutive_gateway;
            } else {
                h.consecutive_gateway = 0;
            }
            h.consecutive_5xx += 1;
            hit_5xx = h.consecutive_5xx == self.policy.consecutive_5xx;
        } else {
            h.consecutive_5xx = 0;
            h.consecutive_gateway = 0;
        }
        // Envoy checks gateway failures first; each zeroes its own count.
        if hit_gateway {
            s.hosts[index].consecutive_gateway = 0;
            self.eject(&mut s, index, "consecutive gateway errors");
        }
        if hit_5xx {
            s.hosts[index].consecutive_5xx = 0;
            self.eject(&mut s, index, "consecutive 5xx errors");
        }
    }

    fn eject(&self, s: &mut State, index: usize, why: &str) {
        if s.ejected[index] {
            return;
        }
        let n = s.ejected.len();
        let active = s.ejected.iter().filter(|e| **e).count();
        let percent = 100.0 * (active + 1) as f64 / n as f64;
        if percent > f64::from(self.policy.max_ejection_percent) {
            tracing::debug!(target: "gateway::outlier", cluster = %self.cluster, endpoint = %s.endpoints[index], why, "not ejected: max_ejection_percent reached");
            return;
        }
        let now = Instant::now();
        let h = &mut s.hosts[index];
        h.ejected_at = Some(now);
        // Envoy raises the multiplier while base * multiplier is below the maximum.
        if self.policy.base_ejection_time * h.multiplier < self.max_ejection_time() {
            h.multiplier += 1;
        }
        let multiplier = h.multiplier;
        s.ejected[index] = true;
        self.ejections_total.fetch_add(1, Ordering::Relaxed);
        let ms = self.ejection_time(multiplier).as_millis() as u64;
        tracing::info!(target: "gateway::outlier", cluster = %self.cluster, endpoint = %s.endpoints[index], why, ejection_time_ms = ms, "endpoint ejected");
    }

    fn max_ejection_time(&self) -> Duration {
        self.policy
            .max_ejection_time
            .max(self.policy.base_ejection_time)
    }

    fn ejection_time(&self, multiplier: u32) -> Duration {
        (self.policy.base_ejection_time * multiplier).min(self.max_ejection_time())
    }

    /// The interval sweeps due by `now` (`DetectorImpl::onIntervalTimer`).
    fn sweep(&self, s: &mut State, now: Instant) {
        let interval = self.policy.interval.max(Duration::from_millis(1));
        let mut rounds = 0;
        while s.next_sweep <= now {
            let tick = s.next_sweep;
            for i in 0..s.hosts.len() {
                let h = &mut s.hosts[i];
                match h.ejected_at {
                    Some(at)
                        if tick.saturating_duration_since(at)
                            >= self.ejection_time(h.multiplier) =>
                    {
                        h.ejected_at = None;
                        s.ejected[i] = false;
                        tracing::info!(target: "gateway::outlier", cluster = %self.cluster, endpoint = %s.endpoints[i], "endpoint returned from ejection");
                    }
                    Some(_) => {}
                    None => h.multiplier = h.multiplier.saturating_sub(1),
                }
            }
            s.next_sweep += interval;
            rounds += 1;
            if rounds >= MAX_CATCH_UP {
                s.next_sweep = now + interval;
            }
        }
    }
}

//! DNS re-resolution of the DNS clusters (ServiceEntry `resolution: DNS` and
//! `DNS_ROUND_ROBIN`, hostname endpoints, and destination hosts no ServiceEntry names),
//! as Envoy's STRICT_DNS and LOGICAL_DNS clusters do it every `dns_refresh_rate`
//! (Istio's MeshConfig `dnsRefreshRate`, default 60 s; `--dns-refresh-rate` here):
//!
//! - every name is looked up again off the data path (the blocking resolver runs on
//!   tokio's blocking pool; one lookup per name and port per round);
//! - each cluster's endpoint list is rebuilt from its targets and swapped into its
//!   balancer atomically (`lb::Balancer::update`) when it changed;
//! - a name that fails keeps its last good addresses (Envoy's strict DNS cluster keeps
//!   the hosts of a target whose resolution fails), is logged and counted
//!   (`gateway_dns_refresh_failures_total{cluster}`); a name that failed at start has no
//!   addresses until it resolves, and then serves.
//!
//! Envoy can also follow the record's TTL (`respect_dns_ttl`), which Istio leaves off:
//! the rate alone decides here too.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::config::resolve::{system_lookup, take};
use crate::config::snapshot::DnsRefresh;
use crate::server::Gateway;

/// Istio's default `dnsRefreshRate`.
pub const DEFAULT_REFRESH_RATE: Duration = Duration::from_secs(60);

type Answers = HashMap<(String, u16), Result<Vec<SocketAddr>, String>>;

/// Refreshes the DNS clusters of `gw` every `every`, for the life of the process: those
/// of the Plan serving at each round (a reload's new clusters join, removed ones leave;
/// a cluster the reload kept keeps its last good addresses).
pub async fn run(gw: Arc<Gateway>, every: Duration) {
    if every.is_zero() {
        return;
    }
    let mut generation = 0;
    let mut clusters: Vec<(String, DnsRefresh)> = vec![];
    let start = tokio::time::Instant::now() + every;
    let mut tick = tokio::time::interval_at(start, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let plan = gw.plan();
        if plan.generation != generation {
            generation = plan.generation;
            clusters = plan
                .snapshot
                .clusters
                .values()
                .filter_map(|c| {
                    let fresh = c.dns.clone()?;
                    let kept = clusters
                        .iter()
                        .find(|(n, r)| *n == c.name && r.same_targets(&fresh))
                        .map(|(_, r)| r.clone());
                    Some((c.name.clone(), kept.unwrap_or(fresh)))
                })
                .collect();
            if !clusters.is_empty() {
                tracing::info!(
                    clusters = clusters.len(),
                    every = ?every,
                    "DNS clusters are re-resolved periodically"
                );
            }
        }
        drop(plan);
        tick.tick().await;
        if clusters.is_empty() {
            continue;
        }
        let answers = lookup_all(&clusters).await;
        let plan = gw.plan();
        for (cluster, refresh) in &mut clusters {
            apply(&plan.balancers, cluster, refresh, &answers);
        }
    }
}

/// Every name of every cluster, looked up once, concurrently.
async fn lookup_all(clusters: &[(String, DnsRefresh)]) -> Answers {
    let names: BTreeSet<(String, u16)> = clusters
        .iter()
        .flat_map(|(_, r)| r.targets.iter())
        .filter_map(|t| t.name.clone().map(|n| (n, t.port)))
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for (name, port) in names {
        set.spawn_blocking(move || {
            let r = system_lookup(&name, port);
            ((name, port), r)
        });
    }
    let mut answers = Answers::new();
    while let Some(done) = set.join_next().await {
        if let Ok((key, r)) = done {
            answers.insert(key, r);
        }
    }
    answers
}

/// One cluster's round: new addresses for the names that resolved, the last good ones
/// for those that did not; the balancer gets the list if it changed.
fn apply(
    balancers: &crate::lb::Balancers,
    cluster: &str,
    refresh: &mut DnsRefresh,
    answers: &Answers,
) {
    let mut failed = false;
    for t in &mut refresh.targets {
        let Some(name) = &t.name else { continue };
        match answers.get(&(name.clone(), t.port)) {
            Some(Ok(addrs)) => t.addrs = take(addrs.clone(), t.first_only),
            Some(Err(e)) => {
                failed = true;
                tracing::warn!(
                    cluster,
                    name = %name,
                    error = %e,
                    kept = ?t.addrs,
                    "DNS refresh failed; keeping the last addresses"
                );
            }
            None => failed = true,
        }
    }
    let Some(b) = balancers.get(cluster) else {
        return;
    };
    if let Some(d) = &b.dns {
        d.refreshes.fetch_add(1, Ordering::Relaxed);
        if failed {
            d.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
    let (endpoints, weights) = refresh.endpoints();
    let shown = endpoints.clone();
    if b.update(endpoints, weights) {
        tracing::info!(cluster, endpoints = ?shown, "DNS refresh: endpoints changed");
    }
}

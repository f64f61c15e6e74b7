//! Which DestinationRule applies to a destination host, and the load-balancer policy
//! it gives each cluster (`outbound|port|subset|host`), as Istio computes them.
//!
//! Selection (Istio `PushContext.destinationRule`, pilot/pkg/model/push_context.go), for
//! this gateway's namespace P (`--namespace`) and the service's namespace S (the
//! ServiceEntry's namespace, or `<ns>` of a `name.<ns>.svc.cluster.local` host):
//! 1. if P is not the root namespace, the DestinationRules in P (whatever their
//!    `exportTo`); if P is the root namespace, those in it exported only to `.`;
//! 2. else the rules in S exported to P;
//! 3. else the rules in the root namespace exported to P.
//!
//! Within a step the most specific host wins: an exact host before wildcards, the
//! longest wildcard suffix first (`MostSpecificHostMatch`). Several rules for the same
//! host in the same namespace are merged as Istio merges them (`mergeDestinationRule`):
//! subsets are united (a repeated subset name: the first one), the first
//! `trafficPolicy` set wins. "First" is Istio's order (creation time, then name, then
//! namespace); files carry no creation time, so it is the name.
//! `exportTo`: empty means `*`; `.` is the rule's own namespace; `~` nobody.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::ConfigError;
use super::destination_rule::{
    ClientTlsSettings, ConnectionPoolSettings, ConsistentHashLb, DestinationRule,
    LoadBalancerSettings, OutlierDetection, PortTrafficPolicy, SimpleLb, Subset, TrafficPolicy,
};
use super::hosts;
use super::parse::Entry;

/// Envoy's default `minimum_ring_size` (ring_hash LB) and its upper bound.
pub const DEFAULT_RING_SIZE: u64 = 1024;
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// Envoy's default Maglev table size (a prime).
pub const DEFAULT_MAGLEV_SIZE: u64 = 65537;
/// Envoy's upper bound for the Maglev table (`MaglevTable::MaxTableSize`... a prime).
const MAX_MAGLEV_SIZE: u64 = 5_000_011;

/// How a cluster picks an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub enum LbPolicy {
    /// Istio's default: power of two random choices over active requests.
    #[default]
    LeastRequest,
    RoundRobin,
    Random,
    RingHash {
        key: HashKey,
        minimum_ring_size: u64,
    },
    Maglev {
        key: HashKey,
        table_size: u64,
    },
}

impl LbPolicy {
    /// Envoy's `Cluster.LbPolicy` name.
    pub fn envoy_name(&self) -> &'static str {
        match self {
            LbPolicy::LeastRequest => "LEAST_REQUEST",
            LbPolicy::RoundRobin => "ROUND_ROBIN",
            LbPolicy::Random => "RANDOM",
            LbPolicy::RingHash { .. } => "RING_HASH",
            LbPolicy::Maglev { .. } => "MAGLEV",
        }
    }

    pub fn hash_key(&self) -> Option<&HashKey> {
        match self {
            LbPolicy::RingHash { key, .. } | LbPolicy::Maglev { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// What a consistent-hash policy hashes (Envoy's route `hash_policy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum HashKey {
    Header(String),
    /// `ttl` set and the cookie absent: the gateway sets it (Envoy's generated cookie).
    Cookie {
        name: String,
        path: Option<String>,
        ttl: Option<Duration>,
    },
    SourceIp,
    QueryParameter(String),
}

/// One DestinationRule (or several merged) and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Rule<'a> {
    /// `namespace/name` of the first rule.
    pub key: String,
    pub policy: Option<&'a TrafficPolicy>,
    pub subsets: Vec<&'a Subset>,
    /// Where `policy` is written (`spec.trafficPolicy` of its rule).
    pub policy_at: super::Origin,
    /// Where each of `subsets` is written (`spec.subsets[i]` of its rule).
    pub subsets_at: Vec<super::Origin>,
}

impl Rule<'_> {
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().copied().find(|s| s.name == name)
    }

    /// The policy of cluster (`port`, `subset`): Istio's `MergeTrafficPolicy` (the
    /// subset's load balancer over the top level's; a matching `portLevelSettings`
    /// entry replaces it, and "port level policies do not inherit": unset there means
    /// the default).
    pub fn lb(&self, port: u16, subset: Option<&Subset>) -> LbPolicy {
        self.field(
            port,
            subset,
            |p| p.load_balancer.as_ref(),
            |p| p.load_balancer.as_ref(),
        )
        .map(lb_policy)
        .unwrap_or_default()
    }

    /// The `connectionPool` of cluster (`port`, `subset`), merged as [`Rule::lb`].
    pub fn connection_pool<'s>(
        &'s self,
        port: u16,
        subset: Option<&'s Subset>,
    ) -> Option<&'s ConnectionPoolSettings> {
        self.field(
            port,
            subset,
            |p| p.connection_pool.as_ref(),
            |p| p.connection_pool.as_ref(),
        )
    }

    /// The `outlierDetection` of cluster (`port`, `subset`), merged as [`Rule::lb`].
    pub fn outlier_detection<'s>(
        &'s self,
        port: u16,
        subset: Option<&'s Subset>,
    ) -> Option<&'s OutlierDetection> {
        self.field(
            port,
            subset,
            |p| p.outlier_detection.as_ref(),
            |p| p.outlier_detection.as_ref(),
        )
    }

    /// One field of the merged policy (Istio's `MergeTrafficPolicy`).
    fn field<'s, T>(
        &'s self,
        port: u16,
        subset: Option<&'s Subset>,
        top: impl Fn(&'s TrafficPolicy) -> Option<&'s T>,
        at: impl Fn(&'s PortTrafficPolicy) -> Option<&'s T>,
    ) -> Option<&'s T> {
        let mut v = self.policy.and_then(|p| match port_level(p, port) {
            Some(pl) => at(pl),
            None => top(p),
        });
        if let Some(sp) = subset.and_then(|s| s.traffic_policy.as_ref()) {
            if let Some(x) = top(sp) {
                v = Some(x);
            }
            if let Some(pl) = port_level(sp, port) {
                v = at(pl);
            }
        }
        v
    }

    /// The TLS origination of cluster (`port`, `subset`), merged as [`Rule::lb`] (Istio's
    /// `MergeTrafficPolicy` treats `tls` as it treats `loadBalancer`). None: plain TCP.
    pub fn tls(&self, port: u16, subset: Option<&Subset>) -> Option<ClientTlsSettings> {
        let mut tls = self.policy.and_then(|p| match port_level(p, port) {
            Some(pl) => pl.tls.as_ref(),
            None => p.tls.as_ref(),
        });
        if let Some(sp) = subset.and_then(|s| s.traffic_policy.as_ref()) {
            if sp.tls.is_some() {
                tls = sp.tls.as_ref();
            }
            if let Some(pl) = port_level(sp, port) {
                tls = pl.tls.as_ref();
            }
        }
        tls.filter(|t| t.originates()).cloned()
    }

    /// Where the `tls` that [`Rule::tls`] picks is written.
    pub fn tls_at(&self, port: u16, subset: Option<&Subset>) -> super::Origin {
        let level = |p: &TrafficPolicy| {
            p.port_level_settings
                .iter()
                .position(|pl| pl.port.is_some_and(|s| s.number == u32::from(port)))
                .map(|i| format!("portLevelSettings[{i}].tls"))
        };
        let mut at = self.policy.map(|p| match level(p) {
            Some(pl) => self.policy_at.child(&pl),
            None => self.policy_at.child("tls"),
        });
        let sub = subset.and_then(|s| self.subsets.iter().position(|x| x.name == s.name));
        if let Some(i) = sub
            && let Some(sp) = self.subsets[i].traffic_policy.as_ref()
        {
            let origin = self.subsets_at[i].child("trafficPolicy");
            if sp.tls.is_some() {
                at = Some(origin.child("tls"));
            }
            if let Some(pl) = level(sp) {
                at = Some(origin.child(&pl));
            }
        }
        at.unwrap_or_default()
    }
}

fn port_level(p: &TrafficPolicy, port: u16) -> Option<&PortTrafficPolicy> {
    p.port_level_settings
        .iter()
        .find(|pl| pl.port.is_some_and(|s| s.number == u32::from(port)))
}

/// Settings -> policy (validated before: `check`). PASSTHROUGH and UNSPECIFIED are
/// the default (PASSTHROUGH has its warning, GW1067).
pub(crate) fn lb_policy(s: &LoadBalancerSettings) -> LbPolicy {
    if let Some(ch) = &s.consistent_hash {
        let key = hash_key(ch);
        return match key {
            None => LbPolicy::default(),
            Some(key) => match &ch.maglev {
                Some(m) => LbPolicy::Maglev {
                    key,
                    table_size: m
                        .table_size
                        .filter(|n| *n > 0)
                        .unwrap_or(DEFAULT_MAGLEV_SIZE),
                },
                None => LbPolicy::RingHash {
                    key,
                    minimum_ring_size: ch
                        .ring_hash
                        .as_ref()
                        .and_then(|r| r.minimum_ring_size)
                        .or(ch.minimum_ring_size)
                        .filter(|n| *n > 0)
                        .unwrap_or(DEFAULT_RING_SIZE)
                        .min(MAX_RING_SIZE),
                },
            },
        };
    }
    match s.simple {
        Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
        Some(SimpleLb::Random) => LbPolicy::Random,
        _ => LbPolicy::LeastRequest,
    }
}

fn hash_key(ch: &ConsistentHashLb) -> Option<HashKey> {
    if let Some(h) = ch.http_header_name.as_deref().filter(|h| !h.is_empty()) {
        return Some(HashKey::Header(h.to_ascii_lowercase()));
    }
    if let Some(c) = &ch.http_cookie {
        return Some(HashKey::Cookie {
            name: c.name.clone(),
            path: c.path.clone().filter(|p| !p.is_empty()),
            ttl: c.ttl.as_ref().map(|t| t.duration),
        });
    }
    if ch.use_source_ip == Some(true) {
        return Some(HashKey::SourceIp);
    }
    ch.http_query_parameter_name
        .as_deref()
        .filter(|q| !q.is_empty())
        .map(|q| HashKey::QueryParameter(q.to_string()))
}

/// Istio's validation of a DestinationRule (pilot/pkg/config/validation): what it
/// rejects is an error here too.
pub(crate) fn check(e: &Entry<DestinationRule>, errors: &mut Vec<ConfigError>) {
    let spec = &e.res.spec;
    if spec.host.trim().is_empty() {
        errors.push(e.src.error("spec.host", "host is required"));
    } else if !hosts::valid_host(spec.host.trim()) {
        errors.push(
            e.src
                .error("spec.host", format!("invalid host \"{}\"", spec.host)),
        );
    }
    if let Some(p) = &spec.traffic_policy {
        check_policy(p, "spec.trafficPolicy", e, errors);
    }
    let mut seen = BTreeMap::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        let at = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            errors.push(
                e.src
                    .error(&format!("{at}.name"), "subset name is required"),
            );
        } else if let Some(first) = seen.insert(s.name.as_str(), i) {
            errors.push(e.src.error(
                &format!("{at}.name"),
                format!(
                    "duplicate subset name \"{}\" (also spec.subsets[{first}])",
                    s.name
                ),
            ));
        }
        if let Some(p) = &s.traffic_policy {
            check_policy(p, &format!("{at}.trafficPolicy"), e, errors);
        }
    }
}

fn check_policy(
    p: &TrafficPolicy,
    at: &str,
    e: &Entry<DestinationRule>,
    errors: &mut Vec<ConfigError>,
) {
    if let Some(lb) = &p.load_balancer {
        check_lb(lb, &format!("{at}.loadBalancer"), e, errors);
    }
    super::upstream_policy::check(
        p.connection_pool.as_ref(),
        p.outlier_detection.as_ref(),
        at,
        e,
        errors,
    );
    if let Some(tls) = &p.tls {
        super::upstream_tls::check(tls, &format!("{at}.tls"), e, errors);
    }
    let mut ports = BTreeMap::new();
    for (i, pl) in p.port_level_settings.iter().enumerate() {
        let pat = format!("{at}.portLevelSettings[{i}]");
        match pl.port {
            None => errors.push(e.src.error(&pat, "portLevelSettings entry has no port")),
            Some(s) if s.number == 0 || s.number > 65535 => errors.push(e.src.error(
                &format!("{pat}.port.number"),
                format!("port {} is out of range 1-65535", s.number),
            )),
            Some(s) => {
                if let Some(first) = ports.insert(s.number, i) {
                    errors.push(e.src.error(
                        &format!("{pat}.port.number"),
                        format!(
                            "port {} is already set by {at}.portLevelSettings[{first}]",
                            s.number
                        ),
                    ));
                }
            }
        }
        if let Some(lb) = &pl.load_balancer {
            check_lb(lb, &format!("{pat}.loadBalancer"), e, errors);
        }
        super::upstream_policy::check(
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            &pat,
            e,
            errors,
        );
        if let Some(tls) = &pl.tls {
            super::upstream_tls::check(tls, &format!("{pat}.tls"), e, errors);
        }
    }
}

fn check_lb(
    lb: &LoadBalancerSettings,
    at: &str,
    e: &Entry<DestinationRule>,
    errors: &mut Vec<ConfigError>,
) {
    let Some(ch) = &lb.consistent_hash else {
        return;
    };
    let at = format!("{at}.consistentHash");
    if lb.simple.is_some() {
        errors.push(e.src.error(
            &at,
            "simple and consistentHash are both set; they are alternatives (one of lbPolicy)",
        ));
    }
    let keys = [
        ch.http_header_name.is_some(),
        ch.http_cookie.is_some(),
        ch.use_source_ip.is_some(),
        ch.http_query_parameter_name.is_some(),
    ];
    match keys.iter().filter(|k| **k).count() {
        0 => errors.push(e.src.error(
            &at,
            "consistentHash needs a hash key: httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
        )),
        1 => {}
        _ => errors.push(e.src.error(
            &at,
            "consistentHash sets more than one hash key (httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName are alternatives)",
        )),
    }
    if let Some(c) = &ch.http_cookie {
        if c.name.is_empty() {
            errors.push(e.src.error(
                &format!("{at}.httpCookie.name"),
                "name required for HttpCookie",
            ));
        }
        if c.ttl.is_none() {
            // Istio's validation: "ttl required for HttpCookie".
            errors.push(
                e.src
                    .error(&format!("{at}.httpCookie"), "ttl required for HttpCookie"),
            );
        }
    }
    if ch.ring_hash.is_some() && ch.maglev.is_some() {
        errors.push(e.src.error(
            &at,
            "ringHash and maglev are both set; they are alternatives",
        ));
    }
    if let Some(n) = ch.maglev.as_ref().and_then(|m| m.table_size) {
        // Envoy: the Maglev table size must be a prime (MaglevTable).
        if !(2..=MAX_MAGLEV_SIZE).contains(&n) || !is_prime(n) {
            errors.push(e.src.error(
                &format!("{at}.maglev.tableSize"),
                format!("tableSize {n} must be a prime number no larger than {MAX_MAGLEV_SIZE}"),
            ));
        }
    }
    let ring = ch
        .ring_hash
        .as_ref()
        .and_then(|r| r.minimum_ring_size)
        .map(|n| (n, "ringHash.minimumRingSize"));
    if let Some((n, field)) = ring.or(ch.minimum_ring_size.map(|n| (n, "minimumRingSize")))
        && n > MAX_RING_SIZE
    {
        errors.push(e.src.error(
            &format!("{at}.{field}"),
            format!("{n} is larger than Envoy's maximum ring size {MAX_RING_SIZE}"),
        ));
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The DestinationRules this gateway can see, indexed for [`Index::find`].
pub(crate) struct Index<'a> {
    /// namespace -> (expanded host -> rules in Istio's order).
    by_ns: BTreeMap<&'a str, BTreeMap<String, Vec<&'a Entry<DestinationRule>>>>,
    proxy_ns: String,
    root_ns: String,
}

impl<'a> Index<'a> {
    pub fn new(rules: &'a [Entry<DestinationRule>], proxy_ns: &str, root_ns: &str) -> Self {
        let mut sorted: Vec<_> = rules.iter().collect();
        sorted.sort_by(|a, b| {
            (&a.res.metadata.name, a.res.metadata.namespace())
                .cmp(&(&b.res.metadata.name, b.res.metadata.namespace()))
        });
        let mut by_ns: BTreeMap<&str, BTreeMap<String, Vec<_>>> = BTreeMap::new();
        for e in sorted {
            let ns = e.res.metadata.namespace();
            let host = hosts::expand(&e.res.spec.host.trim().to_ascii_lowercase(), ns);
            by_ns
                .entry(ns)
                .or_default()
                .entry(host)
                .or_default()
                .push(e);
        }
        Index {
            by_ns,
            proxy_ns: proxy_ns.to_string(),
            root_ns: root_ns.to_string(),
        }
    }

    /// The rule for `host` (a FQDN or the name as written) of a service in `svc_ns`.
    pub fn find(&self, host: &str, svc_ns: Option<&str>) -> Option<Rule<'a>> {
        let p = self.proxy_ns.as_str();
        let local = if p != self.root_ns {
            self.most_specific(p, host, |_| true)
        } else {
            self.most_specific(p, host, private_only)
        };
        local
            .or_else(|| svc_ns.and_then(|s| self.most_specific(s, host, |e| exported_to(e, p))))
            .or_else(|| self.most_specific(&self.root_ns, host, |e| exported_to(e, p)))
    }

    fn most_specific(
        &self,
        ns: &str,
        host: &str,
        visible: impl Fn(&Entry<DestinationRule>) -> bool,
    ) -> Option<Rule<'a>> {
        let hosts = self.by_ns.get(ns)?;
        let mut best: Option<(usize, Vec<&'a Entry<DestinationRule>>)> = None;
        for (h, rules) in hosts {
            let rules: Vec<_> = rules.iter().copied().filter(|e| visible(e)).collect();
            if rules.is_empty() {
                continue;
            }
            // Exact beats every wildcard; among wildcards the longest suffix.
            let score = if h == host {
                usize::MAX
            } else if h == "*" {
                0
            } else if let Some(suffix) = h.strip_prefix('*') {
                if !host.ends_with(suffix) {
                    continue;
                }
                suffix.len()
            } else {
                continue;
            };
            if best.as_ref().is_none_or(|(b, _)| score > *b) {
                best = Some((score, rules));
            }
        }
        let (_, rules) = best?;
        let first = rules[0];
        let mut subsets: Vec<&Subset> = Vec::new();
        let mut subsets_at = Vec::new();
        for e in &rules {
            for (i, s) in e.res.spec.subsets.iter().enumerate() {
                if !subsets.iter().any(|x| x.name == s.name) {
                    subsets.push(s);
                    subsets_at.push(super::Origin::new(&e.src, &format!("spec.subsets[{i}]")));
                }
            }
        }
        let with_policy = rules.iter().find(|e| e.res.spec.traffic_policy.is_some());
        Some(Rule {
            key: first.res.key(),
            policy: with_policy.and_then(|e| e.res.spec.traffic_policy.as_ref()),
            subsets,
            policy_at: with_policy
                .map(|e| super::Origin::new(&e.src, "spec.trafficPolicy"))
                .unwrap_or_default(),
            subsets_at,
        })
    }
}

fn private_only(e: &Entry<DestinationRule>) -> bool {
    let x = &e.res.spec.export_to;
    !x.is_empty() && x.iter().all(|n| n == ".")
}

/// `exportTo` lets a proxy in `ns` see the rule (empty: `*`).
fn exported_to(e: &Entry<DestinationRule>, ns: &str) -> bool {
    let x = &e.res.spec.export_to;
    x.is_empty()
        || x.iter()
            .any(|n| n == "*" || n == ns || (n == "." && e.res.metadata.namespace() == ns))
}

/// `<ns>` of `name.<ns>.svc.cluster.local`.
pub(crate) fn namespace_of_fqdn(host: &str) -> Option<&str> {
    let rest = host.strip_suffix(".svc.cluster.local")?;
    let (_, ns) = rest.rsplit_once('.')?;
    Some(ns)
}

/// Endpoint labels match a subset's selector: every subset label is on the endpoint.
pub(crate) fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests;

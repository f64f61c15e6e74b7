//! The runtime side: which policies apply, what each port serves, the XDP guard if
//! one is attached, and counters of what userspace refused.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{
    config::{ListenerProtocol, ServerKind, Snapshot},
    xdp::{Compiled, UpdateStats, XdpError, XdpGuard},
};

use super::{Cidr, Decision, HttpAttrs, L7, PortKind, PortKinds, Request};
use super::{Policies, PolicyIndex};

/// Stages at which userspace refuses traffic.
const STAGES: [&str; 3] = ["accept", "flow", "request"];

pub struct Enforcer {
    pub policies: Policies,
    /// `policies` by the hosts and ports their rules match: what each HTTP request asks.
    pub index: PolicyIndex,
    /// Served ports.
    pub kinds: PortKinds,
    /// The compiled (port, prefix) verdicts: what XDP applies, and the meaning of the
    /// address rules everywhere.
    pub compiled: Compiled,
    /// Attached by [`Enforcer::start`] when `--xdp-iface` was given and it loaded, or
    /// taken over from the previous enforcer by [`Enforcer::adopt_guard`] (shared:
    /// the predecessor keeps a handle until it is dropped).
    pub xdp: OnceLock<Arc<XdpGuard>>,
    /// (stage, port) -> connections/requests refused in userspace.
    /// Shared with a reload's successor for the keys both have
    /// ([`Enforcer::carry_counters`]): the series never go backwards.
    denied: BTreeMap<(&'static str, u16), Arc<AtomicU64>>,
    logged: AtomicU64,
}

/// Detailed logs for the first refusals only: a flood must not flood the log too.
const LOG_FIRST: u64 = 20;

impl Enforcer {
    pub fn new(snapshot: &Snapshot) -> Enforcer {
        let kinds: PortKinds = snapshot
            .listeners
            .iter()
            .map(|l| {
                let kind = match l.protocol {
                    ListenerProtocol::Http | ListenerProtocol::Https => PortKind::Http,
                    ListenerProtocol::Tcp => PortKind::Tcp,
                    ListenerProtocol::Tls
                        if l.servers
                            .iter()
                            .any(|s| s.kind == ServerKind::HttpsTerminate) =>
                    {
                        PortKind::Mixed
                    }
                    ListenerProtocol::Tls => PortKind::Tcp,
                };
                (l.port, kind)
            })
            .collect();
        let policies = super::Policies::build(
            &snapshot.resources.authorization_policies,
            &snapshot.identity,
        );
        let compiled = super::xdp::compile(&policies, &kinds);
        let denied = STAGES
            .iter()
            .flat_map(|s| {
                kinds
                    .keys()
                    .map(move |p| ((*s, *p), Arc::new(AtomicU64::new(0))))
            })
            .collect();
        Enforcer {
            index: PolicyIndex::new(&policies),
            policies,
            kinds,
            compiled,
            xdp: OnceLock::new(),
            denied,
            logged: AtomicU64::new(0),
        }
    }

    /// Attaches the XDP guard to `ifaces` (none: userspace only), logs where the rules
    /// are enforced, and installs this enforcer for the metrics. A guard that can't
    /// attach (no privilege, no kernel object, maps too small) leaves enforcement to
    /// userspace, which applies the same rules at accept: the policy means the same.
    pub fn start(self: &Arc<Self>, ifaces: &[String]) {
        if !ifaces.is_empty() {
            match XdpGuard::attach(ifaces, self.compiled.clone()) {
                Ok(g) => {
                    let _ = self.xdp.set(Arc::new(g));
                }
                Err(e) => tracing::warn!(
                    target: "gateway::authz",
                    "XDP guard not attached to {}: {e}; enforcing address rules in userspace at accept instead",
                    ifaces.join(", ")
                ),
            }
        }
        tracing::info!(target: "gateway::authz", "{}", self.describe());
    }

    /// Shares `from`'s `gateway_authz_denied_total` counters for every (stage, port)
    /// both serve, so a reload doesn't reset them (refusals counted by either while
    /// both run land in the same counter); ports new to this one start at zero.
    pub fn carry_counters(&mut self, from: &Enforcer) {
        for (k, c) in self.denied.iter_mut() {
            if let Some(prev) = from.denied.get(k) {
                *c = prev.clone();
            }
        }
    }

    /// Takes over `from`'s XDP guard, if it has one, rewriting its maps in place for
    /// this enforcer's rules ([`XdpGuard::update`]): the program stays attached and
    /// every packet keeps getting a verdict, the old one or the new one. `Ok(None)`:
    /// `from` had no guard (nothing to do). On `Err` (this policy overflows the maps,
    /// a map write failed) the kernel still applies `from`'s verdicts and this
    /// enforcer has no guard: the caller should keep `from` serving (reject the
    /// reload), as XDP would otherwise drop by the old rules.
    pub fn adopt_guard(&self, from: &Enforcer) -> Result<Option<UpdateStats>, XdpError> {
        let Some(guard) = from.xdp.get() else {
            return Ok(None);
        };
        if self.xdp.get().is_some() {
            return Err(XdpError::AlreadyAttached);
        }
        let stats = guard.update(self.compiled.clone())?;
        self.xdp
            .set(guard.clone())
            .map_err(|_| XdpError::AlreadyAttached)?;
        tracing::info!(target: "gateway::authz", "{}", self.describe());
        Ok(Some(stats))
    }

    fn kind(&self, port: u16) -> PortKind {
        self.kinds.get(&port).copied().unwrap_or(PortKind::Unserved)
    }

    fn refuse(&self, stage: &'static str, peer: SocketAddr, port: u16, d: &Decision) {
        if let Some(c) = self.denied.get(&(stage, port)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let reason = match d {
            Decision::Deny(r) => format!("{r:?}"),
            _ => String::new(),
        };
        if self.logged.fetch_add(1, Ordering::Relaxed) < LOG_FIRST {
            tracing::info!(target: "gateway::authz", %peer, port, stage, reason, "RBAC: access denied");
        } else {
            tracing::debug!(target: "gateway::authz", %peer, port, stage, reason, "RBAC: access denied");
        }
    }

    /// At accept: false means close the connection now. Always checked, with or
    /// without XDP (XDP only sees its own interfaces; loopback and other NICs reach
    /// the listener unfiltered).
    pub fn allow_accept(&self, peer: SocketAddr, port: u16) -> bool {
        if self.policies.is_empty() {
            return true;
        }
        let kind = self.kind(port);
        let l7 = if kind == PortKind::Tcp {
            L7::TcpUnknownSni
        } else {
            L7::Unknown
        };
        let req = Request {
            source: Cidr::host(peer.ip()),
            port,
            l7,
        };
        let d = self.policies.decide(kind, &req);
        if matches!(d, Decision::Deny(_)) {
            self.refuse("accept", peer, port, &d);
            return false;
        }
        true
    }

    /// A TCP / TLS-passthrough flow once its SNI is known (None: none or no
    /// ClientHello): false means close it.
    pub fn allow_flow(&self, peer: SocketAddr, port: u16, sni: Option<&str>) -> bool {
        if self.policies.is_empty() {
            return true;
        }
        let req = Request {
            source: Cidr::host(peer.ip()),
            port,
            l7: L7::Tcp { sni },
        };
        let d = self.policies.decide(PortKind::Tcp, &req);
        if matches!(d, Decision::Deny(_)) {
            self.refuse("flow", peer, port, &d);
            return false;
        }
        true
    }

    /// One HTTP request: the full decision (never Undecided: everything is known).
    pub fn check_http(&self, peer: SocketAddr, port: u16, attrs: HttpAttrs) -> Decision {
        if self.policies.is_empty() {
            return Decision::Allow { rule: None };
        }
        let req = Request {
            source: Cidr::host(peer.ip()),
            port,
            l7: L7::Http(attrs),
        };
        let d = self.index.decide_http(&self.policies, &req);
        if matches!(d, Decision::Deny(_))
            && let Some(c) = self.denied.get(&("request", port))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        d
    }

    /// Where the address rules are enforced, for the startup log.
    pub fn describe(&self) -> String {
        let n = self.policies.policies.len();
        let r = self.index.residual_len();
        match self.xdp.get() {
            Some(x) => format!(
                "{n} AuthorizationPolicy(s); address rules dropped by XDP on {} and re-checked at accept; L7 rules in userspace ({r} rule(s) not indexed by host or port)",
                x.describe()
            ),
            None => format!(
                "{n} AuthorizationPolicy(s); no XDP guard: address rules enforced in userspace at accept (same meaning), L7 rules per request ({r} rule(s) not indexed by host or port)"
            ),
        }
    }

    /// `gateway_authz_denied_total` and, with XDP, the kernel counters.
    pub fn prometheus(&self, out: &mut String) {
        use crate::sys::prom::{Kind, Prom};
        let mut p = Prom::new(out);
        p.family(
            "gateway_authz_denied_total",
            Kind::Counter,
            "Connections (accept, flow) and requests refused by AuthorizationPolicy in userspace.",
        );
        for ((stage, port), c) in &self.denied {
            p.sample(
                "gateway_authz_denied_total",
                &[("stage", stage), ("port", port)],
                c.load(Ordering::Relaxed),
            );
        }
        if let Some(x) = self.xdp.get() {
            x.prometheus(out);
        }
    }

    /// The compiled rules, where they are enforced, and the counters: the data behind
    /// the admin `/xdp` endpoint and `gateway proxy-config`.
    pub fn rules_view(&self) -> serde_json::Value {
        let mut v = match self.xdp.get() {
            Some(x) => x.rules_view(),
            None => {
                let mut v = self.compiled.view();
                v["mode"] = "userspace".into();
                v
            }
        };
        v["policies"] = serde_json::to_value(&self.policies).unwrap_or_default();
        v["userspace_denied"] = self
            .denied
            .iter()
            .map(|((s, p), c)| {
                serde_json::json!({"stage": s, "port": p, "count": c.load(Ordering::Relaxed)})
            })
            .collect();
        v
    }
}

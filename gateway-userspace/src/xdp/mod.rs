//! The XDP ingress guard, userspace side: compiles the AuthorizationPolicies into
//! (port, source prefix) verdicts ([`compile`]), loads the `xdp_guard` program,
//! fills its maps, attaches it to each `--xdp-iface` (native mode, else generic with
//! the reason logged), rewrites the maps in place when the policy changes
//! ([`XdpGuard::update`], [`update`]), and reads its per-CPU counters.
use std::{collections::BTreeMap, sync::Mutex};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, LpmTrie, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use gateway_common::{
    FLOWS_MAP, PEERS_MAP, SPLICED_MAP, XDP_GUARD_PROG, XDP_MAX_PORTS, XDP_MAX_RULES,
    XDP_PORT_STATS_MAP, XDP_PORTS_MAP, XDP_RULE_STATS_MAP, XDP_V4_MAP, XDP_V6_MAP, XdpCounters,
};
use serde_json::json;

mod compile;
#[cfg(test)]
mod tests;
mod update;

pub use compile::{Compiled, RULE_DEFAULT_DENY, RULE_NONE, RULE_USERSPACE, action_name};
pub use update::UpdateStats;
use update::{GuardMaps, RuleKey, Stats, Tables, Zero};

use crate::sys::prom::{Kind, Prom};

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error(
        "this binary was built without the kernel programs (run `cargo xtask setup`, then rebuild)"
    )]
    NotBuilt,
    #[error("the policy does not fit the XDP maps: {0}")]
    Overflow(String),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("XDP program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("XDP counters: {0}")]
    Counters(std::io::Error),
    #[error("this enforcer already has an XDP guard")]
    AlreadyAttached,
    #[error("attaching XDP to {iface}: {err}")]
    Attach {
        iface: String,
        err: aya::programs::ProgramError,
    },
}

/// The maps and what they hold now, behind one lock: an update and a scrape never
/// interleave, so counters are always read with the slot numbering that wrote them.
struct State {
    maps: GuardMaps,
    stats: Stats,
    compiled: Compiled,
    /// Kernel counter index of each (rule, port, action) and each port of `compiled`
    /// (the compile's own slot numbers restart at 0 each time; these stay put).
    rules: BTreeMap<RuleKey, u32>,
    ports: BTreeMap<u16, u32>,
    /// `compiled` as written to the maps.
    tables: Tables,
}

/// The attached program and its maps; detached when dropped.
pub struct XdpGuard {
    /// (interface, "driver" | "skb").
    attached: Vec<(String, &'static str)>,
    state: Mutex<State>,
    /// Owns the program (detached when dropped); [`XdpGuard::test_run`] runs it.
    ebpf: Mutex<Ebpf>,
}

impl State {
    /// Makes the maps hold `compiled` (see [`update`] for the order and what a packet
    /// sees meanwhile). On error the maps hold the previous set again (restored when
    /// a write failed half-way) and `self` is unchanged.
    fn install(&mut self, compiled: Compiled) -> Result<UpdateStats, XdpError> {
        if let Some(why) = &compiled.overflow {
            return Err(XdpError::Overflow(why.clone()));
        }
        let rules = update::assign(&self.rules, compiled.slots.iter().cloned(), XDP_MAX_RULES)
            .map_err(XdpError::Overflow)?;
        let ports = update::assign(&self.ports, compiled.ports.keys().copied(), XDP_MAX_PORTS)
            .map_err(XdpError::Overflow)?;
        let tables = Tables::new(&compiled, &rules.by_key, &ports.by_key);
        let before = Zero {
            rules: rules.zero_before,
            ports: ports.zero_before,
        };
        let after = Zero {
            rules: rules.zero_after,
            ports: ports.zero_after,
        };
        match update::apply(
            &mut self.maps,
            &mut self.stats,
            &self.tables,
            &tables,
            &before,
            &after,
        ) {
            Ok(mut s) => {
                s.counters_kept = rules.kept + ports.kept;
                s.counters_new = rules.by_key.len() + ports.by_key.len() - s.counters_kept;
                self.compiled = compiled;
                self.rules = rules.by_key;
                self.ports = ports.by_key;
                self.tables = tables;
                Ok(s)
            }
            Err(e) => {
                if let Err(r) = update::restore(&mut self.maps, &self.tables, &tables) {
                    tracing::error!(
                        target: "gateway::authz",
                        "XDP guard: restoring the previous maps after a failed update ({e}) failed too: {r}"
                    );
                }
                Err(e)
            }
        }
    }

    /// Counters per slot of `compiled` and per port, summed over CPUs.
    fn counters(&self) -> (Vec<XdpCounters>, Vec<(u16, XdpCounters)>) {
        let sum = |map: &PerCpuArray<MapData, XdpCounters>, i: Option<&u32>| -> XdpCounters {
            let mut t = XdpCounters::default();
            if let Some(Ok(vals)) = i.map(|i| map.get(i, 0)) {
                for c in vals.iter() {
                    t.pass_packets += c.pass_packets;
                    t.pass_bytes += c.pass_bytes;
                    t.drop_packets += c.drop_packets;
                    t.drop_bytes += c.drop_bytes;
                }
            }
            t
        };
        let slots = self
            .compiled
            .slots
            .iter()
            .map(|k| sum(&self.stats.rules, self.rules.get(k)))
            .collect();
        let ports = self
            .compiled
            .ports
            .keys()
            .map(|p| (*p, sum(&self.stats.ports, self.ports.get(p))))
            .collect();
        (slots, ports)
    }
}

impl XdpGuard {
    /// Loads the program, fills the maps from `compiled`, then attaches it to every
    /// interface (maps first: the program never runs over half-filled maps).
    pub fn attach(ifaces: &[String], compiled: Compiled) -> Result<XdpGuard, XdpError> {
        let object = crate::kernel::splice::ebpf::EBPF_OBJECT;
        if object.is_empty() {
            return Err(XdpError::NotBuilt);
        }
        if let Some(why) = &compiled.overflow {
            return Err(XdpError::Overflow(why.clone()));
        }
        // This instance only runs the XDP program: shrink the splice's maps.
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(PEERS_MAP, 1)
            .map_max_entries(SPLICED_MAP, 1)
            .map_max_entries(FLOWS_MAP, 1)
            .load(object)?;
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(XdpError::MissingMap(name));
        let maps = GuardMaps {
            v4: LpmTrie::try_from(take(XDP_V4_MAP)?)?,
            v6: LpmTrie::try_from(take(XDP_V6_MAP)?)?,
            ports: HashMap::try_from(take(XDP_PORTS_MAP)?)?,
        };
        let stats = Stats {
            rules: PerCpuArray::try_from(take(XDP_RULE_STATS_MAP)?)?,
            ports: PerCpuArray::try_from(take(XDP_PORT_STATS_MAP)?)?,
        };
        let mut state = State {
            maps,
            stats,
            compiled: Compiled::default(),
            rules: BTreeMap::new(),
            ports: BTreeMap::new(),
            tables: Tables::default(),
        };
        state.install(compiled)?;
        let prog: &mut Xdp = ebpf
            .program_mut(XDP_GUARD_PROG)
            .ok_or(XdpError::MissingMap(XDP_GUARD_PROG))?
            .try_into()?;
        prog.load()?;
        let mut attached = vec![];
        for iface in ifaces {
            let mode = match prog.attach(iface, XdpMode::Driver) {
                Ok(_) => "driver",
                Err(e) => {
                    tracing::warn!(
                        iface = %iface,
                        "native (driver) XDP attach failed ({e}); falling back to generic (skb) mode"
                    );
                    prog.attach(iface, XdpMode::Skb)
                        .map_err(|err| XdpError::Attach {
                            iface: iface.clone(),
                            err,
                        })?;
                    "skb"
                }
            };
            attached.push((iface.clone(), mode));
        }
        Ok(XdpGuard {
            attached,
            state: Mutex::new(state),
            ebpf: Mutex::new(ebpf),
        })
    }

    /// Rewrites the maps in place for `compiled` while the program stays attached: no
    /// detach, no moment without verdicts (the order, and what a packet in flight
    /// sees, are in [`update`]'s module comment). Counters of the (rule, port, action)
    /// triples and ports both sets have carry on; new ones start at zero. An
    /// overflowing `compiled` is refused before anything is touched, and a failed
    /// write puts the previous set back: on `Err` the old verdicts still apply.
    pub fn update(&self, compiled: Compiled) -> Result<UpdateStats, XdpError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.install(compiled)
    }

    /// Runs the loaded program once on `frame` through `BPF_PROG_TEST_RUN`, outside any
    /// interface, and returns its action (`XDP_PASS`, `XDP_DROP`); the counters count it.
    /// `XdpGuard::attach(&[], ..)` loads a guard for this. The kernel refuses frames
    /// shorter than an Ethernet header or longer than a page minus XDP's head- and
    /// tailroom (about 3.5 KiB).
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, XdpError> {
        use aya::programs::{TestRun, TestRunOptions};
        let ebpf = self.ebpf.lock().unwrap_or_else(|e| e.into_inner());
        let prog: &Xdp = ebpf
            .program(XDP_GUARD_PROG)
            .ok_or(XdpError::MissingMap(XDP_GUARD_PROG))?
            .try_into()?;
        let run = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::new()
        })?;
        Ok(run.return_value)
    }

    /// `veth0 (driver), eth1 (skb)`.
    pub fn describe(&self) -> String {
        self.attached
            .iter()
            .map(|(i, m)| format!("{i} ({m})"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Counters per slot of the current [`Compiled`] (its `slots` order) and per
    /// port, summed over CPUs.
    pub fn counters(&self) -> (Vec<XdpCounters>, Vec<(u16, XdpCounters)>) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counters()
    }

    /// The counters of one (rule, port, action), summed over CPUs (None: no such slot
    /// in the current set).
    pub fn counter(&self, rule: &str, port: u16, action: u32) -> Option<XdpCounters> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let i = st
            .compiled
            .slots
            .iter()
            .position(|(r, p, a)| r == rule && *p == port && *a == action)?;
        st.counters().0.get(i).copied()
    }

    /// A copy of the set the maps hold now.
    pub fn compiled(&self) -> Compiled {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .compiled
            .clone()
    }

    /// `gateway_xdp_packets_total` / `gateway_xdp_bytes_total` by rule, port and
    /// action, and `gateway_xdp_port_*` per port.
    pub fn prometheus(&self, out: &mut String) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (slots, ports) = st.counters();
        let mut p = Prom::new(out);
        for (family, what, pick) in [
            (
                "gateway_xdp_packets_total",
                "Packets judged by the XDP guard",
                (|c: &XdpCounters| c.pass_packets) as fn(&XdpCounters) -> u64,
            ),
            (
                "gateway_xdp_bytes_total",
                "Bytes (whole frames) judged by the XDP guard",
                |c| c.pass_bytes,
            ),
        ] {
            p.family(
                family,
                Kind::Counter,
                &format!("{what}, by rule, port and action."),
            );
            for (i, (rule, port, action)) in st.compiled.slots.iter().enumerate() {
                let c = slots.get(i).copied().unwrap_or_default();
                let v = if *action == gateway_common::XDP_ACT_DROP {
                    // A drop slot only ever counts drops, a pass slot only passes.
                    if family.contains("packets") {
                        c.drop_packets
                    } else {
                        c.drop_bytes
                    }
                } else {
                    pick(&c)
                };
                p.sample(
                    family,
                    &[
                        ("rule", rule),
                        ("port", port),
                        ("action", &action_name(*action)),
                    ],
                    v,
                );
            }
        }
        type Pick = fn(&XdpCounters) -> (u64, u64);
        let per_port: [(&str, &str, Pick); 2] = [
            (
                "gateway_xdp_port_packets_total",
                "Packets judged by the XDP guard per port.",
                |c| (c.pass_packets, c.drop_packets),
            ),
            (
                "gateway_xdp_port_bytes_total",
                "Bytes judged by the XDP guard per port.",
                |c| (c.pass_bytes, c.drop_bytes),
            ),
        ];
        for (family, help, pick) in per_port {
            p.family(family, Kind::Counter, help);
            for (port, c) in &ports {
                let (pass, drop) = pick(c);
                p.sample(family, &[("port", port), ("action", &"pass")], pass);
                p.sample(family, &[("port", port), ("action", &"drop")], drop);
            }
        }
    }

    /// The compiled rules, interfaces and counters as JSON (admin `/xdp`).
    pub fn rules_view(&self) -> serde_json::Value {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (slots, ports) = st.counters();
        let mut v = st.compiled.view();
        v["mode"] = "xdp".into();
        v["interfaces"] = self
            .attached
            .iter()
            .map(|(i, m)| json!({"name": i, "mode": m}))
            .collect();
        v["counters"] = json!({
            "rules": st.compiled.slots.iter().zip(slots).map(|((r, p, a), c)| json!({
                "rule": r, "port": p, "action": action_name(*a),
                "pass_packets": c.pass_packets, "pass_bytes": c.pass_bytes,
                "drop_packets": c.drop_packets, "drop_bytes": c.drop_bytes,
            })).collect::<Vec<_>>(),
            "ports": ports.iter().map(|(p, c)| json!({
                "port": p,
                "pass_packets": c.pass_packets, "pass_bytes": c.pass_bytes,
                "drop_packets": c.drop_packets, "drop_bytes": c.drop_bytes,
            })).collect::<Vec<_>>(),
        });
        v
    }
}

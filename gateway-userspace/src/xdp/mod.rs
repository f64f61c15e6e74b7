//! The XDP ingress guard, userspace side: compiles the AuthorizationPolicies into
//! (port, source prefix) verdicts ([`compile`]), loads the `xdp_guard` program,
//! fills its maps, attaches it to each `--xdp-iface` (native mode, else generic with
//! the reason logged), and reads its per-CPU counters.
use std::{fmt::Write as _, net::IpAddr, sync::Mutex};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        HashMap, MapData, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{Xdp, XdpMode},
};
use gateway_common::{
    FLOWS_MAP, PEERS_MAP, SPLICED_MAP, XDP_GUARD_PROG, XDP_KEY_PORT_BITS, XDP_PORT_STATS_MAP,
    XDP_PORTS_MAP, XDP_RULE_STATS_MAP, XDP_V4_MAP, XDP_V6_MAP, XdpCounters, XdpKeyV4, XdpKeyV6,
    XdpPort, XdpVerdict,
};
use serde_json::json;

mod compile;
#[cfg(test)]
mod tests;

pub use compile::{Compiled, RULE_DEFAULT_DENY, RULE_NONE, RULE_USERSPACE, action_name, compile};

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
    #[error("attaching XDP to {iface}: {err}")]
    Attach {
        iface: String,
        err: aya::programs::ProgramError,
    },
}

struct Stats {
    rules: PerCpuArray<MapData, XdpCounters>,
    ports: PerCpuArray<MapData, XdpCounters>,
}

/// The guard's LPM tries (IPv4, IPv6) and port map.
type GuardMaps = (
    LpmTrie<MapData, XdpKeyV4, XdpVerdict>,
    LpmTrie<MapData, XdpKeyV6, XdpVerdict>,
    HashMap<MapData, u32, XdpPort>,
);

/// The attached program and its maps; detached when dropped.
pub struct XdpGuard {
    compiled: Compiled,
    /// (interface, "driver" | "skb").
    attached: Vec<(String, &'static str)>,
    stats: Mutex<Stats>,
    /// Kept for a future reload, which would rewrite them in place.
    _maps: GuardMaps,
    /// Owns the program (detached when dropped); [`XdpGuard::test_run`] runs it.
    ebpf: Mutex<Ebpf>,
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
        let mut v4: LpmTrie<MapData, XdpKeyV4, XdpVerdict> = LpmTrie::try_from(take(XDP_V4_MAP)?)?;
        let mut v6: LpmTrie<MapData, XdpKeyV6, XdpVerdict> = LpmTrie::try_from(take(XDP_V6_MAP)?)?;
        let mut ports: HashMap<MapData, u32, XdpPort> = HashMap::try_from(take(XDP_PORTS_MAP)?)?;
        let rules = PerCpuArray::try_from(take(XDP_RULE_STATS_MAP)?)?;
        let port_stats = PerCpuArray::try_from(take(XDP_PORT_STATS_MAP)?)?;
        for (port, c, v) in &compiled.entries {
            let port_be = port.to_be_bytes();
            let len = XDP_KEY_PORT_BITS + c.len as u32;
            match c.addr {
                IpAddr::V4(a) => v4.insert(
                    &Key::new(
                        len,
                        XdpKeyV4 {
                            port: port_be,
                            _pad: [0; 2],
                            addr: a.octets(),
                        },
                    ),
                    *v,
                    0,
                )?,
                IpAddr::V6(a) => v6.insert(
                    &Key::new(
                        len,
                        XdpKeyV6 {
                            port: port_be,
                            _pad: [0; 2],
                            addr: a.octets(),
                        },
                    ),
                    *v,
                    0,
                )?,
            }
        }
        for (port, (_, entry)) in &compiled.ports {
            ports.insert(*port as u32, *entry, 0)?;
        }
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
            compiled,
            attached,
            _maps: (v4, v6, ports),
            stats: Mutex::new(Stats {
                rules,
                ports: port_stats,
            }),
            ebpf: Mutex::new(ebpf),
        })
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

    /// Counters per (rule, port) slot and per port, summed over CPUs.
    pub fn counters(&self) -> (Vec<XdpCounters>, Vec<(u16, XdpCounters)>) {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let sum = |map: &PerCpuArray<MapData, XdpCounters>, i: u32| -> XdpCounters {
            let mut t = XdpCounters::default();
            if let Ok(vals) = map.get(&i, 0) {
                for c in vals.iter() {
                    t.pass_packets += c.pass_packets;
                    t.pass_bytes += c.pass_bytes;
                    t.drop_packets += c.drop_packets;
                    t.drop_bytes += c.drop_bytes;
                }
            }
            t
        };
        let slots = (0..self.compiled.slots.len() as u32)
            .map(|i| sum(&stats.rules, i))
            .collect();
        let ports = self
            .compiled
            .ports
            .iter()
            .map(|(p, (_, e))| (*p, sum(&stats.ports, e.slot)))
            .collect();
        (slots, ports)
    }

    /// `gateway_xdp_packets_total` / `gateway_xdp_bytes_total` by rule, port and
    /// action, and `gateway_xdp_port_*` per port.
    pub fn prometheus(&self, out: &mut String) {
        let (slots, ports) = self.counters();
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
            let _ = writeln!(
                out,
                "# HELP {family} {what}, by rule, port and action.\n# TYPE {family} counter"
            );
            for (i, (rule, port, action)) in self.compiled.slots.iter().enumerate() {
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
                let _ = writeln!(
                    out,
                    "{family}{{rule=\"{rule}\",port=\"{port}\",action=\"{}\"}} {v}",
                    action_name(*action)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP gateway_xdp_port_packets_total Packets judged by the XDP guard per port.\n# TYPE gateway_xdp_port_packets_total counter"
        );
        for (port, c) in &ports {
            let _ = writeln!(
                out,
                "gateway_xdp_port_packets_total{{port=\"{port}\",action=\"pass\"}} {}",
                c.pass_packets
            );
            let _ = writeln!(
                out,
                "gateway_xdp_port_packets_total{{port=\"{port}\",action=\"drop\"}} {}",
                c.drop_packets
            );
        }
        let _ = writeln!(
            out,
            "# HELP gateway_xdp_port_bytes_total Bytes judged by the XDP guard per port.\n# TYPE gateway_xdp_port_bytes_total counter"
        );
        for (port, c) in &ports {
            let _ = writeln!(
                out,
                "gateway_xdp_port_bytes_total{{port=\"{port}\",action=\"pass\"}} {}",
                c.pass_bytes
            );
            let _ = writeln!(
                out,
                "gateway_xdp_port_bytes_total{{port=\"{port}\",action=\"drop\"}} {}",
                c.drop_bytes
            );
        }
    }

    /// The compiled rules, interfaces and counters as JSON (admin `/xdp`).
    pub fn rules_view(&self) -> serde_json::Value {
        let (slots, ports) = self.counters();
        let mut v = self.compiled.view();
        v["mode"] = "xdp".into();
        v["interfaces"] = self
            .attached
            .iter()
            .map(|(i, m)| json!({"name": i, "mode": m}))
            .collect();
        v["counters"] = json!({
            "rules": self.compiled.slots.iter().zip(slots).map(|((r, p, a), c)| json!({
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

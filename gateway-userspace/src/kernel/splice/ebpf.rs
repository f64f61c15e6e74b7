//! The kernel splice: both sockets of a flow are handed to the sk_skb verdict program
//! (gateway-ebpf), which redirects every skb to the peer socket. Userspace never reads
//! payload while a flow runs in the kernel; the [`driver`](super::driver) only answers
//! the verdict's events (credit, pause, failure) and watches for FIN and RST.
//!
//! Bounded memory, no tick stalls (see DESIGN.md, "The L4 fast path"): a redirected skb
//! waits in the peer's psock backlog, charged to no socket, and the backlog re-arms
//! itself a whole jiffy later when the peer's send buffer is full (net/core/skmsg.c:
//! sk_psock_backlog, `schedule_delayed_work(.., 1)` on -EAGAIN). So each direction has
//! a budget: the verdict redirects only while the bytes it handed over minus the bytes
//! the peer socket has taken stay within it (`FlowCtl::limit`, moved on by the driver at
//! every `EV_CREDIT`), and the peer's send buffer is forced above the budget
//! (SO_SNDBUFFORCE) so the backlog's sends never meet a full buffer. Past the budget the
//! verdict keeps skbs on the receiving socket (SK_PASS), where they stay charged to its
//! receive buffer: TCP's window closes toward the sender, and the driver moves those
//! bytes itself until the peer has room again.
mod flow;
mod maps;

pub(crate) use flow::abort;
pub(crate) use maps::{Kernel, initial_ctl};

use std::{
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf, SockHash},
    programs::SkSkb,
};
use gateway_common::{
    CONFIG_FAULT_REDIRECT, CONFIG_LOG_REDIRECTS, CTRL_MAP, EVENTS_MAP, FLOWS_MAP, PEERS_MAP,
    SPLICE_CONFIG_MAP, SPLICE_STATS_MAP, SPLICED_MAP, STAT_EMPTY_SKBS, STAT_EVENTS_LOST,
    STAT_OVERLAP_BYTES, STAT_OVERLAP_SKBS, STAT_PASSED_BYTES, STAT_PASSED_SKBS,
    STAT_REDIRECT_FAILURES, STAT_REDIRECTED_BYTES, STAT_REDIRECTED_SKBS, STAT_SEQ_ERRORS,
    STAT_UNTRACKED_SKBS,
};
use tokio::{io::Interest, sync::mpsc};

use self::maps::{Maps, lock};
use super::{
    PathStats,
    driver::{self, NewFlow},
};

/// The kernel object built from gateway-ebpf by build.rs (empty when built without the
/// eBPF toolchain).
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway"));

/// Default per-direction budget: payload the kernel may have handed to a peer socket
/// that the peer has not yet sent and had acknowledged (psock backlog + send queue).
pub const DEFAULT_BUDGET: u64 = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    #[error(
        "this binary was built without the kernel programs (run `cargo xtask setup`, then rebuild)"
    )]
    NotBuilt,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("eBPF program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the kernel splice needs a tokio runtime")]
    NoRuntime,
    #[error("the kernel splice needs the kernel's BTF: {0}")]
    Btf(#[from] crate::kernel::btf::BtfError),
}

/// Global counters of the verdict program, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct KernelStats {
    pub redirected_skbs: u64,
    pub redirected_bytes: u64,
    pub redirect_failures: u64,
    pub empty_skbs: u64,
    pub untracked_skbs: u64,
    pub passed_skbs: u64,
    pub passed_bytes: u64,
    pub events_lost: u64,
    /// skbs that repeated bytes already handed on, trimmed (see FlowCounters::next_seq).
    pub overlap_skbs: u64,
    pub overlap_bytes: u64,
    /// skbs that did not fit the stream (each reset its flow).
    pub seq_errors: u64,
}

pub struct EbpfSplicer {
    kernel: Arc<Kernel>,
    driver: mpsc::UnboundedSender<NewFlow>,
    // Keeps the programs loaded and attached for the life of the splicer.
    _ebpf: Mutex<Ebpf>,
}

/// Why a flow could not be handed to the kernel (`gateway_splice_fallback_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// A socket had left ESTABLISHED (its peer's FIN arrived): only ESTABLISHED sockets
    /// may enter a sockhash.
    NotEstablished,
    /// A map was full (or the kernel refused the insert for another reason).
    MapInsert,
    /// Reading the sockets' state failed.
    SocketState,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::NotEstablished => "not_established",
            Fallback::MapInsert => "map_insert",
            Fallback::SocketState => "socket_state",
        }
    }
}

/// Bytes a flow moved before the kernel took it over (a live handover from userspace).
#[derive(Debug, Clone, Copy, Default)]
pub struct Prior {
    pub downstream_to_upstream: u64,
    pub upstream_to_downstream: u64,
}

impl EbpfSplicer {
    /// Loads the embedded object, attaches the verdict program to the SPLICED map and
    /// starts the driver task. Fails without privilege (CAP_BPF/CAP_NET_ADMIN), without
    /// BPF, outside a tokio runtime, or when the binary was built without the programs.
    pub fn load(
        budget: u64,
        idle: Option<Duration>,
        paths: Arc<PathStats>,
        closing: tokio_util::sync::CancellationToken,
    ) -> Result<Self, SpliceError> {
        if EBPF_OBJECT.is_empty() {
            return Err(SpliceError::NotBuilt);
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| SpliceError::NoRuntime)?;
        // Where the verdict finds an skb's TCP sequence number and its socket's
        // copied_seq (see gateway-ebpf, `sequence`).
        let btf = crate::kernel::btf::Btf::kernel()?;
        let cb = btf.member_offset("sk_buff", "cb")?;
        let sk = btf.member_offset("sk_buff", "sk")?;
        let copied = btf.member_offset("tcp_sock", "copied_seq")?;
        if btf.member_offset("tcp_skb_cb", "seq")? != 0
            || btf.member_offset("tcp_skb_cb", "end_seq")? != 4
        {
            return Err(SpliceError::Io(io::Error::other(
                "struct tcp_skb_cb does not start with seq, end_seq",
            )));
        }
        let mut ebpf = EbpfLoader::new()
            .override_global("SKB_CB_OFFSET", &cb, true)
            .override_global("SKB_SK_OFFSET", &sk, true)
            .override_global("TCP_COPIED_SEQ_OFFSET", &copied, true)
            .load(EBPF_OBJECT)?;
        start_kernel_log(&mut ebpf);
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(SpliceError::MissingMap(name))
        };
        let peers = SockHash::try_from(take(&mut ebpf, PEERS_MAP)?)?;
        let spliced: SockHash<MapData, u64> = SockHash::try_from(take(&mut ebpf, SPLICED_MAP)?)?;
        let flows = HashMap::try_from(take(&mut ebpf, FLOWS_MAP)?)?;
        let ctrl = HashMap::try_from(take(&mut ebpf, CTRL_MAP)?)?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, SPLICE_STATS_MAP)?)?;
        let config = Array::try_from(take(&mut ebpf, SPLICE_CONFIG_MAP)?)?;
        let events = RingBuf::try_from(take(&mut ebpf, EVENTS_MAP)?)?;
        let prog: &mut SkSkb = ebpf
            .program_mut("splice_verdict")
            .ok_or(SpliceError::MissingMap("splice_verdict program"))?
            .try_into()?;
        prog.load()?;
        prog.attach(spliced.fd())?;
        let kernel = Arc::new(Kernel {
            maps: Mutex::new(Maps {
                peers,
                spliced,
                flows,
                ctrl,
            }),
            stats,
            config: Mutex::new(config),
            budget,
            idle,
            closing,
            paths,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let _guard = handle.enter();
        let driver = driver::Driver::new(kernel.clone(), events)?;
        handle.spawn(driver.run(rx));
        Ok(EbpfSplicer {
            kernel,
            driver: tx,
            _ebpf: Mutex::new(ebpf),
        })
    }

    pub fn kernel_stats(&self) -> KernelStats {
        let sum = |i| self.kernel.stat(i);
        KernelStats {
            redirected_skbs: sum(STAT_REDIRECTED_SKBS),
            redirected_bytes: sum(STAT_REDIRECTED_BYTES),
            redirect_failures: sum(STAT_REDIRECT_FAILURES),
            empty_skbs: sum(STAT_EMPTY_SKBS),
            untracked_skbs: sum(STAT_UNTRACKED_SKBS),
            passed_skbs: sum(STAT_PASSED_SKBS),
            passed_bytes: sum(STAT_PASSED_BYTES),
            events_lost: sum(STAT_EVENTS_LOST),
            overlap_skbs: sum(STAT_OVERLAP_SKBS),
            overlap_bytes: sum(STAT_OVERLAP_BYTES),
            seq_errors: sum(STAT_SEQ_ERRORS),
        }
    }

    pub fn budget(&self) -> u64 {
        self.kernel.budget
    }

    fn set_switch(&self, slot: u32, on: bool) -> Result<(), SpliceError> {
        lock(&self.kernel.config).set(slot, u32::from(on), 0)?;
        Ok(())
    }

    fn switch(&self, slot: u32) -> Result<bool, SpliceError> {
        Ok(lock(&self.kernel.config).get(&slot, 0)? != 0)
    }

    /// Turns the verdict program's per-redirect aya-log record on or off.
    pub fn set_trace_redirects(&self, on: bool) -> Result<(), SpliceError> {
        self.set_switch(CONFIG_LOG_REDIRECTS, on)
    }

    /// Whether the per-redirect aya-log record is on.
    pub fn trace_redirects(&self) -> Result<bool, SpliceError> {
        self.switch(CONFIG_LOG_REDIRECTS)
    }

    /// Fault injection for the tests: while on, every redirect is refused by the kernel
    /// (the verdict asks for a key that is not in PEERS).
    pub fn set_fail_redirects(&self, on: bool) -> Result<(), SpliceError> {
        self.set_switch(CONFIG_FAULT_REDIRECT, on)
    }

    /// Entries now in the (PEERS, SPLICED, FLOWS) maps: all zero when no flow is open.
    pub fn map_entries(&self) -> (usize, usize, usize) {
        let m = lock(&self.kernel.maps);
        (
            m.peers.keys().count(),
            m.spliced.keys().count(),
            m.flows.keys().count(),
        )
    }

    /// Spliced flows open right now (in the kernel, or paused and moved by userspace).
    pub fn active_flows(&self) -> u64 {
        self.kernel.paths.kernel.active()
    }
}

/// Prints the kernel programs' aya-log records through this process's log, at their level.
fn start_kernel_log(ebpf: &mut Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("kernel log unavailable: {e}");
            return;
        }
    };
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("kernel log unavailable: no async runtime");
        return;
    };
    handle.spawn(async move {
        // SAFETY: the logger owns its ring-buffer fd, and the AsyncFd owns the logger, so
        // the fd stays open for exactly as long as it is registered.
        let fd =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, Interest::READABLE) };
        let mut fd = match fd {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!("kernel log unavailable: {e}");
                return;
            }
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

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
use std::{
    io,
    os::fd::AsRawFd,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf, SockHash},
    programs::SkSkb,
};
use gateway_common::{
    CONFIG_FAULT_REDIRECT, CONFIG_LOG_REDIRECTS, CTL_MODE_KERNEL, CTRL_MAP, EVENTS_MAP, FLOWS_MAP,
    FlowCounters, FlowCtl, PEERS_MAP, SPLICE_CONFIG_MAP, SPLICE_STATS_MAP, SPLICED_MAP,
    STAT_EMPTY_SKBS, STAT_EVENTS_LOST, STAT_OVERLAP_BYTES, STAT_OVERLAP_SKBS, STAT_PASSED_BYTES,
    STAT_PASSED_SKBS, STAT_REDIRECT_FAILURES, STAT_REDIRECTED_BYTES, STAT_REDIRECTED_SKBS,
    STAT_SEQ_ERRORS, STAT_UNTRACKED_SKBS,
};
use tokio::{
    io::Interest,
    net::TcpStream,
    sync::{mpsc, oneshot},
};

use super::{
    FlowReport, PathStats, Termination,
    driver::{self, NewFlow},
    sockopt,
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

pub(crate) struct Maps {
    peers: SockHash<MapData, u64>,
    spliced: SockHash<MapData, u64>,
    flows: HashMap<MapData, u64, FlowCounters>,
    ctrl: HashMap<MapData, u64, FlowCtl>,
}

/// What the driver and the flows' tasks share.
pub(crate) struct Kernel {
    maps: Mutex<Maps>,
    stats: PerCpuArray<MapData, u64>,
    config: Mutex<Array<MapData, u32>>,
    /// Per-direction budget (see the module comment).
    pub(crate) budget: u64,
    /// Close a flow in which no byte moved for this long.
    pub(crate) idle: Option<Duration>,
    /// Close every flow once cancelled (the drain deadline).
    pub(crate) closing: tokio_util::sync::CancellationToken,
    pub(crate) paths: Arc<PathStats>,
}

/// A poisoned lock only means another flow's task panicked while holding it; the maps
/// themselves are kernel objects and stay consistent, so carry on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Kernel {
    pub(crate) fn counters(&self, cookie: u64) -> FlowCounters {
        lock(&self.maps).flows.get(&cookie, 0).unwrap_or_default()
    }

    pub(crate) fn set_ctl(&self, cookie: u64, ctl: &FlowCtl) -> Result<(), SpliceError> {
        lock(&self.maps).ctrl.insert(cookie, *ctl, 0)?;
        Ok(())
    }

    /// SO_RCVBUFFORCE of a spliced socket (see `EbpfSplicer::arm`).
    pub(crate) fn rcvbuf(&self) -> usize {
        (self.budget / 16) as usize
    }

    /// The copy buffer of a paused direction: all its receiving socket may hold (the
    /// kernel doubles SO_RCVBUF, and counts skb overhead in it), so one peek takes it all.
    pub(crate) fn paused_copy_buf(&self) -> usize {
        2 * self.rcvbuf()
    }

    pub(crate) fn stat(&self, i: u32) -> u64 {
        self.stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// Removes a flow's sockets and state from every map and returns the two sockets'
    /// final counters. Removing from SPLICED first stops the verdict on the socket.
    pub(crate) fn disarm(&self, cookies: [u64; 2]) -> [FlowCounters; 2] {
        let mut m = lock(&self.maps);
        for k in cookies {
            let _ = m.spliced.remove(&k);
        }
        for k in cookies {
            let _ = m.peers.remove(&k);
            let _ = m.ctrl.remove(&k);
        }
        cookies.map(|k| {
            let v = m.flows.get(&k, 0).unwrap_or_default();
            let _ = m.flows.remove(&k);
            v
        })
    }
}

/// The first orders for a direction that starts in the kernel.
pub(crate) fn initial_ctl(budget: u64) -> FlowCtl {
    FlowCtl {
        limit: budget,
        notify_at: budget / 2,
        consumed: 0,
        epoch: 1,
        mode: CTL_MODE_KERNEL,
        _pad: 0,
    }
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

    /// Hands both sockets to the kernel, waits until both directions are finished, then
    /// closes them and reports what moved.
    pub async fn splice(&self, down: TcpStream, up: TcpStream) -> FlowReport {
        self.splice_from(down, up, Prior::default()).await
    }

    /// As [`splice`](Self::splice), for a flow whose first bytes userspace already moved:
    /// every byte read from either socket must have been written to the other, and no
    /// partly read skb may remain in either receive queue (the last read on each socket
    /// drained it), because once a socket enters the sockhash tcp_read_skb hands the
    /// verdict whole skbs, including any part userspace already read.
    pub async fn splice_from(&self, down: TcpStream, up: TcpStream, prior: Prior) -> FlowReport {
        self.splice_from_idle(down, up, prior, self.kernel.idle.into())
            .await
    }

    /// As [`splice_from`](Self::splice_from), with this flow's own limits (its idle
    /// timeout and `maxConnectionDuration` deadline; the driver's sweeps enforce them).
    pub(crate) async fn splice_from_idle(
        &self,
        down: TcpStream,
        up: TcpStream,
        prior: Prior,
        limits: super::FlowLimits,
    ) -> FlowReport {
        let paths = &self.kernel.paths;
        let fallback = |reason: Fallback| {
            paths.fallback(reason);
            tracing::debug!(
                reason = reason.as_str(),
                "splice: copying the flow in userspace"
            );
        };
        // Only ESTABLISHED sockets may enter a SOCKHASH. A client that already sent its
        // FIN (`printf ... | nc -N`) is copied in userspace instead: its flow is short.
        if !sockopt::is_established(&down) || !sockopt::is_established(&up) {
            fallback(Fallback::NotEstablished);
            return with_prior(
                super::copy::copy(down, up, limits, &self.kernel.closing).await,
                prior,
            );
        }
        let Ok(start) = driver::Start::pair(&down, &up) else {
            fallback(Fallback::SocketState);
            return with_prior(
                super::copy::copy(down, up, limits, &self.kernel.closing).await,
                prior,
            );
        };
        // Out of tokio's reactor: from here on only the driver's epoll set watches them.
        let (down, up) = match (down.into_std(), up.into_std()) {
            (Ok(d), Ok(u)) => (d, u),
            _ => {
                return error_report("taking the sockets from the reactor".into());
            }
        };
        let cookies = [start[0].cookie, start[1].cookie];
        let spliced = match self.arm(cookies, &down, &up) {
            Ok(s) => s,
            Err((e, reason)) => {
                self.kernel.disarm(cookies);
                tracing::debug!("splice: not handed to the kernel: {e}");
                fallback(reason);
                return match (TcpStream::from_std(down), TcpStream::from_std(up)) {
                    (Ok(d), Ok(u)) => with_prior(
                        super::copy::copy(d, u, limits, &self.kernel.closing).await,
                        prior,
                    ),
                    _ => error_report("re-registering the sockets".into()),
                };
            }
        };
        // Until the driver owns the flow, whatever unwinds here takes it out of the maps.
        let armed = Armed {
            kernel: &self.kernel,
            cookies,
        };
        if prior.downstream_to_upstream + prior.upstream_to_downstream > 0 {
            paths
                .offloads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let (done, report) = oneshot::channel();
        let flow = NewFlow {
            socks: [down, up],
            start,
            spliced,
            prior: [prior.downstream_to_upstream, prior.upstream_to_downstream],
            idle: limits.idle,
            deadline: limits.deadline.map(Into::into),
            closing: limits.closing.clone(),
            done,
        };
        if let Err(mpsc::error::SendError(flow)) = self.driver.send(flow) {
            drop(armed);
            for s in &flow.socks {
                abort(s);
            }
            return error_report("the splice driver is gone".into());
        }
        std::mem::forget(armed);
        report
            .await
            .unwrap_or_else(|_| error_report("the splice driver dropped the flow".into()))
    }

    /// The order is what makes the splice lossless:
    /// 1. both sockets become redirect targets (PEERS) — nothing changes for them yet;
    /// 2. their FLOWS counters and CTRL orders exist, and their send buffers are forced
    ///    above the budget (so the backlog's sends never find them full);
    /// 3. each enters SPLICED, which starts the verdict program on it: its peer is
    ///    already in PEERS, so no skb can find no peer;
    /// 4. bytes that arrived before step 3 sit in the receive queue, where no new
    ///    segment may come to trigger the verdict (a client waiting for a reply): the
    ///    SO_RCVLOWAT kick runs the verdict over them now, in order.
    ///
    /// Returns which sockets run the verdict. If the upstream can't enter SPLICED after
    /// the downstream did (it left ESTABLISHED in between: a server that greets and
    /// closes), the upstream's direction is moved by the driver in userspace — no
    /// verdict ever ran on it, so that is lossless. Any failure before the downstream's
    /// SPLICED insert leaves no verdict running: the caller undoes and copies instead.
    fn arm(
        &self,
        cookies: [u64; 2],
        down: &std::net::TcpStream,
        up: &std::net::TcpStream,
    ) -> Result<[bool; 2], (SpliceError, Fallback)> {
        let map_err = |e: aya::maps::MapError| {
            let reason = if sockopt::is_established(down) && sockopt::is_established(up) {
                Fallback::MapInsert
            } else {
                Fallback::NotEstablished
            };
            (SpliceError::from(e), reason)
        };
        // Send buffers: twice the budget (the kernel doubles this again), payload plus
        // skb overhead, so the backlog never finds them full. Receive buffers: a
        // sixteenth of the budget (doubled likewise, 4 MiB by default): it is what a
        // paused direction keeps on its receiving socket before TCP's window closes —
        // what userspace then copies — and autotuning would let it grow to tcp_rmem's
        // maximum. While the flow runs in the kernel the verdict empties the queue at
        // once, so this only has to cover the path's bandwidth-delay product.
        let budget = self.kernel.budget as usize;
        for s in [down, up] {
            sockopt::set_sndbuf_force(s, 2 * budget)
                .and_then(|()| sockopt::set_rcvbuf_force(s, self.kernel.rcvbuf()))
                .map_err(|e| (e.into(), Fallback::SocketState))?;
        }
        let ctl = initial_ctl(self.kernel.budget);
        let [cd, cu] = cookies;
        let mut m = lock(&self.kernel.maps);
        // Bytes arriving on `down` leave through `up`, and the other way round.
        m.peers.insert(cd, up.as_raw_fd(), 0).map_err(map_err)?;
        m.peers.insert(cu, down.as_raw_fd(), 0).map_err(map_err)?;
        for k in cookies {
            m.flows
                .insert(k, FlowCounters::default(), 0)
                .map_err(map_err)?;
            m.ctrl.insert(k, ctl, 0).map_err(map_err)?;
        }
        m.spliced.insert(cd, down.as_raw_fd(), 0).map_err(map_err)?;
        let up_spliced = match m.spliced.insert(cu, up.as_raw_fd(), 0) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(
                    "splice: upstream can't enter SPLICED ({e}); its direction is copied in userspace"
                );
                self.kernel.paths.fallback(if sockopt::is_established(up) {
                    Fallback::MapInsert
                } else {
                    Fallback::NotEstablished
                });
                false
            }
        };
        drop(m);
        // A failed kick only delays those bytes until the next segment; say so.
        if let Err(e) = sockopt::kick_receive_queue(down) {
            tracing::warn!("splice: SO_RCVLOWAT kick failed: {e}");
        }
        if up_spliced && let Err(e) = sockopt::kick_receive_queue(up) {
            tracing::warn!("splice: SO_RCVLOWAT kick failed: {e}");
        }
        Ok([true, up_spliced])
    }
}

/// An armed flow not yet handed to the driver: dropping it takes the flow's sockets and
/// state out of the maps (a panic cannot leave entries behind).
struct Armed<'a> {
    kernel: &'a Kernel,
    cookies: [u64; 2],
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.kernel.disarm(self.cookies);
    }
}

fn with_prior(mut r: FlowReport, prior: Prior) -> FlowReport {
    r.downstream_to_upstream += prior.downstream_to_upstream;
    r.upstream_to_downstream += prior.upstream_to_downstream;
    r.userspace_bytes += prior.downstream_to_upstream + prior.upstream_to_downstream;
    r
}

fn error_report(msg: String) -> FlowReport {
    FlowReport {
        path: super::Path::Kernel,
        termination: Termination::Error(msg),
        ..Default::default()
    }
}

/// Resets `sock` when it is closed: SO_LINGER 0 makes the close send RST.
pub(crate) fn abort(sock: &impl std::os::fd::AsFd) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
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

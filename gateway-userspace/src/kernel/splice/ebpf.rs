//! The kernel splice: both sockets of a flow are handed to the sk_skb verdict program
//! (gateway-ebpf), which redirects every skb to the peer socket. Userspace never reads
//! payload; it only watches each socket for FIN (passed on as a half-close once every
//! byte before it was forwarded) and RST (passed on as a reset).
use std::{
    io,
    os::fd::AsRawFd,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, SockHash},
    programs::SkSkb,
};
use gateway_common::{
    FLOWS_MAP, FlowCounters, PEERS_MAP, SPLICE_STATS_MAP, SPLICED_MAP, STAT_EMPTY_SKBS,
    STAT_REDIRECT_FAILURES, STAT_REDIRECTED_BYTES, STAT_REDIRECTED_SKBS, STAT_UNTRACKED_SKBS,
};
use tokio::{io::Interest, net::TcpStream};

use super::{FlowReport, Termination, sockopt};

/// The kernel object built from gateway-ebpf by build.rs (empty when built without the
/// eBPF toolchain).
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway"));

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
}

/// Global counters of the verdict program, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct KernelStats {
    pub redirected_skbs: u64,
    pub redirected_bytes: u64,
    pub redirect_failures: u64,
    pub empty_skbs: u64,
    pub untracked_skbs: u64,
}

struct Maps {
    peers: SockHash<MapData, u64>,
    spliced: SockHash<MapData, u64>,
    flows: PerCpuHashMap<MapData, u64, FlowCounters>,
}

pub struct EbpfSplicer {
    maps: Mutex<Maps>,
    stats: PerCpuArray<MapData, u64>,
    nr_cpus: usize,
    active: AtomicU64,
    // Keeps the programs loaded and attached for the life of the splicer.
    _ebpf: Mutex<Ebpf>,
}

impl EbpfSplicer {
    /// Loads the embedded object and attaches the verdict program to the SPLICED map.
    /// Fails without privilege (CAP_BPF/CAP_NET_ADMIN), without BPF, or when the binary
    /// was built without the kernel programs.
    pub fn load() -> Result<Self, SpliceError> {
        if EBPF_OBJECT.is_empty() {
            return Err(SpliceError::NotBuilt);
        }
        let mut ebpf = Ebpf::load(EBPF_OBJECT)?;
        start_kernel_log(&mut ebpf);
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(SpliceError::MissingMap(name))
        };
        let peers = SockHash::try_from(take(&mut ebpf, PEERS_MAP)?)?;
        let spliced: SockHash<MapData, u64> = SockHash::try_from(take(&mut ebpf, SPLICED_MAP)?)?;
        let flows = PerCpuHashMap::try_from(take(&mut ebpf, FLOWS_MAP)?)?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, SPLICE_STATS_MAP)?)?;
        let prog: &mut SkSkb = ebpf
            .program_mut("splice_verdict")
            .ok_or(SpliceError::MissingMap("splice_verdict program"))?
            .try_into()?;
        prog.load()?;
        prog.attach(spliced.fd())?;
        let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        Ok(EbpfSplicer {
            maps: Mutex::new(Maps {
                peers,
                spliced,
                flows,
            }),
            stats,
            nr_cpus,
            active: AtomicU64::new(0),
            _ebpf: Mutex::new(ebpf),
        })
    }

    pub fn kernel_stats(&self) -> KernelStats {
        let sum = |i: u32| -> u64 { self.stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0) };
        KernelStats {
            redirected_skbs: sum(STAT_REDIRECTED_SKBS),
            redirected_bytes: sum(STAT_REDIRECTED_BYTES),
            redirect_failures: sum(STAT_REDIRECT_FAILURES),
            empty_skbs: sum(STAT_EMPTY_SKBS),
            untracked_skbs: sum(STAT_UNTRACKED_SKBS),
        }
    }

    /// Turns the verdict program's per-redirect aya-log record on or off (telemetry:
    /// gateway_common::LOG_CONFIG_MAP).
    pub fn set_trace_redirects(&self, on: bool) -> Result<(), SpliceError> {
        let mut ebpf = self._ebpf.lock().expect("ebpf lock");
        let map = ebpf
            .map_mut(gateway_common::LOG_CONFIG_MAP)
            .ok_or(SpliceError::MissingMap(gateway_common::LOG_CONFIG_MAP))?;
        let mut arr: aya::maps::Array<_, u32> = aya::maps::Array::try_from(map)?;
        arr.set(gateway_common::LOG_CONFIG_REDIRECTS, u32::from(on), 0)?;
        Ok(())
    }

    /// Whether the per-redirect aya-log record is on.
    pub fn trace_redirects(&self) -> Result<bool, SpliceError> {
        let ebpf = self._ebpf.lock().expect("ebpf lock");
        let map = ebpf
            .map(gateway_common::LOG_CONFIG_MAP)
            .ok_or(SpliceError::MissingMap(gateway_common::LOG_CONFIG_MAP))?;
        let arr: aya::maps::Array<_, u32> = aya::maps::Array::try_from(map)?;
        Ok(arr.get(&gateway_common::LOG_CONFIG_REDIRECTS, 0)? != 0)
    }

    /// Entries now in the (PEERS, SPLICED, FLOWS) maps: all zero when no flow is open.
    pub fn map_entries(&self) -> (usize, usize, usize) {
        let m = self.maps.lock().expect("maps lock");
        (
            m.peers.keys().count(),
            m.spliced.keys().count(),
            m.flows.keys().count(),
        )
    }

    /// Spliced flows open right now.
    pub fn active_flows(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Hands both sockets to the kernel, waits until both directions are finished, then
    /// closes them and reports what the kernel counted.
    pub async fn splice(&self, down: TcpStream, up: TcpStream) -> FlowReport {
        // Only ESTABLISHED sockets may enter a SOCKHASH. A client that already sent its
        // FIN (`printf ... | nc -N`) is copied in userspace instead: its flow is short.
        if !sockopt::is_established(&down) || !sockopt::is_established(&up) {
            tracing::debug!(
                down = sockopt::is_established(&down),
                up = sockopt::is_established(&up),
                "splice: a socket is no longer ESTABLISHED; copying the flow in userspace"
            );
            return super::copy::copy(down, up).await;
        }
        let flow = match Flow::new(&down, &up) {
            Ok(f) => f,
            Err(e) => return error_report(format!("reading socket state: {e}")),
        };
        if let Err((e, verdict_started)) = self.arm(&flow, &down, &up) {
            self.disarm(&flow);
            if !verdict_started {
                // A socket left ESTABLISHED between the check and the insert (its peer's
                // FIN arrived: a server that greets and closes). No byte went through the
                // kernel yet, so the userspace copy takes the whole flow.
                tracing::debug!("splice: falling back to a userspace copy: {e}");
                return super::copy::copy(down, up).await;
            }
            // One socket's verdict already ran: bytes may sit in the other's psock, which
            // leaving the maps discards. The flow can't continue intact: reset it.
            abort(&down);
            abort(&up);
            tracing::warn!("splice: handing the flow to the kernel failed: {e}");
            return error_report(format!("sockhash insert: {e}"));
        }
        self.active.fetch_add(1, Ordering::Relaxed);
        let termination = self.watch(&flow, &down, &up).await;
        let (d2u, u2d) = self.disarm(&flow);
        self.active.fetch_sub(1, Ordering::Relaxed);
        drop((down, up));
        FlowReport {
            downstream_to_upstream: d2u.bytes,
            upstream_to_downstream: u2d.bytes,
            userspace_bytes: 0,
            path: super::Path::Kernel,
            termination,
        }
    }

    /// The order is what makes the splice lossless:
    /// 1. both sockets become redirect targets (PEERS) — nothing changes for them yet;
    /// 2. their FLOWS counters exist;
    /// 3. each enters SPLICED, which starts the verdict program on it: its peer is
    ///    already in PEERS, so no skb can find no peer;
    /// 4. bytes that arrived before step 3 sit in the receive queue, where no new
    ///    segment may come to trigger the verdict (a client waiting for a reply): the
    ///    SO_RCVLOWAT kick runs the verdict over them now, in order.
    ///
    /// On failure, says whether a verdict program had started on either socket.
    fn arm(
        &self,
        flow: &Flow,
        down: &TcpStream,
        up: &TcpStream,
    ) -> Result<(), (SpliceError, bool)> {
        let before = |e: SpliceError| (e, false);
        let zero = || PerCpuValues::try_from(vec![FlowCounters::default(); self.nr_cpus]);
        let (cd, cu) = (flow.down_cookie, flow.up_cookie);
        {
            let mut m = self.maps.lock().expect("maps lock");
            // Bytes arriving on `down` leave through `up`, and the other way round.
            m.peers
                .insert(cd, up.as_raw_fd(), 0)
                .map_err(|e| before(e.into()))?;
            m.peers
                .insert(cu, down.as_raw_fd(), 0)
                .map_err(|e| before(e.into()))?;
            m.flows
                .insert(cd, zero().map_err(|e| before(e.into()))?, 0)
                .map_err(|e| before(e.into()))?;
            m.flows
                .insert(cu, zero().map_err(|e| before(e.into()))?, 0)
                .map_err(|e| before(e.into()))?;
            m.spliced
                .insert(cd, down.as_raw_fd(), 0)
                .map_err(|e| before(e.into()))?;
            m.spliced
                .insert(cu, up.as_raw_fd(), 0)
                .map_err(|e| (e.into(), true))?;
        }
        sockopt::kick_receive_queue(down).map_err(|e| (e.into(), true))?;
        sockopt::kick_receive_queue(up).map_err(|e| (e.into(), true))?;
        Ok(())
    }

    /// Reads and removes the flow's counters and map entries. The kernel also drops a
    /// socket from both SOCKHASHes when it closes; removing here keeps the maps exact even
    /// while a socket lingers.
    fn disarm(&self, flow: &Flow) -> (FlowCounters, FlowCounters) {
        let mut m = self.maps.lock().expect("maps lock");
        let mut take = |k: u64| {
            let v = m.flows.get(&k, 0).map(|v| sum(&v));
            let _ = m.flows.remove(&k);
            v.unwrap_or_default()
        };
        let (d, u) = (take(flow.down_cookie), take(flow.up_cookie));
        for k in [flow.down_cookie, flow.up_cookie] {
            let _ = m.spliced.remove(&k);
            let _ = m.peers.remove(&k);
        }
        (d, u)
    }

    /// Watches both sockets until each side has sent FIN (passed on as shutdown(SHUT_WR)
    /// of the peer) or either side reset (passed on as a reset of the peer). The verdict
    /// program never sees a FIN as data, so this is the only way a half-close crosses.
    async fn watch(&self, flow: &Flow, down: &TcpStream, up: &TcpStream) -> Termination {
        let (mut down_fin, mut up_fin) = (false, false);
        loop {
            if down_fin && up_fin {
                return Termination::Closed;
            }
            // After a side's FIN only an error (RST) on it still matters.
            let interest = |fin: bool| {
                if fin {
                    Interest::ERROR
                } else {
                    Interest::READABLE
                }
            };
            let (side, ready) = tokio::select! {
                r = down.ready(interest(down_fin)) => (Side::Down, r),
                r = up.ready(interest(up_fin)) => (Side::Up, r),
            };
            let (this, peer) = match side {
                Side::Down => (down, up),
                Side::Up => (up, down),
            };
            let ready = match ready {
                Ok(r) => r,
                Err(e) => return Termination::Error(format!("poll: {e}")),
            };
            let err = this.take_error();
            if matches!(err, Ok(Some(_))) || ready.is_error() {
                tracing::debug!(
                    side = side as u8,
                    ?err,
                    ?ready,
                    down_fin,
                    up_fin,
                    "splice: reset"
                );
                abort(peer);
                return match side {
                    Side::Down => Termination::DownstreamReset,
                    Side::Up => Termination::UpstreamReset,
                };
            }
            if ready.is_read_closed() {
                let fin = match side {
                    Side::Down => &mut down_fin,
                    Side::Up => &mut up_fin,
                };
                if !*fin {
                    *fin = true;
                    let (this0, peer0) = match side {
                        Side::Down => (flow.down0, flow.up0),
                        Side::Up => (flow.up0, flow.down0),
                    };
                    self.wait_forwarded(this, this0, peer, peer0).await;
                    let _ = socket2::SockRef::from(peer).shutdown(std::net::Shutdown::Write);
                }
            } else {
                // A wake-up with nothing for us (the verdict consumed the data): clear
                // the cached readiness so the next ready() waits for a new event.
                let _ = this.try_io(Interest::READABLE, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
            }
        }
    }

    /// After `from`'s FIN: waits until every byte that arrived on `from` was written into
    /// `to` (the psock backlog is invisible to `to`'s send queue until it is transmitted),
    /// so the FIN passed on can't overtake data. Gives up after 30 s without progress (a
    /// peer that stopped reading).
    ///
    /// Counted from TCP's own sequence space, relative to where each socket stood when
    /// the splice was armed: what must go through the splice is everything `from`
    /// received since, plus what was queued but unread then, less the FIN's one sequence
    /// number; what went through is everything written into `to` since. (FIONREAD can't
    /// tell once a socket is in a sockmap: it reports the psock's queue, not TCP's. And
    /// tcpi_bytes_acked counts the SYN of an active open, hence the baselines.)
    async fn wait_forwarded(&self, from: &TcpStream, from0: Start, to: &TcpStream, to0: Start) {
        let mut last = 0;
        let mut stalled = Duration::ZERO;
        let mut nap = Duration::from_micros(100);
        loop {
            let (Ok(received), Ok(written)) =
                (sockopt::bytes_received(from), sockopt::bytes_written(to))
            else {
                return;
            };
            // Sequence space received on `from` that was not consumed by userspace before
            // the splice: the spliced bytes plus the FIN.
            let owed = received.saturating_sub(from0.consumed);
            let sent = written.saturating_sub(to0.written);
            if sent + 1 >= owed {
                tracing::debug!(owed, sent, "splice: forwarded");
                return;
            }
            if written != last {
                last = written;
                stalled = Duration::ZERO;
            } else if stalled > Duration::from_secs(30) {
                tracing::warn!(
                    unwritten = owed - 1 - sent,
                    "splice: bytes still unforwarded after 30 s without progress; passing the FIN on"
                );
                return;
            }
            tokio::time::sleep(nap).await;
            stalled += nap;
            nap = (nap * 2).min(Duration::from_millis(20));
        }
    }
}

/// The two sockets of a flow as the kernel names them, and where each stood when the
/// splice was armed.
struct Flow {
    down_cookie: u64,
    up_cookie: u64,
    down0: Start,
    up0: Start,
}

/// A socket's TCP counters just before it entered the splice.
#[derive(Clone, Copy)]
struct Start {
    /// Sequence space received and already read by userspace (the ClientHello).
    consumed: u64,
    /// What tcpi_bytes_acked + SIOCOUTQ said (includes an active open's SYN and what
    /// userspace wrote: the ClientHello, upstream).
    written: u64,
}

impl Start {
    fn of(sock: &TcpStream) -> io::Result<Start> {
        Ok(Start {
            consumed: sockopt::bytes_received(sock)? - sockopt::inq(sock)?,
            written: sockopt::bytes_written(sock)?,
        })
    }
}

impl Flow {
    /// Must run before the sockets enter a sockmap (FIONREAD is TCP's only until then).
    fn new(down: &TcpStream, up: &TcpStream) -> io::Result<Flow> {
        Ok(Flow {
            down_cookie: sockopt::cookie(down)?,
            up_cookie: sockopt::cookie(up)?,
            down0: Start::of(down)?,
            up0: Start::of(up)?,
        })
    }
}

fn sum(v: &PerCpuValues<FlowCounters>) -> FlowCounters {
    v.iter().fold(FlowCounters::default(), |a, c| FlowCounters {
        bytes: a.bytes + c.bytes,
        skbs: a.skbs + c.skbs,
    })
}

fn error_report(msg: String) -> FlowReport {
    FlowReport {
        path: super::Path::Kernel,
        termination: Termination::Error(msg),
        ..Default::default()
    }
}

/// Which side a watched event came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Down,
    Up,
}

/// Resets `sock`: SO_LINGER 0 makes the close that follows send RST.
fn abort(sock: &TcpStream) {
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

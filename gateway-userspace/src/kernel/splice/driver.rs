//! The kernel splice's userspace half: one task for every flow the kernel carries.
//!
//! A flow in the kernel costs userspace nothing while bytes move: its sockets are out of
//! tokio's reactor and in a private epoll set with EPOLLRDHUP interest only
//! ([`super::epoll`]), and the verdict program speaks only when it needs something, over
//! the SPLICE_EVENTS ring buffer:
//! - `EV_CREDIT`: the direction redirected half its budget; look at the peer's queue and
//!   move `limit` on (or don't, when the peer is slow: the next skbs then pause);
//! - `EV_PAUSED`: the verdict kept an skb on the receiving socket. Once the peer's psock
//!   backlog has drained (everything redirected was written into the peer), this task
//!   reads the kept bytes (recv on a sockmap socket reads the psock's queue) and writes
//!   them to the peer itself, with the usual nonblocking backpressure; when it has caught
//!   up and the peer has room, it hands the direction back to the verdict. The verdict
//!   resumes redirecting only once `passed == consumed`, so nothing it redirects can
//!   overtake a byte userspace still holds;
//! - `EV_REDIRECT_FAILED`, `EV_SEQ_ERROR` (an skb the verdict could not place in the
//!   stream): reset the flow both ways.
//!
//! FIN: the kernel does not propagate it. When a socket reports RDHUP, the direction is
//! finished once every payload byte it received before the FIN has been written into the
//! peer (TCP's own counters, [`Start`]); then the peer's write side is shut. This waits
//! as long as the reader takes — there is no give-up that would turn a stalled reader's
//! stream into a clean but truncated one. RST: the other side is reset at once.
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    io,
    net::{Shutdown, TcpStream},
    os::fd::AsRawFd,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use gateway_common::{
    CTL_MODE_KERNEL, EV_CREDIT, EV_PAUSED, EV_REDIRECT_FAILED, EV_SEQ_ERROR, FlowCtl, SpliceEvent,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::{
    FlowReport, Path, Termination,
    ebpf::{Kernel, SpliceError, abort, initial_ctl},
    epoll::{self, Epoll, Timer},
    sockopt,
};

const DOWN: usize = 0;
const UP: usize = 1;
/// Userspace's copy buffer for a non-spliced direction (allocated only while it copies).
const COPY_BUF: usize = 256 * 1024;
/// First and longest wait between two looks at TCP's counters (FIN pending, backlog
/// draining).
const POLL_MIN: Duration = Duration::from_micros(50);
const POLL_MAX: Duration = Duration::from_millis(50);
const REDIRECT_FAILED: &str = "kernel redirect failed; flow reset both ways";
const SEQ_ERROR: &str = "kernel stream out of sequence; flow reset both ways";
/// Events kept for flows not handed over yet, at most.
const EARLY_MAX: usize = 65_536;
/// How often the driver checks whether the verdict lost events (ring buffer full).
const LOST_CHECK: Duration = Duration::from_millis(250);

/// Where a socket stood just before it entered the splice.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Start {
    pub(crate) cookie: u64,
    /// Sequence space received and already read by userspace (ClientHello, handover).
    consumed: u64,
    /// What tcpi_bytes_acked + SIOCOUTQ said (includes an active open's SYN and what
    /// userspace wrote before the handover).
    written: u64,
}

impl Start {
    /// Must run before the sockets enter a sockmap: FIONREAD is TCP's only until then.
    ///
    /// Each figure comes from two reads (TCP_INFO and an ioctl) that a segment or an ACK
    /// can fall between. Nobody reads or writes the sockets meanwhile, so the ioctl's
    /// value moves only when one does: it is read before and after, and the pair is kept
    /// only once it did not move. (An ACK between `acked` and SIOCOUTQ would make the
    /// baseline too low, and the FIN later wait for fewer bytes than it must.)
    pub(crate) fn pair(down: &impl AsRawFd, up: &impl AsRawFd) -> io::Result<[Start; 2]> {
        fn stable(
            read: impl Fn() -> io::Result<u64>,
            around: impl Fn() -> io::Result<u64>,
        ) -> io::Result<(u64, u64)> {
            for _ in 0..1000 {
                let before = around()?;
                let v = read()?;
                if around()? == before {
                    return Ok((v, before));
                }
            }
            Err(io::Error::other("TCP counters kept moving"))
        }
        let of = |s: &dyn AsRawFd| -> io::Result<Start> {
            let fd = SockFd(s.as_raw_fd());
            let (received, inq) = stable(|| sockopt::bytes_received(&fd), || sockopt::inq(&fd))?;
            let (acked, outq) = stable(|| sockopt::bytes_acked(&fd), || sockopt::outq(&fd))?;
            Ok(Start {
                cookie: sockopt::cookie(&fd)?,
                consumed: received.saturating_sub(inq),
                written: acked + outq,
            })
        };
        Ok([of(down)?, of(up)?])
    }
}

/// A borrowed raw fd, for the sockopt helpers.
struct SockFd(std::os::fd::RawFd);
impl AsRawFd for SockFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// A flow the caller has armed: both sockets are in PEERS, FLOWS and CTRL, and
/// `spliced[i]` says whether socket i runs the verdict (is in SPLICED).
pub(crate) struct NewFlow {
    pub(crate) socks: [TcpStream; 2],
    pub(crate) start: [Start; 2],
    pub(crate) spliced: [bool; 2],
    /// Bytes moved per direction before the kernel took over.
    pub(crate) prior: [u64; 2],
    /// Close the flow after this long without a byte (None: never).
    pub(crate) idle: Option<Duration>,
    /// Close the flow at this instant (`maxConnectionDuration`; None: never).
    pub(crate) deadline: Option<Instant>,
    /// Close the flow once cancelled (its listener's drain deadline; None: never).
    pub(crate) closing: Option<tokio_util::sync::CancellationToken>,
    pub(crate) done: oneshot::Sender<FlowReport>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// The verdict redirects.
    Kernel,
    /// Paused: waiting for the peer's psock backlog to drain before userspace writes.
    Draining,
    /// Userspace moves the bytes (kept by the verdict, or the socket is not spliced).
    Copying,
    /// FIN passed on.
    Done,
}

struct CopyBuf {
    data: Box<[u8]>,
    /// `data[start..end]` is still to be written to the peer.
    start: usize,
    end: usize,
    /// Bytes at the front of `data` that were only peeked (spliced socket): written
    /// and announced before they are consumed.
    unconsumed: usize,
}

/// One direction: bytes received on socket `d`, leaving through socket `1 - d`.
struct Dir {
    spliced: bool,
    phase: Phase,
    /// RDHUP seen on the receiving socket.
    fin: bool,
    /// Bytes userspace wrote to the peer for this direction.
    copied: u64,
    ctl: FlowCtl,
    buf: Option<CopyBuf>,
    /// The copier waits for the peer to become writable.
    want_out: bool,
    /// The copier waits for the receiving socket to become readable.
    want_in: bool,
    /// Next look at TCP's counters, and the wait after that.
    poll: Option<(Instant, Duration)>,
    /// The poll instant already in the driver's timer heap.
    queued: Option<Instant>,
    /// The copier's last read emptied the receiving socket's queue.
    drained: bool,
    /// Redirected bytes known to be written into the peer (the backlog was empty after
    /// them): kept bytes may be written after these, never before.
    written_redirects: u64,
    /// The peer's send buffer is the small one (see `set_peer_sndbuf`).
    shrunk: bool,
    backoff: Duration,
}

impl Dir {
    /// A spliced direction that userspace is moving for now.
    fn paused(&self) -> bool {
        self.spliced && matches!(self.phase, Phase::Draining | Phase::Copying)
    }

    fn new(spliced: bool, budget: u64) -> Dir {
        Dir {
            spliced,
            phase: if spliced {
                Phase::Kernel
            } else {
                Phase::Copying
            },
            fin: false,
            copied: 0,
            ctl: initial_ctl(budget),
            buf: None,
            want_out: false,
            want_in: !spliced,
            poll: None,
            queued: None,
            drained: false,
            written_redirects: 0,
            shrunk: false,
            backoff: POLL_MIN,
        }
    }
}

struct Flow {
    generation: u32,
    socks: [TcpStream; 2],
    start: [Start; 2],
    dirs: [Dir; 2],
    /// Registered epoll interest per socket.
    interest: [u32; 2],
    prior: [u64; 2],
    pauses: u32,
    done: Option<oneshot::Sender<FlowReport>>,
    /// The flow's counters at the last idle sweep, and when they last changed.
    activity: u64,
    active_at: Instant,
    /// This flow's idle timeout (`--tcp-idle-timeout` or its cluster's).
    idle: Option<Duration>,
    /// When this flow's `maxConnectionDuration` runs out.
    deadline: Option<Instant>,
    /// Its listener's drain deadline (`FlowLimits::closing`), checked every tick.
    closing: Option<tokio_util::sync::CancellationToken>,
}

/// How a flow ends early.
enum End {
    /// Socket `side` was reset (or failed): reset the other one.
    ResetBy(usize),
    /// A local failure: reset both.
    Error(String),
    /// No byte moved for the idle timeout (or the drain deadline passed: `why`): a FIN
    /// each way, or (bytes still pending) a reset each way.
    Idle { pending: bool, why: Termination },
}

pub(crate) struct Driver {
    kernel: Arc<Kernel>,
    epoll: AsyncFd<Epoll>,
    ring: AsyncFd<RingBuf<MapData>>,
    timer: AsyncFd<Timer>,
    /// The deadline the timerfd is armed for.
    armed: Option<Instant>,
    flows: Vec<Option<Flow>>,
    free: Vec<usize>,
    next_generation: u32,
    by_cookie: HashMap<u64, (usize, usize)>,
    timers: BinaryHeap<Reverse<(Instant, usize, u32, usize)>>,
    events_lost: u64,
    /// Events for cookies no flow has yet (see `on_event`).
    early: Vec<(Instant, SpliceEvent)>,
    /// When the next idle-timeout sweep is due.
    next_sweep: Instant,
    /// The earliest flow deadline (`maxConnectionDuration`), if any flow has one.
    next_deadline: Option<Instant>,
}

/// How often flows with idle timeout `idle` are checked: a quarter of it, from the
/// driver's tick (250 ms, which runs the sweep) to 60 s. A flow is closed between its
/// timeout and about two paces later (its last activity is seen at the next sweep;
/// a cluster's `idleTimeout: 1s`: 1.1 to 1.75 s measured).
fn sweep_pace(idle: Duration) -> Duration {
    (idle / 4).clamp(LOST_CHECK, Duration::from_secs(60))
}

fn token(slot: usize, generation: u32, side: usize) -> u64 {
    (u64::from(generation) << 32) | ((slot as u64) << 1) | side as u64
}

fn untoken(t: u64) -> (usize, u32, usize) {
    (
        ((t & 0xffff_ffff) >> 1) as usize,
        (t >> 32) as u32,
        (t & 1) as usize,
    )
}

impl Driver {
    pub(crate) fn new(kernel: Arc<Kernel>, ring: RingBuf<MapData>) -> Result<Driver, SpliceError> {
        // SAFETY (both): the AsyncFd owns the object that owns the fd (the epoll fd, the
        // ring buffer map), so the fd stays open exactly as long as it is registered.
        let epoll = unsafe { AsyncFd::register_with_interest(Epoll::new()?, Interest::READABLE) }
            .map_err(io::Error::from)?;
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(io::Error::from)?;
        // SAFETY: as above, the AsyncFd owns the Timer that owns the timerfd.
        let timer = unsafe { AsyncFd::register_with_interest(Timer::new()?, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Driver {
            epoll,
            ring,
            timer,
            armed: None,
            kernel,
            flows: Vec::new(),
            free: Vec::new(),
            next_generation: 1,
            by_cookie: HashMap::new(),
            timers: BinaryHeap::new(),
            events_lost: 0,
            early: Vec::new(),
            next_sweep: Instant::now(),
            next_deadline: None,
        })
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<NewFlow>) {
        let mut ready = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut events: Vec<SpliceEvent> = Vec::new();
        let mut lost_check = tokio::time::interval(LOST_CHECK);
        lost_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        let closing = self.kernel.closing.clone();
        let mut closed = false;
        loop {
            let deadline = self.timers.peek().map(|Reverse(t)| t.0);
            if let Some(at) = deadline
                && deadline != self.armed
            {
                if let Err(e) = self
                    .timer
                    .get_ref()
                    .arm(at.saturating_duration_since(Instant::now()))
                {
                    tracing::error!("splice driver: timerfd: {e}");
                }
                self.armed = deadline;
            }
            tokio::select! {
                biased;
                nf = rx.recv(), if open => match nf {
                    Some(nf) => self.add(nf),
                    None => open = false,
                },
                g = self.epoll.readable() => {
                    let Ok(mut g) = g else { return };
                    let mut batch = Vec::new();
                    loop {
                        match g.get_inner().poll(&mut ready) {
                            Ok(n) => {
                                batch.extend(ready[..n].iter().map(|e| (e.u64, e.events)));
                                if n < ready.len() {
                                    break;
                                }
                            }
                            Err(e) => {
                                tracing::error!("splice driver: epoll_wait: {e}");
                                break;
                            }
                        }
                    }
                    g.clear_ready();
                    drop(g);
                    for (t, ev) in batch {
                        self.on_socket(t, ev);
                    }
                }
                g = self.ring.readable_mut() => {
                    let Ok(mut g) = g else { return };
                    let ring = g.get_inner_mut();
                    while let Some(item) = ring.next() {
                        if item.len() >= size_of::<SpliceEvent>() {
                            // SAFETY: the verdict writes whole SpliceEvents (repr(C), plain
                            // integers); read_unaligned copes with any alignment.
                            events.push(unsafe { item.as_ptr().cast::<SpliceEvent>().read_unaligned() });
                        }
                    }
                    g.clear_ready();
                    drop(g);
                    // Flows armed before these events were sent may still be queued.
                    while let Ok(nf) = rx.try_recv() {
                        self.add(nf);
                    }
                    for ev in events.drain(..) {
                        self.on_event(ev);
                    }
                }
                g = self.timer.readable() => {
                    let Ok(mut g) = g else { return };
                    g.get_inner().clear();
                    g.clear_ready();
                    drop(g);
                    self.armed = None;
                    self.fire_timers();
                }
                _ = lost_check.tick() => {
                    self.check_lost();
                    self.sweep_idle();
                    self.sweep_deadlines();
                    self.sweep_closing();
                }
                () = closing.cancelled(), if !closed => closed = true,
            }
            if closed {
                // Also the flows that arrive after the deadline.
                self.close_all();
            }
            if !open && self.by_cookie.is_empty() && self.flows.iter().all(Option::is_none) {
                return;
            }
        }
    }

    fn add(&mut self, nf: NewFlow) {
        let budget = self.kernel.budget;
        let slot = self.free.pop().unwrap_or_else(|| {
            self.flows.push(None);
            self.flows.len() - 1
        });
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1) & 0x7fff_ffff;
        let mut flow = Flow {
            generation,
            socks: nf.socks,
            start: nf.start,
            dirs: [
                Dir::new(nf.spliced[0], budget),
                Dir::new(nf.spliced[1], budget),
            ],
            interest: [0; 2],
            prior: nf.prior,
            pauses: 0,
            done: Some(nf.done),
            activity: 0,
            active_at: Instant::now(),
            idle: nf.idle,
            deadline: nf.deadline,
            closing: nf.closing,
        };
        if let Some(at) = nf.deadline {
            self.next_deadline = Some(self.next_deadline.map_or(at, |n| n.min(at)));
        }
        // A flow with a shorter idle timeout than any before it sets the sweep's pace.
        if let Some(idle) = nf.idle {
            self.next_sweep = self.next_sweep.min(Instant::now() + sweep_pace(idle));
        }
        self.kernel
            .paths
            .kernel
            .active
            .fetch_add(1, Ordering::Relaxed);
        for side in [DOWN, UP] {
            self.by_cookie.insert(flow.start[side].cookie, (slot, side));
            let want = interest(&flow, side);
            if let Err(e) = self.epoll.get_ref().add(
                flow.socks[side].as_raw_fd(),
                want,
                token(slot, generation, side),
            ) {
                self.flows[slot] = Some(flow);
                return self.finish(slot, Err(End::Error(format!("epoll add: {e}"))));
            }
            flow.interest[side] = want;
        }
        let cookies = [flow.start[DOWN].cookie, flow.start[UP].cookie];
        self.flows[slot] = Some(flow);
        // A non-spliced direction starts copying at once (its bytes may already wait).
        self.step(slot, [DOWN, UP]);
        // Events the verdict sent before the flow reached us.
        let early: Vec<_> = self
            .early
            .iter()
            .filter(|(_, ev)| cookies.contains(&ev.cookie))
            .map(|(_, ev)| *ev)
            .collect();
        if !early.is_empty() {
            self.early.retain(|(_, ev)| !cookies.contains(&ev.cookie));
            for ev in early {
                self.on_event(ev);
            }
        }
    }

    fn on_socket(&mut self, t: u64, events: u32) {
        let (slot, generation, side) = untoken(t);
        let Some(Some(flow)) = self.flows.get_mut(slot) else {
            return;
        };
        if flow.generation != generation {
            return;
        }
        let sock = &flow.socks[side];
        let so_error = sock.take_error();
        tracing::debug!(side, events, ?so_error, "splice: socket event");
        let err = matches!(so_error, Ok(Some(_))) || events & epoll::ERR != 0;
        if err {
            return self.finish(slot, Err(End::ResetBy(side)));
        }
        if events & (epoll::RDHUP | epoll::HUP) != 0 {
            flow.dirs[side].fin = true;
        }
        self.step(slot, [side, 1 - side]);
    }

    fn on_event(&mut self, ev: SpliceEvent) {
        let Some(&(slot, d)) = self.by_cookie.get(&ev.cookie) else {
            // The verdict runs as soon as a flow is armed, before its task has handed it
            // over to us: keep the event until the flow arrives (or expires).
            if self.early.len() < EARLY_MAX {
                self.early.push((Instant::now(), ev));
            }
            return;
        };
        match ev.kind {
            EV_CREDIT => {
                let Some(Some(flow)) = self.flows.get_mut(slot) else {
                    return;
                };
                if flow.dirs[d].phase == Phase::Kernel {
                    let r = grant(&self.kernel, flow, d);
                    self.after(slot, d, r);
                }
            }
            EV_PAUSED => self.step(slot, [d]),
            EV_REDIRECT_FAILED => {
                tracing::warn!(
                    cookie = ev.cookie,
                    "splice: the kernel refused a redirect; resetting the flow"
                );
                self.finish(slot, Err(End::Error(REDIRECT_FAILED.into())))
            }
            EV_SEQ_ERROR => {
                self.kernel.paths.integrity.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    cookie = ev.cookie,
                    "splice: an skb did not fit its stream; resetting the flow"
                );
                self.finish(slot, Err(End::Error(SEQ_ERROR.into())))
            }
            _ => {}
        }
    }

    /// Runs the state machine of the given directions, then updates epoll interest,
    /// timers, and ends the flow when both directions are done.
    fn step(&mut self, slot: usize, dirs: impl IntoIterator<Item = usize>) {
        for d in dirs {
            let Some(Some(flow)) = self.flows.get_mut(slot) else {
                return;
            };
            let r = progress(&self.kernel, flow, d);
            if !self.after(slot, d, r) {
                return;
            }
        }
    }

    /// Applies a direction's outcome; false when the flow is gone.
    fn after(&mut self, slot: usize, d: usize, r: Result<(), End>) -> bool {
        if let Err(end) = r {
            self.finish(slot, Err(end));
            return false;
        }
        let Some(Some(flow)) = self.flows.get_mut(slot) else {
            return false;
        };
        if flow.dirs.iter().all(|d| d.phase == Phase::Done) {
            self.finish(slot, Ok(()));
            return false;
        }
        let dir = &mut flow.dirs[d];
        if let Some((at, _)) = dir.poll
            && dir.queued != Some(at)
        {
            dir.queued = Some(at);
            self.timers.push(Reverse((at, slot, flow.generation, d)));
        }
        for side in [DOWN, UP] {
            let want = interest(flow, side);
            if want != flow.interest[side] {
                let t = token(slot, flow.generation, side);
                if let Err(e) = self
                    .epoll
                    .get_ref()
                    .modify(flow.socks[side].as_raw_fd(), want, t)
                {
                    self.finish(slot, Err(End::Error(format!("epoll mod: {e}"))));
                    return false;
                }
                flow.interest[side] = want;
            }
        }
        true
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, slot, generation, d))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(Some(flow)) = self.flows.get_mut(slot) else {
                continue;
            };
            if flow.generation != generation || flow.dirs[d].poll.map(|p| p.0) != Some(at) {
                continue;
            }
            flow.dirs[d].poll = None;
            self.step(slot, [d]);
        }
    }

    /// Events the ring buffer could not hold are lost; when that happened, look at every
    /// flow as if each had sent all of them.
    fn check_lost(&mut self) {
        // Early events whose flow never came (it fell back to a copy instead).
        let stale = Instant::now() - Duration::from_secs(5);
        self.early.retain(|(at, _)| *at > stale);
        let lost = self.kernel.stat(gateway_common::STAT_EVENTS_LOST);
        if lost == self.events_lost {
            return;
        }
        tracing::warn!(
            lost = lost - self.events_lost,
            "splice: kernel events lost (ring buffer full); checking every flow"
        );
        self.events_lost = lost;
        for slot in 0..self.flows.len() {
            for d in [DOWN, UP] {
                if let Some(Some(flow)) = self.flows.get_mut(slot)
                    && flow.dirs[d].phase == Phase::Kernel
                {
                    let r = grant(&self.kernel, flow, d);
                    if !self.after(slot, d, r) {
                        break;
                    }
                }
                self.step(slot, [d]);
            }
        }
    }

    /// The idle timeout: every quarter of the shortest flow's ([`sweep_pace`]), compare each
    /// flow's kernel counters and userspace copies with the last sweep's; a flow in which
    /// nothing moved for its whole timeout is closed.
    fn sweep_idle(&mut self) {
        let now = Instant::now();
        if now < self.next_sweep {
            return;
        }
        let mut pace = Duration::from_secs(60);
        for slot in 0..self.flows.len() {
            let Some(Some(flow)) = self.flows.get_mut(slot) else {
                continue;
            };
            let Some(idle) = flow.idle else {
                continue;
            };
            pace = pace.min(sweep_pace(idle));
            let c = [DOWN, UP].map(|d| self.kernel.counters(flow.start[d].cookie));
            let activity = c.iter().map(|c| c.redirected + c.passed).sum::<u64>()
                + flow.dirs[DOWN].copied
                + flow.dirs[UP].copied;
            if activity != flow.activity {
                (flow.activity, flow.active_at) = (activity, now);
                continue;
            }
            if now.duration_since(flow.active_at) < idle {
                continue;
            }
            let pending = pending(flow);
            self.finish(
                slot,
                Err(End::Idle {
                    pending,
                    why: Termination::IdleTimeout,
                }),
            );
        }
        // The sweep runs on the 250 ms tick, which fires a little before `now + pace`
        // when `now` was late: half a tick of slack keeps the pace from doubling.
        self.next_sweep = now + pace - LOST_CHECK / 2;
    }

    /// `maxConnectionDuration`: on the 250 ms tick once the earliest deadline has
    /// passed, every flow past its own is closed as an idle one is (Envoy's tcp_proxy
    /// `onMaxDownstreamConnectionDuration`); a flow is closed at most one tick late.
    fn sweep_deadlines(&mut self) {
        let now = Instant::now();
        if self.next_deadline.is_none_or(|at| now < at) {
            return;
        }
        let mut next: Option<Instant> = None;
        for slot in 0..self.flows.len() {
            let Some(Some(flow)) = self.flows.get(slot) else {
                continue;
            };
            let Some(at) = flow.deadline else {
                continue;
            };
            if at > now {
                next = Some(next.map_or(at, |n| n.min(at)));
                continue;
            }
            let pending = pending(flow);
            self.finish(
                slot,
                Err(End::Idle {
                    pending,
                    why: Termination::MaxDuration,
                }),
            );
        }
        self.next_deadline = next;
    }

    /// Flows whose listener's drain deadline passed (a reload removed it): closed as at
    /// the process drain's, on the 250 ms tick.
    fn sweep_closing(&mut self) {
        self.drain_close(|f| f.closing.as_ref().is_some_and(|t| t.is_cancelled()));
    }

    /// The drain deadline: every flow is closed as an idle one is.
    fn close_all(&mut self) {
        self.drain_close(|_| true);
    }

    /// Closes the flows `which` picks as the drain deadline closes them: a FIN each way,
    /// or a reset each way if bytes were still waiting (`drain_timeout`).
    fn drain_close(&mut self, which: impl Fn(&Flow) -> bool) {
        for slot in 0..self.flows.len() {
            let Some(Some(flow)) = self.flows.get(slot) else {
                continue;
            };
            if !which(flow) {
                continue;
            }
            let pending = pending(flow);
            self.finish(
                slot,
                Err(End::Idle {
                    pending,
                    why: Termination::DrainTimeout,
                }),
            );
        }
    }

    /// Ends a flow: resets whoever must be reset, takes it out of the maps, closes both
    /// sockets and sends the report.
    fn finish(&mut self, slot: usize, r: Result<(), End>) {
        let Some(mut flow) = self.flows.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.free.push(slot);
        let termination = match r {
            Ok(()) => Termination::Closed,
            Err(End::ResetBy(side)) => {
                abort(&flow.socks[1 - side]);
                if side == DOWN {
                    Termination::DownstreamReset
                } else {
                    Termination::UpstreamReset
                }
            }
            Err(End::Error(e)) => {
                abort(&flow.socks[DOWN]);
                abort(&flow.socks[UP]);
                Termination::Error(e)
            }
            Err(End::Idle { pending, why }) => {
                for s in &flow.socks {
                    if pending {
                        abort(s);
                    } else {
                        let _ = s.shutdown(Shutdown::Write);
                    }
                }
                why
            }
        };
        let cookies = [flow.start[DOWN].cookie, flow.start[UP].cookie];
        tracing::debug!(?cookies, %termination, "splice: flow ends");
        for c in cookies {
            self.by_cookie.remove(&c);
        }
        let counters = self.kernel.disarm(cookies);
        let paths = &self.kernel.paths;
        paths.kernel.active.fetch_sub(1, Ordering::Relaxed);
        let paused = flow.dirs.iter().filter(|d| d.paused()).count() as u64;
        paths.paused_now.fetch_sub(paused, Ordering::Relaxed);
        // Bytes the verdict handed to a peer that never took them: the kernel drops a
        // psock's backlog when the peer socket fails (its sends hit a hard error and TX is
        // disabled). Such a flow always ends in a reset (the peer's error reached us);
        // this says how much it lost.
        let undelivered = [DOWN, UP].map(|d| {
            let taken = written(&flow, 1 - d).map_or(0, |w| w.saturating_sub(flow.dirs[d].copied));
            counters[d].redirected.saturating_sub(taken)
        });
        let lost: u64 = undelivered.iter().sum();
        if lost > 0 && termination != Termination::Closed {
            paths.undelivered.fetch_add(lost, Ordering::Relaxed);
        }
        let moved = |d: usize| flow.prior[d] + counters[d].redirected + flow.dirs[d].copied;
        let report = FlowReport {
            downstream_to_upstream: moved(DOWN),
            upstream_to_downstream: moved(UP),
            userspace_bytes: flow.prior[DOWN]
                + flow.prior[UP]
                + flow.dirs[DOWN].copied
                + flow.dirs[UP].copied,
            path: Path::Kernel,
            pauses: flow.pauses,
            redirect_failures: counters[DOWN].failures + counters[UP].failures,
            kernel_bytes: [counters[DOWN].redirected, counters[UP].redirected],
            offloaded: flow.prior[DOWN] + flow.prior[UP] > 0,
            undelivered: if termination == Termination::Closed {
                0
            } else {
                lost
            },
            termination,
        };
        if let Some(done) = flow.done.take() {
            let _ = done.send(report);
        }
        // Dropping the sockets closes them (and takes them out of the epoll set).
        drop(flow);
    }
}

/// Whether closing `flow` now would drop bytes: something received is not yet written
/// to the other side (then a reset, since a FIN would truncate silently).
fn pending(flow: &Flow) -> bool {
    [DOWN, UP].iter().any(|&d| {
        flow.dirs[d].phase != Phase::Done
            && match (received(flow, d), written(flow, 1 - d)) {
                (Ok(r), Ok(w)) => w < r,
                _ => true,
            }
    })
}

/// The epoll interest a socket needs now: RDHUP always; IN while its receive direction
/// is copied by userspace and waits for bytes; OUT while the other direction's copier
/// waits for room in it.
fn interest(flow: &Flow, side: usize) -> u32 {
    let mut want = epoll::RDHUP;
    let rx = &flow.dirs[side];
    if rx.phase == Phase::Copying && rx.want_in {
        want |= epoll::IN;
    }
    let tx = &flow.dirs[1 - side];
    if matches!(tx.phase, Phase::Copying | Phase::Draining) && tx.want_out {
        want |= epoll::OUT;
    }
    want
}

/// Schedules the next look at TCP's counters for direction `d`, backing off.
fn poll_later(dir: &mut Dir) {
    if dir.poll.is_none() {
        dir.poll = Some((Instant::now() + dir.backoff, dir.backoff));
        dir.backoff = (dir.backoff * 2).min(POLL_MAX);
    }
}

fn set_phase(kernel: &Kernel, flow: &mut Flow, d: usize, phase: Phase) {
    let dir = &mut flow.dirs[d];
    let was = dir.paused();
    let paused = dir.spliced && matches!(phase, Phase::Draining | Phase::Copying);
    match (was, paused) {
        (false, true) => {
            kernel.paths.paused_now.fetch_add(1, Ordering::Relaxed);
            kernel.paths.pauses.fetch_add(1, Ordering::Relaxed);
            flow.pauses += 1;
            tracing::debug!(dir = d, pauses = flow.pauses, "splice: paused");
        }
        (true, false) => {
            kernel.paths.paused_now.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(dir = d, copied = flow.dirs[d].copied, "splice: resumed");
        }
        _ => {}
    }
    if phase == Phase::Kernel {
        // The verdict redirects again: the backlog must find room.
        set_peer_sndbuf(kernel, flow, d, false);
    }
    let dir = &mut flow.dirs[d];
    dir.phase = phase;
    dir.drained = false;
    dir.backoff = POLL_MIN;
    dir.poll = None;
    dir.want_out = false;
    if phase != Phase::Copying {
        dir.buf = None;
        dir.want_in = false;
    }
}

/// The peer's send buffer for direction `d`: while userspace writes a paused direction
/// into it, a quarter of the budget (doubled by the kernel, skb overhead included), so
/// ordinary backpressure (EAGAIN, then EPOLLOUT once ACKs free room) keeps what it
/// queues within the room `has_room` asks for; whenever the verdict may redirect, above
/// the budget again, so the psock backlog never meets a full buffer (a full one makes it
/// re-arm itself a jiffy later). Only shrunk once the backlog is empty.
fn set_peer_sndbuf(kernel: &Kernel, flow: &mut Flow, d: usize, shrink: bool) {
    if flow.dirs[d].shrunk == shrink {
        return;
    }
    let bytes = if shrink {
        kernel.budget / 4
    } else {
        2 * kernel.budget
    };
    if let Err(e) = sockopt::set_sndbuf_force(&flow.socks[1 - d], bytes as usize) {
        tracing::debug!("splice: SO_SNDBUFFORCE: {e}");
    }
    flow.dirs[d].shrunk = shrink;
}

/// Payload bytes socket `side` received since the splice was armed (the FIN, once
/// seen, takes one sequence number and is not payload).
fn received(flow: &Flow, side: usize) -> io::Result<u64> {
    let seq = sockopt::bytes_received(&flow.socks[side])?;
    let fin = u64::from(flow.dirs[side].fin);
    Ok(seq
        .saturating_sub(flow.start[side].consumed)
        .saturating_sub(fin))
}

/// Payload bytes written into socket `side` since the splice was armed (by the psock
/// backlog and by userspace).
fn written(flow: &Flow, side: usize) -> io::Result<u64> {
    Ok(sockopt::bytes_written(&flow.socks[side])?.saturating_sub(flow.start[side].written))
}

/// `EV_CREDIT`: the budget is what the peer may hold of this direction, backlog and send
/// queue together; what's left of it is the new credit.
fn grant(kernel: &Kernel, flow: &mut Flow, d: usize) -> Result<(), End> {
    let peer = 1 - d;
    let c = kernel.counters(flow.start[d].cookie);
    let io = |e: io::Error| End::Error(format!("reading TCP counters: {e}"));
    let taken = written(flow, peer)
        .map_err(io)?
        .saturating_sub(flow.dirs[d].copied);
    let backlog = c.redirected.saturating_sub(taken);
    let queued = sockopt::outq(&flow.socks[peer]).map_err(io)?;
    let budget = kernel.budget;
    let mut room = budget.saturating_sub(backlog + queued);
    if room < budget / 8 {
        // Too little to be worth an event per few KiB: let the verdict pause instead.
        room = 0;
    }
    let dir = &mut flow.dirs[d];
    dir.ctl = FlowCtl {
        limit: c.redirected + room,
        notify_at: c.redirected + room / 2,
        epoch: dir.ctl.epoch + 1,
        mode: CTL_MODE_KERNEL,
        ..dir.ctl
    };
    kernel
        .set_ctl(flow.start[d].cookie, &dir.ctl)
        .map_err(|e| End::Error(format!("CTRL update: {e}")))
}

/// Runs direction `d` as far as it can go without waiting.
fn progress(kernel: &Kernel, flow: &mut Flow, d: usize) -> Result<(), End> {
    let peer = 1 - d;
    let io = |e: io::Error| End::Error(format!("reading TCP counters: {e}"));
    loop {
        match flow.dirs[d].phase {
            Phase::Done => return Ok(()),
            Phase::Kernel => {
                let c = kernel.counters(flow.start[d].cookie);
                if c.failures > 0 {
                    // Also caught here when its EV_REDIRECT_FAILED is late or lost.
                    return Err(End::Error(REDIRECT_FAILED.into()));
                }
                if c.seq_errors > 0 {
                    // Likewise for EV_SEQ_ERROR.
                    return Err(End::Error(SEQ_ERROR.into()));
                }
                if c.passed > flow.dirs[d].ctl.consumed {
                    // The verdict kept bytes (paused, or a lost EV_PAUSED).
                    set_phase(kernel, flow, d, Phase::Draining);
                    continue;
                }
                if !flow.dirs[d].fin {
                    return Ok(());
                }
                let recv = received(flow, d).map_err(io)?;
                if c.redirected + c.passed > recv {
                    // The verdict was handed more bytes than TCP received: some twice
                    // (tcp_read_skb passes whole skbs, and TCP queues a retransmitted
                    // segment that overlaps bytes already received without trimming
                    // it). The verdict trims those (FlowCounters::next_seq); this is
                    // the backstop if it ever could not: never pass a clean FIN after
                    // duplicates.
                    kernel.paths.integrity.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        dir = d,
                        seen = c.redirected + c.passed,
                        received = recv,
                        "splice: the kernel forwarded bytes twice; resetting the flow"
                    );
                    return Err(End::Error("kernel forwarded duplicate bytes".into()));
                }
                if c.redirected + c.passed == recv && written(flow, peer).map_err(io)? >= recv {
                    tracing::debug!(
                        dir = d,
                        bytes = recv,
                        "splice: forwarded; passing the FIN on"
                    );
                    let _ = flow.socks[peer].shutdown(Shutdown::Write);
                    set_phase(kernel, flow, d, Phase::Done);
                    return Ok(());
                }
                poll_later(&mut flow.dirs[d]);
                return Ok(());
            }
            Phase::Draining => {
                // Paused: the kept bytes wait on the receiving socket (its window is
                // closed) until the peer has taken everything redirected before them and
                // has room again; only then does userspace move them.
                let c = kernel.counters(flow.start[d].cookie);
                let taken = written(flow, peer)
                    .map_err(io)?
                    .saturating_sub(flow.dirs[d].copied);
                if taken < c.redirected {
                    // The backlog is still sending (into a buffer with room): soon.
                    poll_later(&mut flow.dirs[d]);
                    return Ok(());
                }
                flow.dirs[d].written_redirects = c.redirected;
                set_peer_sndbuf(kernel, flow, d, true);
                if has_room(kernel, flow, peer).map_err(io)? {
                    set_phase(kernel, flow, d, Phase::Copying);
                    continue;
                }
                // Wait for the reader: with the smaller send buffer the peer turns
                // writable (EPOLLOUT) about when it has room. The poll backs that up.
                flow.dirs[d].want_out = true;
                poll_later(&mut flow.dirs[d]);
                return Ok(());
            }
            Phase::Copying => return copy(kernel, flow, d),
        }
    }
}

/// Userspace moves direction `d`'s bytes: whatever the verdict kept on the receiving
/// socket (or everything, for a socket not in SPLICED), written to the peer with
/// nonblocking backpressure.
///
/// For a spliced socket the bytes are peeked, written, announced and only then
/// consumed, all of them at once (the buffer holds a whole receive buffer's worth).
/// Consuming reopens TCP's window and a fast sender's next segment arrives within
/// microseconds; peeking everything first means that by the time the window reopens
/// the verdict already knows everything it kept is in the peer's send queue
/// (`passed == consumed`) and redirects that next segment itself, so the direction goes
/// back to the kernel after one round instead of chasing the sender.
fn copy(kernel: &Kernel, flow: &mut Flow, d: usize) -> Result<(), End> {
    let peer = 1 - d;
    let io = |e: io::Error| End::Error(format!("reading TCP counters: {e}"));
    loop {
        let dir = &mut flow.dirs[d];
        let size = if dir.spliced {
            kernel.paused_copy_buf()
        } else {
            COPY_BUF
        };
        let buf = dir.buf.get_or_insert_with(|| CopyBuf {
            data: vec![0u8; size].into_boxed_slice(),
            start: 0,
            end: 0,
            unconsumed: 0,
        });
        if buf.start < buf.end {
            match sockopt::send_nowait(&flow.socks[peer], &buf.data[buf.start..buf.end]) {
                Ok(n) => {
                    buf.start += n;
                    dir.copied += n as u64;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    dir.want_out = true;
                    dir.want_in = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The peer is gone (reset): reset the sender too.
                Err(_) => return Err(End::ResetBy(peer)),
            }
        }
        dir.want_out = false;
        if buf.unconsumed > 0 {
            // Written: tell the verdict (when this was all it had kept and the peer has
            // room), then take the bytes off the socket.
            let n = buf.unconsumed;
            if dir.drained && has_room(kernel, flow, peer).map_err(io)? {
                announce(kernel, flow, d)?;
            }
            let buf = flow.dirs[d].buf.as_mut().expect("copy buffer");
            let mut off = 0;
            while off < n {
                match sockopt::recv_nowait(&flow.socks[d], &mut buf.data[off..n]) {
                    Ok(0) => return Err(End::Error("peeked bytes vanished".into())),
                    Ok(k) => off += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Err(End::ResetBy(d)),
                }
            }
            (buf.start, buf.end, buf.unconsumed) = (0, 0, 0);
            continue;
        }
        (buf.start, buf.end) = (0, 0);
        if dir.spliced && !dir.fin && !has_room(kernel, flow, peer).map_err(io)? {
            // The peer already holds half the budget. Taking more now would let this
            // loop chase a fast sender without bound: once an announce has raised the
            // peer's send buffer to 4 × the budget, nothing else stops these writes (the
            // soak measured 131 MB queued toward a 256 KiB/s reader). Look again later;
            // the kept bytes wait on the receiving socket, its window closed.
            let dir = &mut flow.dirs[d];
            dir.want_in = false;
            poll_later(dir);
            return Ok(());
        }
        let dir = &mut flow.dirs[d];
        let buf = dir.buf.as_mut().expect("copy buffer");
        let read = if dir.spliced {
            sockopt::peek_nowait(&flow.socks[d], &mut buf.data)
        } else {
            sockopt::recv_nowait(&flow.socks[d], &mut buf.data)
        };
        match read {
            Ok(0) => {
                // EOF. For a spliced socket, recv answers 0 once TCP saw the FIN and the
                // psock's queue is empty — even if a kept skb still waits in the psock's
                // backlog behind the other direction's bytes: trust only the counters.
                if dir.spliced {
                    // After an announce the verdict may have redirected bytes that its
                    // backlog has not written yet: the FIN must wait for them too.
                    dir.fin = true;
                    let c = kernel.counters(flow.start[d].cookie);
                    let recv = received(flow, d).map_err(io)?;
                    let written = written(flow, peer).map_err(io)?;
                    let dir = &mut flow.dirs[d];
                    if c.redirected + c.passed < recv || c.passed > dir.copied || written < recv {
                        dir.want_in = true;
                        poll_later(dir);
                        return Ok(());
                    }
                }
                let _ = flow.socks[peer].shutdown(Shutdown::Write);
                set_phase(kernel, flow, d, Phase::Done);
                return Ok(());
            }
            Ok(n) if dir.spliced => {
                // The verdict may have redirected skbs since the backlog was last seen
                // empty (after an announce, before it kept these): writing these bytes
                // now could overtake them. Then wait for the backlog first.
                let c = kernel.counters(flow.start[d].cookie);
                let dir = &mut flow.dirs[d];
                if c.redirected > dir.written_redirects {
                    let taken = written(flow, peer)
                        .map_err(io)?
                        .saturating_sub(flow.dirs[d].copied);
                    if taken < c.redirected {
                        set_phase(kernel, flow, d, Phase::Draining);
                        poll_later(&mut flow.dirs[d]);
                        return Ok(());
                    }
                    flow.dirs[d].written_redirects = c.redirected;
                }
                let dir = &mut flow.dirs[d];
                let buf = dir.buf.as_mut().expect("copy buffer");
                dir.drained = n < buf.data.len();
                (buf.end, buf.unconsumed) = (n, n);
            }
            Ok(n) => {
                dir.drained = n < buf.data.len();
                buf.end = n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                dir.want_in = true;
                if dir.spliced && !dir.fin {
                    let c = kernel.counters(flow.start[d].cookie);
                    let dir = &mut flow.dirs[d];
                    if c.passed == dir.copied && dir.ctl.consumed == dir.copied {
                        // Everything kept is written and the verdict knows it: it
                        // redirects again from its next skb.
                        set_phase(kernel, flow, d, Phase::Kernel);
                        return progress(kernel, flow, d);
                    }
                    if c.passed == dir.copied && has_room(kernel, flow, peer).map_err(io)? {
                        announce(kernel, flow, d)?;
                        set_phase(kernel, flow, d, Phase::Kernel);
                        return progress(kernel, flow, d);
                    }
                    // A kept skb may still be on its way to the psock's queue (behind
                    // the other direction's backlog), or the peer lacks room. New bytes
                    // raise EPOLLIN; the poll covers the rest.
                    poll_later(&mut flow.dirs[d]);
                }
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(End::ResetBy(d)),
        }
    }
}

/// The peer may take more of this flow: its send queue is within half the budget.
fn has_room(kernel: &Kernel, flow: &Flow, peer: usize) -> io::Result<bool> {
    Ok(sockopt::outq(&flow.socks[peer])? <= kernel.budget / 2)
}

/// Tells the verdict how much of what it kept userspace has written to the peer, with
/// fresh credit. The verdict redirects again from the first skb that finds
/// `passed == consumed`: every byte it kept is then already in the peer's send queue,
/// ahead of anything it redirects. Until then it keeps skbs, which the copier reads. A
/// new epoch, so a later pause is announced again.
fn announce(kernel: &Kernel, flow: &mut Flow, d: usize) -> Result<(), End> {
    let peer = 1 - d;
    let io = |e: io::Error| End::Error(format!("reading TCP counters: {e}"));
    let c = kernel.counters(flow.start[d].cookie);
    let queued = sockopt::outq(&flow.socks[peer]).map_err(io)?;
    let room = kernel.budget.saturating_sub(queued);
    // From the update on the verdict may redirect again: its backlog needs room first.
    set_peer_sndbuf(kernel, flow, d, false);
    let dir = &mut flow.dirs[d];
    dir.ctl = FlowCtl {
        limit: c.redirected + room,
        notify_at: c.redirected + room / 2,
        consumed: dir.copied,
        epoch: dir.ctl.epoch + 1,
        mode: CTL_MODE_KERNEL,
        _pad: 0,
    };
    kernel
        .set_ctl(flow.start[d].cookie, &dir.ctl)
        .map_err(|e| End::Error(format!("CTRL update: {e}")))
}

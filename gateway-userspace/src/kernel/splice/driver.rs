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
mod close;
mod copier;
mod direction;
mod flow;
mod start;

pub(crate) use start::Start;

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    io,
    net::TcpStream,
    os::fd::AsRawFd,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use gateway_common::{EV_CREDIT, EV_PAUSED, EV_REDIRECT_FAILED, EV_SEQ_ERROR, SpliceEvent};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, oneshot},
    time::Instant,
};

use self::{
    close::sweep_pace,
    direction::{grant, progress},
    flow::{Dir, End, Flow, Phase, interest},
};
use super::{
    FlowReport,
    ebpf::{Kernel, SpliceError},
    epoll::{self, Epoll, Timer},
};

const DOWN: usize = 0;
const UP: usize = 1;
const REDIRECT_FAILED: &str = "kernel redirect failed; flow reset both ways";
const SEQ_ERROR: &str = "kernel stream out of sequence; flow reset both ways";
/// Events kept for flows not handed over yet, at most.
const EARLY_MAX: usize = 65_536;
/// How often the driver checks whether the verdict lost events (ring buffer full).
const LOST_CHECK: Duration = Duration::from_millis(250);

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
}

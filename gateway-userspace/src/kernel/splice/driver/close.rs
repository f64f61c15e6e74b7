//! How the driver ends flows: the idle-timeout, `maxConnectionDuration` and drain
//! sweeps, and [`Driver::finish`], which resets or closes both sockets, takes the flow out
//! of the maps and sends its report.
use std::{net::Shutdown, sync::atomic::Ordering, time::Duration};

use tokio::time::Instant;

use super::{
    DOWN, Driver, LOST_CHECK, UP,
    flow::{End, Flow, pending, written},
};
use crate::kernel::splice::{FlowReport, Path, Termination, ebpf::abort};

/// How often flows with idle timeout `idle` are checked: a quarter of it, from the
/// driver's tick (250 ms, which runs the sweep) to 60 s. A flow is closed between its
/// timeout and about two paces later (its last activity is seen at the next sweep;
/// a cluster's `idleTimeout: 1s`: 1.1 to 1.75 s measured).
pub(super) fn sweep_pace(idle: Duration) -> Duration {
    (idle / 4).clamp(LOST_CHECK, Duration::from_secs(60))
}

impl Driver {
    /// The idle timeout: every quarter of the shortest flow's ([`sweep_pace`]), compare each
    /// flow's kernel counters and userspace copies with the last sweep's; a flow in which
    /// nothing moved for its whole timeout is closed.
    pub(super) fn sweep_idle(&mut self) {
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
    pub(super) fn sweep_deadlines(&mut self) {
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
    pub(super) fn sweep_closing(&mut self) {
        self.drain_close(|f| f.closing.as_ref().is_some_and(|t| t.is_cancelled()));
    }

    /// The drain deadline: every flow is closed as an idle one is.
    pub(super) fn close_all(&mut self) {
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
    pub(super) fn finish(&mut self, slot: usize, r: Result<(), End>) {
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

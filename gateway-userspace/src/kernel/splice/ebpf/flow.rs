//! Handing one flow to the kernel: arming its sockets in the maps in the order that makes
//! the splice lossless, passing it to the driver and waiting for its report, or copying
//! it in userspace when the kernel can't take it.
use std::{os::fd::AsRawFd, time::Duration};

use gateway_common::FlowCounters;
use tokio::{
    net::TcpStream,
    sync::{mpsc, oneshot},
};

use super::{
    EbpfSplicer, Fallback, Prior, SpliceError,
    maps::{Kernel, initial_ctl, lock},
};
use crate::kernel::splice::{
    FlowLimits, FlowReport, Path, Termination,
    copy::copy,
    driver::{self, NewFlow},
    sockopt,
};

impl EbpfSplicer {
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
        limits: FlowLimits,
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
            return with_prior(copy(down, up, limits, &self.kernel.closing).await, prior);
        }
        let Ok(start) = driver::Start::pair(&down, &up) else {
            fallback(Fallback::SocketState);
            return with_prior(copy(down, up, limits, &self.kernel.closing).await, prior);
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
                    (Ok(d), Ok(u)) => {
                        with_prior(copy(d, u, limits, &self.kernel.closing).await, prior)
                    }
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
        path: Path::Kernel,
        termination: Termination::Error(msg),
        ..Default::default()
    }
}

/// Resets `sock` when it is closed: SO_LINGER 0 makes the close send RST.
pub(crate) fn abort(sock: &impl std::os::fd::AsFd) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

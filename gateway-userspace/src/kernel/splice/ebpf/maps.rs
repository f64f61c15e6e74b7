//! What the driver and the flows' tasks share of the loaded object ([`Kernel`]): the
//! flow maps (PEERS, SPLICED, FLOWS, CTRL), the verdict's counters and switches, and the
//! per-direction budget.
use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use aya::maps::{Array, HashMap, MapData, PerCpuArray, SockHash};
use gateway_common::{CTL_MODE_KERNEL, FlowCounters, FlowCtl};

use super::SpliceError;
use crate::kernel::splice::PathStats;

pub(crate) struct Maps {
    pub(super) peers: SockHash<MapData, u64>,
    pub(super) spliced: SockHash<MapData, u64>,
    pub(super) flows: HashMap<MapData, u64, FlowCounters>,
    pub(super) ctrl: HashMap<MapData, u64, FlowCtl>,
}

/// What the driver and the flows' tasks share.
pub(crate) struct Kernel {
    pub(super) maps: Mutex<Maps>,
    pub(super) stats: PerCpuArray<MapData, u64>,
    pub(super) config: Mutex<Array<MapData, u32>>,
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
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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

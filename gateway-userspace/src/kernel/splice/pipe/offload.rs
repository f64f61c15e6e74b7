//! `auto`'s rule for when a flow on the pipe path is bulk enough to hand to the kernel
//! splice, and on which CPUs it may run there.
use tokio::net::TcpStream;

use crate::kernel::splice::sockopt;

/// When a flow on the pipe path counts as bulk, worth handing to the kernel splice.
///
/// A direction is bulk once it has moved at least `min_bytes` and its reads averaged at
/// least `min_chunk` bytes per read wake-up (a wake-up lasts until a read finds the
/// socket empty): a bulk sender refills the socket while we drain it, so a wake-up finds
/// a large chunk; a request/response flow finds one small message per wake-up, however
/// long it lives. Measured through the pipe splice on loopback (bytes per wake-up):
/// iperf3 at full speed 1.8-4.7 MiB, iperf3 -b 100M 128 KiB, iperf3 -b 10M -l 1K 2.3 KiB,
/// lock-step 1 KiB / 4 KiB requests and responses 1 and 4 KiB. The 16 KiB default sits
/// an order of magnitude from both; 1 MiB is under a millisecond of a fast stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffloadPolicy {
    pub min_bytes: u64,
    pub min_chunk: u64,
    /// Offload only flows whose packets arrive on CPUs this process may run on (see
    /// [`OffloadPolicy::cpus_allow`]); `false` lifts that condition.
    pub own_cpus_only: bool,
    /// After a handover attempt that found a socket no longer ESTABLISHED, how many more
    /// bytes to move before trying again.
    pub retry_bytes: u64,
}

impl Default for OffloadPolicy {
    fn default() -> Self {
        OffloadPolicy {
            min_bytes: 1 << 20,
            min_chunk: 16 * 1024,
            own_cpus_only: true,
            retry_bytes: (1 << 20) / 4,
        }
    }
}

impl OffloadPolicy {
    /// The kernel splice's work for bytes arriving on a socket runs on the CPU that
    /// receives them (the verdict in its softirq, the psock backlog on its workqueue).
    /// When that CPU is not one this process may use (an operator pinned the gateway,
    /// or NIC interrupts land elsewhere), an offload would move the gateway's work onto
    /// cores it was not given — on loopback, onto the very cores of the client and the
    /// upstream. Such a flow stays on the pipe path, whose work runs on the gateway's
    /// own threads.
    pub fn cpus_allow(&self, down: &TcpStream, up: &TcpStream) -> bool {
        if !self.own_cpus_only {
            return true;
        }
        let Some(own) = sockopt::own_cpus() else {
            return true;
        };
        let cpus = [sockopt::incoming_cpu(down), sockopt::incoming_cpu(up)];
        let allow = cpus.iter().flatten().all(|cpu| own.contains(cpu));
        if !allow {
            tracing::debug!(
                ?cpus,
                ?own,
                "splice: not offloaded: packets arrive on a CPU this process may not use"
            );
        }
        allow
    }

    /// The bulk rule for one direction: `bytes` moved over `read_wakeups` wake-ups that
    /// found data.
    pub fn is_bulk(&self, bytes: u64, read_wakeups: u64) -> bool {
        bytes >= self.min_bytes && bytes >= self.min_chunk.saturating_mul(read_wakeups.max(1))
    }
}

//! Worker threads: one single-threaded tokio runtime per worker, each accepting on its
//! own sockets of every Gateway port (`SO_REUSEPORT`, the kernel spreads new
//! connections over them) and serving the connections it accepted start to end.
//!
//! This is the event-loop-per-thread shape of Envoy (`--concurrency`), HAProxy
//! (`nbthread`) and nginx (`worker_processes`), in place of tokio's work-stealing
//! scheduler: a connection's tasks never move between threads, so no wake-up crosses a
//! core and no task queue is shared. Measured on the bench's HTTP row (one core, wrk 64
//! connections, keep-alive): 25,563 -> 32,608 rps and 38.6 -> 30.3 µs of gateway CPU per
//! request, multi-threaded runtime with one worker against one current-thread runtime.
//!
//! Worker 0 is the main runtime (which also runs the admin API, the signals, the drain
//! and the periodic jobs); workers 1.. are threads started here.
use std::{io, num::NonZeroUsize};

use tokio::runtime::Handle;

/// The default worker count: the CPUs this process may run on (its affinity mask and
/// cgroup quota, as `std::thread::available_parallelism` reads them) — Envoy's
/// `--concurrency` default.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// Starts `n - 1` worker threads beside the current (main) runtime and returns the
/// handles of all `n`, the current one first. Worker threads run until the process
/// exits.
pub fn start(n: usize) -> io::Result<Vec<Handle>> {
    let mut handles = vec![Handle::current()];
    for i in 1..n.max(1) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        handles.push(rt.handle().clone());
        std::thread::Builder::new()
            .name(format!("gw-worker-{i}"))
            .spawn(move || rt.block_on(std::future::pending::<()>()))?;
    }
    Ok(handles)
}

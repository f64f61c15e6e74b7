//! The gateway's own log (target `gateway::*`, to stderr) for `gateway run`: written by a
//! thread of its own through a bounded queue, so a stderr nobody reads (a full pipe, a
//! stalled terminal or journald) never blocks a worker thread, and so never the data
//! path. When the queue is full new lines are dropped and counted in
//! `gateway_log_lines_dropped_total`, as the access log does with its own lines.
use std::{io::IsTerminal, sync::OnceLock};

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

/// Lines queued for stderr before new ones are dropped (at ~300 bytes a line, ~5 MiB).
pub const QUEUE_LINES: usize = 16 * 1024;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Installs the global subscriber (`RUST_LOG`, default `info`) writing through the queue.
/// Keep the guard until the process ends: dropping it flushes what is queued.
pub fn init() -> WorkerGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("gateway-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    guard
}

/// Lines dropped so far because stderr could not keep up (0 before [`init`]).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

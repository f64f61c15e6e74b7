//! Access logs: which ones are on (MeshConfig and Telemetry resources, resolved once per
//! config), and the writers of the lines each request or L4 flow yields.
//!
//! The data path formats a line and hands it to a bounded channel with `try_send`; a
//! writer thread per file does the I/O. A sink that can't keep up (a full disk, a pipe
//! nobody reads) loses lines, counted in `gateway_access_log_dropped_total`, and never
//! slows traffic down.
use std::{
    collections::BTreeMap,
    io::Write as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
};

use super::AccessRecord;

mod compile;

pub use compile::{AccessLogConfig, Target, compile, compile_parts};

/// Lines a sink may have queued before new ones are dropped (`--access-log-buffer`).
pub const DEFAULT_BUFFER_LINES: usize = 4096;

// === writers ===

/// A file the access log is written to, by its own thread.
pub struct Sink {
    pub path: PathBuf,
    tx: SyncSender<String>,
    pub written: Arc<AtomicU64>,
    pub dropped: Arc<AtomicU64>,
    /// Lines queued, and lines the writer has finished with (written or failed): equal
    /// once the queue is empty.
    queued: AtomicU64,
    finished: Arc<AtomicU64>,
}

impl Sink {
    /// Starts the writer thread. The file is opened there, so that a FIFO without a
    /// reader (whose open blocks) can't hold up the start.
    pub fn start(path: PathBuf, capacity: usize) -> Sink {
        let (tx, rx) = sync_channel::<String>(capacity.max(1));
        let written = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let finished = Arc::new(AtomicU64::new(0));
        let (w, d, p) = (written.clone(), dropped.clone(), path.clone());
        let f = finished.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(p, rx, [w, d, f]));
        if let Err(e) = spawned {
            tracing::error!(path = %path.display(), "access log writer thread: {e}");
        }
        Sink {
            path,
            tx,
            written,
            dropped,
            queued: AtomicU64::new(0),
            finished,
        }
    }

    /// Queues a line; never blocks.
    pub fn send(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits (blocking, at most `within`) until the writer has taken care of every line
    /// queued so far: before the process exits.
    pub fn flush(&self, within: std::time::Duration) {
        let until = std::time::Instant::now() + within;
        while self.finished.load(Ordering::Relaxed) < self.queued.load(Ordering::Relaxed)
            && std::time::Instant::now() < until
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// `counters`: lines written, dropped, finished with.
fn write_loop(path: PathBuf, rx: Receiver<String>, counters: [Arc<AtomicU64>; 3]) {
    let [written, dropped, finished] = counters;
    enum Out {
        Stdout,
        Stderr,
        File(std::io::BufWriter<std::fs::File>),
    }
    // /dev/stdout is the process's fd 1 itself: reopening it would start at offset 0 of
    // a redirected file and overwrite what is there.
    let mut out = match path.to_str() {
        Some("/dev/stdout") => Out::Stdout,
        Some("/dev/stderr") => Out::Stderr,
        _ => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(f) => Out::File(std::io::BufWriter::with_capacity(64 * 1024, f)),
            Err(e) => {
                tracing::error!(path = %path.display(), "access log: cannot open: {e}; lines are dropped");
                for _ in rx {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    finished.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        },
    };
    let mut failed = false;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 256 {
                break;
            }
        }
        let n = batch.len() as u64;
        let result = match &mut out {
            // One write per line: a line never interleaves with the gateway's own log.
            Out::Stdout => {
                let mut o = std::io::stdout().lock();
                batch
                    .iter()
                    .try_for_each(|l| o.write_all(l.as_bytes()))
                    .and_then(|_| o.flush())
            }
            Out::Stderr => {
                let mut o = std::io::stderr().lock();
                batch.iter().try_for_each(|l| o.write_all(l.as_bytes()))
            }
            Out::File(f) => batch
                .iter()
                .try_for_each(|l| f.write_all(l.as_bytes()))
                .and_then(|_| f.flush()),
        };
        match result {
            Ok(()) => {
                written.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                dropped.fetch_add(n, Ordering::Relaxed);
                if !failed {
                    tracing::warn!(path = %path.display(), "access log write failed: {e}");
                    failed = true;
                }
            }
        }
        finished.fetch_add(n, Ordering::Relaxed);
    }
}

/// The access logs of a running gateway.
pub struct AccessLogs {
    pub targets: Vec<(Target, Arc<Sink>)>,
}

impl AccessLogs {
    pub fn off() -> AccessLogs {
        AccessLogs { targets: vec![] }
    }

    /// One sink per distinct path, shared by the targets writing there; a path `old`
    /// writes keeps its sink (no line of its queue lost, none written twice).
    pub fn start(config: AccessLogConfig, capacity: usize, old: &AccessLogs) -> AccessLogs {
        let mut sinks: BTreeMap<PathBuf, Arc<Sink>> = old
            .targets
            .iter()
            .map(|(t, s)| (t.path.clone(), s.clone()))
            .collect();
        let targets = config
            .targets
            .into_iter()
            .map(|t| {
                let sink = sinks
                    .entry(t.path.clone())
                    .or_insert_with(|| Arc::new(Sink::start(t.path.clone(), capacity)))
                    .clone();
                (t, sink)
            })
            .collect();
        AccessLogs { targets }
    }

    pub fn enabled(&self) -> bool {
        !self.targets.is_empty()
    }

    /// Whether these are the logs `config` turns on.
    pub fn is(&self, config: &AccessLogConfig) -> bool {
        self.targets
            .iter()
            .map(|(t, _)| t)
            .eq(config.targets.iter())
    }

    pub fn log(&self, r: &AccessRecord) {
        for (t, sink) in &self.targets {
            if t.filter.as_ref().is_none_or(|f| f.matches(r)) {
                sink.send(t.format.render(r));
            }
        }
    }

    /// Distinct sinks (for the metrics).
    pub fn sinks(&self) -> Vec<Arc<Sink>> {
        let mut seen: Vec<Arc<Sink>> = Vec::new();
        for (_, s) in &self.targets {
            if !seen.iter().any(|x| Arc::ptr_eq(x, s)) {
                seen.push(s.clone());
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests;

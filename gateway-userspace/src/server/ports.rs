//! The Gateway ports the process listens on, as Plans come and go: each port's accept
//! loops (one per worker) and its drain.
//!
//! A reload ([`crate::runtime::reload`]) compares the new Plan's ports with
//! [`Ports::served`]: a port new to it is bound on every worker and starts accepting
//! ([`crate::runtime::ports::start`]);
//! a port the new Plan lacks ([`Ports::remove`]) stops accepting at once (its sockets close, a new connect is refused) and its
//! connections drain as Envoy drains a removed listener (`ListenerManagerImpl::
//! drainListener`: the listener stops, its connections get the drain sequence, then are
//! closed when `--drain-duration` ends): HTTP/1.1 answers the request in flight with
//! `Connection: close`, HTTP/2 gets GOAWAY, and what is left at the deadline is closed.
//! A port in both keeps its sockets and its connections; the accept loop serves each
//! new connection by the Plan of the moment, so a changed listener (other servers,
//! other protocol) applies to the next connection.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::{runtime::Handle, task::JoinHandle};

use crate::sys::drain::Drain;

/// Every port's accept loops and drain.
pub struct Ports {
    /// Each served port's drain, looked up by connections (lock-free).
    drains: ArcSwap<BTreeMap<u16, Arc<Drain>>>,
    /// Accept loops per port: stopped through the port's drain.
    loops: Mutex<BTreeMap<u16, Vec<JoinHandle<()>>>>,
    /// The workers' runtimes (index = worker), once started.
    workers: OnceLock<Vec<Handle>>,
    /// For a connection on a port no longer registered: already draining.
    gone: Arc<Drain>,
}

impl Ports {
    pub fn new(process: &Drain) -> Ports {
        let gone = process.child();
        gone.start();
        Ports {
            drains: ArcSwap::default(),
            loops: Mutex::default(),
            workers: OnceLock::new(),
            gone: Arc::new(gone),
        }
    }

    /// The drain of `port`'s connections.
    pub fn drain_of(&self, port: u16) -> Arc<Drain> {
        self.drains
            .load()
            .get(&port)
            .cloned()
            .unwrap_or_else(|| self.gone.clone())
    }

    /// Ports accepting now.
    pub fn served(&self) -> Vec<u16> {
        self.drains.load().keys().copied().collect()
    }

    /// Registers `port`'s accept loops and the drain of its connections
    /// ([`crate::runtime::ports::start`] spawns them).
    pub fn register(&self, port: u16, drain: Arc<Drain>, loops: Vec<JoinHandle<()>>) {
        self.drains.rcu(|m| {
            let mut m = BTreeMap::clone(m);
            m.insert(port, drain.clone());
            m
        });
        lock(&self.loops).insert(port, loops);
    }

    /// The runtime of worker `worker` (None before the workers start: the caller's).
    pub fn worker(&self, worker: usize) -> Option<Handle> {
        self.workers.get()?.get(worker).cloned()
    }

    /// The worker runtimes new ports are served on.
    pub fn set_workers(&self, handles: Vec<Handle>) {
        let _ = self.workers.set(handles);
    }

    pub fn worker_count(&self) -> usize {
        self.workers.get().map_or(1, Vec::len)
    }

    /// Stops accepting on `port` now, and drains its connections for `duration`, then
    /// closes what remains (a task of its own).
    pub fn remove(&self, port: u16, duration: Duration) {
        let mut gone = None;
        self.drains.rcu(|m| {
            let mut m = BTreeMap::clone(m);
            gone = m.remove(&port);
            m
        });
        let loops = lock(&self.loops).remove(&port).unwrap_or_default();
        let Some(drain) = gone else { return };
        drain.start();
        tracing::info!(
            port,
            drain_duration = %humantime::format_duration(duration),
            "listener removed by reload: not accepting; its connections drain"
        );
        tokio::spawn(async move {
            for l in loops {
                let _ = l.await;
            }
            tokio::select! {
                () = tokio::time::sleep(duration) => {
                    tracing::info!(port, "removed listener's drain deadline: closing its remaining connections");
                    drain.close();
                }
                // The process drain closes everything itself.
                () = drain.closing() => {}
            }
        });
    }

    /// Every accept loop, to wait for when the process drains (they return once the
    /// drain has started).
    pub fn take_loops(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *lock(&self.loops))
            .into_values()
            .flatten()
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding it leaves plain data (handles) in a valid state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

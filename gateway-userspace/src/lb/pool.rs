//! A cluster's circuit breakers (DestinationRule `connectionPool`, as Istio sets
//! Envoy's `circuit_breakers.thresholds`), enforced the way Envoy's HTTP/1 connection
//! pool meets them (source/common/conn_pool/conn_pool_base.cc `newStreamImpl`,
//! `attachStreamToClient`):
//!
//! - `max_requests` (`http2MaxRequests`): a request beyond it overflows;
//! - `max_connections` (`tcp.maxConnections`): an upstream HTTP/1.1 connection
//!   carries one request at a time, so the requests in flight are the busy
//!   connections; a request that finds every allowed connection busy waits (pending);
//! - `max_pending_requests` (`http1MaxPendingRequests`): a request that would wait
//!   beyond it overflows.
//!
//! - `max_retries` (`http.maxRetries`): retries scheduled at once. Envoy holds a
//!   retry's slot while it waits out its back-off (router/retry_state_impl.cc,
//!   `enableBackoffTimer` .. `resetRetry`); a retry that finds none free is not made
//!   and the response at hand goes to the client with flag `UO`.
//!
//! Overflow is Envoy's `UO`: 503 at once. For a TCP route, `max_connections` caps the
//! connections to the cluster; one beyond it is closed (`UO`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::upstream_policy::CircuitBreakers;

#[derive(Debug)]
pub struct Pool {
    pub limits: CircuitBreakers,
    requests: Arc<AtomicU32>,
    pending: AtomicU32,
    connections: Arc<Semaphore>,
    retries: Arc<AtomicU32>,
    /// Retries not made for `max_retries` (Envoy `upstream_rq_retry_overflow`).
    pub retry_overflows: AtomicU64,
    /// Requests (or TCP connections) refused (Envoy `upstream_rq_pending_overflow`,
    /// `upstream_cx_overflow`).
    pub overflows: AtomicU64,
}

/// A request (or connection) let through; holds its slots until dropped.
#[derive(Debug)]
pub struct Admission {
    requests: Arc<AtomicU32>,
    _connection: OwnedSemaphorePermit,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A retry waiting out its back-off; frees its slot when dropped.
#[derive(Debug)]
pub struct RetrySlot(Arc<AtomicU32>);

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Pending<'a>(&'a AtomicU32);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The circuit breaker tripped (`UO`).
#[derive(Debug)]
pub struct Overflow;

impl Pool {
    pub fn new(limits: CircuitBreakers) -> Pool {
        let permits = (limits.max_connections as usize).min(Semaphore::MAX_PERMITS);
        Pool {
            limits,
            requests: Arc::new(AtomicU32::new(0)),
            pending: AtomicU32::new(0),
            connections: Arc::new(Semaphore::new(permits)),
            retries: Arc::new(AtomicU32::new(0)),
            retry_overflows: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
        }
    }

    fn overflow(&self) -> Result<Admission, Overflow> {
        self.overflows.fetch_add(1, Ordering::Relaxed);
        Err(Overflow)
    }

    /// Admits an HTTP request: at once, after waiting for a connection, or not.
    pub async fn admit(&self) -> Result<Admission, Overflow> {
        if self.requests.load(Ordering::Relaxed) >= self.limits.max_requests {
            return self.overflow();
        }
        let permit = match self.connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let waiting = self.pending.fetch_add(1, Ordering::Relaxed);
                // Counted pending until this returns or is dropped (the client left).
                let _pending = Pending(&self.pending);
                if waiting >= self.limits.max_pending_requests {
                    return self.overflow();
                }
                match self.connections.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return self.overflow(),
                }
            }
        };
        Ok(self.admitted(permit))
    }

    /// A slot for a retry's back-off, or `None` when `max_retries` are waiting.
    pub fn retry(&self) -> Option<RetrySlot> {
        let limit = self.limits.max_retries;
        let taken = self
            .retries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            self.retry_overflows.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(RetrySlot(self.retries.clone()))
    }

    /// Admits a TCP connection: a free connection slot or nothing.
    pub fn admit_connection(&self) -> Result<Admission, Overflow> {
        match self.connections.clone().try_acquire_owned() {
            Ok(p) => Ok(self.admitted(p)),
            Err(_) => self.overflow(),
        }
    }

    fn admitted(&self, permit: OwnedSemaphorePermit) -> Admission {
        self.requests.fetch_add(1, Ordering::Relaxed);
        Admission {
            requests: self.requests.clone(),
            _connection: permit,
        }
    }
}

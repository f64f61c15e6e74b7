//! A backend that records every request it is sent, body included, and answers each
//! with `200` and `x-backend: <name>` (body `<name>`), after an optional delay: the
//! primary and mirror upstreams of `tests/tests/cors_mirror.rs`.
use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, header::HeaderValue, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinHandle};

/// One request as the recorder received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the request head arrived.
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running recorder; stops (with its connections) when dropped.
pub struct Recorder {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    /// Binds `addr` on the current runtime (run it on a namespace's runtime); every
    /// answer waits `delay` first.
    pub async fn start(addr: SocketAddr, name: &str, delay: Duration) -> io::Result<Recorder> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let name: Arc<str> = name.into();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((s, _)) = accepted else { continue };
                        let (log, name) = (log.clone(), name.clone());
                        conns.spawn(async move {
                            let svc = service_fn(move |req| {
                                record(req, log.clone(), name.clone(), delay)
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(s), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(Recorder { addr, seen, task })
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits (up to `within`) until `n` requests have arrived; returns them.
    pub fn wait_count(&self, n: usize, within: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + within;
        loop {
            let all = self.seen();
            if all.len() >= n {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "recorder: {} of {n} requests within {within:?}: {all:#?}",
                all.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

async fn record(
    req: Request<Incoming>,
    log: Arc<Mutex<Vec<Recorded>>>,
    name: Arc<str>,
    delay: Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    log.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or("/".into(), |p| p.to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        at,
    });
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut resp = Response::new(Full::new(Bytes::from(name.to_string())));
    if let Ok(v) = HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-backend", v);
    }
    Ok(resp)
}

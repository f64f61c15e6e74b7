//! A backend that accepts any HTTP/1.1 upgrade, the way a server that speaks h2c or
//! WebSocket would, and records everything it was sent: what an attacker who smuggles
//! a request past the gateway would reach.
//!
//! - A request offering an upgrade (`Connection: upgrade` + `Upgrade: X`) gets
//!   `101 Switching Protocols` with `Upgrade: X`; after it, bytes are echoed back and
//!   recorded as tunnelled.
//! - A request for a path starting `/unasked` gets a 101 (`Upgrade: h2c`) whatever it
//!   asked: the probe then records whether the gateway closed that connection.
//! - Any other request gets `200` with a JSON body of the request line and headers, on
//!   a keep-alive connection.
use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// One request as the probe read it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// `GET /path HTTP/1.1`.
    pub request_line: String,
    /// Lowercase names, in order.
    pub headers: Vec<(String, String)>,
    /// The probe answered 101.
    pub switched: bool,
    /// Bytes that arrived after the 101.
    pub tunnelled: Vec<u8>,
    /// After an unasked 101: whether the gateway closed the connection (EOF or reset)
    /// within 10 s of it (None: still waiting).
    pub closed_after_switch: Option<bool>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.request_line.split_whitespace().nth(1).unwrap_or("")
    }
}

/// A running probe; stops when dropped.
pub struct UpgradeProbe {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for UpgradeProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UpgradeProbe {
    /// Binds `addr` on the current runtime (run it on a namespace's runtime).
    pub async fn start(addr: SocketAddr) -> io::Result<UpgradeProbe> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((s, _)) = accepted {
                            conns.spawn(serve(s, log.clone()));
                        }
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(UpgradeProbe { addr, seen, task })
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// True if any request line or tunnelled byte mentions `needle`.
    pub fn saw(&self, needle: &str) -> bool {
        self.seen().iter().any(|s| {
            s.request_line.contains(needle)
                || String::from_utf8_lossy(&s.tunnelled).contains(needle)
        })
    }

    /// Waits (up to `within`) for a request whose path starts with `path` and for
    /// `done` to hold on it.
    pub fn wait_for(&self, path: &str, within: Duration, done: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + within;
        loop {
            let all = self.seen();
            if let Some(s) = all.iter().rev().find(|s| s.path().starts_with(path))
                && done(s)
            {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "probe: no {path} request done within {within:?}: {all:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

async fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    Some(head)
}

async fn serve(mut s: TcpStream, log: Arc<Mutex<Vec<Seen>>>) {
    loop {
        let Some(head) = read_head(&mut s).await else {
            return;
        };
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut lines = text.split("\r\n");
        let request_line = lines.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut seen = Seen {
            request_line,
            headers,
            ..Seen::default()
        };
        let offered = seen.header("upgrade").map(str::to_string).filter(|_| {
            seen.header("connection").is_some_and(|c| {
                c.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        });
        let index = {
            let mut l = log.lock().unwrap();
            l.push(seen.clone());
            l.len() - 1
        };
        if seen.path().starts_with("/unasked") {
            seen.switched = true;
            log.lock().unwrap()[index].switched = true;
            let _ = s
                .write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
                )
                .await;
            // The gateway must close this connection: it did not ask for the switch.
            let mut buf = [0u8; 4096];
            let closed = loop {
                match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break true,
                    Ok(Ok(n)) => log.lock().unwrap()[index]
                        .tunnelled
                        .extend_from_slice(&buf[..n]),
                    Err(_) => break false,
                }
            };
            log.lock().unwrap()[index].closed_after_switch = Some(closed);
            return;
        }
        if let Some(proto) = offered {
            log.lock().unwrap()[index].switched = true;
            let reply = format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {proto}\r\nx-backend: upgrade-probe\r\n\r\n"
            );
            if s.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        log.lock().unwrap()[index]
                            .tunnelled
                            .extend_from_slice(&buf[..n]);
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let headers: serde_json::Map<String, serde_json::Value> = seen
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let body = serde_json::json!({
            "request_line": seen.request_line,
            "headers": headers,
        })
        .to_string();
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-backend: upgrade-probe\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

//! HTTP timeouts a hostile or broken client runs into (issue 10), with Envoy's meaning
//! and defaults: the stream idle timeout while a request body is read (slow POST: 408,
//! flag `SI`), the HTTP/2 connection idle timeout (GOAWAY once no stream has been open
//! for it), and HTTP/2 keep-alive PINGs (a client that never answers is closed). Each
//! runs with short timeouts set by flags; the defaults (5 min, 1 h, off) are Envoy's.
mod http_common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use gateway_tests::netns::{NetNs, privileged};
use http_common::*;

const WEB: &str = "webapp.istioinaction.io";

fn env(ns: &NetNs, extra: &[&str]) -> (Backends, gateway_tests::gateway::GatewayProc) {
    let b = start_backends(ns, vec![App::Http(18080, "webapp")]);
    let gw = start_gateway_with(
        ns,
        &[
            &config("coolstore-gateway.yaml"),
            &config("secrets.yaml"),
            &config("service-entries.yaml"),
        ],
        extra,
    );
    (b, gw)
}

/// Sends `head`, then the body bytes one chunk at a time with `gap` between chunks,
/// then reads until the gateway closes (at most `read_for`). Returns the response text.
fn post(
    ns: &NetNs,
    head: String,
    chunks: Vec<Vec<u8>>,
    gap: Duration,
    read_for: Duration,
) -> String {
    ns.run(move || {
        let mut s = TcpStream::connect("127.0.0.1:80").unwrap();
        s.write_all(head.as_bytes()).unwrap();
        for c in chunks {
            std::thread::sleep(gap);
            // The gateway may already have answered and closed: keep reading then.
            if s.write_all(&c).is_err() {
                break;
            }
        }
        s.set_read_timeout(Some(read_for)).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
}

#[test]
fn slow_post_gets_408_after_the_stream_idle_timeout() {
    if !privileged("slow_post_gets_408_after_the_stream_idle_timeout") {
        return;
    }
    let ns = NetNs::new("http-slowpost");
    let (_b, gw) = env(&ns, &["--stream-idle-timeout", "2s"]);

    // A large body (streamed upstream) and a small one (buffered for retries): each
    // client sends 10 bytes and then nothing. Envoy: 408 "stream timeout", flag SI,
    // details stream_idle_timeout, and the connection closed.
    for (i, len) in [(0, 1_000_000u64), (1, 1_000)] {
        let head = format!(
            "POST /slow/{i} HTTP/1.1\r\nHost: {WEB}\r\nx-request-id: slow-{i}\r\nContent-Length: {len}\r\n\r\n0123456789"
        );
        let resp = post(
            &ns,
            head,
            Vec::new(),
            Duration::ZERO,
            Duration::from_secs(20),
        );
        assert!(
            resp.starts_with("HTTP/1.1 408"),
            "body of {len} bytes stalled after 10: got {resp:?}\n{}",
            gw.log()
        );
        assert!(resp.contains("stream timeout"), "{resp}");
        let line = log_line(&gw, &format!("slow-{i}"));
        assert!(line.contains("response_flags=SI"), "{line}");
        assert!(line.contains("stream_idle_timeout"), "{line}");
        assert!(line.contains("bytes_received=10 "), "{line}");
        // Not before the timeout: the gateway's own clock for the request.
        let took = duration_of(&line);
        assert!(
            took >= Duration::from_millis(1900),
            "answered after {took:?}: {line}"
        );
    }

    // A slow but steady sender is not idle: 12 bytes, one every 500 ms (6 s in all,
    // three times the idle timeout) reach the upstream whole.
    let head = format!(
        "POST /steady HTTP/1.1\r\nHost: {WEB}\r\nx-request-id: steady\r\nContent-Length: 12\r\nConnection: close\r\n\r\n"
    );
    let chunks = (0..12).map(|i| vec![b'a' + i as u8]).collect();
    let resp = post(
        &ns,
        head,
        chunks,
        Duration::from_millis(500),
        Duration::from_secs(20),
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "steady sender: {resp:?}");
    assert!(resp.contains("\"body_bytes\":12"), "{resp}");
    let line = log_line(&gw, "steady");
    assert!(line.contains("response_flags=-"), "{line}");
    assert!(duration_of(&line) >= Duration::from_secs(5), "{line}");
}

/// An h2c client on :80 that runs `f` with the connection and reports whether the
/// gateway closed the connection within `close_within` after `f` returned.
fn h2_session<F, Fut>(ns: &NetNs, close_within: Duration, f: F) -> (Fut::Output, Option<Duration>)
where
    F: FnOnce(h2::client::SendRequest<bytes::Bytes>) -> Fut + Send + 'static,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    ns.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let tcp = tokio::net::TcpStream::connect("127.0.0.1:80")
                    .await
                    .unwrap();
                let (client, conn) = h2::client::handshake(tcp).await.unwrap();
                let conn = tokio::spawn(conn);
                // h2's client connection ends by itself once every handle is dropped:
                // hold one, so only the gateway can end it.
                let keep = client.clone();
                let out = f(client).await;
                let t = Instant::now();
                let closed = tokio::time::timeout(close_within, conn)
                    .await
                    .is_ok()
                    .then(|| t.elapsed());
                drop(keep);
                (out, closed)
            })
    })
}

async fn get(client: h2::client::SendRequest<bytes::Bytes>, path: &str) -> u16 {
    let mut client = client.ready().await.unwrap();
    let req = hyper::Request::get(format!("http://{WEB}{path}"))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    status
}

#[test]
fn idle_h2_connections_are_closed_after_the_idle_timeout() {
    if !privileged("idle_h2_connections_are_closed_after_the_idle_timeout") {
        return;
    }
    let ns = NetNs::new("http-h2idle");
    let (_b, gw) = env(&ns, &["--http-idle-timeout", "2s"]);

    // One request, then nothing: GOAWAY and close about 2 s later.
    let (status, closed) = h2_session(&ns, Duration::from_secs(10), |c| async move {
        get(c, "/first").await
    });
    assert_eq!(status, 200);
    let closed = closed.unwrap_or_else(|| {
        panic!(
            "idle HTTP/2 connection still open 10 s after its last stream:\n{}",
            gw.log()
        )
    });
    assert!(
        closed >= Duration::from_millis(1500),
        "closed {closed:?} after the last stream: before the idle timeout"
    );

    // A stream that lasts twice the idle timeout is not cut: the connection is idle
    // only while no stream is open.
    let (status, closed) = h2_session(&ns, Duration::from_secs(10), |c| async move {
        get(c, "/delay/4000").await
    });
    assert_eq!(
        status, 200,
        "a 4 s stream on a connection with a 2 s idle timeout"
    );
    assert!(
        closed.is_some(),
        "not closed once idle after the long stream"
    );
    let line = log_line_with(&gw, "path=/delay/4000");
    assert!(line.contains("status=200"), "{line}");
}

/// Reads HTTP/2 frames from a raw h2c connection for up to `read_for`, acknowledging
/// the server's SETTINGS but never its PINGs. Returns (PINGs received, whether the
/// gateway closed the connection).
fn silent_h2_client(ns: &NetNs, read_for: Duration) -> (usize, bool) {
    ns.run(move || {
        let mut s = TcpStream::connect("127.0.0.1:80").unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap(); // empty SETTINGS
        let deadline = Instant::now() + read_for;
        let mut pings = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (pings, false);
            }
            s.set_read_timeout(Some(left)).unwrap();
            let mut head = [0u8; 9];
            match s.read_exact(&mut head) {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return (pings, false);
                }
                // EOF or reset: the gateway closed the connection.
                Err(_) => return (pings, true),
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).is_err() {
                return (pings, true);
            }
            match (head[3], head[4] & 1) {
                // SETTINGS (not an ACK): acknowledge it, as any client must.
                (4, 0) => {
                    let _ = s.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]);
                }
                // PING (not an ACK): counted, never answered.
                (6, 0) => pings += 1,
                _ => {}
            }
        }
    })
}

#[test]
fn h2_keepalive_pings_close_a_client_that_never_answers() {
    if !privileged("h2_keepalive_pings_close_a_client_that_never_answers") {
        return;
    }
    // Off by default (Envoy's connection_keepalive is unset in Istio): no PING, and the
    // silent client's connection stays open.
    {
        let ns = NetNs::new("http-h2ping0");
        let (_b, _gw) = env(&ns, &[]);
        let (pings, closed) = silent_h2_client(&ns, Duration::from_secs(3));
        assert_eq!(
            (pings, closed),
            (0, false),
            "keep-alive PINGs are off by default"
        );
    }

    let ns = NetNs::new("http-h2ping");
    let (_b, gw) = env(
        &ns,
        &[
            "--http2-keepalive-interval",
            "1s",
            "--http2-keepalive-timeout",
            "1s",
        ],
    );
    let t = Instant::now();
    let (pings, closed) = silent_h2_client(&ns, Duration::from_secs(15));
    assert!(pings >= 1, "no PING in 15 s:\n{}", gw.log());
    assert!(
        closed,
        "a client that never answers PINGs is still connected after 15 s ({pings} PINGs)"
    );
    eprintln!(
        "closed after {:?} and {pings} unanswered PING(s)",
        t.elapsed()
    );
}

//! HTTP/1.1 upgrades as Envoy (and so Istio's gateway) handles them: which `Upgrade`
//! offers are tunnelled, which are stripped, which are refused, and the tunnel itself.
//!
//! - `Upgrade: h2c` is removed with `HTTP2-Settings` and their `Connection` tokens, and
//!   the request goes on as plain HTTP/1.1 (Envoy's HTTP/1 codec,
//!   `ConnectionImpl::onHeadersCompleteBase` in source/common/http/http1/codec_impl.cc:
//!   "removing unsupported h2c upgrade headers"). Otherwise a backend that accepts h2c
//!   would get a raw connection past routing and AuthorizationPolicy (h2c smuggling).
//! - Any other offer is tunnelled only if its whole `Upgrade` value equals a configured
//!   upgrade type, ignoring case (`createUpgradeFilterChain` in
//!   source/extensions/filters/network/http_connection_manager/config.cc looks the value
//!   up in a case-insensitive map; Istio configures `websocket`). A request whose offer
//!   is not configured gets 403 with details `upgrade_failed` and its connection is
//!   closed (source/common/http/conn_manager_impl.cc, `decodeHeaders`: "refuse to process
//!   any further requests on this connection, to avoid a class of HTTP/1.1 smuggling
//!   bugs").
//! - An upstream's 101 counts only for a request that made a permitted offer (Envoy's
//!   `ClientConnectionImpl::upgradeAllowed`); see `upstream::respond_upstream`.
use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::{
    HeaderMap, Version,
    header::{self, HeaderName, HeaderValue},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use crate::server::options::{DEFAULT_UPGRADE_IDLE_TIMEOUT, WEBSOCKET};

/// `--upgrade-type NAME`: one token, compared ignoring case. `h2c` is refused: it is
/// always stripped, as Envoy's HTTP/1 codec does before any upgrade config is consulted.
pub fn parse_upgrade_type(s: &str) -> Result<String, String> {
    let t = s.trim().to_ascii_lowercase();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
        return Err(format!(
            "expected one upgrade token like websocket or CONNECT, got {s:?}"
        ));
    }
    if t == "h2c" {
        return Err(
            "h2c upgrades are always stripped (served as HTTP/1.1), never tunnelled".into(),
        );
    }
    Ok(t)
}

/// What a request's `Upgrade` offer becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// No upgrade (no `Upgrade`, no `upgrade` token in `Connection`, or not HTTP/1.1).
    None,
    /// `Upgrade: h2c` was stripped: an ordinary HTTP/1.1 request.
    H2cStripped,
    /// A configured type: forwarded with `Connection: upgrade`, tunnelled on a 101.
    Permitted(HeaderValue),
    /// Not configured: 403 `upgrade_failed`, connection closed. Holds the offer.
    Refused(String),
}

impl Offer {
    /// True when the client asked to switch protocols with an offer that was not
    /// stripped: if no tunnel follows, the connection must not carry another request
    /// (bytes after such a request may be upgrade payload, not HTTP).
    pub fn closes_unless_tunnelled(&self) -> bool {
        matches!(self, Offer::Permitted(_) | Offer::Refused(_))
    }
}

/// True if one of the comma-separated tokens of `Connection` is `token`.
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Classifies the request's upgrade offer; an h2c offer is stripped from `headers`
/// here. `types` are lowercase.
pub fn classify(version: Version, headers: &mut HeaderMap, types: &[String]) -> Offer {
    // Envoy's Utility::isUpgrade: an `Upgrade` header and an `upgrade` token in
    // `Connection`. Without both, `Upgrade` is just a hop-by-hop header to drop.
    if version != Version::HTTP_11
        || !headers.contains_key(header::UPGRADE)
        || !connection_has(headers, "upgrade")
    {
        return Offer::None;
    }
    // Several `Upgrade` lines are one comma-separated value; the whole of it is the
    // offer, as Envoy compares it: `h2c, foo` is neither `h2c` nor `foo`.
    let value = headers
        .get_all(header::UPGRADE)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if value.eq_ignore_ascii_case("h2c") {
        strip_h2c(headers);
        return Offer::H2cStripped;
    }
    if types.iter().any(|t| value.eq_ignore_ascii_case(t)) {
        match HeaderValue::from_str(&value) {
            Ok(v) => Offer::Permitted(v),
            Err(_) => Offer::Refused(value),
        }
    } else {
        Offer::Refused(value)
    }
}

/// Removes an h2c offer: `Upgrade`, `HTTP2-Settings`, and the `upgrade` and
/// `http2-settings` tokens of `Connection` (the header goes if nothing is left).
pub fn strip_h2c(headers: &mut HeaderMap) {
    headers.remove(header::UPGRADE);
    headers.remove(HeaderName::from_static("http2-settings"));
    let rest: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case("upgrade")
                && !t.eq_ignore_ascii_case("http2-settings")
        })
        .map(str::to_string)
        .collect();
    headers.remove(header::CONNECTION);
    if !rest.is_empty()
        && let Ok(v) = HeaderValue::from_str(&rest.join(", "))
    {
        headers.insert(header::CONNECTION, v);
    }
}

// === the tunnel ===

/// Copies bytes both ways between the client's and the upstream's upgraded connections
/// until either side closes, or no byte moved for `idle` (then both are closed).
pub async fn run_tunnel(
    down: hyper::upgrade::OnUpgrade,
    up: hyper::upgrade::OnUpgrade,
    idle: Option<Duration>,
    request_id: String,
    closing: tokio_util::sync::CancellationToken,
) {
    let (down, up) = match tokio::try_join!(down, up) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::info!(target: "gateway::http", request_id, "upgrade failed: {e}");
            return;
        }
    };
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut down = Activity {
        inner: hyper_util::rt::TokioIo::new(down),
        start,
        last: last.clone(),
    };
    let mut up = Activity {
        inner: hyper_util::rt::TokioIo::new(up),
        start,
        last: last.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
    let watchdog = async {
        let Some(idle) = idle else {
            return std::future::pending::<Duration>().await;
        };
        loop {
            let active_at = start + Duration::from_millis(last.load(Ordering::Relaxed));
            let quiet = active_at.elapsed();
            if quiet >= idle {
                return quiet;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    };
    tokio::select! {
        copied = copy => match copied {
            Ok((sent, received)) => tracing::info!(
                target: "gateway::http",
                request_id,
                bytes_to_upstream = sent,
                bytes_to_downstream = received,
                "upgraded connection closed"
            ),
            Err(e) => {
                tracing::info!(target: "gateway::http", request_id, "upgraded connection ended: {e}")
            }
        },
        quiet = watchdog => tracing::info!(
            target: "gateway::http",
            request_id,
            idle_ms = quiet.as_millis() as u64,
            "upgraded connection closed: idle timeout"
        ),
        () = closing.cancelled() => tracing::info!(
            target: "gateway::http",
            request_id,
            "upgraded connection closed: drain_timeout"
        ),
    }
}

/// Stamps the time of the last byte read or written (milliseconds since `start`).
struct Activity<IO> {
    inner: IO,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<IO> Activity<IO> {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Activity<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Activity<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn types() -> Vec<String> {
        crate::http::HttpOptions::default().upgrade_types
    }

    #[test]
    fn h2c_is_stripped_with_its_settings_and_connection_tokens() {
        let mut h = headers(&[
            ("connection", "Upgrade, HTTP2-Settings, keep-alive"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
            ("x-kept", "1"),
        ]);
        assert_eq!(
            classify(Version::HTTP_11, &mut h, &types()),
            Offer::H2cStripped
        );
        assert!(!h.contains_key("upgrade"));
        assert!(!h.contains_key("http2-settings"));
        assert_eq!(h["connection"], "keep-alive");
        assert!(h.contains_key("x-kept"));
        // Case does not matter; `Connection` goes when nothing is left of it.
        let mut h = headers(&[("connection", "upgrade"), ("upgrade", "H2C")]);
        assert_eq!(
            classify(Version::HTTP_11, &mut h, &types()),
            Offer::H2cStripped
        );
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn only_configured_types_are_permitted_whole_value_ignoring_case() {
        for v in ["websocket", "WebSocket", "WEBSOCKET"] {
            let mut h = headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", v)]);
            assert!(
                matches!(
                    classify(Version::HTTP_11, &mut h, &types()),
                    Offer::Permitted(_)
                ),
                "{v}"
            );
        }
        for v in [
            "foo",
            "h2c, websocket",
            "websocket, h2c",
            "websocket/13",
            "TLS/1.2",
        ] {
            let mut h = headers(&[("connection", "upgrade"), ("upgrade", v)]);
            assert_eq!(
                classify(Version::HTTP_11, &mut h, &types()),
                Offer::Refused(v.to_string()),
                "{v}"
            );
        }
        // Two Upgrade lines are one offer of two tokens.
        let mut h = headers(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("upgrade", "h2c"),
        ]);
        assert_eq!(
            classify(Version::HTTP_11, &mut h, &types()),
            Offer::Refused("websocket, h2c".into())
        );
        // A type added on the command line.
        let mut more = types();
        more.push(parse_upgrade_type("Foo").unwrap());
        let mut h = headers(&[("connection", "upgrade"), ("upgrade", "FOO")]);
        assert!(matches!(
            classify(Version::HTTP_11, &mut h, &more),
            Offer::Permitted(_)
        ));
    }

    #[test]
    fn no_offer_without_both_headers_or_on_other_versions() {
        let mut h = headers(&[("upgrade", "websocket")]);
        assert_eq!(classify(Version::HTTP_11, &mut h, &types()), Offer::None);
        let mut h = headers(&[("connection", "upgrade")]);
        assert_eq!(classify(Version::HTTP_11, &mut h, &types()), Offer::None);
        let mut h = headers(&[("connection", "upgrade"), ("upgrade", "h2c")]);
        assert_eq!(classify(Version::HTTP_10, &mut h, &types()), Offer::None);
    }

    #[test]
    fn upgrade_type_flag_values() {
        assert_eq!(parse_upgrade_type("CONNECT-UDP"), Ok("connect-udp".into()));
        for bad in ["", "h2c", "H2C", "a,b", "a b"] {
            assert!(parse_upgrade_type(bad).is_err(), "{bad:?}");
        }
    }
}

//! A request's hash for a consistent-hash cluster (Envoy's route `hash_policy`, which
//! Istio builds from `consistentHash`: envoy source/common/http/hash_policy.cc), and
//! the cookie Envoy generates when the hash cookie is absent and a ttl is set
//! (`Router::Filter::addDownstreamSetCookie`).

use std::net::SocketAddr;
use std::time::Duration;

use hyper::HeaderMap;
use hyper::header::{self, HeaderValue};

use crate::config::dest_rules::HashKey;
use crate::lb::hash;

/// The hash, and the `Set-Cookie` to add to the upstream's response (if generated).
#[derive(Debug, Default, PartialEq)]
pub struct RequestHash {
    pub hash: Option<u64>,
    pub set_cookie: Option<HeaderValue>,
}

pub fn request_hash(
    key: &HashKey,
    headers: &HeaderMap,
    path_and_query: &str,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) -> RequestHash {
    let hashed = |v: &[u8]| RequestHash {
        hash: Some(hash(v)),
        set_cookie: None,
    };
    match key {
        HashKey::Header(name) => headers
            .get(name.as_str())
            .map(|v| hashed(v.as_bytes()))
            .unwrap_or_default(),
        HashKey::SourceIp => hashed(peer.ip().to_string().as_bytes()),
        HashKey::QueryParameter(name) => query_param(path_and_query, name)
            .map(|v| hashed(v.as_bytes()))
            .unwrap_or_default(),
        HashKey::Cookie { name, path, ttl } => {
            if let Some(v) = cookie(headers, name) {
                return hashed(v.as_bytes());
            }
            let Some(ttl) = ttl else {
                return RequestHash::default();
            };
            // Envoy: hex of xxHash64(downstream remote address + local address), so
            // the streams of one connection get the same cookie.
            let local = local.map(|l| l.to_string()).unwrap_or_default();
            let value = format!("{:016x}", hash(format!("{peer}{local}").as_bytes()));
            RequestHash {
                hash: Some(hash(value.as_bytes())),
                set_cookie: HeaderValue::from_str(&set_cookie(name, &value, path.as_deref(), *ttl))
                    .ok(),
            }
        }
    }
}

/// `Http::Utility::makeSetCookieValue`: `name="value"; Max-Age=N; Path=p; HttpOnly`
/// (no Max-Age for a zero ttl: a session cookie).
fn set_cookie(name: &str, value: &str, path: Option<&str>, ttl: Duration) -> String {
    let mut s = format!("{name}=\"{value}\"");
    if ttl.as_secs() > 0 {
        s.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if let Some(p) = path {
        s.push_str(&format!("; Path={p}"));
    }
    s.push_str("; HttpOnly");
    s
}

/// The first cookie called `name` (quotes around the value removed, as Envoy's
/// `parseCookieValue`).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
        })
}

/// The first value of query parameter `name` (as sent, not decoded).
fn query_param<'a>(path_and_query: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path_and_query.split_once('?')?;
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').find_map(|kv| match kv.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        None if kv == name => Some(""),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "10.0.0.1:5555".parse().unwrap()
    }

    #[test]
    fn header_query_source_ip() {
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("alice"));
        let k = HashKey::Header("x-user".into());
        assert_eq!(
            request_hash(&k, &h, "/", peer(), None).hash,
            Some(hash(b"alice"))
        );
        assert_eq!(
            request_hash(&k, &HeaderMap::new(), "/", peer(), None).hash,
            None
        );
        let q = HashKey::QueryParameter("u".into());
        assert_eq!(
            request_hash(&q, &h, "/p?a=1&u=bob&u=x", peer(), None).hash,
            Some(hash(b"bob"))
        );
        assert_eq!(request_hash(&q, &h, "/p?a=1", peer(), None).hash, None);
        let ip = request_hash(&HashKey::SourceIp, &h, "/", peer(), None);
        assert_eq!(ip.hash, Some(hash(b"10.0.0.1")));
    }

    #[test]
    fn cookie_present_absent_generated() {
        let k = HashKey::Cookie {
            name: "sess".into(),
            path: Some("/".into()),
            ttl: Some(Duration::from_secs(60)),
        };
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; sess=\"abc\""),
        );
        let r = request_hash(&k, &h, "/", peer(), None);
        assert_eq!(
            r,
            RequestHash {
                hash: Some(hash(b"abc")),
                set_cookie: None
            }
        );

        let local = Some("10.0.0.2:80".parse().unwrap());
        let r = request_hash(&k, &HeaderMap::new(), "/", peer(), local);
        let value = format!("{:016x}", hash(b"10.0.0.1:555510.0.0.2:80"));
        assert_eq!(r.hash, Some(hash(value.as_bytes())));
        assert_eq!(
            r.set_cookie.unwrap().to_str().unwrap(),
            format!("sess=\"{value}\"; Max-Age=60; Path=/; HttpOnly")
        );
        // A zero ttl: a session cookie; no ttl: nothing generated.
        let k0 = HashKey::Cookie {
            name: "s".into(),
            path: None,
            ttl: Some(Duration::ZERO),
        };
        let r = request_hash(&k0, &HeaderMap::new(), "/", peer(), None);
        assert!(
            r.set_cookie
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with("\"; HttpOnly")
        );
        let kn = HashKey::Cookie {
            name: "s".into(),
            path: None,
            ttl: None,
        };
        assert_eq!(
            request_hash(&kn, &HeaderMap::new(), "/", peer(), None),
            RequestHash::default()
        );
    }
}

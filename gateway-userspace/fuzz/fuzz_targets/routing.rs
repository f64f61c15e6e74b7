//! HTTP route matching and rewriting (`http::routing`) on arbitrary requests, against the
//! route tables of fixed configs built once: tests/fixtures/http/routing.yaml, the demo
//! config in config/, and fuzz/fixtures/rewrites.yaml (every rewrite/redirect shape).
//!
//! Input: an HTTP/1-style head, `METHOD SP request-target [SP ...]` then `name: value`
//! lines; what hyper would refuse (bad method, target, header name or value) is skipped.
//! Each request goes through the same steps as `http::proxy::route_request`, on every
//! table (as plain HTTP, and as HTTPS on TLS ports):
//! - nothing panics;
//! - a route found by `find_route` accepts the request (the block it names does);
//! - a redirect's `Location` is a valid header value and an absolute URI whose host is
//!   the one meant (the redirect's `authority`, else the request's host): the request
//!   cannot move a redirect to another host;
//! - a forwarded request's rewritten path and query make a valid upstream URI with the
//!   endpoint as its authority, and its `Host` is a valid header value.
#![no_main]

use std::{net::SocketAddr, str::FromStr, sync::OnceLock};

use gateway::{
    config::{GatewayIdentity, ListenerProtocol, ServerKind, load},
    plan::routing::{
        Action, RequestView, RouteTable, StrMatch, build_table, find_route, find_vhost, host_score,
        https_redirect_location, normalize_host, pick_weighted, redirect_location, rewrite_path,
        server_hosts, total_weight, valid_request_host,
    },
};
use hyper::{
    HeaderMap, Method, Uri,
    header::{self, HeaderName, HeaderValue},
};
use libfuzzer_sys::fuzz_target;

struct Table {
    what: String,
    port: u16,
    tls: bool,
    /// Host patterns of the HTTPS server (the 421 check).
    server_hosts: Vec<String>,
    table: RouteTable,
    /// Cluster name -> one endpoint (what upstream::forward puts in the URI).
    endpoints: std::collections::HashMap<String, SocketAddr>,
}

fn tables() -> &'static [Table] {
    static TABLES: OnceLock<Vec<Table>> = OnceLock::new();
    TABLES.get_or_init(|| {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let fixtures = [
            format!("{root}/tests/fixtures/http/routing.yaml"),
            format!("{root}/config"),
            format!("{}/fixtures/rewrites.yaml", env!("CARGO_MANIFEST_DIR")),
        ];
        let mut out = Vec::new();
        for f in fixtures {
            let snap = load(&[f.clone().into()], &GatewayIdentity::default())
                .unwrap_or_else(|e| panic!("fixture {f} does not load:\n{e}"));
            let endpoints: std::collections::HashMap<String, SocketAddr> = snap
                .clusters
                .iter()
                .map(|(name, c)| {
                    let ep = c.endpoints.first().copied();
                    (
                        name.clone(),
                        ep.unwrap_or_else(|| "127.0.0.1:1".parse().unwrap()),
                    )
                })
                .collect();
            for l in &snap.listeners {
                if l.protocol == ListenerProtocol::Http {
                    out.push(Table {
                        what: format!("{f} port {}", l.port),
                        port: l.port,
                        tls: false,
                        server_hosts: Vec::new(),
                        table: build_table(l, None).expect("fixture route table"),
                        endpoints: endpoints.clone(),
                    });
                }
                for (i, s) in l.servers.iter().enumerate() {
                    if s.kind == ServerKind::HttpsTerminate {
                        out.push(Table {
                            what: format!("{f} port {} server {i}", l.port),
                            port: l.port,
                            tls: true,
                            server_hosts: server_hosts(s),
                            table: build_table(l, Some(i)).expect("fixture route table"),
                            endpoints: endpoints.clone(),
                        });
                    }
                }
            }
        }
        assert!(
            out.len() >= 4,
            "fixtures gave only {} route tables",
            out.len()
        );
        out
    })
}

struct Req {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

/// The request head as hyper would hand it over, or None where hyper would refuse it.
fn parse(data: &[u8]) -> Option<Req> {
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let mut first = lines.next()?.split(|&b| b == b' ');
    let method = Method::from_bytes(first.next()?).ok()?;
    let uri = Uri::try_from(first.next()?).ok()?;
    let mut headers = HeaderMap::new();
    for line in lines.take(64) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    Some(Req {
        method,
        uri,
        headers,
    })
}

fuzz_target!(
    init: {
        tables();
    },
    |data: &[u8]| {
        let Some(req) = parse(data) else {
            return;
        };
        let r = data.iter().fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        for t in tables() {
            route(t, &req, r);
        }
    }
);

/// `http::proxy::route_request`'s decisions, step for step (authz and I/O left out).
fn route(t: &Table, req: &Req, r: u64) {
    // The authority: from the URI (HTTP/2, absolute-form), else the Host header.
    let Some(authority) = req
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
    else {
        return; // 400 missing host header
    };
    let host = normalize_host(&authority);
    if !valid_request_host(&host) {
        return; // 400 invalid authority
    }
    if t.tls
        && !t
            .server_hosts
            .iter()
            .any(|h| host_score(h, &host).is_some())
    {
        return; // 421
    }
    let Some(vhost) = find_vhost(&t.table, &host) else {
        return; // 404 NR
    };
    let scheme = if t.tls { "https" } else { "http" };
    let path_and_query = req
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    if vhost.https_redirect && !t.tls {
        let loc = https_redirect_location(&host, &path_and_query);
        check_location(t, &loc, &host);
        return;
    }
    let query = req.uri.query();
    let view = RequestView {
        method: req.method.as_str(),
        scheme,
        path: req.uri.path(),
        query,
        host: &host,
        port: t.port,
        headers: &req.headers,
    };
    let Some((route, matched)) = find_route(vhost, &view) else {
        return; // 404 NR
    };
    if let Some(i) = matched {
        assert!(
            route.matches[i].accepts(&view),
            "{}: route {} block {i} was chosen but does not accept the request",
            t.what,
            route.name.as_deref().unwrap_or("-")
        );
    }
    match &route.action {
        Action::Direct { .. } => {}
        Action::Redirect(rd) => {
            let loc = redirect_location(rd, scheme, &authority, req.uri.path(), query, t.port);
            let meant = rd.authority.clone().unwrap_or_else(|| host.clone());
            check_location(t, &loc, &meant);
        }
        Action::Forward(dests) => {
            let matched_prefix = matched
                .and_then(|i| route.matches.get(i))
                .and_then(|m| match &m.uri {
                    Some(StrMatch::Prefix(p)) => Some(p.as_str()),
                    _ => None,
                });
            let path = match &route.rewrite {
                Some(rw) => rewrite_path(req.uri.path(), rw, matched_prefix),
                None => req.uri.path().to_string(),
            };
            let total = total_weight(dests);
            let dest = if total == 0 {
                dests.first()
            } else {
                pick_weighted(dests, r % total)
            };
            let Some(dest) = dest else {
                return; // 404 route_has_no_destination
            };
            let path_and_query = match query {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let endpoint = t.endpoints[&dest.cluster];
            // A request-target that is not origin- or absolute-form ("*", authority-form)
            // has no path for the upstream URI; the proxy answers it with an error.
            if req.uri.path().starts_with('/') {
                let up = format!("http://{endpoint}{path_and_query}");
                let uri = Uri::from_str(&up).unwrap_or_else(|e| {
                    panic!(
                        "{}: route {}: upstream URI {up:?} is invalid: {e}",
                        t.what, route.name.as_deref().unwrap_or("-")
                    )
                });
                assert_eq!(
                    uri.authority().map(|a| a.as_str()),
                    Some(endpoint.to_string().as_str()),
                    "{}: route {}: upstream URI {up:?} names another authority",
                    t.what,
                    route.name.as_deref().unwrap_or("-")
                );
            }
            if route
                .rewrite
                .as_ref()
                .is_none_or(|rw| rw.authority.is_none())
            {
                assert!(
                    HeaderValue::from_str(&authority).is_ok(),
                    "{}: Host {authority:?} is not a header value",
                    t.what
                );
            }
            let mut headers = req.headers.clone();
            route.request_headers.apply(&mut headers);
            dest.request_headers.apply(&mut headers);
            let mut resp = HeaderMap::new();
            route.response_headers.apply(&mut resp);
            dest.response_headers.apply(&mut resp);
        }
    }
}

/// A `Location` the client will follow: a header value, an absolute URI, and the host
/// the route meant (the request must not be able to move it elsewhere).
fn check_location(t: &Table, loc: &str, meant_host: &str) {
    assert!(
        HeaderValue::from_str(loc).is_ok(),
        "{}: Location {loc:?} is not a header value (the redirect would go out without one)",
        t.what
    );
    let uri = Uri::from_str(loc)
        .unwrap_or_else(|e| panic!("{}: Location {loc:?} is not a URI: {e}", t.what));
    assert!(
        uri.scheme().is_some(),
        "{}: Location {loc:?} has no scheme",
        t.what
    );
    let host = uri.host().unwrap_or_default();
    assert!(
        host.eq_ignore_ascii_case(meant_host),
        "{}: Location {loc:?} goes to host {host:?}, not {meant_host:?}",
        t.what
    );
}

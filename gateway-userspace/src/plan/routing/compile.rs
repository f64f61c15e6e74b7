//! Building the route tables from the snapshot: a port's merged table or an HTTPS
//! server's own, every route compiled once per server it is bound to; a route that does
//! not compile is reported at the fields where it is written.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use hyper::{
    StatusCode,
    body::Bytes,
    header::{HeaderName, HeaderValue},
};
use regex::Regex;

use super::server_hosts;
use super::table::{
    Action, Destination, Fault, HeaderOps, Match, Redirect, RetryPolicy, Rewrite, Route,
    RouteTable, StrMatch, VirtualHost, header_name,
};
use crate::config::{
    ConfigError, HttpRouteEntry, Listener, ServerKind, ServerRef, WeightedCluster, hosts,
    istio::{self, HttpRoute, StringMatch},
};

/// The route table of an HTTP listener (all servers merged) or of one HTTPS server
/// (`only_server`), or what is wrong with every route that does not compile, each at
/// its field (`route_errors`).
pub fn build_table(
    listener: &Listener,
    only_server: Option<usize>,
) -> Result<RouteTable, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut table = TableBuilder::default();
    for vh in &listener.http {
        let vs_ns = vh.name.split('/').next().unwrap_or_default();
        for &si in &vh.servers {
            if only_server.is_some_and(|o| o != si) {
                continue;
            }
            let server = &listener.servers[si];
            let gw_ns = server.gateway.split('/').next().unwrap_or_default();
            let redirect = server.kind == ServerKind::Http
                && server.tls.as_ref().is_some_and(|t| t.https_redirect);
            let routes = compile_routes(
                vh.name.as_str(),
                &vh.routes,
                server,
                listener.port,
                &mut errors,
            );
            for written in &server.hosts {
                let (ns, shost) = hosts::split_server_host(written, gw_ns);
                let shost = shost.to_ascii_lowercase();
                if ns != "*" && ns != vs_ns {
                    continue;
                }
                for vhost in &vh.hosts {
                    if !hosts::intersects(vhost, &shost) {
                        continue;
                    }
                    // Istio's vhost domain is the narrower of the two names.
                    let domain = if hosts::covers(&shost, vhost) {
                        vhost.clone()
                    } else {
                        shost.clone()
                    };
                    table.add(domain, redirect, &vh.name, &routes);
                }
            }
        }
    }
    // A redirecting HTTP server redirects its hosts even where no VS is bound (Istio
    // builds the vhost from the server for `httpsRedirect`).
    if only_server.is_none() {
        for server in &listener.servers {
            if server.kind == ServerKind::Http
                && server.tls.as_ref().is_some_and(|t| t.https_redirect)
            {
                for h in server_hosts(server) {
                    if !table.by_domain.contains_key(&h) {
                        table.by_domain.insert(h.clone(), table.vhosts.len());
                        table.vhosts.push(VirtualHost {
                            domain: h,
                            https_redirect: true,
                            routes: Vec::new(),
                        });
                    }
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(RouteTable::new(table.vhosts))
}

/// A table being built: vhosts in first-seen order, found by domain in a map (a scan
/// per VS host made building 10 000 VirtualServices quadratic).
#[derive(Default)]
struct TableBuilder {
    vhosts: Vec<VirtualHost>,
    by_domain: HashMap<String, usize>,
    /// (vhost, VS) pairs whose routes are in (a VS that brought none may bring them
    /// through its next server).
    merged: HashSet<(usize, String)>,
}

impl TableBuilder {
    fn add(&mut self, domain: String, redirect: bool, vs: &str, routes: &[Arc<Route>]) {
        let i = match self.by_domain.get(&domain) {
            Some(&i) => i,
            None => {
                self.by_domain.insert(domain.clone(), self.vhosts.len());
                self.vhosts.push(VirtualHost {
                    domain,
                    https_redirect: false,
                    routes: Vec::new(),
                });
                self.vhosts.len() - 1
            }
        };
        let vh = &mut self.vhosts[i];
        vh.https_redirect |= redirect;
        // The same VS reached through a second server: its routes are there already.
        let key = (i, vs.to_string());
        if self.merged.contains(&key) || routes.is_empty() {
            return;
        }
        self.merged.insert(key);
        vh.routes.extend(routes.iter().cloned());
    }
}

/// Compiles a VS's routes for one server: match blocks whose `gateways` or `port`
/// exclude this server are dropped, and a route left with no block is dropped. A route
/// that does not compile is left out and its errors go to `errors`.
fn compile_routes(
    vs: &str,
    entries: &[HttpRouteEntry],
    server: &ServerRef,
    port: u16,
    errors: &mut Vec<ConfigError>,
) -> Vec<Arc<Route>> {
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        match compile_route(vs, i, e, server, port) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(message) => errors.extend(route_errors(e, message)),
        }
    }
    out
}

/// Where a route that does not compile is wrong: what [`problems`] finds in each entry
/// it is written as ([`HttpRouteEntry::written`]), at its field; the compile's own
/// `message`, at the route, should they find nothing.
fn route_errors(e: &HttpRouteEntry, message: String) -> Vec<ConfigError> {
    let mut out: Vec<ConfigError> = e
        .written
        .iter()
        .flat_map(|w| {
            problems(&w.route)
                .into_iter()
                .map(|(path, message)| ConfigError {
                    loc: w.at.loc(&path),
                    message,
                })
        })
        .collect();
    if out.is_empty() {
        out.push(ConfigError {
            loc: e
                .written
                .first()
                .map(|w| w.at.clone())
                .unwrap_or_default()
                .loc(""),
            message,
        });
    }
    out
}

/// The route `entries[i]` of VS `vs` on one server; None when none of its match blocks
/// applies there.
fn compile_route(
    vs: &str,
    i: usize,
    e: &HttpRouteEntry,
    server: &ServerRef,
    port: u16,
) -> Result<Option<Arc<Route>>, String> {
    let vs_ns = vs.split('/').next().unwrap_or_default();
    let r = &e.route;
    let what = format!("virtual service {vs} http[{i}]");
    let mut matches = Vec::with_capacity(r.matches.len());
    for m in &r.matches {
        let gw_ok = m.gateways.is_empty()
            || m.gateways.iter().any(|g| {
                let key = if g.contains('/') {
                    g.clone()
                } else {
                    format!("{vs_ns}/{g}")
                };
                key == server.gateway
            });
        let port_ok = m.port.is_none_or(|p| p == u32::from(port));
        if gw_ok && port_ok {
            matches.push(compile_match(m, &what)?);
        }
    }
    if !r.matches.is_empty() && matches.is_empty() {
        return Ok(None);
    }
    Ok(Some(Arc::new(Route {
        vs: vs.to_string(),
        name: r.name.clone(),
        matches,
        action: compile_action(r, &e.destinations, &what)?,
        request_headers: HeaderOps::compile(
            r.headers.as_ref().and_then(|h| h.request.as_ref()),
            &what,
        )?,
        response_headers: HeaderOps::compile(
            r.headers.as_ref().and_then(|h| h.response.as_ref()),
            &what,
        )?,
        rewrite: compile_rewrite(r.rewrite.as_ref(), &what)?,
        timeout: r
            .timeout
            .as_ref()
            .map(|d| d.duration)
            .filter(|d| !d.is_zero()),
        retry: RetryPolicy::from_istio(r.retries.as_ref()),
        fault: compile_fault(r.fault.as_ref(), &what)?,
        cors: r
            .cors_policy
            .as_ref()
            .map(|p| crate::plan::cors::Cors::compile(p, &what))
            .transpose()?,
        mirrors: e
            .mirrors
            .iter()
            .map(|m| crate::config::mirror::Mirror {
                cluster: m.cluster.clone(),
                per_million: m.per_million,
            })
            .collect(),
    })))
}

fn compile_match(m: &istio::HttpMatchRequest, what: &str) -> Result<Match, String> {
    let one = |sm: &Option<StringMatch>, field: &str| -> Result<Option<StrMatch>, String> {
        match sm {
            Some(sm) => StrMatch::compile(sm, &format!("{what} match {field}")),
            None => Ok(None),
        }
    };
    let headers = |map: &std::collections::BTreeMap<String, StringMatch>,
                   field: &str|
     -> Result<Vec<(HeaderName, Option<StrMatch>)>, String> {
        map.iter()
            .map(|(k, sm)| {
                Ok((
                    header_name(k, what)?,
                    StrMatch::compile(sm, &format!("{what} match {field}.{k}"))?,
                ))
            })
            .collect()
    };
    Ok(Match {
        name: m.name.clone().filter(|n| !n.is_empty()),
        uri: one(&m.uri, "uri")?,
        scheme: one(&m.scheme, "scheme")?,
        method: one(&m.method, "method")?,
        authority: one(&m.authority, "authority")?,
        headers: headers(&m.headers, "headers")?,
        without_headers: headers(&m.without_headers, "withoutHeaders")?,
        query_params: m
            .query_params
            .iter()
            .map(|(k, sm)| {
                Ok((
                    k.clone(),
                    StrMatch::compile(sm, &format!("{what} match queryParams.{k}"))?,
                ))
            })
            .collect::<Result<_, String>>()?,
        port: m.port.and_then(|p| u16::try_from(p).ok()),
        ignore_uri_case: m.ignore_uri_case,
    })
}

fn compile_action(r: &HttpRoute, dests: &[WeightedCluster], what: &str) -> Result<Action, String> {
    if let Some(d) = &r.direct_response {
        let status = u16::try_from(d.status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| format!("{what}: invalid directResponse status {}", d.status))?;
        let body = match &d.body {
            Some(istio::HttpBody {
                string: Some(s), ..
            }) => Bytes::from(s.clone()),
            Some(istio::HttpBody { bytes: Some(b), .. }) => {
                use base64::Engine as _;
                Bytes::from(
                    base64::engine::general_purpose::STANDARD
                        .decode(b.trim())
                        .map_err(|e| format!("{what}: directResponse.body.bytes: {e}"))?,
                )
            }
            _ => Bytes::new(),
        };
        return Ok(Action::Direct { status, body });
    }
    if let Some(rd) = &r.redirect {
        let code = match rd.redirect_code {
            None => None,
            Some(c) => Some(
                u16::try_from(c)
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .filter(StatusCode::is_redirection)
                    .ok_or_else(|| format!("{what}: invalid redirectCode {c}"))?,
            ),
        };
        return Ok(Action::Redirect(Redirect {
            uri: rd.uri.clone(),
            authority: rd.authority.clone(),
            port: rd.port.and_then(|p| u16::try_from(p).ok()),
            port_from_request: rd.derive_port.as_deref() == Some("FROM_REQUEST_PORT"),
            scheme: rd.scheme.clone(),
            code,
        }));
    }
    // Destinations are resolved in `route[]` order (resolution errors fail the load),
    // so the per-destination headers line up by index.
    let mut out = Vec::with_capacity(dests.len());
    for (i, d) in dests.iter().enumerate() {
        let h = r.route.get(i).and_then(|rd| rd.headers.as_ref());
        out.push(Destination {
            cluster: d.cluster.clone(),
            weight: d.weight,
            request_headers: HeaderOps::compile(h.and_then(|h| h.request.as_ref()), what)?,
            response_headers: HeaderOps::compile(h.and_then(|h| h.response.as_ref()), what)?,
        });
    }
    Ok(Action::Forward(out))
}

pub(super) fn compile_rewrite(
    rw: Option<&istio::HttpRewrite>,
    what: &str,
) -> Result<Option<Rewrite>, String> {
    let Some(rw) = rw else { return Ok(None) };
    let uri_regex = match &rw.uri_regex_rewrite {
        Some(rr) => Some(compile_regex_rewrite(rr, what)?),
        None => None,
    };
    let authority = match &rw.authority {
        Some(a) => Some(rewrite_authority(a, what)?),
        None => None,
    };
    Ok(Some(Rewrite {
        uri: rw.uri.clone().filter(|u| !u.is_empty()),
        uri_regex,
        authority,
    }))
}

fn compile_regex_rewrite(rr: &istio::RegexRewrite, what: &str) -> Result<(Regex, String), String> {
    let re = Regex::new(&rr.pattern).map_err(|e| {
        format!(
            "{what}: invalid uriRegexRewrite.match {:?}: {e}",
            rr.pattern
        )
    })?;
    // RE2 substitutions are `\1`; Rust's are `${1}`.
    let with = Regex::new(r"\\(\d)")
        .expect("static regex")
        .replace_all(&rr.rewrite.replace('$', "$$"), "$${$1}")
        .into_owned();
    Ok((re, with))
}

fn rewrite_authority(a: &str, what: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(a).map_err(|_| format!("{what}: invalid rewrite.authority {a:?}"))
}

/// What [`build_table`] refuses in one VirtualService `http[]` route, as (path below
/// the route, message): asked only of a route that did not compile, to say where it is
/// wrong. Match regexes and CORS policies are validation's own checks.
pub fn problems(r: &HttpRoute) -> Vec<(String, String)> {
    const WHAT: &str = "HTTP route";
    let mut out = Vec::new();
    let mut check = |path: String, result: Result<(), String>| {
        if let Err(e) = result {
            out.push((path, e));
        }
    };
    for (j, m) in r.matches.iter().enumerate() {
        for (field, map) in [
            ("headers", &m.headers),
            ("withoutHeaders", &m.without_headers),
        ] {
            for k in map.keys() {
                check(
                    format!("match[{j}].{field}.{k}"),
                    header_name(k, WHAT).map(drop),
                );
            }
        }
    }
    let headers = r
        .route
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("route[{i}].headers"), d.headers.as_ref()))
        .chain([("headers".to_string(), r.headers.as_ref())]);
    for (path, h) in headers {
        check(
            format!("{path}.request"),
            HeaderOps::compile(h.and_then(|h| h.request.as_ref()), WHAT).map(drop),
        );
        check(
            format!("{path}.response"),
            HeaderOps::compile(h.and_then(|h| h.response.as_ref()), WHAT).map(drop),
        );
    }
    let action = if r.direct_response.is_some() {
        "directResponse"
    } else {
        "redirect"
    };
    check(action.into(), compile_action(r, &[], WHAT).map(drop));
    if let Some(rw) = &r.rewrite {
        if let Some(rr) = &rw.uri_regex_rewrite {
            check(
                "rewrite.uriRegexRewrite.match".into(),
                compile_regex_rewrite(rr, WHAT).map(drop),
            );
        }
        if let Some(a) = &rw.authority {
            check(
                "rewrite.authority".into(),
                rewrite_authority(a, WHAT).map(drop),
            );
        }
    }
    check(
        "fault".into(),
        compile_fault(r.fault.as_ref(), WHAT).map(drop),
    );
    out
}

fn compile_fault(f: Option<&istio::HttpFaultInjection>, what: &str) -> Result<Fault, String> {
    let Some(f) = f else {
        return Ok(Fault::default());
    };
    let delay = match &f.delay {
        Some(d) => {
            let dur = d
                .fixed_delay
                .as_ref()
                .or(d.exponential_delay.as_ref())
                .map(|d| d.duration)
                .ok_or_else(|| format!("{what}: fault.delay needs fixedDelay"))?;
            let pct = d
                .percentage
                .map(|p| p.value)
                .or(d.percent.map(f64::from))
                .unwrap_or(100.0);
            Some((dur, pct))
        }
        None => None,
    };
    let abort = match &f.abort {
        Some(a) => {
            let status = a
                .http_status
                .and_then(|s| u16::try_from(s).ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or_else(|| {
                    format!("{what}: fault.abort needs an httpStatus (grpcStatus/http2Error are not supported)")
                })?;
            Some((status, a.percentage.map(|p| p.value).unwrap_or(100.0)))
        }
        None => None,
    };
    Ok(Fault { delay, abort })
}

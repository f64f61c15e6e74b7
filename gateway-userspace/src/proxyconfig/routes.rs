//! The dump's route configurations, rendered from the route tables the data plane
//! routes with (`plan::routing::RouteTable`, built once in the Plan's `HttpState`):
//! what `proxy-config route` shows is what a request meets, not a second translation
//! of the VirtualServices.
use serde_json::{Value, json};

use super::envoy::{T_ROUTE, cluster_action, string_match, vs_metadata};
use crate::{
    config::{ServerKind, ServerRef, Snapshot},
    plan::{
        Plan,
        cors::Cors,
        routing::{Action, Match, Redirect, Route, RouteTable},
    },
};

/// Istio's route-configuration name for an HTTPS-terminating server:
/// `https.<port>.<port name>.<gateway name>.<gateway namespace>`. The port's name is
/// read from the Gateway as written (the compiled server does not carry it).
pub fn https_route_name(snap: &Snapshot, port: u16, s: &ServerRef) -> String {
    let (ns, name) = s.gateway.split_once('/').unwrap_or(("default", &s.gateway));
    let port_name = snap
        .resources
        .gateways
        .iter()
        .find(|g| g.key() == s.gateway)
        .and_then(|g| g.spec.servers.get(s.index))
        .and_then(|srv| srv.port.name.clone())
        .unwrap_or_else(|| "https".into());
    format!("https.{port}.{port_name}.{name}.{ns}")
}

/// Every route configuration of the Plan, as Istio's gateway has them: `http.<port>`
/// (the merged table of a port's HTTP servers) and one per HTTPS-terminating server.
pub(super) fn route_configs(plan: &Plan) -> Vec<Value> {
    let mut out = Vec::new();
    for l in plan.listeners.values() {
        if l.servers.iter().any(|s| s.kind == ServerKind::Http)
            && let Some(table) = plan.http.route_table(l.port, None)
        {
            out.push(json!({ "route_config": route_config(&table, &format!("http.{}", l.port), l.port) }));
        }
        for (i, s) in l.servers.iter().enumerate() {
            if s.kind != ServerKind::HttpsTerminate {
                continue;
            }
            if let Some(table) = plan.http.route_table(l.port, Some(i)) {
                let name = https_route_name(&plan.snapshot, l.port, s);
                out.push(json!({ "route_config": route_config(&table, &name, l.port) }));
            }
        }
    }
    out
}

/// One route configuration, as Istio's `buildGatewayHTTPRouteConfig`
/// (pilot/pkg/networking/core/gateway.go) builds it, from the compiled table: a virtual
/// host `<domain>:<port>` per domain (the intersection of a server's hosts and a
/// VirtualService's, `routing::build_table`), domains just that one
/// (`ignore_port_in_host_matching`), sorted by domain; `require_tls: ALL` for an
/// `httpsRedirect` server's hosts; none at all gives the `blackhole:<port>` virtual host
/// for `*` with no route (404 NR).
fn route_config(table: &RouteTable, name: &str, port: u16) -> Value {
    let mut vhosts: Vec<_> = table.vhosts.iter().collect();
    vhosts.sort_by(|a, b| a.domain.cmp(&b.domain));
    let mut virtual_hosts: Vec<Value> = vhosts
        .into_iter()
        .map(|vh| {
            let mut v = json!({
                "name": format!("{}:{port}", vh.domain),
                "domains": [vh.domain],
                "include_request_attempt_count": true,
            });
            if !vh.routes.is_empty() {
                v["routes"] = vh.routes.iter().flat_map(|r| routes_json(r)).collect();
            }
            if vh.https_redirect {
                v["require_tls"] = "ALL".into();
            }
            v
        })
        .collect();
    if virtual_hosts.is_empty() {
        virtual_hosts.push(json!({ "name": format!("blackhole:{port}"), "domains": ["*"] }));
    }
    json!({
        "@type": T_ROUTE,
        "name": name,
        "virtual_hosts": virtual_hosts,
        "validate_clusters": false,
        "ignore_port_in_host_matching": true,
    })
}

/// The Envoy routes of one compiled route: one per match block, named as the data plane
/// logs them (`Route::envoy_name`, Istio's `TranslateRoute`); no `name` at all when that
/// is empty (protojson omits an empty string). A route without blocks matches every
/// request: `prefix: /`.
fn routes_json(r: &Route) -> Vec<Value> {
    if r.matches.is_empty() {
        return vec![route_json(r, json!({ "prefix": "/" }), None)];
    }
    r.matches
        .iter()
        .enumerate()
        .map(|(i, m)| route_json(r, match_json(m), Some(i)))
        .collect()
}

fn route_json(r: &Route, m: Value, block: Option<usize>) -> Value {
    let mut route = json!({ "match": m, "metadata": vs_metadata(&r.vs) });
    if let Some(name) = r.envoy_name(block) {
        route["name"] = name.into();
    }
    match &r.action {
        Action::Direct { status, .. } => {
            route["direct_response"] = json!({ "status": status.as_u16() });
        }
        Action::Redirect(red) => route["redirect"] = redirect_json(red),
        Action::Forward(dests) => {
            let pairs: Vec<(&str, u32)> = dests
                .iter()
                .map(|d| (d.cluster.as_str(), d.weight))
                .collect();
            route["route"] = cluster_action(&pairs);
            if !r.mirrors.is_empty() {
                route["route"]["request_mirror_policies"] = r
                    .mirrors
                    .iter()
                    .map(|m| json!({ "cluster": m.cluster, "runtime_fraction": { "default_value": { "numerator": m.per_million, "denominator": "MILLION" } } }))
                    .collect::<Vec<_>>()
                    .into();
            }
        }
    }
    if let Some(c) = &r.cors {
        route["typed_per_filter_config"] = json!({ "envoy.filters.http.cors": cors_json(c) });
    }
    route
}

/// Envoy's RouteMatch of one block: the path (`path` for an exact URI), `case_sensitive`,
/// then the headers, `:method` and `:authority` as header matchers, and the query
/// parameters. (`scheme`, `port` and `withoutHeaders` are matched by the data plane
/// but not shown, as before.)
fn match_json(m: &Match) -> Value {
    let mut mj = match &m.uri {
        Some(uri) => match string_match(Some(uri)) {
            Value::Object(mut o) => match o.remove("exact") {
                Some(e) => json!({ "path": e }),
                None => Value::Object(o),
            },
            _ => json!({ "prefix": "/" }),
        },
        None => json!({ "prefix": "/" }),
    };
    if m.ignore_uri_case {
        mj["case_sensitive"] = false.into();
    }
    let mut headers: Vec<Value> = m
        .headers
        .iter()
        .map(|(k, v)| json!({ "name": k.as_str(), "string_match": string_match(v.as_ref()) }))
        .collect();
    if let Some(meth) = &m.method {
        headers.push(json!({ "name": ":method", "string_match": string_match(Some(meth)) }));
    }
    if let Some(a) = &m.authority {
        headers.push(json!({ "name": ":authority", "string_match": string_match(Some(a)) }));
    }
    if !headers.is_empty() {
        mj["headers"] = headers.into();
    }
    if !m.query_params.is_empty() {
        mj["query_parameters"] = m
            .query_params
            .iter()
            .map(|(k, v)| json!({ "name": k, "string_match": string_match(v.as_ref()) }))
            .collect::<Vec<_>>()
            .into();
    }
    mj
}

/// The redirect with the fields of Istio's HTTPRedirect (how the dump has always shown
/// it); `derivePort` is `FROM_REQUEST_PORT` or null (the default).
fn redirect_json(r: &Redirect) -> Value {
    json!({
        "uri": r.uri,
        "authority": r.authority,
        "port": r.port,
        "derivePort": r.port_from_request.then_some("FROM_REQUEST_PORT"),
        "scheme": r.scheme,
        "redirectCode": r.code.map(|c| c.as_u16()),
    })
}

/// Istio's translateCORSPolicy (route.go): the route's CORS filter config, from the
/// compiled policy the data plane answers with (`plan::cors`).
fn cors_json(c: &Cors) -> Value {
    let mut v = json!({
        "@type": "type.googleapis.com/envoy.config.route.v3.CorsPolicy",
        "allow_origin_string_match": c.origins.iter().map(|o| string_match(Some(o))).collect::<Vec<_>>(),
        "filter_enabled": { "default_value": { "numerator": 100 } },
        "forward_not_matching_preflights": c.forward_unmatched,
    });
    for (k, h) in [
        ("allow_methods", &c.allow_methods),
        ("allow_headers", &c.allow_headers),
        ("expose_headers", &c.expose_headers),
        ("max_age", &c.max_age),
    ] {
        if let Some(h) = h {
            v[k] = h.to_str().unwrap_or_default().into();
        }
    }
    if c.allow_credentials {
        v["allow_credentials"] = true.into();
    }
    v
}

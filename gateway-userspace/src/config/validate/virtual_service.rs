//! VirtualService checks: hosts, delegates, `http[]` / `tcp[]` / `tls[]` routes, their
//! string matches and weights.

use crate::config::ConfigError;
use crate::config::hosts;
use crate::config::istio::{StringMatch, VirtualService};
use crate::config::parse::Entry;
use crate::config::source::Source;

pub(super) fn validate_virtual_service(vs: &Entry<VirtualService>, errors: &mut Vec<ConfigError>) {
    let spec = &vs.res.spec;
    let src = &vs.src;
    // Delegate VSs (no gateways) may omit hosts; gateway-bound ones may not.
    if spec.hosts.is_empty() && spec.gateways.is_some() {
        errors.push(src.error("spec", "virtual service must have at least one host"));
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        if !hosts::valid_host(host) {
            errors.push(src.error(
                &format!("spec.hosts[{i}]"),
                format!("invalid host \"{host}\""),
            ));
        }
    }

    // Istio: a VirtualService without hosts is a delegate: http routes only, and
    // those must not delegate further; a root route has no route or redirect.
    let is_delegate = spec.hosts.is_empty();
    if is_delegate && !spec.tls.is_empty() {
        errors.push(src.error(
            "spec.tls",
            "delegate virtual service must have no tls route specified",
        ));
    }
    if is_delegate && !spec.tcp.is_empty() {
        errors.push(src.error(
            "spec.tcp",
            "delegate virtual service must have no tcp route specified",
        ));
    }
    for (i, route) in spec.http.iter().enumerate() {
        let at = format!("spec.http[{i}]");
        if route.delegate.is_some() {
            if is_delegate {
                errors.push(src.error(
                    &format!("{at}.delegate"),
                    "delegate HTTP route cannot contain delegate",
                ));
            } else if !route.route.is_empty() || route.redirect.is_some() {
                errors.push(src.error(
                    &format!("{at}.delegate"),
                    "root HTTP route (with delegate) must not specify route or redirect",
                ));
            }
        }
        for (j, m) in route.matches.iter().enumerate() {
            let mat = format!("{at}.match[{j}]");
            for (field, sm) in [
                ("uri", &m.uri),
                ("scheme", &m.scheme),
                ("method", &m.method),
                ("authority", &m.authority),
            ] {
                if let Some(sm) = sm {
                    check_string_match(sm, true, src, &format!("{mat}.{field}"), errors);
                }
            }
            for (field, map) in [
                ("headers", &m.headers),
                ("withoutHeaders", &m.without_headers),
                ("queryParams", &m.query_params),
            ] {
                for (name, sm) in map {
                    check_string_match(sm, false, src, &format!("{mat}.{field}.{name}"), errors);
                }
            }
        }
        let has_route = !route.route.is_empty();
        if has_route && (route.redirect.is_some() || route.direct_response.is_some()) {
            errors.push(src.error(
                &at,
                "HTTP route cannot have both route and redirect/directResponse",
            ));
        }
        if !has_route
            && route.redirect.is_none()
            && route.direct_response.is_none()
            && route.delegate.is_none()
        {
            errors.push(src.error(
                &at,
                "HTTP route must have one of route, redirect, directResponse or delegate",
            ));
        }
        if let Some(dr) = &route.direct_response
            && !(200..=599).contains(&dr.status)
        {
            errors.push(src.error(
                &format!("{at}.directResponse.status"),
                format!("directResponse status {} must be 200-599", dr.status),
            ));
        }
        // What else the route table refuses (header names and values, rewrites,
        // redirect codes, bodies, faults) is found where the table is compiled
        // (`plan::routing::build_table`), reported at the route's `written` positions.
        for (path, e) in crate::config::mirror::problems(route) {
            errors.push(src.error(&format!("{at}.{path}"), e));
        }
        if let Some(cors) = &route.cors_policy {
            for (path, e) in crate::config::cors::problems(cors) {
                errors.push(src.error(&format!("{at}.{path}"), e));
            }
        }
        let weights: Vec<_> = route.route.iter().map(|d| d.weight).collect();
        check_weights(&weights, src, &format!("{at}.route"), errors);
    }

    for (i, route) in spec.tcp.iter().enumerate() {
        let at = format!("spec.tcp[{i}]");
        if route.route.is_empty() {
            errors.push(src.error(&at, "TCP route must have at least one destination"));
        }
        let weights: Vec<_> = route.route.iter().map(|d| d.weight).collect();
        check_weights(&weights, src, &format!("{at}.route"), errors);
    }

    for (i, route) in spec.tls.iter().enumerate() {
        let at = format!("spec.tls[{i}]");
        // Istio: TLS routes are selected by SNI, so each needs sniHosts.
        if route.matches.is_empty() {
            errors.push(src.error(&at, "TLS route must have at least one match condition"));
        }
        for (j, m) in route.matches.iter().enumerate() {
            if m.sni_hosts.is_empty() {
                errors.push(src.error(
                    &format!("{at}.match[{j}]"),
                    "TLS match must have at least one SNI host (sniHosts)",
                ));
            }
            for (k, sni) in m.sni_hosts.iter().enumerate() {
                let path = format!("{at}.match[{j}].sniHosts[{k}]");
                if !hosts::valid_host(sni) {
                    errors.push(src.error(&path, format!("invalid SNI host \"{sni}\"")));
                } else if !spec.hosts.iter().any(|h| hosts::covers(h, sni)) {
                    errors.push(src.error(&path, format!("the SNI host \"{sni}\" is not a subset of any of the virtual service hosts")));
                }
            }
        }
        if route.route.is_empty() {
            errors.push(src.error(&at, "TLS route must have at least one destination"));
        }
        let weights: Vec<_> = route.route.iter().map(|d| d.weight).collect();
        check_weights(&weights, src, &format!("{at}.route"), errors);
    }
}

fn check_string_match(
    sm: &StringMatch,
    required: bool,
    src: &Source,
    path: &str,
    errors: &mut Vec<ConfigError>,
) {
    let set = [&sm.exact, &sm.prefix, &sm.regex]
        .iter()
        .filter(|o| o.is_some())
        .count();
    if set > 1 || (required && set == 0) {
        errors.push(src.error(
            path,
            "string match must set exactly one of exact, prefix or regex",
        ));
    }
    if let Some(re) = &sm.regex
        && let Err(e) = crate::config::regex::compile(re, "regex")
    {
        errors.push(src.error(&format!("{path}.regex"), e));
    }
}

/// Final weights of a destination list: one destination takes everything;
/// unset weights on several destinations split 100 evenly; otherwise Istio
/// requires the weights to add up to 100.
pub(crate) fn weights(ws: &[Option<u32>]) -> Result<Vec<u32>, u64> {
    let n = ws.len();
    if n <= 1 {
        return Ok(vec![100; n]);
    }
    if ws.iter().all(Option::is_none) {
        let n32 = u32::try_from(n).unwrap_or(u32::MAX);
        let (base, extra) = (100 / n32, 100 % n32);
        return Ok((0..n32).map(|i| base + u32::from(i < extra)).collect());
    }
    let sum: u64 = ws.iter().map(|w| u64::from(w.unwrap_or(0))).sum();
    if sum == 100 {
        Ok(ws.iter().map(|w| w.unwrap_or(0)).collect())
    } else {
        Err(sum)
    }
}

fn check_weights(ws: &[Option<u32>], src: &Source, path: &str, errors: &mut Vec<ConfigError>) {
    if let Err(sum) = weights(ws) {
        errors.push(src.error(
            path,
            format!("route weights sum to {sum}, they must add up to 100"),
        ));
    }
}

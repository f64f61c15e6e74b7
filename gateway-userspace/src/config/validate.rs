//! Istio's validation rules and the assembly of the [`Snapshot`].

use std::collections::{BTreeMap, HashMap, HashSet};

use base64::Engine as _;

use super::delegate::{self, Delegates};
use super::dest_rules;
use super::hosts;
use super::istio::{self, Gateway, Resolution, StringMatch, TlsMode, VirtualService};
use super::parse::{Entry, Parsed};
use super::resolve::Resolver;
use super::snapshot::{
    HttpRouteEntry, HttpVirtualHost, InactiveServer, Listener, ListenerProtocol, MirrorCluster,
    Origin, Resources, Secret, ServerKind, ServerRef, Snapshot, TcpRoute, TlsRoute,
    WeightedCluster, WrittenRoute,
};
use super::source::Source;
use super::source_match::{self, source_ok};
use super::warnings::Warning;
use super::{ConfigError, GatewayIdentity};

/// Builds the snapshot. `errors` are fatal; `missing` are references to things that do
/// not exist (GW2xxx): the part that refers to them is left out of the snapshot, and
/// the caller decides whether they are errors (`validate`) or warnings (`run`).
pub(crate) fn build(
    mut p: Parsed,
    id: &GatewayIdentity,
    errors: &mut Vec<ConfigError>,
    missing: &mut Vec<Warning>,
) -> Snapshot {
    check_duplicates(&p, errors);
    let secrets = build_secrets(&p, errors);
    for gw in &p.gateways {
        validate_gateway(gw, errors);
    }
    for vs in &p.virtual_services {
        validate_virtual_service(vs, errors);
    }
    for se in &p.service_entries {
        validate_service_entry(se, errors);
    }
    for ap in &p.authorization_policies {
        for (path, msg) in super::authz::problems(&ap.res.spec) {
            errors.push(ap.src.error(&path, msg));
        }
    }

    // Istio: a Gateway applies to the workloads its selector matches; an
    // empty selector matches every gateway workload.
    let selected: Vec<&Entry<Gateway>> = p
        .gateways
        .iter()
        .filter(|g| {
            g.res
                .spec
                .selector
                .iter()
                .all(|(k, v)| id.labels.get(k) == Some(v))
        })
        .collect();
    let mut inactive = Vec::new();
    for gw in &selected {
        check_credentials(gw, id, &secrets, &p.broken, missing, &mut inactive);
    }
    let servers_by_port = merge_servers(&selected, &inactive, errors);

    let known_gateways: HashSet<String> = p
        .gateways
        .iter()
        .map(|g| g.res.key())
        .chain(
            p.broken
                .iter()
                .filter_map(|b| b.strip_prefix("Gateway ").map(str::to_string)),
        )
        .collect();
    let selected_keys: HashSet<String> = selected.iter().map(|g| g.res.key()).collect();

    // VS processing order is namespace/name: it decides which VS wins where
    // several could serve the same TCP port.
    let mut vss: Vec<VsBinding> = Vec::new();
    for vs in &p.virtual_services {
        let gateways = vs_gateways(vs, &known_gateways, missing);
        let gateways: Vec<String> = gateways
            .into_iter()
            .filter(|g| selected_keys.contains(g))
            .collect();
        if !gateways.is_empty() {
            vss.push(VsBinding { vs, gateways });
        }
    }
    vss.sort_by_key(|b| {
        (
            b.vs.res.metadata.namespace().to_string(),
            b.vs.res.metadata.name.clone(),
        )
    });

    for dr in &p.destination_rules {
        dest_rules::check(dr, errors);
    }
    let mut routes = RouteBuilder {
        id,
        resolver: Resolver::new(
            &p.service_entries,
            dest_rules::Index::new(&p.destination_rules, &id.namespace, &id.root_namespace),
        ),
        cache: HashMap::new(),
        warnings: Vec::new(),
        delegates: Delegates::new(&p.virtual_services),
        merged: HashMap::new(),
        missing: Vec::new(),
    };
    routes.resolver.broken_rules = p.broken.iter().any(|b| b.starts_with("DestinationRule "));
    let listeners = servers_by_port
        .into_iter()
        .map(|(port, servers)| routes.listener(port, servers, &vss, errors))
        .collect();
    p.warnings.append(&mut routes.warnings);
    let clusters = routes.resolver.clusters;
    missing.append(&mut routes.resolver.missing);
    missing.append(&mut routes.missing);
    let secret_names = p
        .secrets
        .iter()
        .map(|e| format!("{}/{}", e.res.metadata.namespace(), e.res.metadata.name))
        .collect();

    // The parsed resources move into the snapshot (a copy of 10 000 VirtualServices
    // was ~20 MB of peak).
    let authorization_policies: Vec<_> = p
        .authorization_policies
        .into_iter()
        .map(|e| e.res)
        .collect();
    let warnings = std::mem::take(&mut p.warnings);
    Snapshot {
        namespace: id.namespace.clone(),
        warnings,
        inactive,
        listeners,
        clusters,
        secrets,
        identity: id.clone(),
        mesh: Default::default(),
        resources: Resources {
            gateways: p.gateways.into_iter().map(|e| e.res).collect(),
            virtual_services: p.virtual_services.into_iter().map(|e| e.res).collect(),
            service_entries: p.service_entries.into_iter().map(|e| e.res).collect(),
            destination_rules: p.destination_rules.into_iter().map(|e| e.res).collect(),
            telemetry_origins: p
                .telemetry
                .iter()
                .map(|e| Origin::new(&e.src, ""))
                .collect(),
            telemetry: p.telemetry.into_iter().map(|e| e.res).collect(),
            authorization_policies,
            secret_names,
        },
    }
}

// ------------------------------------------------------------- resources

fn check_duplicates(p: &Parsed, errors: &mut Vec<ConfigError>) {
    fn check<'a>(
        kind: &str,
        items: impl Iterator<Item = (String, &'a Source)>,
        errors: &mut Vec<ConfigError>,
    ) {
        let mut seen: HashMap<String, &Source> = HashMap::new();
        for (key, src) in items {
            if let Some(first) = seen.get(&key) {
                errors.push(src.error(
                    "metadata.name",
                    format!(
                        "duplicate {kind} \"{key}\" (first defined at {})",
                        first.loc("metadata.name")
                    ),
                ));
            } else {
                seen.insert(key, src);
            }
        }
    }
    check(
        "Gateway",
        p.gateways.iter().map(|e| (e.res.key(), &e.src)),
        errors,
    );
    check(
        "VirtualService",
        p.virtual_services.iter().map(|e| (e.res.key(), &e.src)),
        errors,
    );
    check(
        "ServiceEntry",
        p.service_entries.iter().map(|e| (e.res.key(), &e.src)),
        errors,
    );
    check(
        "Secret",
        p.secrets.iter().map(|e| {
            (
                format!("{}/{}", e.res.metadata.namespace(), e.res.metadata.name),
                &e.src,
            )
        }),
        errors,
    );
}

fn build_secrets(p: &Parsed, errors: &mut Vec<ConfigError>) -> BTreeMap<String, Secret> {
    let mut out = BTreeMap::new();
    for e in &p.secrets {
        let name = format!("{}/{}", e.res.metadata.namespace(), e.res.metadata.name);
        let mut data = BTreeMap::new();
        for (k, v) in &e.res.data {
            // Kubernetes `data` is base64; tolerate line-wrapped values.
            let compact: String = v.chars().filter(|c| !c.is_whitespace()).collect();
            match base64::engine::general_purpose::STANDARD.decode(compact) {
                Ok(bytes) => {
                    data.insert(k.clone(), bytes);
                }
                Err(err) => errors.push(e.src.error(
                    &format!("data.{k}"),
                    format!("invalid base64 in data key \"{k}\": {err}"),
                )),
            }
        }
        // Kubernetes merges `stringData` over `data`.
        for (k, v) in &e.res.string_data {
            data.insert(k.clone(), v.clone().into_bytes());
        }
        out.insert(
            name.clone(),
            Secret {
                name,
                type_: e.res.type_.clone(),
                data,
                origin: Origin::new(&e.src, ""),
                string_data_keys: e.res.string_data.keys().cloned().collect(),
            },
        );
    }
    out
}

fn classify(protocol: &str, mode: TlsMode) -> Option<ServerKind> {
    Some(match protocol {
        "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" => ServerKind::Http,
        "HTTPS" => match mode {
            TlsMode::Passthrough | TlsMode::AutoPassthrough => ServerKind::TlsPassthrough,
            _ => ServerKind::HttpsTerminate,
        },
        // Istio's createGatewayTCPFilterChainOpts: a TLS server that is not passthrough
        // is "TCP with TLS termination and forwarding" (its `tcp` routes).
        "TLS" if terminates(mode) => ServerKind::TlsTerminate,
        "TLS" => ServerKind::TlsPassthrough,
        "TCP" | "MONGO" | "MYSQL" | "REDIS" => ServerKind::Tcp,
        _ => return None,
    })
}

fn terminates(mode: TlsMode) -> bool {
    matches!(
        mode,
        TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual
    )
}

fn validate_gateway(gw: &Entry<Gateway>, errors: &mut Vec<ConfigError>) {
    let src = &gw.src;
    for (i, server) in gw.res.spec.servers.iter().enumerate() {
        let at = format!("spec.servers[{i}]");
        let number = server.port.number;
        if !(1..=65535).contains(&number) {
            errors.push(src.error(
                &format!("{at}.port.number"),
                format!("port number {number} is out of range 1-65535"),
            ));
        }
        let protocol = server.port.protocol.to_ascii_uppercase();
        let mode = server.tls.as_ref().and_then(|t| t.mode).unwrap_or_default();
        if classify(&protocol, mode).is_none() {
            errors.push(src.error(
                &format!("{at}.port.protocol"),
                format!("unsupported protocol \"{}\" (expected HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TLS, TCP, MONGO, MYSQL or REDIS)", server.port.protocol),
            ));
        }
        // Istio: "server config must contain at least one host".
        if server.hosts.is_empty() {
            errors.push(src.error(&at, "server must have at least one host"));
        }
        for (j, host) in server.hosts.iter().enumerate() {
            let (ns, h) = hosts::split_server_host(host, "");
            if ns.is_empty() || h.contains('/') || !hosts::valid_host(h) {
                errors.push(src.error(
                    &format!("{at}.hosts[{j}]"),
                    format!("invalid server host \"{host}\": expected [namespace/]host with host \"*\", \"*.domain\" or a name"),
                ));
            }
        }
        let is_tls_protocol = protocol == "HTTPS" || protocol == "TLS";
        match &server.tls {
            None if is_tls_protocol => {
                errors
                    .push(src.error(&at, "server must have TLS settings for HTTPS/TLS protocols"));
            }
            Some(tls) if is_tls_protocol && terminates(mode) => {
                let has_files = tls.server_certificate.is_some() && tls.private_key.is_some();
                // `credentialNames` is a warning (GW1013): it supplies no certificate.
                if tls.credential_name.is_none() && !has_files {
                    errors.push(src.error(
                        &format!("{at}.tls"),
                        format!(
                            "{} TLS requires credentialName, or serverCertificate and privateKey",
                            mode_name(mode)
                        ),
                    ));
                }
                // rustls offers TLS 1.2/1.3 and the ECDHE AEAD suites only: say so here
                // rather than silently narrowing what the user asked for. The same check
                // the data path uses, so validation and serving can't drift.
                if let Err((field, message)) = super::tls_settings::check_settings(tls) {
                    errors.push(src.error(&format!("{at}.tls.{field}"), message));
                }
            }
            _ => {}
        }
    }
}

/// Istio's spelling of a TLS mode, for messages.
fn mode_name(mode: TlsMode) -> &'static str {
    match mode {
        TlsMode::Passthrough => "PASSTHROUGH",
        TlsMode::Simple => "SIMPLE",
        TlsMode::Mutual => "MUTUAL",
        TlsMode::AutoPassthrough => "AUTO_PASSTHROUGH",
        TlsMode::IstioMutual => "ISTIO_MUTUAL",
        TlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
    }
}

/// Istio looks `credentialName` up in the gateway workload's namespace. A server whose
/// Secret does not exist is inactive (GW2001): it is left out of its listener.
fn check_credentials(
    gw: &Entry<Gateway>,
    id: &GatewayIdentity,
    secrets: &BTreeMap<String, Secret>,
    broken: &HashSet<String>,
    missing: &mut Vec<Warning>,
    inactive: &mut Vec<InactiveServer>,
) {
    for (i, server) in gw.res.spec.servers.iter().enumerate() {
        let protocol = server.port.protocol.to_ascii_uppercase();
        let Some(tls) = &server.tls else { continue };
        let mode = tls.mode.unwrap_or_default();
        if !(protocol == "HTTPS" || protocol == "TLS") || !terminates(mode) {
            continue;
        }
        let Some(cred) = &tls.credential_name else {
            continue;
        };
        let name = cred.strip_prefix("kubernetes://").unwrap_or(cred);
        let key = format!("{}/{name}", id.namespace);
        let known =
            |key: &str| secrets.contains_key(key) || broken.contains(&format!("Secret {key}"));
        // MUTUAL and OPTIONAL_MUTUAL also need a CA: `ca.crt`/`cacert` in the Secret,
        // else a `<name>-cacert` Secret (Istio's SDS resource `kubernetes://<name>-cacert`).
        let has_ca = |key: &str| {
            secrets
                .get(key)
                .is_some_and(|s| s.data.contains_key("ca.crt") || s.data.contains_key("cacert"))
        };
        let ca_key = format!("{key}-cacert");
        let (problem, missing_name) = if !known(&key) {
            (
                format!(
                    "credential \"{cred}\" not found: no Secret \"{name}\" in namespace \"{}\"",
                    id.namespace
                ),
                name.to_string(),
            )
        } else if matches!(mode, TlsMode::Mutual | TlsMode::OptionalMutual)
            && secrets.contains_key(&key)
            && !has_ca(&key)
            && !has_ca(&ca_key)
            && !broken.contains(&format!("Secret {ca_key}"))
        {
            (
                format!(
                    "{} TLS needs a CA: Secret \"{name}\" has no ca.crt (or cacert) and there is no Secret \"{name}-cacert\" with one in namespace \"{}\"",
                    mode_name(mode),
                    id.namespace
                ),
                format!("{name}-cacert"),
            )
        } else {
            continue;
        };
        let w = Warning::missing(
            &gw.src,
            &format!("spec.servers[{i}].tls.credentialName"),
            "GW2001",
            &problem,
        );
        inactive.push(InactiveServer {
            gateway: gw.res.key(),
            index: i,
            name: server.name.clone(),
            port: server.port.number,
            hosts: server.hosts.clone(),
            credential_name: missing_name,
            reason: w.to_string(),
        });
        missing.push(w);
    }
}

/// Merges the servers of all selected Gateways per port, as Istio builds one
/// listener per port. HTTP cannot share a port with anything that is not
/// HTTP; TCP, TLS passthrough and HTTPS termination can (SNI picks among
/// TLS/HTTPS, TCP is the no-SNI-match fallback).
fn merge_servers(
    selected: &[&Entry<Gateway>],
    inactive: &[InactiveServer],
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<u16, Vec<ServerRef>> {
    let mut ports: BTreeMap<u16, Vec<ServerRef>> = BTreeMap::new();
    for gw in selected {
        let key = gw.res.key();
        for (i, s) in gw.res.spec.servers.iter().enumerate() {
            if inactive.iter().any(|x| x.gateway == key && x.index == i) {
                continue;
            }
            let protocol = s.port.protocol.to_ascii_uppercase();
            let tls_mode = s.tls.as_ref().and_then(|t| t.mode).unwrap_or_default();
            // Invalid port / protocol: already reported by validate_gateway.
            let Some(kind) = classify(&protocol, tls_mode) else {
                continue;
            };
            let Some(port) = u16::try_from(s.port.number).ok().filter(|p| *p != 0) else {
                continue;
            };
            let servers = ports.entry(port).or_default();
            let is_http = kind == ServerKind::Http;
            if let Some(other) = servers
                .iter()
                .find(|o| (o.kind == ServerKind::Http) != is_http)
            {
                errors.push(gw.src.error(
                    &format!("spec.servers[{i}].port.number"),
                    format!(
                        "port {port} is bound twice with conflicting protocols: {} (gateway {}) and {protocol} (gateway {key})",
                        other.protocol, other.gateway
                    ),
                ));
                continue;
            }
            servers.push(ServerRef {
                gateway: key.clone(),
                index: i,
                name: s.name.clone(),
                protocol,
                hosts: s.hosts.clone(),
                tls_mode,
                kind,
                bind: s.bind.clone(),
                tls: s.tls.clone(),
                origin: Origin::new(&gw.src, &format!("spec.servers[{i}]")),
            });
        }
    }
    ports
}

fn validate_service_entry(se: &Entry<istio::ServiceEntry>, errors: &mut Vec<ConfigError>) {
    let spec = &se.res.spec;
    if spec.hosts.is_empty() {
        errors.push(
            se.src
                .error("spec.hosts", "service entry must have at least one host"),
        );
    }
    for (i, port) in spec.ports.iter().enumerate() {
        if !(1..=65535).contains(&port.number) {
            errors.push(se.src.error(
                &format!("spec.ports[{i}].number"),
                format!("port number {} is out of range 1-65535", port.number),
            ));
        }
    }
    for (k, ep) in spec.endpoints.iter().enumerate() {
        let at = format!("spec.endpoints[{k}]");
        match ep.address.as_deref() {
            None | Some("") => errors.push(se.src.error(&at, "endpoint address is required")),
            Some(a) if a.starts_with("unix://") => {
                errors.push(se.src.error(
                    &format!("{at}.address"),
                    "unix domain socket endpoints are not supported",
                ));
            }
            // Istio: STATIC resolution takes IP addresses only.
            Some(a)
                if spec.resolution == Resolution::Static
                    && a.parse::<std::net::IpAddr>().is_err() =>
            {
                errors.push(se.src.error(
                    &format!("{at}.address"),
                    format!(
                        "endpoint address \"{a}\" must be an IP address when resolution is STATIC"
                    ),
                ));
            }
            Some(_) => {}
        }
        for (name, port) in &ep.ports {
            if !(1..=65535).contains(port) {
                errors.push(se.src.error(
                    &format!("{at}.ports.{name}"),
                    format!("port number {port} is out of range 1-65535"),
                ));
            }
        }
    }
}

// -------------------------------------------------------- virtual services

fn validate_virtual_service(vs: &Entry<VirtualService>, errors: &mut Vec<ConfigError>) {
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
        for (path, e) in super::mirror::problems(route) {
            errors.push(src.error(&format!("{at}.{path}"), e));
        }
        if let Some(cors) = &route.cors_policy {
            for (path, e) in super::cors::problems(cors) {
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
        && let Err(e) = super::regex::compile(re, "regex")
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

/// Keys of the Gateways a VS is attached to. `mesh` means sidecars, which we
/// are not; a VS without `gateways` is attached to `mesh` only.
fn vs_gateways(
    vs: &Entry<VirtualService>,
    known: &HashSet<String>,
    missing: &mut Vec<Warning>,
) -> Vec<String> {
    let ns = vs.res.metadata.namespace();
    let mut out = Vec::new();
    for (j, g) in vs.res.spec.gateways.iter().flatten().enumerate() {
        if g == "mesh" {
            continue;
        }
        let key = gateway_key(g, ns);
        if known.contains(&key) {
            out.push(key);
        } else {
            missing.push(Warning::missing(
                &vs.src,
                &format!("spec.gateways[{j}]"),
                "GW2002",
                &format!("virtual service references gateway \"{key}\" which does not exist"),
            ));
        }
    }
    out
}

/// `name` is relative to the referring resource's namespace; `ns/name` is not.
fn gateway_key(reference: &str, ns: &str) -> String {
    if reference.contains('/') {
        reference.to_string()
    } else {
        format!("{ns}/{reference}")
    }
}

struct VsBinding<'a> {
    vs: &'a Entry<VirtualService>,
    /// Selected gateways it names.
    gateways: Vec<String>,
}

impl VsBinding<'_> {
    fn ns(&self) -> &str {
        self.vs.res.metadata.namespace()
    }

    /// Its `spec.http[i]` as written, and where.
    fn written(&self, i: usize) -> WrittenRoute {
        WrittenRoute {
            at: Origin::new(&self.vs.src, &format!("spec.http[{i}]")),
            route: std::sync::Arc::clone(&self.vs.res.spec.http[i]),
        }
    }

    /// Istio binds a VS to a server when the VS names the server's Gateway,
    /// the server host's namespace part admits the VS's namespace, and some
    /// VS host intersects the server host.
    fn binds(&self, server: &ServerRef) -> bool {
        if !self.gateways.contains(&server.gateway) {
            return false;
        }
        let gw_ns = server.gateway.split('/').next().unwrap_or_default();
        server.hosts.iter().any(|h| {
            let (ns, host) = hosts::split_server_host(h, gw_ns);
            (ns == "*" || ns == self.ns())
                && self
                    .vs
                    .res
                    .spec
                    .hosts
                    .iter()
                    .any(|v| hosts::intersects(v, host))
        })
    }

    /// A match's own `gateways` (if any) further restrict where it applies.
    fn match_allows(&self, match_gateways: &[String], server: &ServerRef) -> bool {
        match_gateways.is_empty()
            || match_gateways
                .iter()
                .any(|g| gateway_key(g, self.ns()) == server.gateway)
    }
}

fn port_ok(match_port: Option<u32>, port: u16) -> bool {
    match_port.is_none_or(|p| p == u32::from(port))
}

struct RouteBuilder<'a> {
    /// The gateway itself: `sourceLabels`/`sourceNamespace` are compared with it.
    id: &'a GatewayIdentity,
    resolver: Resolver<'a>,
    /// Resolved destination lists by `vs-key#path`, so a route bound to
    /// several listeners is resolved (and its errors reported) once.
    cache: HashMap<String, Vec<WeightedCluster>>,
    /// Fields read and not acted on that only resolution reveals (GW1009).
    warnings: Vec<Warning>,
    /// Delegate VirtualServices (no hosts) by key.
    delegates: Delegates<'a>,
    /// A root `http[]` entry's delegate routes merged with it, by `root-key#i`: built
    /// (and their problems reported) once however many listeners the root binds to.
    merged: HashMap<String, Vec<Delegated<'a>>>,
    /// Delegates not found (GW2005).
    missing: Vec<Warning>,
}

/// One delegate route merged with its root entry.
#[derive(Clone)]
struct Delegated<'a> {
    route: std::sync::Arc<istio::HttpRoute>,
    /// The delegate VirtualService and its `http[]` index: its destinations are
    /// resolved in its namespace and reported at its positions.
    vs: &'a Entry<VirtualService>,
    index: usize,
}

impl<'a> RouteBuilder<'a> {
    fn listener(
        &mut self,
        port: u16,
        servers: Vec<ServerRef>,
        vss: &[VsBinding],
        errors: &mut Vec<ConfigError>,
    ) -> Listener {
        let all = |k: ServerKind| servers.iter().all(|s| s.kind == k);
        let protocol = if all(ServerKind::Http) {
            ListenerProtocol::Http
        } else if all(ServerKind::Tcp) {
            ListenerProtocol::Tcp
        } else if all(ServerKind::HttpsTerminate) {
            ListenerProtocol::Https
        } else {
            ListenerProtocol::Tls
        };

        let mut tcp = None;
        let mut tls = Vec::new();
        let mut terminated_tcp: Vec<(usize, TcpRoute)> = Vec::new();
        let mut http = Vec::new();
        for b in vss {
            let bound: Vec<usize> = (0..servers.len())
                .filter(|&i| b.binds(&servers[i]))
                .collect();
            let of_kind = |kinds: &[ServerKind]| -> Vec<&ServerRef> {
                bound
                    .iter()
                    .map(|&i| &servers[i])
                    .filter(|s| kinds.contains(&s.kind))
                    .collect()
            };
            let spec = &b.vs.res.spec;
            let id = self.id;

            // TCP: the first (VS namespace/name order, then tcp[] order)
            // matching route wins; Envoy has a single TCP proxy per chain.
            let tcp_servers = of_kind(&[ServerKind::Tcp]);
            if tcp.is_none() && !tcp_servers.is_empty() {
                let found = spec.tcp.iter().enumerate().find(|(_, r)| {
                    r.matches.is_empty()
                        || r.matches.iter().any(|m| {
                            port_ok(m.port, port)
                                && source_ok(&m.source_labels, m.source_namespace.as_deref(), id)
                                && tcp_servers.iter().any(|s| b.match_allows(&m.gateways, s))
                        })
                });
                if let Some((i, r)) = found {
                    let dests: Vec<_> =
                        r.route.iter().map(|d| (&d.destination, d.weight)).collect();
                    let destinations =
                        self.resolve(b, &format!("spec.tcp[{i}].route"), &dests, errors);
                    tcp = Some(TcpRoute {
                        name: b.vs.res.key(),
                        destinations,
                    });
                }
            }

            // TLS termination: per server, the first tcp route bound to it
            // (Istio's buildGatewayNetworkFiltersFromTCPRoutes for that server).
            for &idx in &bound {
                let s = &servers[idx];
                if s.kind != ServerKind::TlsTerminate
                    || terminated_tcp.iter().any(|(i, _)| *i == idx)
                {
                    continue;
                }
                let found = spec.tcp.iter().enumerate().find(|(_, r)| {
                    r.matches.is_empty()
                        || r.matches
                            .iter()
                            .any(|m| port_ok(m.port, port) && b.match_allows(&m.gateways, s))
                });
                if let Some((i, r)) = found {
                    let dests: Vec<_> =
                        r.route.iter().map(|d| (&d.destination, d.weight)).collect();
                    let destinations =
                        self.resolve(b, &format!("spec.tcp[{i}].route"), &dests, errors);
                    terminated_tcp.push((
                        idx,
                        TcpRoute {
                            name: b.vs.res.key(),
                            destinations,
                        },
                    ));
                }
            }

            let tls_servers = of_kind(&[ServerKind::TlsPassthrough]);
            if !tls_servers.is_empty() {
                for (i, r) in spec.tls.iter().enumerate() {
                    let mut sni_hosts: Vec<String> = Vec::new();
                    for m in &r.matches {
                        let allowed: Vec<&&ServerRef> = tls_servers
                            .iter()
                            .filter(|s| b.match_allows(&m.gateways, s))
                            .collect();
                        if !port_ok(m.port, port)
                            || !source_ok(&m.source_labels, m.source_namespace.as_deref(), id)
                            || allowed.is_empty()
                        {
                            continue;
                        }
                        for sni in &m.sni_hosts {
                            let sni = sni.to_ascii_lowercase();
                            // Only names the bound servers actually accept.
                            let accepted = allowed.iter().any(|s| {
                                let gw_ns = s.gateway.split('/').next().unwrap_or_default();
                                s.hosts.iter().any(|h| {
                                    hosts::intersects(hosts::split_server_host(h, gw_ns).1, &sni)
                                })
                            });
                            if accepted && !sni_hosts.contains(&sni) {
                                sni_hosts.push(sni);
                            }
                        }
                    }
                    if sni_hosts.is_empty() {
                        continue;
                    }
                    let dests: Vec<_> =
                        r.route.iter().map(|d| (&d.destination, d.weight)).collect();
                    let destinations =
                        self.resolve(b, &format!("spec.tls[{i}].route"), &dests, errors);
                    tls.push(TlsRoute {
                        name: b.vs.res.key(),
                        sni_hosts,
                        destinations,
                    });
                }
            }

            let http_idx: Vec<usize> = bound
                .iter()
                .copied()
                .filter(|&i| {
                    matches!(
                        servers[i].kind,
                        ServerKind::Http | ServerKind::HttpsTerminate
                    )
                })
                .collect();
            if !http_idx.is_empty() {
                let mut routes = Vec::with_capacity(spec.http.len());
                let applies = |r: &istio::HttpRoute| {
                    r.matches.is_empty()
                        || r.matches.iter().any(|m| {
                            port_ok(m.port, port)
                                && http_idx
                                    .iter()
                                    .any(|&s| b.match_allows(&m.gateways, &servers[s]))
                        })
                };
                for (i, r) in spec.http.iter().enumerate() {
                    if let Some(d) = &r.delegate {
                        // Merged before the gateway/port/source filter, as Istio merges
                        // the VirtualService before building routes from it.
                        for mut dr in self.delegated(b, i, r, d) {
                            let Some(route) = source_match::http_route_for(&dr.route, id) else {
                                continue;
                            };
                            dr.route = route;
                            if applies(&dr.route) {
                                routes.push(self.delegated_entry(b, i, dr, errors));
                            }
                        }
                        continue;
                    }
                    // Blocks whose source is not this gateway are gone before anything
                    // else looks at the route.
                    let Some(r) = source_match::http_route_for(r, id) else {
                        continue;
                    };
                    let r = &r;
                    if !applies(r) {
                        continue;
                    }
                    let dests: Vec<_> =
                        r.route.iter().map(|d| (&d.destination, d.weight)).collect();
                    let destinations =
                        self.resolve(b, &format!("spec.http[{i}].route"), &dests, errors);
                    let mirrors = self.resolve_mirrors(b, i, r, errors);
                    routes.push(HttpRouteEntry {
                        route: std::sync::Arc::clone(r),
                        destinations,
                        mirrors,
                        written: vec![b.written(i)],
                    });
                }
                if !routes.is_empty() {
                    routes.shrink_to_fit();
                    http.push(HttpVirtualHost {
                        name: b.vs.res.key(),
                        servers: http_idx,
                        hosts: spec.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                        routes,
                    });
                }
            }
        }
        Listener {
            port,
            protocol,
            servers,
            tcp,
            tls,
            terminated_tcp,
            http,
        }
    }

    /// Root entry `spec.http[i]` of `b` (with `delegate`) merged with each route of its
    /// delegate ([`delegate`]); a missing delegate is GW2005, a delegate route whose
    /// match is not within the root's is left out with GW1009.
    fn delegated(
        &mut self,
        b: &VsBinding,
        i: usize,
        root: &istio::HttpRoute,
        d: &istio::Delegate,
    ) -> Vec<Delegated<'a>> {
        let key = format!("{}#spec.http[{i}]", b.vs.res.key());
        if let Some(hit) = self.merged.get(&key) {
            return hit.clone();
        }
        let mut out = Vec::new();
        match self
            .delegates
            .find(&b.vs.res, &d.name, d.namespace.as_deref())
        {
            Err(problem) => self.missing.push(Warning::missing(
                &b.vs.src,
                &format!("spec.http[{i}].delegate"),
                "GW2005",
                &problem,
            )),
            Ok(dvs) => {
                for (k, leaf) in dvs.res.spec.http.iter().enumerate() {
                    // A delegate of a delegate is refused by validation.
                    if leaf.delegate.is_some() {
                        continue;
                    }
                    match delegate::merge_route(root, leaf) {
                        Some(m) => out.push(Delegated {
                            route: std::sync::Arc::new(m),
                            vs: dvs,
                            index: k,
                        }),
                        None => self.warnings.push(Warning::at(
                            &dvs.src,
                            &format!("spec.http[{k}].match"),
                            "GW1009",
                            &format!(
                                "not within the match of the root route delegating to it ({} spec.http[{i}] at {})",
                                b.vs.src.subject,
                                b.vs.src.loc(&format!("spec.http[{i}].match"))
                            ),
                        )),
                    }
                }
            }
        }
        self.merged.insert(key, out.clone());
        out
    }

    /// The route entry of a merged delegate route: its destinations are the delegate's
    /// (resolved in its namespace); its mirrors the delegate's own or else the root's.
    fn delegated_entry(
        &mut self,
        root: &VsBinding,
        i: usize,
        dr: Delegated<'a>,
        errors: &mut Vec<ConfigError>,
    ) -> HttpRouteEntry {
        let db = VsBinding {
            vs: dr.vs,
            gateways: Vec::new(),
        };
        let dests: Vec<_> = dr
            .route
            .route
            .iter()
            .map(|d| (&d.destination, d.weight))
            .collect();
        let at = format!("spec.http[{}].route", dr.index);
        let destinations = self.resolve(&db, &at, &dests, errors);
        let mirrors = if delegate::own_mirror(&dr.vs.res.spec.http[dr.index]) {
            self.resolve_mirrors(&db, dr.index, &dr.route, errors)
        } else {
            self.resolve_mirrors(root, i, &dr.route, errors)
        };
        HttpRouteEntry {
            route: dr.route,
            destinations,
            mirrors,
            written: vec![db.written(dr.index), root.written(i)],
        }
    }

    /// Resolves `spec.http[i]`'s mirror destinations (`super::mirror::policies`).
    fn resolve_mirrors(
        &mut self,
        b: &VsBinding,
        i: usize,
        r: &istio::HttpRoute,
        errors: &mut Vec<ConfigError>,
    ) -> Vec<MirrorCluster> {
        let mut out = Vec::new();
        for (path, dest, per_million) in super::mirror::policies(r) {
            let at = format!("spec.http[{i}].{path}");
            let key = format!("{}#{at}", b.vs.res.key());
            let cluster = match self.cache.get(&key) {
                Some(hit) => hit.first().map(|w| w.cluster.clone()),
                None => {
                    let c = self
                        .resolver
                        .destination(dest, b.ns(), &b.vs.src, &at, errors);
                    let cached = c.iter().map(|c| WeightedCluster {
                        cluster: c.clone(),
                        weight: 100,
                    });
                    self.cache.insert(key, cached.collect());
                    c
                }
            };
            if let Some(cluster) = cluster {
                out.push(MirrorCluster {
                    cluster,
                    per_million,
                });
            }
        }
        out
    }

    /// Resolves a route's destination list (at `path`, e.g. `spec.tcp[0].route`)
    /// into weighted clusters; unresolvable destinations are reported and dropped.
    fn resolve(
        &mut self,
        b: &VsBinding,
        path: &str,
        dests: &[(&istio::Destination, Option<u32>)],
        errors: &mut Vec<ConfigError>,
    ) -> Vec<WeightedCluster> {
        let key = format!("{}#{path}", b.vs.res.key());
        if let Some(hit) = self.cache.get(&key) {
            return hit.clone();
        }
        let ws: Vec<_> = dests.iter().map(|(_, w)| *w).collect();
        // Bad sums were reported by validation; fall back to raw weights.
        let weights = weights(&ws).unwrap_or_else(|_| ws.iter().map(|w| w.unwrap_or(0)).collect());
        let mut out = Vec::new();
        for (j, ((dest, _), weight)) in dests.iter().zip(weights).enumerate() {
            let at = format!("{path}[{j}].destination");
            if let Some(cluster) = self
                .resolver
                .destination(dest, b.ns(), &b.vs.src, &at, errors)
            {
                out.push(WeightedCluster { cluster, weight });
            }
        }
        self.cache.insert(key, out.clone());
        out
    }
}

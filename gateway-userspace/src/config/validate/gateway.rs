//! Gateway servers: their protocol and TLS settings, their credentials (a server whose
//! Secret is missing is inactive), and the servers of every selected Gateway merged into
//! one listener per port.

use std::collections::{BTreeMap, HashSet};

use crate::config::hosts;
use crate::config::istio::{Gateway, TlsMode};
use crate::config::parse::Entry;
use crate::config::snapshot::{InactiveServer, Origin, Secret, ServerKind, ServerRef};
use crate::config::warnings::Warning;
use crate::config::{ConfigError, GatewayIdentity};

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

pub(super) fn validate_gateway(gw: &Entry<Gateway>, errors: &mut Vec<ConfigError>) {
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
                if let Err((field, message)) = crate::config::tls_settings::check_settings(tls) {
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
pub(super) fn check_credentials(
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
pub(super) fn merge_servers(
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

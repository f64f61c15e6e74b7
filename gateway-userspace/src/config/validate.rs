//! Istio's validation rules and the assembly of the [`Snapshot`]: `build` checks every
//! resource, binds the VirtualServices to the servers of the selected Gateways and
//! resolves their destinations. The rules live by job: [`gateway`] (servers, their
//! credentials, one listener per port), [`virtual_service`] (VirtualService fields and
//! string matches), [`routes`] (binding VSs to servers, delegates, destinations); here
//! the resources (duplicates, Secrets, ServiceEntries) and the Snapshot.

mod gateway;
mod routes;
mod virtual_service;

use std::collections::{BTreeMap, HashMap, HashSet};

use base64::Engine as _;

use super::delegate::Delegates;
use super::dest_rules;
use super::istio::{self, Gateway, Resolution};
use super::parse::{Entry, Parsed};
use super::resolve::Resolver;
use super::snapshot::{Origin, Resources, Secret, Snapshot};
use super::source::Source;
use super::warnings::Warning;
use super::{ConfigError, GatewayIdentity};
use gateway::{check_credentials, merge_servers, validate_gateway};
use routes::{RouteBuilder, VsBinding, vs_gateways};
use virtual_service::validate_virtual_service;
#[cfg(test)]
pub(crate) use virtual_service::weights;

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

//! Every field the gateway reads but does not act on, said out loud.
//!
//! Istio's API has fields this gateway does not implement (`corsPolicy`, mirroring,
//! `sourceLabels`, Telemetry `tracing`, ...). Kubernetes (structural CRD schemas,
//! `kubectl apply`'s strict field validation) accepts them, so the loader does too,
//! but never silently: each one set (not null, empty, `false` or its default) gives a
//! [`Warning`] with its position, its path, a stable code (`GW1xxx`, as `istioctl
//! analyze`'s `IST0xxx`) and what happens instead. Fields that are not part of Istio's
//! API at all stay errors (`unknown field`), as `kubectl apply` rejects them.
//!
//! References to something missing (`GW2xxx`: a credential Secret, a Gateway, a
//! destination host) are made by `validate` and `resolve`: errors for `gateway
//! validate`, warnings at `gateway run`, where only the part that refers to the missing
//! thing is inactive (Istio's failure isolation).
//!
//! The table [`CODES`] is the README's; a test keeps them in step.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde_yaml::Value;

use super::source::{DocText, Positions, Source};
use super::{ConfigError, Loc};

/// One warning: where, which field, which code, what happens instead.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Warning {
    pub loc: Loc,
    /// `GW1001`, ...: see [`CODES`].
    pub code: &'static str,
    /// `Kind namespace/name` (empty for MeshConfig).
    pub subject: String,
    /// The field's path: `spec.http[0].corsPolicy`.
    pub path: String,
    /// What is wrong and what happens instead (field warnings start with the path).
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: warning[{}]: ", self.loc, self.code)?;
        if !self.subject.is_empty() {
            write!(f, "{}: ", self.subject)?;
        }
        f.write_str(&self.message)
    }
}

impl Warning {
    /// A field warning at the key naming `path` in `src`'s document.
    pub(crate) fn at(src: &Source, path: &str, code: &'static str, what: &str) -> Warning {
        Warning {
            loc: src.key_loc(path),
            code,
            subject: src.subject.to_string(),
            path: path.to_string(),
            message: format!("{path}: {what}; {}", effect(code)),
        }
    }

    /// A missing reference (`GW2xxx`) at the value of `path`: `problem`, then what
    /// happens at run.
    pub(crate) fn missing(src: &Source, path: &str, code: &'static str, problem: &str) -> Warning {
        Warning {
            loc: src.loc(path),
            code,
            subject: src.subject.to_string(),
            path: path.to_string(),
            message: format!("{problem}; {}", effect(code)),
        }
    }

    /// The same problem as an error (`gateway validate`, `--strict`).
    pub fn to_error(&self) -> ConfigError {
        ConfigError {
            loc: self.loc.clone(),
            message: format!("{} [{}]", self.message, self.code),
        }
    }
}

/// Every code: (code, what it is about, what happens instead). Kept in the README's
/// "Warnings" table.
pub const CODES: &[(&str, &str, &str)] = &[
    (
        "GW1001",
        "VirtualService `http[].corsPolicy`",
        "ignored: no CORS headers are added and CORS preflight requests are routed like any other request",
    ),
    (
        "GW1002",
        "VirtualService `http[].mirror`, `mirrors`, `mirrorPercentage`, `mirrorPercent`, `mirror_percent`",
        "ignored: no copy of the requests is sent anywhere",
    ),
    (
        "GW1003",
        "VirtualService `http[].delegate`",
        "ignored: the delegate's routes are not included; requests this entry matches get 404 (NR)",
    ),
    (
        "GW1004",
        "VirtualService `match[].sourceLabels`, `match[].sourceNamespace` (http, tcp, tls)",
        "ignored: the match applies as if they were unset (Istio would compare them with the gateway's labels and namespace)",
    ),
    (
        "GW1005",
        "VirtualService `tcp[].match[].destinationSubnets`, `sourceSubnet`, `tls[].match[].destinationSubnets`",
        "ignored: the match applies to every address",
    ),
    (
        "GW1006",
        "VirtualService `http[].match[].statPrefix`",
        "ignored: no per-route statistics are emitted",
    ),
    (
        "GW1007",
        "VirtualService `http[].retries.retryRemoteLocalities`, `retryIgnorePreviousHosts`",
        "ignored: each retry takes the cluster's next endpoint, round-robin",
    ),
    (
        "GW1008",
        "VirtualService `http[].redirect.prefixRewrite`",
        "ignored: the redirect keeps the request's path (or `redirect.uri`)",
    ),
    (
        "GW1009",
        "`destination.subset` (VirtualService routes)",
        "ignored: subsets need a DestinationRule, which this gateway does not load; traffic goes to every endpoint of the host",
    ),
    (
        "GW1010",
        "`exportTo` (VirtualService, ServiceEntry)",
        "ignored: the resource is visible to this gateway whatever `exportTo` says",
    ),
    (
        "GW1011",
        "Gateway `servers[].bind`, `servers[].defaultEndpoint`, `servers[].port.targetPort`",
        "ignored: the port listens on `--bind`'s addresses, on `port.number`",
    ),
    (
        "GW1012",
        "Gateway `tls.caCrl`, `tls.verifyCertificateSpki`, `tls.verifyCertificateHash`, `tls.insecureSkipVerify`",
        "ignored: client certificates are checked against the CA and `subjectAltNames` only (no revocation list, no pinning)",
    ),
    (
        "GW1013",
        "Gateway `tls.credentialNames`, `tls.tlsCertificates`, `tls.caCertCredentialName`",
        "ignored: certificates come from `credentialName` (or `serverCertificate`, `privateKey`, `caCertificates`) only",
    ),
    (
        "GW1014",
        "Gateway `tls.ecdhCurves`",
        "ignored: rustls' default key-exchange groups are offered (X25519MLKEM768, X25519, P-256, P-384)",
    ),
    (
        "GW1020",
        "ServiceEntry `addresses`, `subjectAltNames`, `workloadSelector`",
        "ignored: the gateway connects to the endpoints in plain TCP and never intercepts by address",
    ),
    (
        "GW1021",
        "ServiceEntry `endpoints[].labels`, `network`, `locality`, `weight`, `serviceAccount`",
        "ignored: endpoints are picked round-robin, with equal weight",
    ),
    (
        "GW1022",
        "ServiceEntry `ports[].protocol` HTTP2, GRPC or GRPC-WEB",
        "ignored: requests go upstream over HTTP/1.1",
    ),
    (
        "GW1030",
        "Telemetry `metrics`",
        "ignored: Istio's standard metrics are always reported, with their standard labels",
    ),
    (
        "GW1031",
        "Telemetry `tracing`",
        "ignored: no spans are reported; trace headers are passed upstream as the client sent them",
    ),
    (
        "GW1032",
        "Telemetry `targetRef`, `targetRefs`",
        "ignored, and so is the Telemetry: Gateway API attachment is not supported (use `selector`)",
    ),
    (
        "GW1040",
        "AuthorizationPolicy `action: AUDIT`",
        "no effect: nothing is audited (no audit provider); decisions are made by the ALLOW and DENY policies",
    ),
    (
        "GW1050",
        "Secret `immutable`",
        "ignored: a Kubernetes API-server setting",
    ),
    (
        "GW1060",
        "a DestinationRule",
        "ignored, the whole resource: no subsets, load-balancer, connection-pool, outlier-detection or TLS-origination settings",
    ),
    (
        "GW1070",
        "MeshConfig fields other than the access-log fields, `rootNamespace`, `defaultProviders.accessLogging`, `extensionProviders[].envoyFileAccessLog` and `pathNormalization`",
        "ignored: not used by this gateway",
    ),
    (
        "GW2001",
        "Gateway `tls.credentialName` names a Secret that does not exist (MUTUAL, OPTIONAL_MUTUAL: or no CA, neither in it nor as `<name>-cacert`)",
        "that server is inactive (its hosts get no certificate; the handshake is refused), the port's other servers and every other port serve",
    ),
    (
        "GW2002",
        "VirtualService `gateways[]` names a Gateway that does not exist",
        "that reference is dropped; the VirtualService still binds to the gateways that exist",
    ),
    (
        "GW2003",
        "a destination host (or ServiceEntry host or endpoint) the resolver cannot find",
        "its cluster has no endpoints, so requests to it get 503 (UH) and TCP/TLS connections are closed",
    ),
];

/// What happens instead, for a code.
pub fn effect(code: &str) -> &'static str {
    CODES
        .iter()
        .find(|(c, ..)| *c == code)
        .map_or("", |(_, _, e)| e)
}

/// A field of one kind that is accepted and not acted on.
struct Rule {
    /// `spec.http[*].corsPolicy`: `[*]` is every item of a sequence.
    pattern: &'static str,
    code: &'static str,
    /// What the field is, for the message.
    what: &'static str,
    /// Only when the value is this (None: whenever set).
    when: Option<fn(&Value) -> bool>,
}

const fn rule(pattern: &'static str, code: &'static str, what: &'static str) -> Rule {
    Rule {
        pattern,
        code,
        what,
        when: None,
    }
}

const VIRTUAL_SERVICE: &[Rule] = &[
    Rule {
        pattern: "spec.exportTo",
        code: "GW1010",
        what: "not supported",
        when: Some(not_everywhere),
    },
    rule("spec.http[*].corsPolicy", "GW1001", "not supported"),
    rule("spec.http[*].mirror", "GW1002", "not supported"),
    rule("spec.http[*].mirrors", "GW1002", "not supported"),
    rule("spec.http[*].mirrorPercentage", "GW1002", "not supported"),
    rule("spec.http[*].mirrorPercent", "GW1002", "not supported"),
    rule("spec.http[*].mirror_percent", "GW1002", "not supported"),
    rule("spec.http[*].delegate", "GW1003", "not supported"),
    rule(
        "spec.http[*].match[*].sourceLabels",
        "GW1004",
        "not supported",
    ),
    rule(
        "spec.http[*].match[*].sourceNamespace",
        "GW1004",
        "not supported",
    ),
    rule(
        "spec.tcp[*].match[*].sourceLabels",
        "GW1004",
        "not supported",
    ),
    rule(
        "spec.tcp[*].match[*].sourceNamespace",
        "GW1004",
        "not supported",
    ),
    rule(
        "spec.tls[*].match[*].sourceLabels",
        "GW1004",
        "not supported",
    ),
    rule(
        "spec.tls[*].match[*].sourceNamespace",
        "GW1004",
        "not supported",
    ),
    rule(
        "spec.tcp[*].match[*].destinationSubnets",
        "GW1005",
        "not supported",
    ),
    rule(
        "spec.tcp[*].match[*].sourceSubnet",
        "GW1005",
        "not supported",
    ),
    rule(
        "spec.tls[*].match[*].destinationSubnets",
        "GW1005",
        "not supported",
    ),
    rule(
        "spec.http[*].match[*].statPrefix",
        "GW1006",
        "not supported",
    ),
    rule(
        "spec.http[*].retries.retryRemoteLocalities",
        "GW1007",
        "not supported",
    ),
    rule(
        "spec.http[*].retries.retryIgnorePreviousHosts",
        "GW1007",
        "not supported",
    ),
    rule(
        "spec.http[*].redirect.prefixRewrite",
        "GW1008",
        "not supported",
    ),
    rule(
        "spec.http[*].route[*].destination.subset",
        "GW1009",
        "not supported",
    ),
    rule(
        "spec.tcp[*].route[*].destination.subset",
        "GW1009",
        "not supported",
    ),
    rule(
        "spec.tls[*].route[*].destination.subset",
        "GW1009",
        "not supported",
    ),
];

const GATEWAY: &[Rule] = &[
    rule("spec.servers[*].bind", "GW1011", "not supported"),
    rule(
        "spec.servers[*].defaultEndpoint",
        "GW1011",
        "not supported (sidecars only)",
    ),
    rule("spec.servers[*].port.targetPort", "GW1011", "not supported"),
    rule("spec.servers[*].tls.caCrl", "GW1012", "not supported"),
    rule(
        "spec.servers[*].tls.verifyCertificateSpki",
        "GW1012",
        "not supported",
    ),
    rule(
        "spec.servers[*].tls.verifyCertificateHash",
        "GW1012",
        "not supported",
    ),
    rule(
        "spec.servers[*].tls.insecureSkipVerify",
        "GW1012",
        "not supported",
    ),
    rule(
        "spec.servers[*].tls.credentialNames",
        "GW1013",
        "not supported",
    ),
    rule(
        "spec.servers[*].tls.tlsCertificates",
        "GW1013",
        "not supported",
    ),
    rule(
        "spec.servers[*].tls.caCertCredentialName",
        "GW1013",
        "not supported",
    ),
    rule("spec.servers[*].tls.ecdhCurves", "GW1014", "not supported"),
];

const SERVICE_ENTRY: &[Rule] = &[
    Rule {
        pattern: "spec.exportTo",
        code: "GW1010",
        what: "not supported",
        when: Some(not_everywhere),
    },
    rule("spec.addresses", "GW1020", "not supported"),
    rule("spec.subjectAltNames", "GW1020", "not supported"),
    rule("spec.workloadSelector", "GW1020", "not supported"),
    rule("spec.endpoints[*].labels", "GW1021", "not supported"),
    rule("spec.endpoints[*].network", "GW1021", "not supported"),
    rule("spec.endpoints[*].locality", "GW1021", "not supported"),
    rule("spec.endpoints[*].weight", "GW1021", "not supported"),
    rule(
        "spec.endpoints[*].serviceAccount",
        "GW1021",
        "not supported",
    ),
    Rule {
        pattern: "spec.ports[*].protocol",
        code: "GW1022",
        what: "HTTP/2 upstreams are not supported",
        when: Some(h2_protocol),
    },
];

const TELEMETRY: &[Rule] = &[
    rule("spec.metrics", "GW1030", "not supported"),
    rule("spec.tracing", "GW1031", "not supported"),
    rule("spec.targetRef", "GW1032", "not supported"),
    rule("spec.targetRefs", "GW1032", "not supported"),
];

const AUTHORIZATION_POLICY: &[Rule] = &[Rule {
    pattern: "spec.action",
    code: "GW1040",
    what: "AUDIT is not supported",
    when: Some(is_audit),
}];

const SECRET: &[Rule] = &[rule("immutable", "GW1050", "not supported")];

/// `exportTo` other than `["*"]` (which is what the gateway does anyway).
fn not_everywhere(v: &Value) -> bool {
    v.as_sequence()
        .is_none_or(|s| s.iter().any(|x| x.as_str() != Some("*")))
}

fn h2_protocol(v: &Value) -> bool {
    v.as_str().is_some_and(|p| {
        matches!(
            p.to_ascii_uppercase().as_str(),
            "HTTP2" | "GRPC" | "GRPC-WEB"
        )
    })
}

fn is_audit(v: &Value) -> bool {
    v.as_str() == Some("AUDIT")
}

/// Set to something other than nothing: not null, not empty, not `false`.
fn is_set(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        _ => true,
    }
}

/// Every node `pattern` names in `root`, with its concrete path.
fn select<'a>(root: &'a Value, pattern: &str) -> Vec<(String, &'a Value)> {
    let mut cur = vec![(String::new(), root)];
    for seg in pattern.split('.') {
        let (name, each) = match seg.strip_suffix("[*]") {
            Some(n) => (n, true),
            None => (seg, false),
        };
        let mut next = Vec::new();
        for (path, node) in cur {
            let Some(child) = node.as_mapping().and_then(|m| m.get(name)) else {
                continue;
            };
            let p = if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}.{name}")
            };
            if !each {
                next.push((p, child));
            } else if let Some(items) = child.as_sequence() {
                next.extend(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| (format!("{p}[{i}]"), item)),
                );
            }
        }
        cur = next;
    }
    cur
}

/// The warnings of one resource document of `kind`, already deserialized.
pub(crate) fn scan(kind: &str, value: &Value, src: &Source, out: &mut Vec<Warning>) {
    let rules = match kind {
        "VirtualService" => VIRTUAL_SERVICE,
        "Gateway" => GATEWAY,
        "ServiceEntry" => SERVICE_ENTRY,
        "Telemetry" => TELEMETRY,
        "AuthorizationPolicy" => AUTHORIZATION_POLICY,
        "Secret" => SECRET,
        "DestinationRule" => {
            out.push(Warning::at(
                src,
                "kind",
                "GW1060",
                "DestinationRule is not supported",
            ));
            return;
        }
        _ => return,
    };
    for r in rules {
        for (path, v) in select(value, r.pattern) {
            if is_set(v) && r.when.is_none_or(|w| w(v)) {
                out.push(Warning::at(src, &path, r.code, r.what));
            }
        }
    }
}

/// Istio rejects these (its validation webhook), so they are errors here too.
pub(crate) fn refused(kind: &str, value: &Value, src: &Source, errors: &mut Vec<ConfigError>) {
    if kind != "VirtualService" {
        return;
    }
    for (path, v) in select(value, "spec.http[*].fault.delay.exponentialDelay") {
        if is_set(v) {
            errors.push(src.error(
                &path,
                "exponentialDelay is not supported (Istio's validation rejects it too: \"exponentialDelay not supported yet\"); use fixedDelay",
            ));
        }
    }
}

/// MeshConfig keys the gateway uses; every other key set gives GW1070.
const MESH_USED: &[&str] = &[
    "accessLogFile",
    "accessLogEncoding",
    "accessLogFormat",
    "rootNamespace",
    "defaultProviders",
    "extensionProviders",
    "pathNormalization",
];

/// The warnings of a MeshConfig file (`--mesh-config`).
pub fn scan_mesh(file: &Path, text: &str) -> Vec<Warning> {
    let Ok(value) = serde_yaml::from_str::<Value>(text) else {
        return Vec::new(); // the parse error is reported by mesh::parse
    };
    let src = Source {
        file: file.to_path_buf(),
        positions: Positions::build(&DocText {
            text: text.to_string(),
            line_offset: 0,
        }),
        subject: "".into(),
    };
    let mut out = Vec::new();
    let mut warn = |path: String, what: String| {
        out.push(Warning::at(&src, &path, "GW1070", &what));
    };
    let Some(map) = value.as_mapping() else {
        return out;
    };
    for (k, v) in map {
        let Some(key) = k.as_str() else { continue };
        if !MESH_USED.contains(&key) && is_set(v) {
            warn(
                key.to_string(),
                format!("MeshConfig {key} is not supported"),
            );
        }
    }
    if let Some(dp) = map.get("defaultProviders").and_then(Value::as_mapping) {
        for (k, v) in dp {
            let Some(key) = k.as_str().filter(|k| *k != "accessLogging") else {
                continue;
            };
            if is_set(v) {
                warn(
                    format!("defaultProviders.{key}"),
                    format!("default {key} providers are not supported"),
                );
            }
        }
    }
    for (path, p) in select(&value, "extensionProviders[*]") {
        let Some(m) = p.as_mapping() else { continue };
        for (k, v) in m {
            let Some(key) = k
                .as_str()
                .filter(|k| !matches!(*k, "name" | "envoyFileAccessLog"))
            else {
                continue;
            };
            if is_set(v) {
                warn(
                    format!("{path}.{key}"),
                    format!(
                        "{key} extension providers are not supported (only envoyFileAccessLog)"
                    ),
                );
            }
        }
    }
    out
}

/// `gateway_config_warnings{code}`: the loaded config's warnings per code. The family is
/// always there; a series per code that fired.
pub fn render_prometheus(warnings: &[Warning], out: &mut String) {
    use fmt::Write as _;
    let mut by_code: BTreeMap<&str, u64> = BTreeMap::new();
    for w in warnings {
        *by_code.entry(w.code).or_default() += 1;
    }
    let _ = writeln!(
        out,
        "# HELP gateway_config_warnings Warnings of the loaded configuration, per code (see the README's Warnings table).\n# TYPE gateway_config_warnings gauge"
    );
    for (code, n) in by_code {
        let _ = writeln!(out, "gateway_config_warnings{{code=\"{code}\"}} {n}");
    }
}

#[cfg(test)]
mod tests;

//! The data of [`super`]: every code with what happens instead (the README's table),
//! and, per kind, the fields Istio defines that the gateway reads and does not act on.

use serde_yaml::Value;

/// Every code: (code, what it is about, what happens instead). Kept in the README's
/// "Warnings" table.
pub const CODES: &[(&str, &str, &str)] = &[
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
        "ignored: a retry avoids the endpoints already tried (up to 5 re-picks, Istio's default `retryIgnorePreviousHosts: true`), in any locality",
    ),
    (
        "GW1008",
        "VirtualService `http[].redirect.prefixRewrite`",
        "ignored: the redirect keeps the request's path (or `redirect.uri`)",
    ),
    (
        "GW1009",
        "a delegate VirtualService's `http[]` route whose match is not within the match of the root route delegating to it (Istio's `mergeHTTPRoute` conflict)",
        "that delegate route is left out of the root's routes; the delegate's other routes apply",
    ),
    (
        "GW1010",
        "`exportTo` (VirtualService, ServiceEntry)",
        "ignored: the resource is visible to this gateway whatever `exportTo` says (a delegate VirtualService's `exportTo` does decide which roots may use it)",
    ),
    (
        "GW1011",
        "Gateway `servers[].bind`, `servers[].defaultEndpoint`, `servers[].port.targetPort`",
        "ignored: the port listens on `--bind`'s addresses, on `port.number`",
    ),
    (
        "GW1012",
        "Gateway `tls.verifyCertificateSpki`, `tls.verifyCertificateHash`, `tls.insecureSkipVerify`",
        "ignored: client certificates are checked against the CA, `caCrl` and `subjectAltNames` only (no pinning)",
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
        "ServiceEntry `endpoints[].network`, `locality`, `weight`, `serviceAccount`",
        "ignored: endpoints are picked by the cluster's load balancer with equal weight, whatever their locality",
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
        "GW1063",
        "DestinationRule `tls` with mode DISABLE and other settings",
        "ignored: with DISABLE the endpoints get plain TCP whatever else is set",
    ),
    (
        "GW1064",
        "DestinationRule `loadBalancer.localityLbSetting`, `warmupDurationSecs`, `warmup`",
        "ignored: every endpoint gets its share of traffic at once, whatever its locality",
    ),
    (
        "GW1065",
        "DestinationRule `trafficPolicy.tunnel`, `proxyProtocol`, `retryBudget`; `consistentHash.httpCookie.attributes`",
        "ignored: connections go to the endpoints directly, without a PROXY header; retries have no budget; a generated cookie carries only Path, Max-Age and HttpOnly",
    ),
    (
        "GW1066",
        "DestinationRule `workloadSelector`",
        "ignored: the DestinationRule applies as if it had no selector",
    ),
    (
        "GW1067",
        "DestinationRule `loadBalancer.simple: PASSTHROUGH`",
        "ignored: an ingress gateway has no original destination to pass through to (Istio's ORIGINAL_DST cluster would send the request back to the gateway itself); the cluster uses LEAST_REQUEST",
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
    (
        "GW2004",
        "a route `destination.subset` that the host's DestinationRule does not define (or no DestinationRule applies to the host)",
        "the route's cluster does not exist, as in Envoy: requests get 503 (NC, `cluster_not_found`) and TCP/TLS connections are closed",
    ),
    (
        "GW2005",
        "VirtualService `http[].delegate` names a VirtualService that does not exist, has `hosts` (is not a delegate) or is not exported to the root's namespace",
        "that root route is left out, as Istio does: requests it would match go on to the VirtualService's next routes (404, NR, if none matches)",
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
pub(super) struct Rule {
    /// `spec.http[*].mirror`: `[*]` is every item of a sequence.
    pub pattern: &'static str,
    pub code: &'static str,
    /// What the field is, for the message.
    pub what: &'static str,
    /// Only when the value is this (None: whenever set).
    pub when: Option<fn(&Value) -> bool>,
}

const fn rule(pattern: &'static str, code: &'static str, what: &'static str) -> Rule {
    Rule {
        pattern,
        code,
        what,
        when: None,
    }
}

pub(super) const VIRTUAL_SERVICE: &[Rule] = &[
    Rule {
        pattern: "spec.exportTo",
        code: "GW1010",
        what: "not supported",
        when: Some(not_everywhere),
    },
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
];

pub(super) const GATEWAY: &[Rule] = &[
    rule("spec.servers[*].bind", "GW1011", "not supported"),
    rule(
        "spec.servers[*].defaultEndpoint",
        "GW1011",
        "not supported (sidecars only)",
    ),
    rule("spec.servers[*].port.targetPort", "GW1011", "not supported"),
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

pub(super) const SERVICE_ENTRY: &[Rule] = &[
    Rule {
        pattern: "spec.exportTo",
        code: "GW1010",
        what: "not supported",
        when: Some(not_everywhere),
    },
    rule("spec.addresses", "GW1020", "not supported"),
    rule("spec.subjectAltNames", "GW1020", "not supported"),
    rule("spec.workloadSelector", "GW1020", "not supported"),
    rule("spec.endpoints[*].network", "GW1021", "not supported"),
    rule("spec.endpoints[*].locality", "GW1021", "not supported"),
    rule(
        "spec.endpoints[*].serviceAccount",
        "GW1021",
        "not supported",
    ),
];

/// DestinationRule fields not acted on at the top level.
pub(super) const DESTINATION_RULE: &[Rule] =
    &[rule("spec.workloadSelector", "GW1066", "not supported")];

/// Where a DestinationRule has a traffic policy (each takes [`TRAFFIC_POLICY`]).
pub(super) const TRAFFIC_POLICY_AT: &[&str] = &[
    "spec.trafficPolicy",
    "spec.trafficPolicy.portLevelSettings[*]",
    "spec.subsets[*].trafficPolicy",
    "spec.subsets[*].trafficPolicy.portLevelSettings[*]",
];

/// Fields of a traffic policy not acted on, relative to it.
pub(super) const TRAFFIC_POLICY: &[Rule] = &[
    Rule {
        pattern: "tls",
        code: "GW1063",
        what: "settings besides mode do nothing with mode DISABLE",
        when: Some(disabled_with_settings),
    },
    rule("loadBalancer.localityLbSetting", "GW1064", "not supported"),
    rule("loadBalancer.warmupDurationSecs", "GW1064", "not supported"),
    rule("loadBalancer.warmup", "GW1064", "not supported"),
    rule("tunnel", "GW1065", "not supported"),
    rule("proxyProtocol", "GW1065", "not supported"),
    rule("retryBudget", "GW1065", "not supported"),
    rule(
        "loadBalancer.consistentHash.httpCookie.attributes",
        "GW1065",
        "not supported",
    ),
    Rule {
        pattern: "loadBalancer.simple",
        code: "GW1067",
        what: "PASSTHROUGH makes no sense on an ingress gateway",
        when: Some(is_passthrough),
    },
];

pub(super) const TELEMETRY: &[Rule] = &[
    rule("spec.metrics", "GW1030", "not supported"),
    rule("spec.tracing", "GW1031", "not supported"),
    rule("spec.targetRef", "GW1032", "not supported"),
    rule("spec.targetRefs", "GW1032", "not supported"),
];

pub(super) const AUTHORIZATION_POLICY: &[Rule] = &[Rule {
    pattern: "spec.action",
    code: "GW1040",
    what: "AUDIT is not supported",
    when: Some(is_audit),
}];

pub(super) const SECRET: &[Rule] = &[rule("immutable", "GW1050", "not supported")];

/// `exportTo` other than `["*"]` (which is what the gateway does anyway).
fn not_everywhere(v: &Value) -> bool {
    v.as_sequence()
        .is_none_or(|s| s.iter().any(|x| x.as_str() != Some("*")))
}

/// A `tls` block whose mode is not DISABLE (unset mode is DISABLE, as in Istio).
/// A `tls` with mode DISABLE (or none) that sets something else.
fn disabled_with_settings(v: &Value) -> bool {
    v.get("mode")
        .and_then(Value::as_str)
        .is_none_or(|m| m == "DISABLE")
        && v.as_mapping()
            .is_some_and(|m| m.keys().any(|k| k.as_str() != Some("mode")))
}

fn is_passthrough(v: &Value) -> bool {
    v.as_str() == Some("PASSTHROUGH")
}

fn is_audit(v: &Value) -> bool {
    v.as_str() == Some("AUDIT")
}

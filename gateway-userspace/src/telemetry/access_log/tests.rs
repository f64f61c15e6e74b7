use super::*;
use crate::config::istio::{
    AccessLogging, ObjectMeta, ProviderRef, Resource, TelemetrySpec, WorkloadSelector,
};
use crate::config::{GatewayIdentity, istio::Telemetry as TelemetryResource, mesh::MeshConfig};

fn tel(ns: &str, selector: Option<(&str, &str)>, disabled: bool) -> TelemetryResource {
    Resource {
        api_version: "telemetry.istio.io/v1".into(),
        kind: "Telemetry".into(),
        metadata: ObjectMeta {
            name: format!("t-{ns}-{}", selector.is_some()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        spec: TelemetrySpec {
            selector: selector.map(|(k, v)| WorkloadSelector {
                match_labels: [(k.to_string(), v.to_string())].into(),
            }),
            access_logging: vec![AccessLogging {
                providers: vec![ProviderRef {
                    name: "envoy".into(),
                }],
                disabled: Some(disabled),
                ..Default::default()
            }],
            ..Default::default()
        },
        status: None,
    }
}

fn on(mesh: &MeshConfig, t: &[TelemetryResource], id: &GatewayIdentity) -> bool {
    !compile_parts(mesh, t, &[], id).unwrap().targets.is_empty()
}

/// Istio's mergeLogs for a gateway (mode CLIENT): a SERVER entry does not apply.
#[test]
fn match_mode_server_does_not_apply_to_a_gateway() {
    use crate::config::istio::{LogSelector, WorkloadMode};
    let mesh = MeshConfig::default();
    let id = GatewayIdentity::default();
    for (mode, logs) in [
        (None, true),
        (Some(WorkloadMode::Client), true),
        (Some(WorkloadMode::ClientAndServer), true),
        (Some(WorkloadMode::Server), false),
    ] {
        let mut t = tel("istio-system", None, false);
        t.spec.access_logging[0].match_ = Some(LogSelector { mode });
        assert_eq!(on(&mesh, &[t], &id), logs, "{mode:?}");
    }
}

#[test]
fn istio_precedence() {
    let id = GatewayIdentity::default();
    let other_ns = GatewayIdentity {
        namespace: "ingress".into(),
        ..GatewayIdentity::default()
    };
    let mesh = MeshConfig::default();
    // Off by default.
    assert!(!on(&mesh, &[], &id));
    // The walkthrough: a selector on our labels turns it on; on other labels, not.
    assert!(on(
        &mesh,
        &[tel(
            "istio-system",
            Some(("app", "istio-ingressgateway")),
            false
        )],
        &id
    ));
    assert!(!on(
        &mesh,
        &[tel("istio-system", Some(("app", "other")), false)],
        &id
    ));
    // Mesh-wide on, workload off: off. Mesh-wide off, namespace on: on.
    assert!(!on(
        &mesh,
        &[
            tel("istio-system", None, false),
            tel("istio-system", Some(("istio", "ingressgateway")), true)
        ],
        &id
    ));
    assert!(on(
        &mesh,
        &[tel("istio-system", None, true), tel("ingress", None, false)],
        &other_ns
    ));
    assert!(!on(
        &mesh,
        &[tel("istio-system", None, false), tel("ingress", None, true)],
        &other_ns
    ));
    // A Telemetry in another namespace doesn't apply.
    assert!(!on(&mesh, &[tel("default", None, false)], &other_ns));
    // MeshConfig's file is the fallback; a Telemetry that disables wins over it.
    let mesh_on = MeshConfig {
        access_log_file: "/dev/stdout".into(),
        ..Default::default()
    };
    assert!(on(&mesh_on, &[], &id));
    assert!(!on(&mesh_on, &[tel("istio-system", None, true)], &id));
}

/// Filters and formats are compiled here, once: every bad one an error at its
/// field (a Telemetry's filter expression, the MeshConfig's formats).
#[test]
fn bad_filters_and_formats_are_errors_with_positions() {
    let id = GatewayIdentity::default();
    let yaml = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: istio-system}\nspec:\n  accessLogging:\n  - filter:\n      expression: source.workload == 'x'\n";
    let snap = crate::config::load_str("t.yaml", yaml, &id).expect("loads");
    let e = crate::config::ConfigErrors(compile(&snap, &id).unwrap_err()).to_string();
    assert!(
        e.starts_with("t.yaml:7:19: unsupported filter expression"),
        "{e}"
    );
    let typo = yaml.replace(
        "filter:\n      expression: source.workload == 'x'",
        "disable: true",
    );
    let e = crate::config::load_str("t.yaml", &typo, &id)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `disable`"), "{e}");

    let mesh = "accessLogFile: /dev/stdout\naccessLogFormat: \"%NOPE%\"\nextensionProviders:\n- name: f\n  envoyFileAccessLog:\n    path: /tmp/f.log\n    logFormat: {text: \"%ALSO_NOPE%\"}\n";
    let mut snap = crate::config::load_str("t.yaml", yaml, &id).expect("loads");
    snap.mesh = crate::config::mesh::parse(std::path::Path::new("mesh.yaml"), mesh).unwrap();
    let e = crate::config::ConfigErrors(compile(&snap, &id).unwrap_err()).lines();
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(
        e[0].starts_with("mesh.yaml:2:18: accessLogFormat: ")
            && e[0].contains("unsupported operator %NOPE%"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("mesh.yaml:7:17: extensionProviders \"f\": logFormat: "),
        "{e:?}"
    );
    assert!(e[2].starts_with("t.yaml:7:19: "), "{e:?}");
    let json = crate::config::mesh::parse(
        std::path::Path::new("mesh.yaml"),
        "accessLogEncoding: JSON\naccessLogFormat: \"not json\"\n",
    )
    .unwrap();
    let e = compile_parts(&json, &[], &[], &id).unwrap_err();
    assert!(e[0].message.contains("JSON object"), "{e:?}");
}

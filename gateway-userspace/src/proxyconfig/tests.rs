use std::path::PathBuf;

use super::*;
use crate::config::{self, GatewayIdentity};

fn walkthrough() -> Snapshot {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
    let files = [
        "coolstore-gateway.yaml",
        "secrets.yaml",
        "service-entries.yaml",
        "tcp-echo.yaml",
        "sni-passthrough.yaml",
    ];
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    config::load(&paths, &GatewayIdentity::default()).expect("walkthrough config loads")
}

#[test]
fn listener_table_lists_every_port_with_its_chains() {
    let dump = config_dump(&walkthrough(), "0.0.0.0".parse().unwrap());
    let out = render(Kind::Listener, &dump, None, false);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ADDRESSES"), "{out}");
    for want in [
        "0.0.0.0    80     ALL",
        "Route: http.80",
        "SNI: webapp.istioinaction.io",
        "Route: https.443.https-webapp.coolstore-gateway.default",
        "SNI: simple-sni-1.istioinaction.io",
        "Cluster: outbound|2701||tcp-echo-service.default.svc.cluster.local",
    ] {
        assert!(out.contains(want), "{want:?} not in\n{out}");
    }
    // The JSON of one listener by name.
    let one: Value =
        serde_json::from_str(&render(Kind::Listener, &dump, Some("0.0.0.0_31400"), true)).unwrap();
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0]["address"]["socket_address"]["port_value"], 31400);
}

#[test]
fn routes_clusters_endpoints_secrets() {
    let dump = config_dump(&walkthrough(), "0.0.0.0".parse().unwrap());
    let routes: Value =
        serde_json::from_str(&render(Kind::Route, &dump, Some("http.80"), true)).unwrap();
    let vhosts = routes[0]["virtual_hosts"].as_array().unwrap();
    let names: Vec<&str> = vhosts.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["catalog.istioinaction.io:80", "webapp.istioinaction.io:80"]
    );
    assert_eq!(
        vhosts[1]["routes"][0]["route"]["cluster"],
        "outbound|80||webapp.default.svc.cluster.local"
    );
    let table = render(Kind::Route, &dump, None, false);
    assert!(table.contains("webapp-vs-from-gw.default"), "{table}");
    assert!(table.contains("/*"), "{table}");

    let clusters = render(Kind::Cluster, &dump, None, false);
    assert!(clusters.starts_with("SERVICE FQDN"), "{clusters}");
    assert!(
        clusters.contains("webapp.default.svc.cluster.local"),
        "{clusters}"
    );
    let eps = render(Kind::Endpoint, &dump, None, false);
    assert!(eps.contains("HEALTHY"), "{eps}");

    let secrets = render(Kind::Secret, &dump, None, false);
    assert!(
        secrets.contains("kubernetes://webapp-credential"),
        "{secrets}"
    );
    assert!(secrets.contains("Cert Chain"), "{secrets}");
    let json = render(Kind::Secret, &dump, None, true);
    assert!(
        json.contains("CN=webapp.istioinaction.io") || json.contains("webapp.istioinaction.io"),
        "{json}"
    );
    assert!(!json.contains("PRIVATE KEY"), "key material in {json}");
    assert!(json.contains("[redacted]"));
}

//! Issue 14, must-shows 3 and 4, against the real binary:
//!
//! - a config with one field per kind that Istio defines and the gateway does not act
//!   on: each is a warning with `file:line:col` and its code at `validate` and in the
//!   `run` log, counted in `gateway_config_warnings{code}`; `--strict` makes them
//!   errors (exit 64, for `validate` and `run`); without it the rest is served;
//! - a Gateway server whose `credentialName` Secret does not exist: `validate` exits 64
//!   with the position, `run` serves the port's other HTTPS servers (real handshakes)
//!   and every other port, and shows the missing one inactive (`proxy-config secret`
//!   lists its credential WARMING, `/config_dump` the server) with a warning.
mod http_common;

use std::path::{Path, PathBuf};

use gateway_tests::{
    backends::demo_ca,
    gateway::{gateway_bin, validate},
    netns::{NetNs, privileged},
};
use http_common::*;

/// One field per kind (and the MeshConfig) that the gateway reads and does not act on.
const FIELDS: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: fields-gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
    defaultEndpoint: 127.0.0.1:9
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: fields-vs}
spec:
  hosts: [web.example.com]
  gateways: [istio-system/fields-gw]
  http:
  - match: [{name: hello, statPrefix: hello, uri: {prefix: /hello}}, {uri: {prefix: /}}]
    route:
    - destination: {host: web.internal, port: {number: 80}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web-se}
spec:
  hosts: [web.internal]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports: {http: 18080}
    locality: us-east1/zone-a
---
apiVersion: v1
kind: Secret
metadata: {name: unused, namespace: istio-system}
immutable: true
stringData: {note: not a certificate}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - randomSamplingPercentage: 10.0
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-admin, namespace: istio-system}
spec:
  action: AUDIT
  rules:
  - to: [{operation: {paths: ["/admin"]}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web-dr}
spec:
  host: web.internal
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST, warmupDurationSecs: 10s}
    connectionPool: {tcp: {maxConnections: 10, connectTimeout: 5s, maxConnectionDuration: 1h}}
"#;

const MESH: &str = "accessLogFile: /dev/stdout\nenableTracing: true\n";

/// (code, the text the warning points at: the field's key, first occurrence in the
/// file) for every warning FIELDS gives.
const EXPECTED: &[(&str, &str)] = &[
    ("GW1011", "defaultEndpoint:"),
    ("GW1006", "statPrefix:"),
    ("GW1021", "locality:"),
    ("GW1050", "immutable:"),
    ("GW1031", "tracing:"),
    ("GW1040", "action: AUDIT"),
    ("GW1064", "warmupDurationSecs:"),
];

/// `file:line:col` of the first occurrence of `needle` in `text` (1-based; col of its
/// first character).
fn pos(file: &Path, text: &str, needle: &str) -> String {
    let (n, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in the test config"));
    let col = line.find(needle).unwrap() + 1;
    format!("{}:{}:{col}", file.display(), n + 1)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gw-cfgwarn-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `gateway <args...>`, returning (exit code, stdout + stderr).
fn gateway(ns: Option<&NetNs>, args: &[&str]) -> (i32, String) {
    let bin = gateway_bin();
    let mut cmd = match ns {
        Some(ns) => ns.cmd(bin.to_str().unwrap()),
        None => std::process::Command::new(bin),
    };
    let out = cmd.args(args).output().expect("run gateway");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn unsupported_fields_warn_at_validate_and_run_and_strict_fails() {
    let dir = scratch_dir("fields");
    let cfg = write(&dir, "fields.yaml", FIELDS);
    let mesh = write(&dir, "mesh.yaml", MESH);
    let (c, m) = (cfg.to_str().unwrap(), mesh.to_str().unwrap());

    // validate: every warning, with its position and code, and exit 0.
    let (code, out) = gateway(None, &["validate", "--config", c, "--mesh-config", m]);
    assert_eq!(code, 0, "validate without --strict:\n{out}");
    for (code, needle) in EXPECTED {
        let at = pos(&cfg, FIELDS, needle);
        assert!(
            out.contains(&format!("{at}: warning[{code}]: ")),
            "{code} at {at} missing:\n{out}"
        );
    }
    let mesh_at = pos(&mesh, MESH, "enableTracing:");
    assert!(
        out.contains(&format!("{mesh_at}: warning[GW1070]: enableTracing: ")),
        "{out}"
    );
    assert!(out.contains(
        "spec.http[0].match[0].statPrefix: not supported; ignored: no per-route statistics"
    ));
    assert!(out.contains("8 warning(s)"), "{out}");
    assert!(out.contains("config OK"), "{out}");

    // validate --strict: the same, as errors; exit 64.
    let (code, out) = gateway(
        None,
        &["validate", "--strict", "--config", c, "--mesh-config", m],
    );
    assert_eq!(code, 64, "validate --strict:\n{out}");
    let at = pos(&cfg, FIELDS, "statPrefix:");
    assert!(
        out.contains(&format!(
            "{at}: spec.http[0].match[0].statPrefix: not supported"
        )),
        "{out}"
    );
    assert!(
        out.contains("[GW1006]") && out.contains("[GW1064]"),
        "{out}"
    );
    assert!(!out.contains("config OK"), "{out}");

    if !privileged("unsupported_fields_warn_at_validate_and_run_and_strict_fails (run)") {
        return;
    }
    let ns = NetNs::new("cfg-fields");
    // run --strict: exit 64 before anything is bound.
    let (code, out) = gateway(
        Some(&ns),
        &[
            "run",
            "--strict",
            "--config",
            c,
            "--mesh-config",
            m,
            "--admin-addr",
            "127.0.0.1:15000",
        ],
    );
    assert_eq!(code, 64, "run --strict:\n{out}");
    assert!(
        out.contains("errors with --strict; nothing was started"),
        "{out}"
    );

    // run: the warnings in the log, the route served, the metric.
    let _b = start_backends(&ns, vec![App::Http(18080, "web")]);
    let gw = start_gateway_with(&ns, &[&cfg], &["--mesh-config", m]);
    let log = gw.log();
    for (code, needle) in EXPECTED {
        let at = pos(&cfg, FIELDS, needle);
        assert!(
            log.contains(&format!("{at}: warning[{code}]: ")),
            "{code} at {at} not logged:\n{log}"
        );
    }
    assert!(
        log.contains(&format!("{mesh_at}: warning[GW1070]")),
        "{log}"
    );
    let r = curl(
        &ns,
        &["-H", "Host: web.example.com", "http://127.0.0.1:8080/hello"],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-backend"), Some("web"));
    // A match's `name` is appended to the route's in ROUTE_NAME, as Istio names routes
    // (route.go TranslateRoute: `in.Name + "." + match.Name`; this http route has no
    // name of its own, so the name is `.hello`).
    let line = "\"GET /hello HTTP/1.1\" 200";
    let log = gw.wait_log(std::time::Duration::from_secs(5), |l| l.contains(line));
    let l = log
        .lines()
        .find(|l| l.contains(line))
        .unwrap_or_else(|| panic!("no access-log line:\n{log}"));
    assert!(l.ends_with(" .hello"), "{l}");
    // The AUDIT policy decides nothing: /admin is served too.
    let r = curl(
        &ns,
        &["-H", "Host: web.example.com", "http://127.0.0.1:8080/admin"],
    );
    assert_eq!(r.status, 200, "{r:?}");

    let metrics = gw.admin_get("/stats/prometheus");
    assert!(
        metrics.contains("# TYPE gateway_config_warnings gauge"),
        "{metrics}"
    );
    for code in [
        "GW1006", "GW1011", "GW1021", "GW1031", "GW1040", "GW1050", "GW1064", "GW1070",
    ] {
        assert!(
            metrics.contains(&format!("gateway_config_warnings{{code=\"{code}\"}} 1\n")),
            "{code}:\n{metrics}"
        );
    }
    let dump = gw.admin_json("/config_dump");
    assert_eq!(
        dump["warnings"].as_array().map(Vec::len),
        Some(8),
        "{:#}",
        dump["warnings"]
    );
}

/// Two HTTPS servers with their Secrets on 443 (the walkthrough's), a third on 443 and a
/// fourth alone on 8443 whose Secret does not exist, HTTP on 80.
fn missing_secret_config(dir: &Path) -> PathBuf {
    write(
        dir,
        "missing-secret.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-shop, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: shop-credential}
    hosts: [shop.istioinaction.io]
  - port: {number: 8443, name: https-admin, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: admin-credential}
    hosts: [admin.istioinaction.io]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: [shop.istioinaction.io, admin.istioinaction.io]
  gateways: [shop-gateway]
  http:
  - route: [{destination: {host: webapp, port: {number: 80}}}]
"#,
    )
}

fn https(ns: &NetNs, host: &str, port: u16) -> Resp {
    let ca = demo_ca();
    curl(
        ns,
        &[
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &format!("{host}:{port}:127.0.0.1"),
            &format!("https://{host}:{port}/api/catalog"),
        ],
    )
}

#[test]
fn a_missing_credential_secret_leaves_only_its_server_inactive() {
    let dir = scratch_dir("secret");
    let extra = missing_secret_config(&dir);
    let configs: Vec<PathBuf> = vec![
        config("coolstore-gateway.yaml"),
        config("service-entries.yaml"),
        config("secrets.yaml"),
        extra.clone(),
    ];
    let text = std::fs::read_to_string(&extra).unwrap();
    let shop_at = pos(&extra, &text, "shop-credential");
    let admin_at = pos(&extra, &text, "admin-credential");

    // validate: an error at the credentialName, exit 64.
    let paths: Vec<&Path> = configs.iter().map(PathBuf::as_path).collect();
    let (code, out) = validate(&paths);
    assert_eq!(code, 64, "{out}");
    for at in [&shop_at, &admin_at] {
        assert!(
            out.contains(&format!("{at}: credential \"")),
            "{at}:\n{out}"
        );
    }
    assert!(out.contains("[GW2001]"), "{out}");

    if !privileged("a_missing_credential_secret_leaves_only_its_server_inactive (run)") {
        return;
    }
    let ns = NetNs::new("cfg-secret");
    let _b = start_backends(
        &ns,
        vec![App::Http(18080, "webapp"), App::Http(18081, "catalog")],
    );
    let gw = start_gateway(&ns, &paths);

    // The port's other servers: real handshakes with their own certificates.
    for host in ["webapp.istioinaction.io", "catalog.istioinaction.io"] {
        let r = https(&ns, host, 443);
        assert_eq!(r.status, 200, "{host}: {r:?}\n{}", gw.log());
    }
    // Every other port.
    let r = curl(
        &ns,
        &[
            "-H",
            "Host: webapp.istioinaction.io",
            "http://127.0.0.1:80/api/catalog",
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    // The inactive server's host: no server takes its SNI, the handshake is refused;
    // its port alone (8443) is not bound.
    let r = https(&ns, "shop.istioinaction.io", 443);
    assert_eq!(r.status, 0, "{r:?}");
    assert_ne!(r.exit, 0, "{r:?}");
    let r = https(&ns, "admin.istioinaction.io", 8443);
    assert_eq!(r.exit, 7, "8443 must not be bound: {r:?}");

    // The warning, with its position, in the log; counted.
    let log = gw.log();
    assert!(
        log.contains(&format!("{shop_at}: warning[GW2001]: Gateway default/shop-gateway: credential \"shop-credential\" not found")),
        "{log}"
    );
    assert!(
        log.contains(&format!("{admin_at}: warning[GW2001]")),
        "{log}"
    );
    let metrics = gw.admin_get("/stats/prometheus");
    assert!(
        metrics.contains("gateway_config_warnings{code=\"GW2001\"} 2\n"),
        "{metrics}"
    );

    // Shown inactive: the missing credentials WARMING in istioctl's secret table, the
    // others ACTIVE; the servers in /config_dump; a note on stderr.
    let out = ns
        .cmd(gateway_bin().to_str().unwrap())
        .args(["proxy-config", "secret", "--admin-addr", "127.0.0.1:15000"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("kubernetes://{name} ")))
            .unwrap_or_else(|| panic!("no {name} row:\n{table}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("shop-credential"),
        ["kubernetes://shop-credential", "WARMING", "false"]
    );
    assert_eq!(
        row("admin-credential"),
        ["kubernetes://admin-credential", "WARMING", "false"]
    );
    assert_eq!(row("webapp-credential")[1..4], ["Cert", "Chain", "ACTIVE"]);
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains("INACTIVE: gateway default/shop-gateway server 0 (port 443, hosts shop.istioinaction.io): credential Secret \"shop-credential\" does not exist [GW2001]"),
        "{note}"
    );
    let dump = gw.admin_json("/config_dump");
    let inactive = dump["inactive_servers"].as_array().unwrap();
    assert_eq!(inactive.len(), 2, "{inactive:#?}");
    assert_eq!(inactive[0]["credential_name"], "shop-credential");
    // The listener of 443 keeps the two servers that have their Secrets.
    let listeners = ns
        .cmd(gateway_bin().to_str().unwrap())
        .args([
            "proxy-config",
            "listener",
            "--port",
            "443",
            "--admin-addr",
            "127.0.0.1:15000",
        ])
        .output()
        .unwrap();
    let listeners = String::from_utf8_lossy(&listeners.stdout);
    assert!(
        listeners.contains("SNI: webapp.istioinaction.io"),
        "{listeners}"
    );
    assert!(
        listeners.contains("SNI: catalog.istioinaction.io"),
        "{listeners}"
    );
    assert!(!listeners.contains("shop.istioinaction.io"), "{listeners}");
}

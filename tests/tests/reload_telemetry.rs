//! Issue 11, access logs changed while running: a reload compiles the access-log setup
//! (Telemetry resources, the `--mesh-config` file) with the rest of the config and
//! swaps it in at once. A Telemetry added by reload turns a log on, a MeshConfig edit
//! changes its format from the next request (also on a keep-alive connection opened
//! before), a broken filter is rejected with its `file:line:col` and the running logs
//! go on. Real gateway in a namespace, real sockets, the log file as written.
mod http_common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::GatewayProc,
    netns::{NetNs, privileged},
};
use http_common::*;

/// Port 80 (HTTP, host app.test → :18080), and `extra` YAML documents.
fn config(extra: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app, namespace: istio-system}}
spec:
  hosts: [app.test]
  gateways: [edge]
  http: [{{route: [{{destination: {{host: 127.0.0.1, port: {{number: 18080}}}}}}]}}]
{extra}"#
    )
}

/// A mesh-wide Telemetry sending access logs to the `file-log` provider, with
/// `filter` when given.
fn telemetry(filter: Option<&str>) -> String {
    let filter = filter
        .map(|f| format!("\n    filter:\n      expression: \"{f}\""))
        .unwrap_or_default();
    format!(
        r#"---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: logs, namespace: istio-system}}
spec:
  accessLogging:
  - providers: [{{name: file-log}}]{filter}
"#
    )
}

/// A MeshConfig whose `file-log` provider writes `log` with `format`. No
/// `accessLogFile`: logs are off until a Telemetry names the provider.
fn mesh(log: &Path, format: &str) -> String {
    format!(
        "extensionProviders:\n- name: file-log\n  envoyFileAccessLog:\n    path: {}\n    logFormat:\n      text: \"{format}\\n\"\n",
        log.display()
    )
}

/// The access-log file's lines once one contains `needle` (the gateway writes them
/// through a background writer: polls up to 10 s); panics with both logs if none does.
fn wait_line(gw: &GatewayProc, file: &Path, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.lines().any(|l| l.contains(needle)) {
            return text.lines().map(str::to_string).collect();
        }
        assert!(
            Instant::now() < deadline,
            "no access-log line with {needle:?} in {}:\n{text}\ngateway log:\n{}",
            file.display(),
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// One HTTP/1.1 request on an open keep-alive connection; its status.
fn get(conn: &mut BufReader<TcpStream>, path: &str) -> u16 {
    write!(
        conn.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: app.test\r\nUser-Agent: reload-telemetry\r\n\r\n"
    )
    .expect("send request");
    let mut status = String::new();
    conn.read_line(&mut status).expect("status line");
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {status:?}"));
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("header");
        if name.eq_ignore_ascii_case("content-length") {
            len = value.trim().parse().expect("content-length");
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body).expect("body");
    code
}

fn request(ns: &NetNs, path: &str) {
    let r = curl(
        ns,
        &["-H", "Host: app.test", &format!("http://127.0.0.1{path}")],
    );
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn a_reload_turns_access_logs_on_changes_their_format_and_rejects_a_broken_filter() {
    if !privileged("a_reload_turns_access_logs_on_changes_their_format_and_rejects_a_broken_filter")
    {
        return;
    }
    let ns = NetNs::new("reloadtel");
    let _b = start_backends(&ns, vec![App::Http(18080, "v1")]);
    let dir = scratch(&ns);
    let (file, mesh_file, log) = (
        dir.join("gateway.yaml"),
        dir.join("mesh.yaml"),
        dir.join("access.log"),
    );
    let _ = std::fs::remove_file(&log);
    replace_file(&file, &config(""));
    replace_file(
        &mesh_file,
        &mesh(&log, "first %REQ(:PATH)% %RESPONSE_CODE%"),
    );
    let gw = GatewayProc::start(
        &ns,
        &[&file],
        &[
            "--splice",
            "userspace",
            "--mesh-config",
            mesh_file.to_str().unwrap(),
        ],
    );
    ns.enter();
    assert!(gw.log().contains("access logs off"), "{}", gw.log());
    // Opened while logs are off; its later requests are logged as the config says then.
    let s = TcpStream::connect("127.0.0.1:80").expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut conn = BufReader::new(s);
    assert_eq!(get(&mut conn, "/before"), 200);
    request(&ns, "/off");

    // A Telemetry added by reload turns the provider's file on for the next request.
    replace_file(&file, &config(&telemetry(None)));
    wait_metric(&gw, "gateway_config_generation", 2);
    request(&ns, "/one");
    let lines = wait_line(&gw, &log, "first /one 200");
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("/off") || l.contains("/before")),
        "requests served while logs were off are not logged: {lines:#?}"
    );
    assert_eq!(get(&mut conn, "/kept"), 200);
    wait_line(&gw, &log, "first /kept 200");
    let on = gw.wait_log(Duration::from_secs(5), |l| {
        l.contains("access log on (Telemetry istio-system/logs)")
    });
    assert!(
        on.contains("access log on (Telemetry istio-system/logs)"),
        "{on}"
    );

    // The --mesh-config file is watched too: a new format from the next request, on
    // the same file (its writer kept: no line lost or written twice).
    replace_file(&mesh_file, &mesh(&log, "second %REQ(:PATH)%"));
    wait_metric(&gw, "gateway_config_generation", 3);
    request(&ns, "/two");
    assert_eq!(get(&mut conn, "/two-kept"), 200);
    wait_line(&gw, &log, "second /two");
    let lines = wait_line(&gw, &log, "second /two-kept");
    let count = |needle: &str| lines.iter().filter(|l| l.as_str() == needle).count();
    assert_eq!(
        (
            count("first /one 200"),
            count("first /kept 200"),
            count("second /two")
        ),
        (1, 1, 1),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("first /two")),
        "{lines:#?}"
    );

    // A filter the gateway cannot evaluate: the reload is rejected with the
    // expression's file:line:col, and the running logs go on as they were.
    let broken = config(&telemetry(Some("source.workload == 'x'")));
    replace_file(&file, &broken);
    wait_metric(&gw, "gateway_config_reloads_total{result=\"rejected\"}", 1);
    let (line, col) = broken
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("expression: ").map(|c| (i + 1, c + 13)))
        .expect("the expression line");
    let at = format!(
        "{}:{line}:{col}: unsupported filter expression",
        file.display()
    );
    let rejected = gw.wait_log(Duration::from_secs(5), |l| {
        l.contains("reload rejected: the running config is kept")
    });
    assert!(
        rejected
            .lines()
            .any(|l| l.contains("ERROR") && l.contains(&at)),
        "no ERROR line with {at:?}:\n{rejected}"
    );
    assert_eq!(metric(&gw, "gateway_config_generation"), Some(3));
    request(&ns, "/three");
    wait_line(&gw, &log, "second /three");
    assert!(
        metric(
            &gw,
            &format!(
                "gateway_access_log_written_total{{file=\"{}\"}}",
                log.display()
            )
        )
        .is_some_and(|n| n >= 5),
        "{}",
        gw.admin_get("/stats/prometheus")
    );
}

/// `gateway validate --mesh-config` compiles the access logs as `run` and a reload do:
/// a bad MeshConfig format and a bad Telemetry filter are both printed, each at its
/// field, and the exit is 64.
#[test]
fn validate_prints_every_access_log_error_with_its_position() {
    let dir = std::env::temp_dir().join(format!("validate-telemetry-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (file, mesh_file) = (dir.join("gateway.yaml"), dir.join("mesh.yaml"));
    let cfg = config(&telemetry(Some("source.workload == 'x'")));
    std::fs::write(&file, &cfg).unwrap();
    std::fs::write(&mesh_file, mesh(&dir.join("a.log"), "%NOPE%")).unwrap();
    let out = std::process::Command::new(gateway_tests::gateway::gateway_bin())
        .arg("validate")
        .arg("--config")
        .arg(&file)
        .arg("--mesh-config")
        .arg(&mesh_file)
        .output()
        .expect("run gateway validate");
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{text}");
    let (line, col) = cfg
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("expression: ").map(|c| (i + 1, c + 13)))
        .expect("the expression line");
    for want in [
        format!(
            "{}:6:7: extensionProviders \"file-log\": logFormat: unsupported operator %NOPE%",
            mesh_file.display()
        ),
        format!(
            "{}:{line}:{col}: unsupported filter expression",
            file.display()
        ),
        "2 configuration error(s)".to_string(),
    ] {
        assert!(text.contains(&want), "no {want:?} in:\n{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

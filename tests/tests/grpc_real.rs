//! A real gRPC client and server (grpcio, the gRPC C-core: tests/grpc/echo.py) through
//! the real gateway (issue 13, must-show 2): unary and server-streaming calls, a status
//! with details and trailing metadata, the client's deadline, `retryOn: unavailable`
//! counted at the server, and the same over TLS (ALPN h2, the client trusting the test
//! CA). Also `sourceLabels` on a gateway: a match for another workload's labels is
//! skipped and the next route serves.
//!
//! python3-grpcio is a test dependency (`cargo xtask setup` installs it): without it
//! the test fails, it does not skip.
mod http_common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::die_with_parent,
    netns::{NetNs, privileged},
};
use http_common::{mint_ca, mint_cert, scratch, start_gateway_with, tls_secret_yaml};

/// The Debian interpreter: python3-grpcio installs its module there (a `python3` first
/// on PATH, pyenv's say, may not have it).
const PYTHON: &str = "/usr/bin/python3";
const BACKEND: u16 = 18470;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("grpc/echo.py")
}

fn require_grpcio() {
    let out = Command::new(PYTHON)
        .args(["-c", "import grpc; print(grpc.__version__)"])
        .output()
        .unwrap_or_else(|e| panic!("{PYTHON}: {e}: python3 with python3-grpcio is required"));
    assert!(
        out.status.success(),
        "python3-grpcio is missing ({PYTHON} cannot import grpc; `cargo xtask setup` installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `echo.py serve` in the namespace; killed on drop.
struct Server(Child);

impl Server {
    fn start(ns: &NetNs, port: u16) -> Server {
        let mut cmd = ns.cmd(PYTHON);
        cmd.arg(script())
            .args(["serve", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("spawn the gRPC server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut server = Server(child);
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(l) if l.trim() == format!("ready {port}") => server,
            other => {
                let status = server.0.try_wait();
                panic!("gRPC server not ready: {other:?} (exit: {status:?})")
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the client saw.
#[derive(Debug)]
struct Reply {
    code: String,
    details: String,
    trailing: serde_json::Value,
    messages: Vec<String>,
    took: Duration,
}

/// One call by `echo.py call` (its own deadline, 10 s unless `extra` says
/// `--timeout`, bounds it).
fn call(
    ns: &NetNs,
    target: &str,
    authority: &str,
    method: &str,
    data: &str,
    extra: &[&str],
) -> Reply {
    let t = Instant::now();
    let out = ns
        .cmd(PYTHON)
        .arg(script())
        .args(["call", target, authority, method, data])
        .args(extra)
        .output()
        .expect("run the gRPC client");
    let took = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    Reply {
        code: v["code"].as_str().unwrap_or_default().to_string(),
        details: v["details"].as_str().unwrap_or_default().to_string(),
        trailing: v["trailing"].clone(),
        messages: v["messages"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        took,
    }
}

fn config(secret: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [grpc.test, noretry.test]
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [grpc.test]
    tls: {{mode: SIMPLE, credentialName: grpc-cert}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: grpc, namespace: istio-system}}
spec:
  hosts: [grpc.test]
  ports: [{{number: 80, name: grpc, protocol: GRPC}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{grpc: {BACKEND}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: grpc, namespace: istio-system}}
spec:
  hosts: [grpc.test]
  gateways: [gw]
  http:
  # Another workload's route (an egress gateway's): not this gateway's, skipped.
  - match: [{{uri: {{prefix: /test.Echo/}}, sourceLabels: {{istio: egressgateway}}}}]
    fault: {{abort: {{httpStatus: 403, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: grpc.test}}}}]
  - match: [{{uri: {{exact: /test.Echo/Flaky}}, sourceLabels: {{app: istio-ingressgateway}}, sourceNamespace: istio-system}}]
    route: [{{destination: {{host: grpc.test}}}}]
    retries: {{attempts: 2, retryOn: unavailable}}
  - route: [{{destination: {{host: grpc.test}}}}]
    retries: {{attempts: 0}}
    timeout: 5s
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: noretry, namespace: istio-system}}
spec:
  hosts: [noretry.test]
  gateways: [gw]
  http:
  # A gRPC error is HTTP 200: `5xx` does not retry it.
  - route: [{{destination: {{host: grpc.test}}}}]
    retries: {{attempts: 2, retryOn: 5xx}}
{secret}"
    )
}

#[test]
fn real_grpc_client_and_server_through_the_gateway() {
    if !privileged("real_grpc_client_and_server_through_the_gateway") {
        return;
    }
    require_grpcio();
    let ns = NetNs::new("grpcr");
    let dir = scratch(&ns);
    let (ca, ca_key) = mint_ca(&dir, "grpc-ca");
    let (cert, key) = mint_cert(&dir, "grpc", "DNS:grpc.test", &ca, &ca_key);
    let cfg = dir.join("grpc.yaml");
    std::fs::write(
        &cfg,
        config(&tls_secret_yaml("grpc-cert", &cert, &key, None)),
    )
    .unwrap();
    let access_log = dir.join("access.log");
    let _ = std::fs::remove_file(&access_log);
    let mesh = dir.join("mesh.yaml");
    std::fs::write(
        &mesh,
        format!(
            "accessLogFile: {}\naccessLogFormat: \"%REQ(:AUTHORITY)% %REQ(:PATH)% %RESPONSE_CODE% %GRPC_STATUS% %GRPC_STATUS(NUMBER)% %RESPONSE_FLAGS%\\n\"\n",
            access_log.display()
        ),
    )
    .unwrap();
    let _server = Server::start(&ns, BACKEND);
    let gw = start_gateway_with(&ns, &[&cfg], &["--mesh-config", mesh.to_str().unwrap()]);
    let h2c = "127.0.0.1:80";
    let ctx = |r: &Reply| format!("{r:?}\n{}", gw.log());

    // Unary: the answer, OK (the egress gateway's abort route is not ours).
    let r = call(&ns, h2c, "grpc.test", "Unary", "hello", &[]);
    assert_eq!(
        (r.code.as_str(), &r.messages[..]),
        ("OK", &["echo:hello".to_string()][..]),
        "{}",
        ctx(&r)
    );

    // Server streaming: all 50 messages, in order, then OK.
    let r = call(&ns, h2c, "grpc.test", "Stream", "50", &[]);
    let want: Vec<String> = (0..50).map(|i| format!("msg-{i}")).collect();
    assert_eq!(r.code, "OK", "{}", ctx(&r));
    assert_eq!(r.messages, want, "{}", ctx(&r));

    // A handler's status: code, details and its trailing metadata reach the client.
    let r = call(&ns, h2c, "grpc.test", "NotFound", "thing", &[]);
    assert_eq!(r.code, "NOT_FOUND", "{}", ctx(&r));
    assert_eq!(r.details, "no such thing: thing", "{}", ctx(&r));
    assert_eq!(r.trailing["x-why"], "missing", "{}", ctx(&r));

    // The client's deadline (300 ms) against a 2 s handler: DEADLINE_EXCEEDED, in
    // well under the handler's time.
    let r = call(&ns, h2c, "grpc.test", "Slow", "2000", &["--timeout", "0.3"]);
    assert_eq!(r.code, "DEADLINE_EXCEEDED", "{}", ctx(&r));
    assert!(r.took < Duration::from_millis(1800), "{}", ctx(&r));

    // retryOn: unavailable: the first attempt's UNAVAILABLE (a trailers-only answer)
    // is retried, the client sees OK, the server counted two attempts.
    let r = call(&ns, h2c, "grpc.test", "Flaky", "a", &[]);
    assert_eq!(
        (r.code.as_str(), &r.messages[..]),
        ("OK", &["ok:a".to_string()][..]),
        "{}",
        ctx(&r)
    );
    let n = call(&ns, h2c, "grpc.test", "Attempts", "a", &[]);
    assert_eq!(n.messages, ["2"], "{}", ctx(&n));
    // retryOn: 5xx does not see a gRPC error (HTTP 200): one attempt, UNAVAILABLE.
    let r = call(&ns, h2c, "noretry.test", "Flaky", "b", &[]);
    assert_eq!(r.code, "UNAVAILABLE", "{}", ctx(&r));
    assert_eq!(r.details, "first attempt fails", "{}", ctx(&r));
    let n = call(&ns, h2c, "grpc.test", "Attempts", "b", &[]);
    assert_eq!(n.messages, ["1"], "{}", ctx(&n));

    // Over TLS: the gateway's HTTPS server (ALPN h2), the client trusting the test CA.
    let ca_s = ca.to_str().unwrap();
    let tls = "127.0.0.1:443";
    let r = call(&ns, tls, "grpc.test", "Unary", "secure", &["--ca", ca_s]);
    assert_eq!(
        (r.code.as_str(), &r.messages[..]),
        ("OK", &["echo:secure".to_string()][..]),
        "{}",
        ctx(&r)
    );
    let r = call(&ns, tls, "grpc.test", "Stream", "20", &["--ca", ca_s]);
    assert_eq!(r.code, "OK", "{}", ctx(&r));
    assert_eq!(r.messages, want[..20], "{}", ctx(&r));
    let r = call(&ns, tls, "grpc.test", "NotFound", "tls", &["--ca", ca_s]);
    assert_eq!(r.code, "NOT_FOUND", "{}", ctx(&r));
    assert_eq!(r.trailing["x-why"], "missing", "{}", ctx(&r));

    // The access log: %GRPC_STATUS% from headers (trailers-only) and from trailers.
    // The deadline: whichever acts first of the client (a reset: DC), the gateway's
    // grpc-timeout (504 UT, sent as UNAVAILABLE) and the server's own deadline (the
    // gateway passes `grpc-timeout` on, as Envoy does: DEADLINE_EXCEEDED from
    // upstream); all at about 300 ms.
    let slow = [
        "grpc.test /test.Echo/Slow 0 - - DC",
        "grpc.test /test.Echo/Slow 200 Unavailable 14 UT",
        "grpc.test /test.Echo/Slow 200 DeadlineExceeded 4 -",
    ];
    let want = [
        "grpc.test /test.Echo/Unary 200 OK 0 -",
        "grpc.test /test.Echo/Stream 200 OK 0 -",
        "grpc.test /test.Echo/NotFound 200 NotFound 5 -",
        "(slow)",
        // One line for the retried call: the first attempt's UNAVAILABLE never left.
        "grpc.test /test.Echo/Flaky 200 OK 0 -",
        "grpc.test /test.Echo/Attempts 200 OK 0 -",
        "noretry.test /test.Echo/Flaky 200 Unavailable 14 -",
        "grpc.test /test.Echo/Attempts 200 OK 0 -",
        "grpc.test /test.Echo/Unary 200 OK 0 -",
        "grpc.test /test.Echo/Stream 200 OK 0 -",
        "grpc.test /test.Echo/NotFound 200 NotFound 5 -",
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(&access_log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let fits = lines.len() == want.len()
            && lines
                .iter()
                .zip(want)
                .all(|(l, w)| *l == w || (w == "(slow)" && slow.contains(l)));
        if fits {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "access log {lines:#?}, want {want:#?} with (slow) one of {slow:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

//! Issue 15: AuthorizationPolicy must see the request the backend will see. One table of
//! request targets, sent byte for byte (`curl --request-target`) over HTTP/1.1 and h2c
//! to a gateway running each MeshConfig `pathNormalization.normalization` mode, each row
//! asserting the status and the path (and query) the echo backend received. Config:
//! tests/fixtures/http/normalize.yaml (ALLOW `/api/*` and DENY `/api/admin*` on
//! norm.test, a notPaths DENY on notpaths.test, host and header rules).
//!
//! Where the expected values come from, cited per row:
//! - envoy: Envoy's test/common/http/path_utility_test.cc (canonicalPath = Chromium's
//!   CanonicalizePath, mergeSlashes, unescapeSlashes, stripParametersFromDotSegments)
//!   and conn_manager_utility.cc `maybeNormalizePath` (their order: unescape, canonical,
//!   merge).
//! - istio: istio.io "Authorization Policy Normalization"
//!   (docs/reference/config/security/normalization) and the mode → Envoy option mapping
//!   in pilot/pkg/networking/core/listener_builder.go (NONE: normalize_path off; BASE:
//!   normalize_path; MERGE_SLASHES: + merge_slashes; DECODE_AND_MERGE_SLASHES: +
//!   path_with_escaped_slashes_action UNESCAPE_AND_FORWARD; otherwise KEEP_UNCHANGED).
//! - gw: where this gateway deliberately differs (said in the row).
mod http_common;

use gateway_tests::{
    gateway::GatewayProc,
    netns::{NetNs, privileged},
};
use http_common::*;

/// What a row expects in one mode.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// 200, and the backend received this path (and `?query`).
    Fwd(&'static str),
    /// 403 `RBAC: access denied`: nothing reaches the backend.
    Denied,
    /// 400, nothing reaches the backend.
    Bad,
}
use Want::*;

const MODES: [&str; 4] = ["NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"];

struct Row {
    host: &'static str,
    /// The request target, sent as is.
    target: &'static str,
    args: &'static [&'static str],
    /// False: HTTP/1.1 only (absolute-form targets have no h2 equivalent).
    h2: bool,
    /// In the order of [`MODES`].
    want: [Want; 4],
}

const N: &str = "norm.test";
const NP: &str = "notpaths.test";
const AUD: &str = "audit.test";

fn row(host: &'static str, target: &'static str, want: [Want; 4]) -> Row {
    Row {
        host,
        target,
        args: &[],
        h2: true,
        want,
    }
}

/// The same in every mode.
fn all(host: &'static str, target: &'static str, w: Want) -> Row {
    row(host, target, [w; 4])
}

/// Passed through untouched by NONE (which the policies then judge on the raw path),
/// normalized to `base` by the three others.
fn raw_then(target: &'static str, base: Want) -> [Want; 4] {
    [Fwd(target), base, base, base]
}

fn rows() -> Vec<Row> {
    vec![
        // --- issue 15's table, ALLOW /api/* and DENY /api/admin* on norm.test
        all(N, "/api/catalog", Fwd("/api/catalog")),
        all(N, "/private", Denied),
        // [envoy] NormalizeValidPaths "/a/b/../c" -> "/a/c"; [istio] "4. Single and double
        // dot": /../ is resolved (BASE). NONE forwards it and the ALLOW rule matches.
        row(N, "/api/../private", raw_then("/api/../private", Denied)),
        // [envoy] NormalizeCasePath "/a/b/%2e%2e/c" -> "/a/c"; [istio] %2e -> . (BASE).
        row(
            N,
            "/api/%2e%2e/private",
            raw_then("/api/%2e%2e/private", Denied),
        ),
        all(N, "/api/admin", Denied),
        // [envoy] "/a/b/./c" -> "/a/b/c" (current dir).
        row(N, "/api/./admin", raw_then("/api/./admin", Denied)),
        // [envoy] NormalizeCasePath "/a/b/%2E%2E/c" -> "/a/c": escapes of any case.
        row(
            N,
            "/api/%2E%2e/admin",
            raw_then("/api/%2E%2e/admin", Denied),
        ),
        // [envoy] canonicalPath keeps "//" (Chromium never merges slashes), MergeSlashes
        // "/a//b/c" -> "/a/b/c"; [istio] "3. Multiple forward slashes": MERGE_SLASHES.
        row(
            N,
            "/api//admin",
            [Fwd("/api//admin"), Fwd("/api//admin"), Denied, Denied],
        ),
        // [envoy] MergeSlashes "//a/b/c" -> "/a/b/c".
        row(
            N,
            "//api/catalog",
            [Denied, Denied, Fwd("/api/catalog"), Fwd("/api/catalog")],
        ),
        // [envoy] NormalizeCasePath "/a/%2F%2f/c" unchanged; UnescapeSlashes
        // "/a%2Fb%2fc/" -> "/a/b/c/"; [istio] %2f -> / only with DECODE_AND_MERGE_SLASHES
        // (BASE keeps escaped slashes: path_with_escaped_slashes_action KEEP_UNCHANGED).
        row(N, "/api/%2Fadmin", keep_escaped_slashes("/api/%2Fadmin")),
        row(N, "/api/%2fadmin", keep_escaped_slashes("/api/%2fadmin")),
        // CVE-2021-31920: escaped slashes around a dot-dot.
        row(
            N,
            "/api/x%2F..%2Fadmin",
            keep_escaped_slashes("/api/x%2F..%2Fadmin"),
        ),
        // A dot-dot followed by %2f is no dot segment unless %2f is decoded first.
        row(
            N,
            "/api/%2e%2e%2fadmin",
            [
                Fwd("/api/%2e%2e%2fadmin"),
                Fwd("/api/..%2fadmin"),
                Fwd("/api/..%2fadmin"),
                Denied,
            ],
        ),
        // [envoy] UnescapeSlashes "/a%5Cb%5cc/" -> "/a\b\c/", then canonicalPath turns
        // "\" into "/"; [istio] %5c -> \ only with DECODE_AND_MERGE_SLASHES.
        row(N, "/api/%5Cadmin", keep_escaped_slashes("/api/%5Cadmin")),
        row(
            N,
            "/api/x%5c..%5cadmin",
            keep_escaped_slashes("/api/x%5c..%5cadmin"),
        ),
        // [envoy] "/a/..\\c" -> "/c"; [istio] "2. Backslash": \ -> / (BASE).
        row(
            N,
            "/api/x\\..\\admin",
            raw_then("/api/x\\..\\admin", Denied),
        ),
        row(
            N,
            "/api\\catalog",
            [
                Denied,
                Fwd("/api/catalog"),
                Fwd("/api/catalog"),
                Fwd("/api/catalog"),
            ],
        ),
        // [istio] %61-%7a -> a-z, %41-%5a -> A-Z, %30-%39, %2d, %5f, %7e (BASE).
        row(N, "/api/%61dmin", raw_then("/api/%61dmin", Denied)),
        row(
            N,
            "/%61pi/catalog",
            [
                Denied,
                Fwd("/api/catalog"),
                Fwd("/api/catalog"),
                Fwd("/api/catalog"),
            ],
        ),
        // [envoy] NormalizeCasePath "/A/B/C" unchanged: paths keep their case (and the
        // DENY rule is case-sensitive, as Istio's).
        row(
            N,
            "/api/%41dmin",
            raw_then("/api/%41dmin", Fwd("/api/Admin")),
        ),
        row(
            N,
            "/api/%7e%5F%2d%30",
            raw_then("/api/%7e%5F%2d%30", Fwd("/api/~_-0")),
        ),
        // [envoy] "/%5c%25" unchanged: %25 stays; [istio] "normalization happens only
        // once, no double decoding".
        all(N, "/api/%252e%252e/private", Fwd("/api/%252e%252e/private")),
        // Trailing dot segments: [envoy] "/a/b/../../../../c" -> "/c" and
        // "/xyz/..;foo=bar" -> "/" (a trailing ".." leaves the slash).
        row(
            N,
            "/api/catalog/..",
            raw_then("/api/catalog/..", Fwd("/api/")),
        ),
        row(N, "/api/..", raw_then("/api/..", Denied)),
        row(
            N,
            "/api/admin/..",
            [Denied, Fwd("/api/"), Fwd("/api/"), Fwd("/api/")],
        ),
        row(
            N,
            "/api/a/b/../../admin",
            raw_then("/api/a/b/../../admin", Denied),
        ),
        // [envoy] "/xyz/.;foo=bar" -> "/xyz/" (a trailing "." leaves the slash).
        row(
            N,
            "/api/catalog/./",
            raw_then("/api/catalog/./", Fwd("/api/catalog/")),
        ),
        // [envoy] NormalizeValidPaths "/xyz/..;foo=bar/abc" -> "/abc"
        // (stripParametersFromDotSegments, on by default).
        row(N, "/api/..;x/admin", raw_then("/api/..;x/admin", Denied)),
        // [gw] Envoy strips parameters only from literal "..;" and forwards
        // "/api/..;x/admin" here (its result is not a fixed point: normalizing it again
        // gives "/admin"). The gateway normalizes to a fixed point, so the policy and a
        // backend that reads "..;x" as ".." agree.
        row(
            N,
            "/api/%2e%2e;x/admin",
            raw_then("/api/%2e%2e;x/admin", Denied),
        ),
        // [envoy] InvalidPaths "/xyz/.%00../abc", "/xyz/%00.%00./abc"; [istio] %00: "The
        // request will always be rejected with HTTP code 400" (every mode).
        all(N, "/api/%00/x", Bad),
        all(N, "/api/.%00./x", Bad),
        // [envoy] canonicalPath works on the path only: the query is kept as sent;
        // [istio] "5. Path with query": the policy ignores it, the backend sees it.
        all(
            N,
            "/api/catalog?q=/../admin&x=%2e%2e%2F",
            Fwd("/api/catalog?q=/../admin&x=%2e%2e%2F"),
        ),
        // Chromium's path table escapes characters no canonical path carries.
        row(N, "/api/{x}", raw_then("/api/{x}", Fwd("/api/%7Bx%7D"))),
        // --- notPaths: DENY everything on notpaths.test but /open/*
        all(NP, "/open/doc", Fwd("/open/doc")),
        all(NP, "/secret", Denied),
        row(NP, "/open/../secret", raw_then("/open/../secret", Denied)),
        row(
            NP,
            "/open/%2e%2e/secret",
            raw_then("/open/%2e%2e/secret", Denied),
        ),
        row(
            NP,
            "/open/x%2F..%2F..%2Fsecret",
            keep_escaped_slashes("/open/x%2F..%2F..%2Fsecret"),
        ),
        // --- absolute-form targets: the URI's authority is the host (routing and
        // `hosts` rules); the Host header below says something else.
        Row {
            args: &["-H", "Host: elsewhere.test"],
            h2: false,
            ..row(
                N,
                "http://norm.test/api/./admin",
                raw_then("/api/./admin", Denied),
            )
        },
        // Host names compare case-insensitively and without a trailing dot
        // (CVE-2021-39155; Envoy strips the dot before routing).
        Row {
            args: &["-H", "Host: elsewhere.test"],
            h2: false,
            ..all(N, "http://NORM.TEST./api/catalog", Fwd("/api/catalog"))
        },
        // --- methods: [istio] "1. Method not in upper case": rejected with 400.
        Row {
            args: &["-X", "get"],
            ..all(N, "/api/catalog", Bad)
        },
        Row {
            args: &["-X", "Get"],
            ..all(N, "/api/catalog", Bad)
        },
        // --- hosts: [istio] host matching is case-insensitive (CVE-2021-39155), and
        // ignores the port and a trailing dot, as routing does.
        all("BLOCKED.TEST", "/", Denied),
        all("blocked.test.", "/", Denied),
        all("blocked.test:80", "/", Denied),
        all("Blocked.Test.:80", "/", Denied),
        // --- request.headers: [istio] "Header name related": names are
        // case-insensitive; duplicate headers are merged with "," before matching.
        all(AUD, "/x", Fwd("/x")),
        Row {
            args: &["-H", "x-user: alice"],
            ..all(AUD, "/x", Fwd("/x"))
        },
        Row {
            args: &["-H", "x-user: alice", "-H", "X-User: bob"],
            ..all(AUD, "/x", Denied)
        },
        Row {
            args: &["-H", "x-user: alice,bob"],
            ..all(AUD, "/x", Denied)
        },
        // `*` means present (Istio's presence match), an empty value included.
        Row {
            args: &["-H", "x-block;"],
            ..all(AUD, "/x", Denied)
        },
        Row {
            args: &["-H", "x-block: 1"],
            ..all(AUD, "/x", Denied)
        },
    ]
}

/// Escaped slashes are kept by NONE, BASE and MERGE_SLASHES; decoded (and then judged
/// as ordinary slashes, so denied here) by DECODE_AND_MERGE_SLASHES.
fn keep_escaped_slashes(target: &'static str) -> [Want; 4] {
    [Fwd(target), Fwd(target), Fwd(target), Denied]
}

/// Runs every row over HTTP/1.1 and h2c against a gateway in `mode`; returns the rows
/// that failed (one line each) and how many were run.
fn run_mode(mode_index: usize) -> (Vec<String>, usize) {
    let mode = MODES[mode_index];
    let ns = NetNs::new(&format!("norm{mode_index}"));
    let _b = start_backends(&ns, vec![App::Http(18080, "app-v1")]);
    let mesh = scratch(&ns).join("mesh.yaml");
    std::fs::write(
        &mesh,
        format!("# MeshConfig\npathNormalization:\n  normalization: {mode}\n"),
    )
    .unwrap();
    // start_gateway_with: the rows find their log lines by the x-request-id they sent,
    // which the gateway keeps only from an internal peer.
    let gw = start_gateway_with(
        &ns,
        &[&fixture("normalize.yaml")],
        &["--mesh-config", mesh.to_str().unwrap()],
    );
    let mut failed = Vec::new();
    let mut ran = 0;
    for (proto, flag) in [("h1", "--http1.1"), ("h2c", "--http2-prior-knowledge")] {
        for (i, r) in rows().iter().enumerate() {
            if proto == "h2c" && !r.h2 {
                continue;
            }
            ran += 1;
            let want = r.want[mode_index];
            let id = format!("{mode}-{proto}-{i}");
            if let Err(e) = check(&ns, &gw, flag, &id, r, want) {
                failed.push(format!(
                    "{mode} {proto} row {i}: {} {} {:?}: want {want:?}, {e}",
                    r.host, r.target, r.args
                ));
            }
        }
    }
    (failed, ran)
}

fn check(
    ns: &NetNs,
    gw: &GatewayProc,
    flag: &str,
    id: &str,
    r: &Row,
    want: Want,
) -> Result<(), String> {
    let host = format!("Host: {}", r.host);
    let xid = format!("x-request-id: {id}");
    let mut args = vec![
        flag,
        "http://127.0.0.1/",
        "--request-target",
        r.target,
        "-H",
        xid.as_str(),
    ];
    // An explicit Host in the row's args wins (absolute-form rows).
    if !r.args.iter().any(|a| a.starts_with("Host:")) {
        args.extend(["-H", host.as_str()]);
    }
    args.extend_from_slice(r.args);
    let resp = curl(ns, &args);
    let status = match want {
        Fwd(_) => 200,
        Denied => 403,
        Bad => 400,
    };
    if resp.status != status {
        return Err(format!(
            "got {} (backend {:?}) body {:?}",
            resp.status,
            resp.header("x-backend"),
            resp.body.lines().next()
        ));
    }
    let line = log_line(gw, id);
    match want {
        Fwd(path) => {
            let e = resp.echo();
            let mut got = e["path"].as_str().unwrap_or_default().to_string();
            if let Some(q) = e["query"].as_str() {
                got = format!("{got}?{q}");
            }
            if got != path {
                return Err(format!("backend received {got:?}"));
            }
            // Access logs (and so metrics) see the path that was forwarded.
            if !line.contains(&format!(" path={path} ")) {
                return Err(format!("log line has another path: {line}"));
            }
        }
        Denied | Bad => {
            if resp.header("x-backend").is_some() {
                return Err("reached the backend".into());
            }
            if want == Bad
                && !r.args.contains(&"-X")
                && !line.contains("details=\"path_normalization_failed\"")
            {
                return Err(format!("log line lacks path_normalization_failed: {line}"));
            }
        }
    }
    Ok(())
}

fn mode_test(mode_index: usize) {
    let (failed, ran) = run_mode(mode_index);
    assert!(
        failed.is_empty(),
        "{} of {ran} requests failed in {}:\n{}",
        failed.len(),
        MODES[mode_index],
        failed.join("\n")
    );
}

#[test]
fn normalization_none() {
    if privileged("normalization_none") {
        mode_test(0);
    }
}

#[test]
fn normalization_base() {
    if privileged("normalization_base") {
        mode_test(1);
    }
}

#[test]
fn normalization_merge_slashes() {
    if privileged("normalization_merge_slashes") {
        mode_test(2);
    }
}

#[test]
fn normalization_decode_and_merge_slashes() {
    if privileged("normalization_decode_and_merge_slashes") {
        mode_test(3);
    }
}

/// No MeshConfig at all is BASE (Istio's default), and a mode Istio doesn't have is a
/// configuration error with its position.
#[test]
fn default_mode_is_base_and_unknown_modes_are_refused() {
    if !privileged("default_mode_is_base_and_unknown_modes_are_refused") {
        return;
    }
    let ns = NetNs::new("normdef");
    let _b = start_backends(&ns, vec![App::Http(18080, "app-v1")]);
    let gw = start_gateway(&ns, &[&fixture("normalize.yaml")]);
    for (i, r) in rows().iter().enumerate().filter(|(_, r)| r.h2) {
        let id = format!("default-{i}");
        if let Err(e) = check(&ns, &gw, "--http1.1", &id, r, r.want[1]) {
            panic!("row {i} {} {}: {e}", r.host, r.target);
        }
    }
    drop(gw);

    let mesh = scratch(&ns).join("bad-mesh.yaml");
    std::fs::write(
        &mesh,
        "accessLogFile: /dev/stdout\npathNormalization:\n  normalization: MERGE_SLASH\n",
    )
    .unwrap();
    let mut cmd = ns.cmd(gateway_tests::gateway::gateway_bin().to_str().unwrap());
    cmd.args(["run", "--splice", "userspace"])
        .args(gateway_tests::gateway::NO_ISTIO_PORTS)
        .arg("--config")
        .arg(fixture("normalize.yaml"))
        .arg("--mesh-config")
        .arg(&mesh)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    gateway_tests::gateway::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().expect("run gateway");
    // It must exit at once; one that starts is killed (and the test fails).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains(&format!("{}:3:18: ", mesh.display())) && err.contains("MERGE_SLASH"),
        "{err}"
    );
}

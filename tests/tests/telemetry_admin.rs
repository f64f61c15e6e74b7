//! Metrics and the admin API against the real binary: `/stats/prometheus` parsed with a
//! Prometheus text-format parser and checked against the traffic sent, and
//! `gateway proxy-config` over the walkthrough's config.
mod http_common;

use std::time::Duration;

use gateway_tests::{
    backends::tcp_echo,
    gateway::{GatewayProc, free_port, gateway_bin},
    netns::{NetNs, privileged},
};
use http_common::*;
use prometheus_parse::{Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn walkthrough(ns: &NetNs) -> (Backends, GatewayProc) {
    let b = start_backends(
        ns,
        vec![App::Http(18080, "webapp"), App::Http(18081, "catalog")],
    );
    let gw = GatewayProc::start(
        ns,
        &[
            &config("coolstore-gateway.yaml"),
            &config("tcp-echo.yaml"),
            &config("sni-passthrough.yaml"),
            &config("service-entries.yaml"),
            &config("secrets.yaml"),
            &config("telemetry.yaml"),
        ],
        &["--splice", "ebpf"],
    );
    (b, gw)
}

/// The value of the one sample named `name` whose labels include `want`.
fn sample(scrape: &Scrape, name: &str, want: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && want.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {want:?}: {found:?}");
    found[0]
}

#[test]
fn telemetry_prometheus_counters_match_the_traffic() {
    if !privileged("telemetry_prometheus_counters_match_the_traffic") {
        return;
    }
    let ns = NetNs::new("tele-prom");
    let rt = ns.runtime();
    let _echo = NetNs::block_on(&rt, tcp_echo("127.0.0.1:2701".parse().unwrap())).unwrap();
    let (_b, gw) = walkthrough(&ns);

    let mut webapp_bytes = 0;
    for _ in 0..5 {
        let r = curl(
            &ns,
            &[
                "http://localhost/api/catalog",
                "-H",
                "Host: webapp.istioinaction.io",
            ],
        );
        assert_eq!(r.status, 200);
        webapp_bytes += r.body.len();
    }
    let r = curl(
        &ns,
        &[
            "http://localhost/api/orders",
            "-H",
            "Host: webapp.istioinaction.io",
            "--data-binary",
            &"x".repeat(1000),
        ],
    );
    assert_eq!(r.status, 200);
    webapp_bytes += r.body.len();
    for _ in 0..3 {
        let r = curl(
            &ns,
            &[
                "http://localhost/items",
                "-H",
                "Host: catalog.istioinaction.io",
            ],
        );
        assert_eq!(r.status, 200);
    }
    for _ in 0..2 {
        let r = curl(&ns, &["http://localhost/", "-H", "Host: nope.example"]);
        assert_eq!(r.status, 404);
    }
    // Two TCP flows of 1000 bytes each way through the echo server.
    for _ in 0..2 {
        NetNs::block_on(&rt, async {
            let mut s = tokio::net::TcpStream::connect("127.0.0.1:31400")
                .await
                .unwrap();
            s.write_all(&[5u8; 1000]).await.unwrap();
            s.shutdown().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            assert_eq!(got.len(), 1000);
        });
    }
    // Flows are counted when they close.
    gw.wait_splice(Duration::from_secs(10), "flows closed", |v| {
        v["active_flows"] == 0
    });
    std::thread::sleep(Duration::from_millis(200));

    let text = gw.admin_get("/stats/prometheus");
    // Every sample line is `name{labels} value` with a float value.
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let v = l.rsplit(' ').next().unwrap();
        assert!(v.parse::<f64>().is_ok(), "bad sample line {l:?}");
    }
    let scrape =
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text format");
    for family in [
        "istio_requests_total",
        "istio_request_duration_milliseconds",
        "istio_request_bytes",
        "istio_response_bytes",
        "istio_tcp_sent_bytes_total",
        "istio_tcp_received_bytes_total",
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
        "gateway_tls_inspector_total",
        "gateway_downstream_cx_active",
        "gateway_splice_redirected_bytes_total",
    ] {
        assert!(scrape.docs.contains_key(family), "no # HELP for {family}");
    }
    let webapp = [
        ("reporter", "source"),
        ("source_workload", "istio-ingressgateway"),
        // Istio's CanonicalService of the gateway's labels: `app`, no version: latest.
        ("source_canonical_service", "istio-ingressgateway"),
        ("source_canonical_revision", "latest"),
        ("source_workload_namespace", "istio-system"),
        // The walkthrough's ServiceEntry endpoints carry no labels: no peer, as Istio's
        // stats filter reports it.
        ("destination_canonical_service", "unknown"),
        ("destination_canonical_revision", "latest"),
        ("destination_service", "webapp.default.svc.cluster.local"),
        ("destination_service_name", "webapp"),
        ("destination_service_namespace", "default"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("response_flags", "-"),
    ];
    assert_eq!(sample(&scrape, "istio_requests_total", &webapp), 6.0);
    assert_eq!(
        sample(
            &scrape,
            "istio_request_duration_milliseconds_count",
            &webapp
        ),
        6.0
    );
    // Histogram buckets: the +Inf bucket holds every request.
    assert_eq!(
        sample(&scrape, "istio_request_duration_milliseconds", &webapp),
        6.0
    );
    assert_eq!(sample(&scrape, "istio_request_bytes_sum", &webapp), 1000.0);
    assert_eq!(
        sample(&scrape, "istio_response_bytes_sum", &webapp),
        webapp_bytes as f64
    );
    let catalog = [
        ("destination_service", "catalog.default.svc.cluster.local"),
        ("response_code", "200"),
    ];
    assert_eq!(sample(&scrape, "istio_requests_total", &catalog), 3.0);
    let nr = [
        ("destination_service", "unknown"),
        ("response_code", "404"),
        ("response_flags", "NR"),
    ];
    assert_eq!(sample(&scrape, "istio_requests_total", &nr), 2.0);

    let tcp = [
        (
            "destination_service",
            "tcp-echo-service.default.svc.cluster.local",
        ),
        ("request_protocol", "tcp"),
    ];
    assert_eq!(
        sample(&scrape, "istio_tcp_connections_opened_total", &tcp),
        2.0
    );
    assert_eq!(
        sample(&scrape, "istio_tcp_connections_closed_total", &tcp),
        2.0
    );
    assert_eq!(
        sample(&scrape, "istio_tcp_received_bytes_total", &tcp),
        2000.0
    );
    assert_eq!(sample(&scrape, "istio_tcp_sent_bytes_total", &tcp), 2000.0);

    // The gateway's own: connections per listener, access-log lines written.
    assert_eq!(
        sample(
            &scrape,
            "gateway_downstream_cx_total",
            &[("listener", "0.0.0.0_80")]
        ),
        11.0
    );
    assert_eq!(
        sample(
            &scrape,
            "gateway_downstream_cx_active",
            &[("listener", "0.0.0.0_80")]
        ),
        0.0
    );
    assert_eq!(
        sample(
            &scrape,
            "gateway_downstream_cx_total",
            &[("listener", "0.0.0.0_31400")]
        ),
        2.0
    );
    // 11 HTTP requests and 2 flows, all logged (telemetry.yaml turns logs on).
    let written = sample(
        &scrape,
        "gateway_access_log_written_total",
        &[("file", "/dev/stdout")],
    );
    assert_eq!(written, 13.0);
    assert_eq!(
        sample(
            &scrape,
            "gateway_access_log_dropped_total",
            &[("file", "/dev/stdout")]
        ),
        0.0
    );
}

fn proxy_config(ns: &NetNs, args: &[&str]) -> String {
    let out = ns
        .cmd(gateway_bin().to_str().unwrap())
        .arg("proxy-config")
        .args(args)
        .args(["--admin-addr", "127.0.0.1:15000"])
        .output()
        .expect("gateway proxy-config");
    assert!(
        out.status.success(),
        "proxy-config {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Table rows as whitespace-separated cells (no cell of these tables has spaces, except
/// the MATCH of SNI listeners, which is checked as text).
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[test]
fn telemetry_proxy_config_shows_the_walkthrough() {
    if !privileged("telemetry_proxy_config_shows_the_walkthrough") {
        return;
    }
    let ns = NetNs::new("tele-pc");
    let (_b, gw) = walkthrough(&ns);

    let listeners = proxy_config(&ns, &["listener"]);
    assert!(listeners.starts_with("ADDRESSES"), "{listeners}");
    let header: Vec<&str> = listeners
        .lines()
        .next()
        .unwrap()
        .split("  ")
        .filter(|c| !c.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(header, ["ADDRESSES", "PORT", "MATCH", "DESTINATION"]);
    let rs = rows(&listeners);
    for port in ["80", "443", "31400"] {
        assert!(
            rs.iter().any(|r| r[0] == "0.0.0.0,::" && r[1] == port),
            "port {port} missing:\n{listeners}"
        );
    }
    for want in [
        ["0.0.0.0,::", "80", "ALL", "Route:", "http.80"].as_slice(),
        &[
            "0.0.0.0,::",
            "443",
            "SNI:",
            "webapp.istioinaction.io",
            "Route:",
            "https.443.https-webapp.coolstore-gateway.default",
        ],
        &[
            "0.0.0.0,::",
            "443",
            "SNI:",
            "catalog.istioinaction.io",
            "Route:",
            "https.443.https-catalog.coolstore-gateway.default",
        ],
        &[
            "0.0.0.0,::",
            "31400",
            "SNI:",
            "simple-sni-1.istioinaction.io",
            "Cluster:",
            "outbound|80||simple-tls-service-1.default.svc.cluster.local",
        ],
        &[
            "0.0.0.0,::",
            "31400",
            "ALL",
            "Cluster:",
            "outbound|2701||tcp-echo-service.default.svc.cluster.local",
        ],
    ] {
        assert!(
            rs.iter().any(|r| r == want),
            "{want:?} missing:\n{listeners}"
        );
    }

    // The HTTP route configuration by the name the listener gives it.
    let json = proxy_config(&ns, &["route", "--name", "http.80", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("route JSON");
    let rc = v.as_array().expect("a list of route configurations");
    assert_eq!(rc.len(), 1, "{json}");
    assert_eq!(rc[0]["name"], "http.80");
    // protojson names, as istioctl prints them.
    let vhosts = rc[0]["virtualHosts"].as_array().unwrap();
    let mut names: Vec<&str> = vhosts.iter().map(|h| h["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        ["catalog.istioinaction.io:80", "webapp.istioinaction.io:80"]
    );
    for (host, svc) in [("webapp", "webapp"), ("catalog", "catalog")] {
        let vh = vhosts
            .iter()
            .find(|h| h["name"].as_str().unwrap().starts_with(host))
            .unwrap();
        assert_eq!(vh["domains"][0], format!("{host}.istioinaction.io"));
        let route = &vh["routes"][0];
        assert_eq!(route["match"]["prefix"], "/");
        assert_eq!(
            route["route"]["cluster"],
            format!("outbound|80||{svc}.default.svc.cluster.local")
        );
        assert_eq!(
            route["metadata"]["filterMetadata"]["istio"]["config"],
            format!(
                "/apis/networking.istio.io/v1alpha3/namespaces/default/virtual-service/{host}-vs-from-gw"
            )
        );
    }
    let table = proxy_config(&ns, &["route"]);
    assert!(
        rows(&table).iter().any(|r| r
            == &[
                "http.80",
                "webapp.istioinaction.io:80",
                "webapp.istioinaction.io",
                "/*",
                "webapp-vs-from-gw.default"
            ]),
        "{table}"
    );

    let clusters = proxy_config(&ns, &["cluster"]);
    assert!(
        rows(&clusters).iter().any(|r| r
            == &[
                "webapp.default.svc.cluster.local",
                "80",
                "-",
                "outbound",
                "EDS",
            ]),
        "{clusters}"
    );
    let eps = proxy_config(
        &ns,
        &[
            "endpoint",
            "--cluster",
            "outbound|80||webapp.default.svc.cluster.local",
        ],
    );
    assert_eq!(
        rows(&eps),
        [[
            "127.0.0.1:18080",
            "HEALTHY",
            "OK",
            "outbound|80||webapp.default.svc.cluster.local"
        ]],
        "{eps}"
    );

    let secrets = proxy_config(&ns, &["secret"]);
    let srows = rows(&secrets);
    let webapp = srows
        .iter()
        .find(|r| r[0] == "kubernetes://webapp-credential")
        .unwrap_or_else(|| panic!("{secrets}"));
    assert_eq!(
        &webapp[1..5],
        ["Cert", "Chain", "ACTIVE", "true"],
        "{secrets}"
    );
    let json = proxy_config(&ns, &["secret", "-o", "json"]);
    assert!(
        json.contains("webapp.istioinaction.io"),
        "SANs/subject shown: {json}"
    );
    assert!(
        !json.contains("PRIVATE") && !json.contains("BEGIN"),
        "no key or PEM material: {json}"
    );

    // The seed walkthrough's istioctl command lines, `istioctl` replaced by the
    // binary, against the running gateway (../shared/seed/istio-gateways.md, lines 54
    // and 85; read from the file too when it is there).
    let mut seed = vec![
        "istioctl -n istio-system proxy-config listener deploy/istio-ingressgateway".to_string(),
        "istioctl proxy-config route deploy/istio-ingressgateway -o json --name http.8080 -n istio-system".to_string(),
    ];
    let seed_file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/seed/istio-gateways.md");
    if let Ok(text) = std::fs::read_to_string(seed_file) {
        for l in text.lines().map(str::trim) {
            if l.starts_with("istioctl ")
                && l.contains("proxy-config")
                && !seed.iter().any(|x| x == l)
            {
                seed.push(l.to_string());
            }
        }
    }
    for line in &seed {
        let argv: Vec<&str> = line.split_whitespace().skip(1).collect();
        let out = ns
            .cmd(gateway_bin().to_str().unwrap())
            .args(&argv)
            .output()
            .expect("run the seed line");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if argv.contains(&"listener") {
            assert_eq!(stdout, listeners, "{line}");
        }
        if argv.contains(&"route") {
            let v: serde_json::Value = serde_json::from_str(&stdout).expect("route JSON");
            assert_eq!(v[0]["name"], "http.80", "{line}: {stdout}");
        }
    }
    drop(gw);
}

/// Dual stack by default: with no `--bind`, an IPv6 client (::1) reaches the Gateway
/// ports (HTTP on 80, TCP on 31400), and IPv4 clients still do.
#[test]
fn telemetry_ipv6_client_reaches_the_default_bound_gateway() {
    if !privileged("telemetry_ipv6_client_reaches_the_default_bound_gateway") {
        return;
    }
    let ns = NetNs::new("tele-v6");
    let rt = ns.runtime();
    let _echo = NetNs::block_on(&rt, tcp_echo("127.0.0.1:2701".parse().unwrap())).unwrap();
    let (_b, gw) = walkthrough(&ns);
    for host in ["[::1]", "127.0.0.1"] {
        let out = ns
            .cmd("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "Host: webapp.istioinaction.io",
            ])
            .arg(format!("http://{host}:80/api/catalog"))
            .output()
            .expect("curl");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "{host}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            gw.log()
        );
    }
    let echoed = NetNs::block_on(&rt, async {
        let mut c = tokio::net::TcpStream::connect("[::1]:31400")
            .await
            .expect("connect [::1]:31400");
        c.write_all(b"hello over v6\n").await.unwrap();
        let mut buf = vec![0u8; 14];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .unwrap();
        buf
    });
    assert_eq!(echoed, b"hello over v6\n");
    drop(gw);
}

/// Istio's status and Prometheus ports, moved to free ports (`--status-port`,
/// `--prometheus-port`; the harness turns them off elsewhere): `/healthz/ready` answers
/// 200 with an empty body once the config serves, other paths 404; `/stats/prometheus`
/// serves the admin port's metrics; both listeners are in `proxy-config listener` as
/// istioctl shows them for an ingress gateway. Failed before: neither port existed.
#[test]
fn telemetry_status_and_prometheus_ports() {
    if !privileged("telemetry_status_and_prometheus_ports") {
        return;
    }
    let ns = NetNs::new("tele-ports");
    let (status, prom) = ns.run(|| {
        // Both held at once, so the two differ.
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        (
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port(),
        )
    });
    assert_ne!(ns.run(free_port), 0);
    let _b = start_backends(&ns, vec![App::Http(18080, "webapp")]);
    let (status_s, prom_s) = (status.to_string(), prom.to_string());
    let gw = GatewayProc::start(
        &ns,
        &[
            &config("coolstore-gateway.yaml"),
            &config("service-entries.yaml"),
            &config("secrets.yaml"),
        ],
        &[
            "--splice",
            "userspace",
            "--status-port",
            &status_s,
            "--prometheus-port",
            &prom_s,
        ],
    );
    let r = curl(
        &ns,
        &[
            "http://localhost/api/catalog",
            "-H",
            "Host: webapp.istioinaction.io",
        ],
    );
    assert_eq!(r.status, 200);

    let ready = curl(&ns, &[&format!("http://127.0.0.1:{status}/healthz/ready")]);
    assert_eq!(ready.status, 200, "{ready:?}\n{}", gw.log());
    assert_eq!(ready.body, "");
    // Dual stack, as the Gateway ports (unless this host has no IPv6).
    if !gw.log().contains("IPv6 not served") {
        let r6 = curl(&ns, &[&format!("http://[::1]:{status}/healthz/ready")]);
        assert_eq!(r6.status, 200, "{r6:?}");
    }
    let other = curl(
        &ns,
        &[&format!("http://127.0.0.1:{status}/stats/prometheus")],
    );
    assert_eq!(
        other.status, 404,
        "the status port routes /healthz/ready only"
    );

    let text = curl(&ns, &[&format!("http://127.0.0.1:{prom}/stats/prometheus")]);
    assert_eq!(text.status, 200, "{text:?}");
    let scrape = Scrape::parse(text.body.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format");
    assert_eq!(
        sample(
            &scrape,
            "istio_requests_total",
            &[
                ("destination_service", "webapp.default.svc.cluster.local"),
                ("source_canonical_service", "istio-ingressgateway"),
                ("response_code", "200"),
            ]
        ),
        1.0
    );
    // One implementation: the admin port's families, the same set.
    let admin = Scrape::parse(
        gw.admin_get("/stats/prometheus")
            .lines()
            .map(|l| Ok(l.to_string())),
    )
    .unwrap();
    let mut a: Vec<&String> = admin.docs.keys().collect();
    let mut p: Vec<&String> = scrape.docs.keys().collect();
    a.sort();
    p.sort();
    assert_eq!(a, p);
    let other = curl(&ns, &[&format!("http://127.0.0.1:{prom}/healthz/ready")]);
    assert_eq!(other.status, 404);

    // proxy-config listener: Envoy's bootstrap listeners, as istioctl prints them.
    let listeners = proxy_config(&ns, &["listener"]);
    for (port, dest) in [
        (status, "Inline Route: /healthz/ready*"),
        (prom, "Inline Route: /stats/prometheus*"),
    ] {
        assert!(
            listeners.lines().any(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.get(1) == Some(&port.to_string().as_str())
                    && cells.get(2) == Some(&"ALL")
                    && l.ends_with(dest)
            }),
            "{port} {dest}:\n{listeners}"
        );
    }
}

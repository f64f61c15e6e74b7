use super::*;

fn record() -> AccessRecord {
    AccessRecord::new(
        std::time::SystemTime::now(),
        "10.0.0.1:4000".parse().unwrap(),
    )
}

#[test]
fn destination_labels_from_cluster_names() {
    let none = EndpointLabels::new();
    let d = Destination::from_cluster(
        Some("outbound|80||webapp.default.svc.cluster.local"),
        None,
        &none,
    );
    assert_eq!(
        (d.service.as_str(), d.name.as_str(), d.namespace.as_str()),
        ("webapp.default.svc.cluster.local", "webapp", "default")
    );
    let d = Destination::from_cluster(Some("outbound|9000||127.0.0.1"), None, &none);
    assert_eq!(
        (d.name.as_str(), d.namespace.as_str()),
        ("127.0.0.1", "unknown")
    );
    let d = Destination::from_cluster(None, None, &none);
    assert_eq!(d.service, "unknown");
    assert_eq!(
        (d.canonical_service.as_str(), d.canonical_revision.as_str()),
        ("unknown", "latest")
    );
}

/// pkg/kube/labels/labels_test.go TestCanonicalService, the cases that matter here.
#[test]
fn canonical_service_rules() {
    let l = |kv: &[(&str, &str)]| {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let cs = |kv: &[(&str, &str)], w: &str| canonical_service(&l(kv), w);
    assert_eq!(cs(&[], "wl"), ("wl".into(), "latest".into()));
    assert_eq!(
        cs(&[("app", "a"), ("version", "v1")], "wl"),
        ("a".into(), "v1".into())
    );
    assert_eq!(
        cs(
            &[
                ("app", "a"),
                ("app.kubernetes.io/name", "k"),
                ("version", "v1"),
                ("app.kubernetes.io/version", "kv")
            ],
            "wl"
        ),
        ("k".into(), "kv".into())
    );
    assert_eq!(
        cs(
            &[
                ("app", "a"),
                ("app.kubernetes.io/name", "k"),
                ("service.istio.io/canonical-name", "c"),
                ("service.istio.io/canonical-revision", "cr"),
                ("app.kubernetes.io/version", "kv")
            ],
            "wl"
        ),
        ("c".into(), "cr".into())
    );
}

#[test]
fn labels_in_istios_order_with_canonical_services() {
    let m = IstioMetrics::new(&GatewayIdentity::default());
    let ep: std::net::SocketAddr = "10.0.0.7:8080".parse().unwrap();
    let mut t = EndpointLabels::new();
    t.insert(
        ("webapp.default.svc.cluster.local".into(), ep.ip()),
        ("webapp".into(), "v2".into()),
    );
    m.set_endpoint_labels(t);
    let obs = |host| AccessRecord {
        upstream_cluster: Some("outbound|80||webapp.default.svc.cluster.local".into()),
        upstream_host: host,
        protocol: Some("HTTP/1.1"),
        status: 200,
        duration: std::time::Duration::from_micros(1),
        ..record()
    };
    m.record(&obs(Some(ep)));
    m.record(&obs(Some("10.0.0.8:8080".parse().unwrap())));
    m.tcp_opened("outbound|2701||tcp-echo.default.svc.cluster.local", None);
    let mut out = String::new();
    m.render(&mut out);
    let names = |line: &str| -> Vec<String> {
        let inner = &line[line.find('{').unwrap() + 1..line.rfind('}').unwrap()];
        inner
            .split("\",")
            .map(|kv| kv.split('=').next().unwrap().to_string())
            .collect()
    };
    let req = out
        .lines()
        .find(|l| l.starts_with("istio_requests_total{"))
        .unwrap();
    assert_eq!(
        names(req),
        [
            "reporter",
            "source_workload",
            "source_canonical_service",
            "source_canonical_revision",
            "source_workload_namespace",
            "source_principal",
            "source_app",
            "source_version",
            "source_cluster",
            "destination_workload",
            "destination_workload_namespace",
            "destination_principal",
            "destination_app",
            "destination_version",
            "destination_service",
            "destination_canonical_service",
            "destination_canonical_revision",
            "destination_service_name",
            "destination_service_namespace",
            "destination_cluster",
            "request_protocol",
            "response_code",
            "grpc_response_status",
            "response_flags",
            "connection_security_policy",
        ]
    );
    let tcp = out
        .lines()
        .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .unwrap();
    let mut want: Vec<String> = names(req);
    want.retain(|n| n != "response_code" && n != "grpc_response_status");
    assert_eq!(names(tcp), want);
    // The gateway: app=istio-ingressgateway, no version label.
    assert!(
        req.contains(
            "source_canonical_service=\"istio-ingressgateway\",source_canonical_revision=\"latest\""
        ),
        "{req}"
    );
    assert!(
        out.contains(
            "destination_canonical_service=\"webapp\",destination_canonical_revision=\"v2\""
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "destination_canonical_service=\"unknown\",destination_canonical_revision=\"latest\""
        ),
        "{out}"
    );
    assert!(
        tcp.contains("destination_canonical_service=\"unknown\""),
        "{tcp}"
    );
}

/// An L4 flow's close counts when it was opened: refused ones (UF, UH, ...) do
/// not, one closed at its maxConnectionDuration (DT) does; all without flags.
#[test]
fn tcp_closes_count_opened_flows_only() {
    let m = IstioMetrics::new(&GatewayIdentity::default());
    let cluster = "outbound|2701||tcp-echo.default.svc.cluster.local";
    let flow = |flag: Option<ResponseFlag>| {
        let mut r = AccessRecord {
            upstream_cluster: Some(cluster.into()),
            bytes_received: 3,
            bytes_sent: 5,
            ..record()
        };
        if let Some(f) = flag {
            r.response_flags.insert(f);
        }
        r
    };
    m.tcp_opened(cluster, None);
    m.record(&flow(None));
    m.record(&flow(Some(ResponseFlag::DurationTimeout)));
    m.record(&flow(Some(ResponseFlag::UpstreamConnectionFailure)));
    m.record(&AccessRecord {
        upstream_cluster: None,
        ..flow(Some(ResponseFlag::NoRouteFound))
    });
    let mut out = String::new();
    m.render(&mut out);
    let value = |name: &str| {
        let l = out
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .unwrap_or_else(|| panic!("{name} in {out}"));
        assert!(l.contains("response_flags=\"-\""), "{l}");
        l.rsplit(' ').next().unwrap().to_string()
    };
    assert_eq!(value("istio_tcp_connections_opened_total"), "1");
    assert_eq!(value("istio_tcp_connections_closed_total"), "2");
    assert_eq!(value("istio_tcp_received_bytes_total"), "6");
    assert_eq!(value("istio_tcp_sent_bytes_total"), "10");
    assert_eq!(
        out.matches("istio_tcp_connections_closed_total{").count(),
        1
    );
    assert!(!out.contains("istio_requests_total{"), "{out}");
}

#[test]
fn histogram_buckets_are_cumulative() {
    let m = IstioMetrics::new(&GatewayIdentity::default());
    for (us, code) in [(300, 200), (7_000, 200), (2_000_000, 503)] {
        let mut r = AccessRecord {
            upstream_cluster: Some("outbound|80||webapp.default.svc.cluster.local".into()),
            protocol: Some("HTTP/2"),
            status: code,
            duration: std::time::Duration::from_micros(us),
            bytes_sent: 10,
            ..record()
        };
        if code == 503 {
            r.response_flags
                .insert(ResponseFlag::UpstreamConnectionFailure);
        }
        m.record(&r);
    }
    let mut out = String::new();
    m.render(&mut out);
    assert!(
        out.contains(
            "response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\",connection_security_policy=\"unknown\"} 2\n"
        ),
        "{out}"
    );
    assert!(out.contains("le=\"0.5\"} 1\n"), "{out}");
    assert!(out.contains("le=\"10\"} 2\n"), "{out}");
    assert!(
        out.contains(
            "response_flags=\"UF\",connection_security_policy=\"unknown\",le=\"2500\"} 1\n"
        ),
        "{out}"
    );
    assert!(out.contains("source_workload=\"istio-ingressgateway\""));
}

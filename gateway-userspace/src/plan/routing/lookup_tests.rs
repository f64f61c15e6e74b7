//! Property tests (issue 17): the indexed lookups answer exactly what the scans they
//! replaced answer, for random sets of host patterns and random request hosts.
use super::*;
use crate::config::{TlsMode, host_map::testgen};

/// The lookup before issue 17: every virtual host scored, best kept, ties to the first.
fn find_vhost_scan<'a>(table: &'a RouteTable, host: &str) -> Option<&'a VirtualHost> {
    let mut best: Option<((u8, usize), &VirtualHost)> = None;
    for vh in &table.vhosts {
        if let Some(score) = host_score(&vh.domain, host)
            && best.is_none_or(|(b, _)| score > b)
        {
            best = Some((score, vh));
        }
    }
    best.map(|(_, vh)| vh)
}

#[test]
fn vhost_index_answers_what_a_scan_answers() {
    let mut rng = fastrand::Rng::with_seed(17);
    let mut compared = 0;
    for _ in 0..600 {
        let n = rng.usize(0..40);
        let mut domains: Vec<String> = Vec::new();
        for _ in 0..n {
            let p = testgen::pattern(&mut rng);
            // build_table merges vhosts by domain: domains are unique.
            if !domains.contains(&p) {
                domains.push(p);
            }
        }
        let table = RouteTable::new(
            domains
                .iter()
                .map(|d| VirtualHost {
                    domain: d.clone(),
                    https_redirect: false,
                    routes: Vec::new(),
                })
                .collect(),
        );
        for _ in 0..100 {
            let raw = testgen::request_host(&mut rng, &domains);
            // What the proxy asks (normalized), and the raw value for good measure.
            for host in [normalize_host(&raw), raw.clone()] {
                let want = find_vhost_scan(&table, &host).map(|v| v.domain.as_str());
                let got = find_vhost(&table, &host).map(|v| v.domain.as_str());
                assert_eq!(
                    got, want,
                    "host {host:?} (from {raw:?}), domains {domains:?}"
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 600 * 100 * 2);
}

fn server(kind: ServerKind, hosts: Vec<String>) -> ServerRef {
    ServerRef {
        gateway: "istio-system/gw".into(),
        index: 0,
        name: None,
        protocol: "HTTPS".into(),
        hosts,
        tls_mode: TlsMode::Simple,
        kind,
        bind: None,
        tls: None,
        origin: Default::default(),
    }
}

#[test]
fn https_server_index_answers_what_a_scan_answers() {
    let mut rng = fastrand::Rng::with_seed(1717);
    for _ in 0..400 {
        let mut all = Vec::new();
        let servers = (0..rng.usize(0..12))
            .map(|_| {
                let kind = match rng.u8(..4) {
                    0 => ServerKind::TlsPassthrough,
                    1 => ServerKind::Http,
                    _ => ServerKind::HttpsTerminate,
                };
                let hosts: Vec<String> = (0..rng.usize(1..4))
                    .map(|_| {
                        let p = testgen::pattern(&mut rng);
                        all.push(p.clone());
                        // Server hosts may carry a namespace; the name is what counts.
                        match rng.u8(..4) {
                            0 => format!("ns/{p}"),
                            1 => format!("./{p}"),
                            _ => p,
                        }
                    })
                    .collect();
                server(kind, hosts)
            })
            .collect();
        let l = Listener {
            port: 443,
            protocol: crate::config::ListenerProtocol::Tls,
            servers,
            tcp: None,
            terminated_tcp: vec![],
            tls: vec![],
            http: vec![],
        };
        let index = TlsServers::new(&l);
        assert_eq!(index.get(None), tls_server_for(&l, None));
        for _ in 0..100 {
            let sni = testgen::request_host(&mut rng, &all);
            assert_eq!(
                index.get(Some(&sni)),
                tls_server_for(&l, Some(&sni)),
                "sni {sni:?}, servers {:?}",
                l.servers
                    .iter()
                    .map(|s| (&s.hosts, s.kind))
                    .collect::<Vec<_>>()
            );
        }
    }
}

/// The 421 check: a request's host belongs to the connection's HTTPS server when one of
/// the server's patterns matches it; the index answers what the scan answers.
#[test]
fn server_hosts_index_answers_what_a_scan_answers() {
    let mut rng = fastrand::Rng::with_seed(421);
    let mut compared = 0;
    for _ in 0..600 {
        let patterns: Vec<String> = (0..rng.usize(0..30))
            .map(|_| testgen::pattern(&mut rng))
            .collect();
        let index = ServerHosts::new(&patterns);
        for _ in 0..100 {
            let raw = testgen::request_host(&mut rng, &patterns);
            for host in [normalize_host(&raw), raw.clone()] {
                assert_eq!(
                    index.serves(&host),
                    serves_scan(&patterns, &host),
                    "host {host:?} (from {raw:?}), patterns {patterns:?}"
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 600 * 100 * 2);
}

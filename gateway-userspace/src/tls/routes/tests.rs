//! Property test (issue 17): the per-port SNI table answers what
//! [`Listener::route_sni`]'s scan answers, for random routes and random SNIs.
use super::*;
use crate::config::{ListenerProtocol, host_map::testgen};

#[test]
fn sni_table_answers_what_a_scan_answers() {
    let mut rng = fastrand::Rng::with_seed(31400);
    for _ in 0..600 {
        let mut all = Vec::new();
        let tls = (0..rng.usize(0..30))
            .map(|i| {
                let sni_hosts: Vec<String> = (0..rng.usize(1..4))
                    .map(|_| testgen::pattern(&mut rng))
                    .collect();
                all.extend(sni_hosts.iter().cloned());
                TlsRoute {
                    name: format!("r{i}"),
                    sni_hosts,
                    destinations: vec![],
                }
            })
            .collect();
        let l = Listener {
            port: 443,
            protocol: ListenerProtocol::Tls,
            servers: vec![],
            tcp: None,
            terminated_tcp: vec![],
            tls,
            http: vec![],
        };
        let snapshot_like = SniRoutes {
            ports: [(443, table(&l))].into_iter().collect(),
        };
        for _ in 0..100 {
            let sni = testgen::request_host(&mut rng, &all);
            let want = l.route_sni(&sni).map(|r| r.name.as_str());
            let got = snapshot_like.route(&l, &sni).map(|r| r.name.as_str());
            assert_eq!(
                got,
                want,
                "sni {sni:?}, routes {:?}",
                l.tls.iter().map(|r| &r.sni_hosts).collect::<Vec<_>>()
            );
        }
    }
}

//! Property test (issue 17): for random policies and random HTTP requests the index
//! decides exactly what the straightforward scan ([`Policies::decide`]) decides, the
//! rule it names included.
use std::net::IpAddr;

use fastrand::Rng;
use hyper::{HeaderMap, header::HeaderValue};

use super::*;
use crate::{
    authz::{Cidr, Condition, HttpAttrs, Operation, Policy, Source},
    config::host_map::testgen,
};

fn pick<'a>(rng: &mut Rng, from: &[&'a str]) -> &'a str {
    from[rng.usize(..from.len())]
}

/// A `hosts` pattern: routing-style patterns (exact, `*.x`, `*`) and Istio's string
/// matches (`x*`, `*x`), now and then in capitals or with a port.
fn host_pattern(rng: &mut Rng, pool: &mut Vec<String>) -> String {
    let p = match rng.u8(..10) {
        0..5 => testgen::pattern(rng),
        5 => format!("{}*", testgen::pattern(rng).trim_start_matches('*')),
        6 => format!(
            "*{}",
            pick(rng, &["b", ".b", "ab.c", "1", ":80", "test:8080"])
        ),
        7 => format!(
            "{}:{}",
            testgen::pattern(rng),
            pick(rng, &["80", "8080", "443"])
        ),
        8 if !pool.is_empty() => pool[rng.usize(..pool.len())].clone(),
        _ => testgen::pattern(rng).to_ascii_uppercase(),
    };
    pool.push(p.clone());
    p
}

fn some<T>(rng: &mut Rng, max: usize, mut f: impl FnMut(&mut Rng) -> T) -> Vec<T> {
    // Empty half the time: an empty list is no constraint.
    if rng.bool() {
        return Vec::new();
    }
    (0..rng.usize(1..=max)).map(|_| f(rng)).collect()
}

const PORTS: [u16; 3] = [80, 443, 8080];
const CIDRS: [&str; 4] = ["10.0.0.0/8", "10.1.0.0/16", "192.168.1.1/32", "fd00::/8"];

fn cidr(rng: &mut Rng) -> Cidr {
    Cidr::parse(pick(rng, &CIDRS)).unwrap()
}

fn port(rng: &mut Rng) -> u16 {
    PORTS[rng.usize(..PORTS.len())]
}

fn operation(rng: &mut Rng, pool: &mut Vec<String>) -> Operation {
    Operation {
        hosts: some(rng, 3, |r| host_pattern(r, pool)),
        not_hosts: if rng.u8(..4) == 0 {
            vec![host_pattern(rng, pool)]
        } else {
            vec![]
        },
        ports: some(rng, 2, port),
        not_ports: if rng.u8(..5) == 0 {
            vec![port(rng)]
        } else {
            vec![]
        },
        methods: some(rng, 2, |r| pick(r, &["GET", "POST"]).to_string()),
        not_methods: vec![],
        paths: some(rng, 2, |r| pick(r, &["/a", "/a*", "*/b", "*"]).to_string()),
        not_paths: if rng.u8(..5) == 0 {
            vec!["/admin*".into()]
        } else {
            vec![]
        },
    }
}

fn condition(rng: &mut Rng) -> Condition {
    match rng.u8(..4) {
        0 => Condition::SourceIp {
            values: some(rng, 2, cidr),
            not_values: vec![],
        },
        1 => Condition::DestinationPort {
            values: vec![port(rng)],
            not_values: some(rng, 1, port),
        },
        2 => Condition::Header {
            name: "x-a".into(),
            values: vec![pick(rng, &["v", "v*", "*"]).into()],
            not_values: vec![],
        },
        _ => Condition::Sni {
            values: vec![pick(rng, &["a.b", "*.b", "*"]).into()],
            not_values: vec![],
        },
    }
}

fn policies(rng: &mut Rng, pool: &mut Vec<String>) -> Policies {
    let policies = (0..rng.usize(0..25))
        .map(|i| {
            let name = format!("ns/p{i:02}");
            let rules = (0..rng.usize(0..4))
                .map(|j| Rule {
                    name: format!("{name}#{j}"),
                    from: some(rng, 2, |r| Source {
                        ip_blocks: some(r, 2, cidr),
                        not_ip_blocks: some(r, 1, cidr),
                        ..Source::default()
                    }),
                    to: (0..rng.usize(0..4)).map(|_| operation(rng, pool)).collect(),
                    when: if rng.u8(..3) == 0 {
                        vec![condition(rng)]
                    } else {
                        vec![]
                    },
                })
                .collect();
            Policy {
                name,
                action: if rng.u8(..3) == 0 {
                    Action::Deny
                } else {
                    Action::Allow
                },
                rules,
            }
        })
        .collect();
    Policies { policies }
}

#[test]
fn index_decides_what_the_scan_decides() {
    let mut rng = Rng::with_seed(1700);
    let (mut compared, mut allowed, mut denied_by_rule) = (0, 0, 0);
    for _ in 0..1500 {
        let mut pool = Vec::new();
        let p = policies(&mut rng, &mut pool);
        let index = PolicyIndex::new(&p);
        for _ in 0..60 {
            let host = testgen::request_host(&mut rng, &pool);
            let src: IpAddr = pick(
                &mut rng,
                &["10.1.2.3", "10.2.0.1", "192.168.1.1", "fd00::1"],
            )
            .parse()
            .unwrap();
            let mut headers = HeaderMap::new();
            if rng.bool() {
                headers.insert("x-a", HeaderValue::from_static("v1"));
            }
            let attrs = HttpAttrs {
                host: &host,
                path: pick(&mut rng, &["/a", "/a/b", "/admin/x", "/"]),
                method: pick(&mut rng, &["GET", "POST", "PUT"]),
                headers: &headers,
                sni: [None, Some("a.b"), Some("x.b")][rng.usize(..3)],
            };
            let req = Request {
                source: Cidr::host(src),
                port: port(&mut rng),
                l7: L7::Http(attrs),
            };
            let want = p.decide(PortKind::Http, &req);
            let got = index.decide_http(&p, &req);
            assert_eq!(
                got, want,
                "host {host:?} port {}, policies {p:#?}",
                req.port
            );
            match want {
                Decision::Allow { rule: Some(_) } => allowed += 1,
                Decision::Deny(DenyReason::Rule(_)) => denied_by_rule += 1,
                _ => {}
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 1500 * 60);
    // The generator must reach the interesting answers, not only "no rule matched".
    assert!(
        allowed > 2000 && denied_by_rule > 2000,
        "{allowed} allowed by a rule, {denied_by_rule} denied by a rule"
    );
}

/// Thousands of policies, one host each: a request is judged against its host's rules
/// and the residual ones, not against all of them.
#[test]
fn candidates_do_not_grow_with_the_number_of_policies() {
    let mut policies = Vec::new();
    for i in 0..5000 {
        for (action, tag) in [(Action::Allow, "allow"), (Action::Deny, "deny")] {
            let name = format!("istio-system/{tag}-{i:06}");
            policies.push(Policy {
                rules: vec![Rule {
                    name: format!("{name}#0"),
                    to: vec![Operation {
                        hosts: vec![format!("h{i}.scale.test")],
                        ..Operation::default()
                    }],
                    ..Rule::default()
                }],
                name,
                action,
            });
        }
    }
    policies.sort_by(|a, b| a.name.cmp(&b.name));
    let p = Policies { policies };
    let index = PolicyIndex::new(&p);
    assert_eq!(index.residual_len(), 0);
    assert_eq!(index.candidates("h4999.scale.test", 80).len(), 2);
    assert_eq!(index.candidates("H4999.scale.test.:80", 80).len(), 2);
    assert!(index.candidates("unknown.scale.test", 80).is_empty());
    let headers = HeaderMap::new();
    let req = |host| Request {
        source: Cidr::host("10.0.0.1".parse().unwrap()),
        port: 80,
        l7: L7::Http(HttpAttrs {
            host,
            path: "/",
            method: "GET",
            headers: &headers,
            sni: None,
        }),
    };
    for host in [
        "h0.scale.test",
        "h2500.scale.test",
        "h4999.scale.test",
        "nope.scale.test",
    ] {
        assert_eq!(
            index.decide_http(&p, &req(host)),
            p.decide(PortKind::Http, &req(host))
        );
    }
}

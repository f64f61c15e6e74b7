//! Limits (issue 10): the gateway raises its open-file limit itself, holds thousands of
//! concurrent L4 flows under a 1,024 soft limit, and refuses connections past a cap
//! cheaply, counted, without harming the ones it holds.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use gateway_tests::{
    backends::{config_dir, tcp_echo},
    gateway::GatewayProc,
    netns::{NetNs, privileged},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinSet,
};

fn cfg(name: &str) -> PathBuf {
    config_dir().join(name)
}

fn metric(prom: &str, name: &str) -> u64 {
    prom.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .filter(|rest| rest.starts_with(' '))
                .map(|v| v.trim().parse::<f64>().expect("metric value") as u64)
        })
        .unwrap_or_else(|| panic!("no series {name} in:\n{prom}"))
}

/// Opens `n` connections to `to`, each sending a line and reading its echo, and keeps
/// them open. Panics if any fails.
async fn hold(to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut set = JoinSet::new();
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        set.spawn(async move {
            let mut c = TcpStream::connect(to)
                .await
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            let line = format!("flow {i}\n");
            c.write_all(line.as_bytes()).await.unwrap();
            let mut echo = vec![0u8; line.len()];
            tokio::time::timeout(Duration::from_secs(30), c.read_exact(&mut echo))
                .await
                .unwrap_or_else(|_| panic!("connection {i}: no echo within 30 s"))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            assert_eq!(echo, line.as_bytes());
            c
        });
        // Bounded concurrency of the handshakes; the connections themselves stay.
        while set.len() >= 256 {
            held.push(set.join_next().await.unwrap().unwrap());
        }
    }
    while let Some(c) = set.join_next().await {
        held.push(c.unwrap());
    }
    held
}

/// Every held connection still echoes.
async fn still_echo(held: &mut [TcpStream]) {
    for (i, c) in held.iter_mut().enumerate() {
        c.write_all(b"again\n").await.unwrap();
        let mut echo = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut echo))
            .await
            .unwrap_or_else(|_| panic!("held connection {i}: no echo"))
            .unwrap_or_else(|e| panic!("held connection {i}: {e}"));
        assert_eq!(&echo, b"again\n");
    }
}

#[test]
fn five_thousand_flows_under_a_1024_soft_fd_limit() {
    if !privileged("five_thousand_flows_under_a_1024_soft_fd_limit") {
        return;
    }
    // The test process holds both ends of every flow (client and echo backend).
    gateway_tests::raise_nofile();
    let ns = NetNs::new("fd5k");
    let rt = ns.runtime();
    let _echo = NetNs::block_on(&rt, tcp_echo("127.0.0.1:2701".parse().unwrap())).unwrap();
    let gw = GatewayProc::start_with_nofile(
        &ns,
        &[&cfg("tcp-echo.yaml"), &cfg("service-entries.yaml")],
        &["--splice", "userspace"],
        Some(1024),
    );
    assert!(
        gw.log().contains("open-file limit raised from 1024"),
        "the gateway did not raise its open-file limit:\n{}",
        gw.log()
    );
    let to: SocketAddr = "127.0.0.1:31400".parse().unwrap();
    let mut held = NetNs::block_on(&rt, hold(to, 5_000));
    gw.wait_splice(Duration::from_secs(30), "5,000 flows active", |v| {
        v["active_flows"] == 5_000
    });
    let prom = gw.admin_get("/stats/prometheus");
    assert_eq!(
        metric(
            &prom,
            "gateway_downstream_cx_active{listener=\"0.0.0.0_31400\"}"
        ),
        5_000
    );
    assert_eq!(
        metric(
            &prom,
            "gateway_downstream_cx_overflow_total{listener=\"0.0.0.0_31400\"}"
        ),
        0
    );
    held = NetNs::block_on(&rt, async move {
        still_echo(&mut held).await;
        held
    });
    drop(held);
    gw.wait_splice(Duration::from_secs(30), "every flow closed", |v| {
        v["active_flows"] == 0
    });
}

#[test]
fn connections_past_the_cap_are_refused_and_counted_and_the_held_ones_keep_working() {
    if !privileged("connections_past_the_cap_are_refused_and_counted") {
        return;
    }
    let ns = NetNs::new("cap");
    let rt = ns.runtime();
    let _echo = NetNs::block_on(&rt, tcp_echo("127.0.0.1:2701".parse().unwrap())).unwrap();
    let gw = GatewayProc::start(
        &ns,
        &[&cfg("tcp-echo.yaml"), &cfg("service-entries.yaml")],
        &["--splice", "userspace", "--max-connections", "100"],
    );
    let to: SocketAddr = "127.0.0.1:31400".parse().unwrap();
    let mut held = NetNs::block_on(&rt, hold(to, 100));
    // 20 more: each is reset at accept, before a byte is read; none gets an echo.
    let refused = NetNs::block_on(&rt, async move {
        let mut refused = 0;
        for _ in 0..20 {
            // The reset can beat connect() itself to the socket's error.
            let Ok(mut c) = TcpStream::connect(to).await else {
                refused += 1;
                continue;
            };
            let _ = c.write_all(b"over the cap\n").await;
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => refused += 1,
                Ok(Ok(n)) => panic!("a connection past the cap got {n} bytes back"),
                Err(_) => panic!("a connection past the cap was neither refused nor served"),
            }
        }
        refused
    });
    assert_eq!(refused, 20);
    let prom = gw.admin_get("/stats/prometheus");
    assert_eq!(
        metric(
            &prom,
            "gateway_downstream_cx_overflow_total{listener=\"0.0.0.0_31400\"}"
        ),
        20
    );
    held = NetNs::block_on(&rt, async move {
        still_echo(&mut held).await;
        held
    });
    drop(held);
    gw.wait_splice(Duration::from_secs(30), "every flow closed", |v| {
        v["active_flows"] == 0
    });
    // Under the cap again: served.
    NetNs::block_on(&rt, async move {
        let mut c = hold(to, 1).await;
        still_echo(&mut c).await;
    });
}

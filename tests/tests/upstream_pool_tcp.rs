//! DestinationRule `connectionPool.tcp.idleTimeout` on TCP routes (issue 13, and issue
//! 10's "TCP flows 1 h ... and `tcp.idleTimeout` when it lands"), through a real
//! gateway, a real echo backend and real sockets, in every `--splice` mode:
//! - a flow to the service whose rule sets `idleTimeout: 1s` is closed (FIN, the flow
//!   log and the access log saying `idle_timeout`) once nothing moved for 1 s — with
//!   `auto`, after 4 MiB made it bulk and handed it to the kernel;
//! - a flow to the same service that moves a byte every 300 ms survives 3 s;
//! - a flow to a service without a rule keeps the gateway's `--tcp-idle-timeout` (1 h)
//!   and survives 2.5 s of silence.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use gateway_tests::{
    backends::{config_dir, tcp_echo},
    gateway::GatewayProc,
    netns::{NetNs, privileged},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const MODES: [&str; 4] = ["ebpf", "splice", "uring", "auto"];

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: l4, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 9000, name: tcp-idle, protocol: TCP}
    hosts: ["*"]
  - port: {number: 9001, name: tcp-plain, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: idle}
spec:
  hosts: [idle.test]
  ports: [{number: 2701, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: plain}
spec:
  hosts: [plain.test]
  ports: [{number: 2701, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: l4, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [l4]
  tcp:
  - match: [{port: 9000}]
    route: [{destination: {host: idle.test, port: {number: 2701}}}]
  - match: [{port: 9001}]
    route: [{destination: {host: plain.test, port: {number: 2701}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: idle}
spec:
  host: idle.test
  trafficPolicy:
    connectionPool:
      tcp: {idleTimeout: 1s}
"#;

/// A fresh directory for the test's config file.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("gw-pooltcp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        TempDir(d)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `n` bytes and reads their echo back (concurrently, so neither side's buffers
/// fill), within 30 s.
async fn exchange(s: &mut TcpStream, n: usize) {
    let (mut r, mut w) = s.split();
    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    let send = async {
        w.write_all(&data).await.expect("send");
    };
    let recv = async {
        let mut got = vec![0u8; n];
        r.read_exact(&mut got).await.expect("echo");
        assert!(got == data, "the echo differs from what was sent");
    };
    tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(send, recv) })
        .await
        .expect("echo within 30 s");
}

/// How a read on a silent flow ended, and when (after the last echo).
#[derive(Debug)]
enum Ended {
    Eof(Duration),
    Reset,
    Data,
    StillOpen,
}

/// Waits up to 10 s for the gateway to end the silent flow `s`.
async fn wait_closed(s: &mut TcpStream, since: Instant) -> Ended {
    let mut b = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await {
        Ok(Ok(0)) => Ended::Eof(since.elapsed()),
        Ok(Ok(_)) => Ended::Data,
        Ok(Err(_)) => Ended::Reset,
        Err(_) => Ended::StillOpen,
    }
}

#[test]
fn destination_rule_tcp_idle_timeout_every_mode() {
    if !privileged("destination_rule_tcp_idle_timeout_every_mode") {
        return;
    }
    for mode in MODES {
        let ns = NetNs::new(&format!("pooltcp-{mode}"));
        let rt = ns.runtime();
        let _echo = NetNs::block_on(&rt, tcp_echo("127.0.0.1:2701".parse().unwrap()))
            .expect("echo backend");
        let dir = TempDir::new(mode);
        let mesh = config_dir().join("mesh/mesh-config.yaml");
        let gw = GatewayProc::start(
            &ns,
            &[&dir.write("l4.yaml", CONFIG)],
            &["--splice", mode, "--mesh-config", mesh.to_str().unwrap()],
        );
        // /config_dump: the rule's idleTimeout on the port's tcp_proxy, as Istio sets it;
        // none on the other port (Envoy's default there).
        let dump = gw.admin_json("/config_dump");
        let tcp_proxy = |port: u16| {
            dump["configs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["dynamic_listeners"].as_array())
                .flatten()
                .map(|l| &l["active_state"]["listener"])
                .find(|l| l["address"]["socket_address"]["port_value"] == port)
                .and_then(|l| l["filter_chains"][0]["filters"][0].get("typed_config"))
                .cloned()
                .unwrap_or_else(|| panic!("{mode}: no tcp_proxy for port {port} in {dump}"))
        };
        assert_eq!(tcp_proxy(9000)["idle_timeout"], "1s", "{mode}");
        assert!(tcp_proxy(9001).get("idle_timeout").is_none(), "{mode}");
        let idle = NetNs::block_on(&rt, async move {
            let mut s = TcpStream::connect("127.0.0.1:9000").await.expect("connect");
            if mode == "auto" {
                // Bulk first, so that the flow goes to the kernel (as l4.rs: the
                // handover waits for a quiet moment, which the echo's end gives).
                exchange(&mut s, 4 << 20).await;
            } else {
                exchange(&mut s, 4).await;
            }
            s
        });
        if mode == "auto" {
            gw.wait_splice(Duration::from_secs(10), "the bulk flow offloaded", |v| {
                v["offloads"] == 1
            });
        }
        let (ended, busy, plain) = NetNs::block_on(&rt, async move {
            let mut idle = idle;
            let since = Instant::now();
            let silent = wait_closed(&mut idle, since);
            // Same service, a byte every 300 ms for 3 s: never idle for 1 s.
            let busy = async {
                let mut s = TcpStream::connect("127.0.0.1:9000").await.expect("connect");
                for _ in 0..10 {
                    exchange(&mut s, 1).await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                exchange(&mut s, 1).await;
                s
            };
            // Another service, no rule: the gateway's 1 h.
            let plain = async {
                let mut s = TcpStream::connect("127.0.0.1:9001").await.expect("connect");
                exchange(&mut s, 4).await;
                tokio::time::sleep(Duration::from_millis(2500)).await;
                exchange(&mut s, 4).await;
                s
            };
            tokio::join!(silent, busy, plain)
        });
        eprintln!("{mode}: the silent flow ended {ended:?}");
        match ended {
            // The kernel path's sweep runs every quarter of the timeout (at least 250 ms):
            // closed 1 to about 1.75 s after the last byte (measured); allow for load.
            Ended::Eof(t) => assert!(
                t >= Duration::from_millis(950) && t < Duration::from_secs(4),
                "{mode}: closed {t:?} after the last byte, not after ~1 s"
            ),
            other => panic!(
                "{mode}: the silent flow {other:?}, not closed with a FIN\n{}",
                gw.log()
            ),
        }
        // Both survivors end with a clean close from the client; three flows in all.
        drop((busy, plain));
        let log = gw.wait_log(Duration::from_secs(10), |l| {
            l.matches("flow closed").count() >= 3
        });
        let flows: Vec<&str> = log.lines().filter(|l| l.contains("flow closed")).collect();
        assert_eq!(flows.len(), 3, "{mode}: {flows:#?}");
        let idled: Vec<&&str> = flows
            .iter()
            .filter(|l| l.contains("termination=idle_timeout"))
            .collect();
        assert_eq!(idled.len(), 1, "{mode}: {flows:#?}");
        assert!(
            log.lines().any(
                |l| l.contains("\"connection_termination_details\":\"idle_timeout\"")
                    && l.contains("outbound|2701||idle.test")
            ),
            "{mode}: no access-log line with idle_timeout for idle.test:\n{log}"
        );
    }
}

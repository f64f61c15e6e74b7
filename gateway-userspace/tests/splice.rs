//! The splice on its own, on real sockets in a throwaway network namespace, in every
//! mode (ebpf, splice through pipes, io_uring): bytes queued before the splice was armed (client-first and server-first), a
//! bulk echo checked byte for byte, half-close, and reset propagation.
use std::time::Duration;

use gateway::kernel::splice::{Path, SpliceMode, Splicer, Termination};
use gateway_tests::netns::{NetNs, privileged};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::timeout,
};

fn in_netns<F: std::future::Future<Output = ()> + 'static>(
    tag: &str,
    f: impl FnOnce() -> F + Send + 'static,
) {
    let ns = NetNs::new(tag);
    ns.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    });
}

/// Upstream that greets first ("HELLO\n"), then echoes; half-close aware.
async fn greeting_echo() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                s.write_all(b"HELLO\n").await.unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn echo_through_splice(mode: SpliceMode, len: usize) {
    let splicer = Splicer::new(mode).expect("splicer");
    let up_addr = greeting_echo().await;
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();

    // The client speaks before the proxy has even accepted: those bytes sit in the
    // receive queue when the splice is armed. The upstream greets before it too.
    let mut client = TcpStream::connect(front_addr).await.unwrap();
    client.write_all(b"early\n").await.unwrap();
    let (down, _) = front.accept().await.unwrap();
    let up = TcpStream::connect(up_addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let flow = {
        let s = splicer.clone();
        tokio::spawn(async move { s.splice(down, up).await })
    };

    let mut head = [0u8; 12];
    timeout(Duration::from_secs(5), client.read_exact(&mut head))
        .await
        .expect("bytes queued before arming were stranded")
        .unwrap();
    assert_eq!(&head, b"HELLO\nearly\n");

    let data = pattern(len, 7);
    let (mut r, mut w) = client.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap(); // half-close: the echo must still come back in full
        w
    });
    let mut got = Vec::with_capacity(len);
    timeout(Duration::from_secs(60), r.read_to_end(&mut got))
        .await
        .expect("echo timed out")
        .unwrap();
    let _w = writer.await.unwrap();
    assert_eq!(got.len(), len, "echoed length");
    assert!(got == data, "echoed bytes differ");

    let report = timeout(Duration::from_secs(10), flow)
        .await
        .expect("flow did not end")
        .unwrap();
    assert_eq!(report.termination, Termination::Closed);
    assert_eq!(report.downstream_to_upstream, 6 + len as u64);
    assert_eq!(report.upstream_to_downstream, 6 + 6 + len as u64);
    match (&splicer, mode) {
        (Splicer::Ebpf(k), _) => {
            assert!(report.in_kernel());
            assert_eq!(report.userspace_bytes, 0);
            assert_eq!(k.map_entries(), (0, 0, 0), "map entries left after close");
        }
        (Splicer::Pipe(_), SpliceMode::Splice) => {
            assert_eq!(report.path, Path::Splice);
            assert_eq!(report.userspace_bytes, 6 + 6 + 6 + 2 * len as u64);
        }
        (Splicer::Uring(_), SpliceMode::Uring) => {
            assert_eq!(report.path, Path::Uring);
            assert_eq!(report.userspace_bytes, 6 + 6 + 6 + 2 * len as u64);
        }
        _ => panic!("asked for {mode:?}, got {}", splicer.name()),
    }
}

#[test]
fn ebpf_splice_echo_halfclose_and_queued_bytes() {
    if !privileged("ebpf_splice_echo_halfclose_and_queued_bytes") {
        return;
    }
    in_netns("splice-ebpf", || {
        echo_through_splice(SpliceMode::Ebpf, 8 << 20)
    });
}

#[test]
fn pipe_splice_echo_halfclose_and_queued_bytes() {
    if !privileged("pipe_splice_echo_halfclose_and_queued_bytes") {
        return;
    }
    in_netns("splice-pipe", || {
        echo_through_splice(SpliceMode::Splice, 8 << 20)
    });
}

#[test]
fn uring_splice_echo_halfclose_and_queued_bytes() {
    if !privileged("uring_splice_echo_halfclose_and_queued_bytes") {
        return;
    }
    in_netns("splice-uring", || {
        echo_through_splice(SpliceMode::Uring, 8 << 20)
    });
}

/// The upstream resets mid-flow: the client must see a reset, not a clean EOF.
async fn upstream_reset_reaches_client(mode: SpliceMode) {
    let splicer = Splicer::new(mode).expect("splicer");
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 4];
        let mut s = s;
        s.read_exact(&mut buf).await.unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s); // RST
    });
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(front.local_addr().unwrap())
        .await
        .unwrap();
    let (down, _) = front.accept().await.unwrap();
    let up = TcpStream::connect(up_addr).await.unwrap();
    let s = splicer.clone();
    let flow = tokio::spawn(async move { s.splice(down, up).await });
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 16];
    let r = timeout(Duration::from_secs(10), client.read(&mut buf))
        .await
        .expect("no reset within 10 s");
    let err = r.expect_err("client saw a clean read instead of a reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    let report = timeout(Duration::from_secs(10), flow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.termination, Termination::UpstreamReset);
}

#[test]
fn ebpf_splice_passes_upstream_reset() {
    if !privileged("ebpf_splice_passes_upstream_reset") {
        return;
    }
    in_netns("rst-ebpf", || {
        upstream_reset_reaches_client(SpliceMode::Ebpf)
    });
}

#[test]
fn pipe_splice_passes_upstream_reset() {
    if !privileged("pipe_splice_passes_upstream_reset") {
        return;
    }
    in_netns("rst-pipe", || {
        upstream_reset_reaches_client(SpliceMode::Splice)
    });
}

#[test]
fn uring_splice_passes_upstream_reset() {
    if !privileged("uring_splice_passes_upstream_reset") {
        return;
    }
    in_netns("rst-uring", || {
        upstream_reset_reaches_client(SpliceMode::Uring)
    });
}

/// Many flows at once through one splicer: every echo byte-exact, none reset.
async fn concurrent_echoes(mode: SpliceMode, flows: usize) {
    let splicer = Splicer::new(mode).expect("splicer");
    // The demo echo: 64 KiB reads and writes, so the upstream sends large skbs.
    let echo = gateway_tests::backends::tcp_echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let up_addr = echo.addr;
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let s = splicer.clone();
    tokio::spawn(async move {
        while let Ok((down, _)) = front.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let up = TcpStream::connect(up_addr).await.unwrap();
                let r = s.splice(down, up).await;
                assert_eq!(r.termination, Termination::Closed, "{r:?}");
            });
        }
    });
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..flows {
        tasks.spawn(async move {
            let len = 1 + (i * 7919 * 7919) % (256 * 1024);
            let data = pattern(len, i as u64);
            let c = TcpStream::connect(front_addr).await.unwrap();
            let (mut r, mut w) = c.into_split();
            let sent = data.clone();
            let wr = tokio::spawn(async move {
                w.write_all(&sent).await.unwrap();
                w.shutdown().await.unwrap();
                w
            });
            let mut got = Vec::new();
            timeout(Duration::from_secs(30), r.read_to_end(&mut got))
                .await
                .expect("timeout")
                .expect("read");
            assert_eq!(got.len(), len, "flow {i}: echoed length");
            assert!(got == data, "flow {i}: bytes differ");
            drop(wr.await.unwrap());
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

#[test]
fn ebpf_splice_many_concurrent_flows() {
    if !privileged("ebpf_splice_many_concurrent_flows") {
        return;
    }
    let ns = NetNs::new("many-ebpf");
    ns.run(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(concurrent_echoes(SpliceMode::Ebpf, 200))
    });
}

fn many_concurrent(tag: &str, mode: SpliceMode) {
    let ns = NetNs::new(tag);
    ns.run(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(concurrent_echoes(mode, 200))
    });
}

#[test]
fn pipe_splice_many_concurrent_flows() {
    if !privileged("pipe_splice_many_concurrent_flows") {
        return;
    }
    many_concurrent("many-pipe", SpliceMode::Splice);
}

#[test]
fn uring_splice_many_concurrent_flows() {
    if !privileged("uring_splice_many_concurrent_flows") {
        return;
    }
    many_concurrent("many-uring", SpliceMode::Uring);
}

/// A client that sent its FIN before the flow was routed can't enter a SOCKHASH (only
/// ESTABLISHED sockets may): the flow is copied in userspace instead, losslessly.
#[test]
fn ebpf_splicer_copies_a_flow_whose_client_already_finished() {
    if !privileged("ebpf_splicer_copies_a_flow_whose_client_already_finished") {
        return;
    }
    in_netns("fin-first", || async {
        let splicer = Splicer::new(SpliceMode::Ebpf).expect("splicer");
        let up_addr = greeting_echo().await;
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let big = pattern(48_000, 5);
        let (mut r, mut w) = client.into_split();
        let sender = {
            let big = big.clone();
            tokio::spawn(async move {
                w.write_all(b"bye\n").await.unwrap();
                w.write_all(&big).await.unwrap();
                w.shutdown().await.unwrap();
                w
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await; // the FIN is in
        let (down, _) = front.accept().await.unwrap();
        let up = TcpStream::connect(up_addr).await.unwrap();
        let flow = tokio::spawn(async move { splicer.splice(down, up).await });
        let mut got = Vec::new();
        timeout(Duration::from_secs(5), r.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        drop(sender.await.unwrap());
        let mut want = b"HELLO\nbye\n".to_vec();
        want.extend(&big);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "echo differs");
        let report = flow.await.unwrap();
        assert!(
            !report.in_kernel(),
            "a CLOSE_WAIT socket can't be spliced in the kernel"
        );
        assert_eq!(report.termination, Termination::Closed);
        assert_eq!(
            (report.downstream_to_upstream, report.upstream_to_downstream),
            (4 + 48_000, 10 + 48_000)
        );
    });
}

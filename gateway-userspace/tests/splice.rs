//! The splice on its own, on real sockets in a throwaway network namespace, in every
//! mode (ebpf, splice through pipes, io_uring): bytes queued before the splice was armed
//! (client-first and server-first), a bulk echo checked byte for byte, half-close, reset
//! propagation; for the userspace modes also 512 MiB each way at once, a stalled reader,
//! a reset from either side mid-stream, fds after 2,000 flows; and the pipe splicer's
//! handover of a bulk flow.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use gateway::kernel::splice::{
    FlowReport, Path, SpliceMode, Splicer, Termination,
    pipe::{OffloadPolicy, PipeConfig, PipeOutcome, PipeSplicer},
};
use gateway_tests::{
    data::{Checker, fill},
    netns::{NetNs, privileged},
    stream::tcp_bytes_received,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
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

/// Upstream that greets first ("HELLO\n"), then echoes; half-close aware. Serves one
/// connection; the test joins the task, so a panic in it fails the test.
async fn greeting_echo() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"HELLO\n").await.unwrap();
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    });
    (addr, task)
}

/// Awaits a task of the test (within 10 s) and re-raises its panic here.
async fn join<T>(what: &str, task: tokio::task::JoinHandle<T>) -> T {
    timeout(Duration::from_secs(10), task)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end"))
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Waits until `sock` has received at least `n` bytes (a FIN counts one): what a test
/// arranged to be queued is there, however slow the machine.
async fn wait_received(sock: &TcpStream, n: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while tcp_bytes_received(sock) < n {
        assert!(
            Instant::now() < deadline,
            "{what}: {} bytes received, want {n}",
            tcp_bytes_received(sock)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
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
    let (up_addr, upstream) = greeting_echo().await;
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();

    // The client speaks before the proxy has even accepted: those bytes sit in the
    // receive queue when the splice is armed. The upstream greets before it too.
    let mut client = TcpStream::connect(front_addr).await.unwrap();
    client.write_all(b"early\n").await.unwrap();
    let (down, _) = front.accept().await.unwrap();
    let up = TcpStream::connect(up_addr).await.unwrap();
    wait_received(&down, 6, "the client's early bytes").await;
    wait_received(&up, 6, "the upstream's greeting").await;
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
    join("the upstream", upstream).await;
    assert_eq!(report.termination, Termination::Closed);
    assert_eq!(report.downstream_to_upstream, 6 + len as u64);
    assert_eq!(report.upstream_to_downstream, 6 + 6 + len as u64);
    match (splicer.kernel(), mode) {
        (Some(k), SpliceMode::Ebpf) => {
            assert!(report.in_kernel());
            // Every byte moved once: by the kernel, or by userspace while a direction
            // was paused (its reader a budget behind).
            assert_eq!(
                k.kernel_stats().redirected_bytes + report.userspace_bytes,
                report.downstream_to_upstream + report.upstream_to_downstream,
                "{report:?}"
            );
            assert_eq!(k.map_entries(), (0, 0, 0), "map entries left after close");
        }
        (None, SpliceMode::Splice) => {
            assert_eq!(report.path, Path::Splice);
            assert_eq!(report.userspace_bytes, 6 + 6 + 6 + 2 * len as u64);
        }
        (None, SpliceMode::Uring) => {
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
    let upstream = tokio::spawn(async move {
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
    join("the upstream", upstream).await;
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
    let acceptor = tokio::spawn(splice_accepted(splicer.clone(), front, up_addr, flows));
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
    // Every flow's report, checked here where a failed check fails the test.
    let reports = join("the flows", acceptor).await;
    assert_eq!(reports.len(), flows);
    for r in reports {
        assert_eq!(r.termination, Termination::Closed, "{r:?}");
    }
}

/// Accepts `n` connections on `front`, splices each to a new connection to `up_addr`,
/// closes the listener, and returns every flow's report once all have ended.
async fn splice_accepted(
    splicer: Splicer,
    front: TcpListener,
    up_addr: std::net::SocketAddr,
    n: usize,
) -> Vec<FlowReport> {
    let mut flows = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (down, _) = front.accept().await.expect("accept");
        let s = splicer.clone();
        flows.spawn(async move {
            let up = TcpStream::connect(up_addr).await.unwrap();
            s.splice(down, up).await
        });
    }
    drop(front);
    let mut reports = Vec::with_capacity(n);
    while let Some(r) = flows.join_next().await {
        reports.push(r.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
    }
    reports
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
        let (up_addr, upstream) = greeting_echo().await;
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
        let (down, _) = front.accept().await.unwrap();
        // Every byte and the FIN are in before the splice starts.
        wait_received(&down, 4 + 48_000 + 1, "the client's bytes and FIN").await;
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
        join("the upstream", upstream).await;
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

// === the userspace modes under load: volume, stalls, resets, fds ===

/// A multi-threaded runtime in a fresh namespace (2 workers, like the gateway here).
fn in_netns_mt<F: std::future::Future<Output = ()> + Send + 'static>(
    tag: &str,
    f: impl FnOnce() -> F + Send + 'static,
) {
    let ns = NetNs::new(tag);
    let rt = ns.runtime();
    NetNs::block_on(&rt, async move { f().await });
}

/// Writes `len` bytes of stream `seed`, then shuts the write side.
async fn send_stream(mut w: impl AsyncWrite + Unpin, seed: u64, len: u64) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0u64;
    while off < len {
        let n = buf.len().min((len - off) as usize);
        fill(seed, off, &mut buf[..n]);
        w.write_all(&buf[..n]).await.expect("write");
        off += n as u64;
    }
    w.shutdown().await.expect("shutdown(write)");
}

/// Reads until EOF, checking every byte against stream `seed`; returns the length.
/// `progress` (if any) follows the count as it goes.
async fn check_stream(
    mut r: impl AsyncRead + Unpin,
    seed: u64,
    within: Duration,
    progress: Option<Arc<AtomicU64>>,
) -> u64 {
    let mut check = Checker::new(seed);
    let mut buf = vec![0u8; 256 * 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = timeout(left, r.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("stream {seed}: stuck at offset {}", check.offset))
            .unwrap_or_else(|e| panic!("stream {seed}: read at offset {}: {e}", check.offset));
        if n == 0 {
            return check.offset;
        }
        check.check(&buf[..n]);
        if let Some(p) = &progress {
            p.store(check.offset, Ordering::Relaxed);
        }
    }
}

/// A connected (client, proxy-side downstream, proxy-side upstream, upstream peer)
/// quadruple on loopback.
async fn four_sockets() -> (TcpStream, TcpStream, TcpStream, TcpStream) {
    let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(front.local_addr().unwrap())
        .await
        .unwrap();
    let (down, _) = front.accept().await.unwrap();
    let up = TcpStream::connect(back.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = back.accept().await.unwrap();
    for s in [&client, &down, &up, &server] {
        s.set_nodelay(true).unwrap();
    }
    (client, down, up, server)
}

/// `len` bytes each way at once, both checked byte for byte at the far end.
async fn both_ways(mode: SpliceMode, len: u64) {
    let splicer = Splicer::new(mode).expect("splicer");
    let (client, down, up, server) = four_sockets().await;
    let flow = tokio::spawn(async move { splicer.splice(down, up).await });
    let t = Instant::now();
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let within = Duration::from_secs(50);
    let tasks = [
        tokio::spawn(async move {
            send_stream(cw, 1, len).await;
            0
        }),
        tokio::spawn(async move {
            send_stream(sw, 2, len).await;
            0
        }),
        tokio::spawn(check_stream(cr, 2, within, None)),
        tokio::spawn(check_stream(sr, 1, within, None)),
    ];
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    assert_eq!(got[2], len, "upstream -> client length");
    assert_eq!(got[3], len, "client -> upstream length");
    let report = timeout(Duration::from_secs(10), flow)
        .await
        .unwrap()
        .unwrap();
    eprintln!("{mode:?}: {} MiB each way in {:?}", len >> 20, t.elapsed());
    assert_eq!(report.termination, Termination::Closed);
    assert_eq!(
        (report.downstream_to_upstream, report.upstream_to_downstream),
        (len, len)
    );
    assert_eq!(report.userspace_bytes, 2 * len);
}

#[test]
fn pipe_splice_512mib_each_way_byte_exact() {
    if !privileged("pipe_splice_512mib_each_way_byte_exact") {
        return;
    }
    in_netns_mt("big-pipe", || both_ways(SpliceMode::Splice, 512 << 20));
}

#[test]
fn uring_splice_512mib_each_way_byte_exact() {
    if !privileged("uring_splice_512mib_each_way_byte_exact") {
        return;
    }
    in_netns_mt("big-uring", || both_ways(SpliceMode::Uring, 512 << 20));
}

/// The client stops reading for 10 s while the upstream sends 64 MiB: the upstream must
/// be held back (its lead is bounded by the four socket buffers on the way plus one pipe
/// or a few buffers), and once the client drains it gets every byte, then EOF.
async fn stalled_reader(mode: SpliceMode) {
    const LEN: u64 = 64 << 20;
    let splicer = Splicer::new(mode).expect("splicer");
    let (client, down, up, server) = four_sockets().await;
    // Views of the proxy's sockets, to read their (autotuned) buffer sizes after the
    // stall. Dups: the sockets close for good only once these are dropped too.
    let views = [&down, &up].map(|s| socket2::SockRef::from(s).try_clone().unwrap());
    let flow = tokio::spawn(async move { splicer.splice(down, up).await });
    let sent = Arc::new(AtomicU64::new(0));
    let (sr, mut sw) = server.into_split();
    let sender = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut off = 0u64;
            while off < LEN {
                let n = buf.len().min((LEN - off) as usize);
                fill(3, off, &mut buf[..n]);
                sw.write_all(&buf[..n]).await.expect("write");
                off += n as u64;
                sent.store(off, Ordering::Relaxed);
            }
            sw.shutdown().await.unwrap();
            sw
        })
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    let lead = sent.load(Ordering::Relaxed);
    let [down_v, up_v] = views;
    let buffers = [
        socket2::SockRef::from(&client).recv_buffer_size().unwrap(),
        down_v.send_buffer_size().unwrap(),
        up_v.recv_buffer_size().unwrap(),
        socket2::SockRef::from(sr.as_ref())
            .send_buffer_size()
            .unwrap(),
    ];
    drop((down_v, up_v));
    // Buffer sizes count skb overhead too, so they bound payload from above, give or take
    // the skb each queue may take beyond its limit (a quarter more covers that); plus
    // 1 MiB for the pipe (256 KiB) or the io_uring buffers (3 x 64 KiB).
    let bound = buffers.iter().sum::<usize>() as u64 * 5 / 4 + (1 << 20);
    eprintln!(
        "{mode:?}: sender {} KiB ahead after a 10 s stall; socket buffers {:?} KiB",
        lead >> 10,
        buffers.map(|b| b >> 10)
    );
    assert!(
        lead < bound && lead < LEN,
        "{mode:?}: sender got {lead} bytes ahead of a stalled reader (bound {bound})"
    );
    let (cr, _cw) = client.into_split();
    let got = check_stream(cr, 3, Duration::from_secs(30), None).await;
    assert_eq!(got, LEN, "{mode:?}: bytes after the stall");
    drop(sender.await.unwrap());
    drop(_cw);
    let report = timeout(Duration::from_secs(10), flow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.termination, Termination::Closed);
    assert_eq!(report.upstream_to_downstream, LEN);
}

#[test]
fn pipe_splice_stalled_reader_gets_every_byte_then_eof() {
    if !privileged("pipe_splice_stalled_reader_gets_every_byte_then_eof") {
        return;
    }
    in_netns_mt("stall-pipe", || stalled_reader(SpliceMode::Splice));
}

#[test]
fn uring_splice_stalled_reader_gets_every_byte_then_eof() {
    if !privileged("uring_splice_stalled_reader_gets_every_byte_then_eof") {
        return;
    }
    in_netns_mt("stall-uring", || stalled_reader(SpliceMode::Uring));
}

/// Data flows both ways; one end resets (SO_LINGER 0, close) once it has read 1 MiB,
/// with bytes of both directions still in flight. The other end must read a reset,
/// never a clean EOF. Its writer is stopped (but kept open) just before the reset:
/// the kernel reports a reset to the first reader or writer that asks (sock_error
/// consumes sk_err), and the reader is the one that must see it.
async fn reset_mid_stream(mode: SpliceMode, client_resets: bool) {
    let splicer = Splicer::new(mode).expect("splicer");
    let (client, down, up, server) = four_sockets().await;
    let flow = tokio::spawn(async move { splicer.splice(down, up).await });
    let (resetter, victim) = if client_resets {
        (client, server)
    } else {
        (server, client)
    };
    let (mut vr, mut vw) = victim.into_split();
    let stop = Arc::new(tokio::sync::Notify::new());
    let victim_writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let buf = vec![7u8; 64 * 1024];
            loop {
                tokio::select! {
                    _ = stop.notified() => break,
                    r = vw.write_all(&buf) => r.expect("victim write before the reset"),
                }
            }
            vw
        })
    };
    let mut resetter = resetter;
    let mut buf = vec![0u8; 64 * 1024];
    let out = vec![9u8; 16 * 1024];
    let mut got = 0usize;
    {
        // Written bytes are not checked here: a write cut short by select! is fine.
        let (mut rr, mut rw) = resetter.split();
        while got < 1 << 20 {
            tokio::select! {
                r = rr.read(&mut buf) => {
                    let n = r.expect("resetter read");
                    assert!(n > 0, "resetter saw EOF");
                    got += n;
                }
                r = rw.write_all(&out) => r.expect("resetter write"),
            }
        }
    }
    stop.notify_one();
    let _vw = victim_writer.await.unwrap();
    socket2::SockRef::from(&resetter)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(resetter);
    let end = timeout(Duration::from_secs(20), async {
        loop {
            match vr.read(&mut buf).await {
                Ok(0) => return Ok(0),
                Ok(_) => continue,
                Err(e) => return Err(e.kind()),
            }
        }
    })
    .await
    .expect("no reset within 20 s");
    assert_eq!(
        end,
        Err(std::io::ErrorKind::ConnectionReset),
        "{mode:?}: the {} must see the {}'s reset",
        if client_resets { "upstream" } else { "client" },
        if client_resets { "client" } else { "upstream" },
    );
    let report = timeout(Duration::from_secs(10), flow)
        .await
        .unwrap()
        .unwrap();
    let want = if client_resets {
        Termination::DownstreamReset
    } else {
        Termination::UpstreamReset
    };
    assert_eq!(report.termination, want, "{mode:?}");
}

async fn resets_both_sides(mode: SpliceMode) {
    reset_mid_stream(mode, true).await;
    reset_mid_stream(mode, false).await;
}

#[test]
fn pipe_splice_rst_mid_stream_from_either_side() {
    if !privileged("pipe_splice_rst_mid_stream_from_either_side") {
        return;
    }
    in_netns_mt("rstmid-pipe", || resets_both_sides(SpliceMode::Splice));
}

#[test]
fn uring_splice_rst_mid_stream_from_either_side() {
    if !privileged("uring_splice_rst_mid_stream_from_either_side") {
        return;
    }
    in_netns_mt("rstmid-uring", || resets_both_sides(SpliceMode::Uring));
}

use gateway_tests::stream::{alone, open_fds};

/// 2,000 short echo flows, 32 at a time; afterwards the process holds no more fds than
/// before, except pipes the pool kept (2 fds each).
async fn short_flows(mode: SpliceMode) {
    let splicer = Splicer::new(mode).expect("splicer");
    let echo = gateway_tests::backends::tcp_echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let up_addr = echo.addr;
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let pooled = |s: &Splicer| match s.pipe() {
        Some(p) => {
            let st = p.stats();
            assert_eq!(st.in_use, 0, "pipes still held by flows: {st:?}");
            st.pooled
        }
        None => 0,
    };
    let before = open_fds();
    let pooled_before = pooled(&splicer);
    let acceptor = tokio::spawn(splice_accepted(splicer.clone(), front, up_addr, 2000));
    let t = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let next = next.clone();
        clients.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= 2000 {
                    break;
                }
                let msg = format!("flow {i}\n");
                let mut c = TcpStream::connect(front_addr).await.unwrap();
                c.write_all(msg.as_bytes()).await.unwrap();
                c.shutdown().await.unwrap();
                let mut got = Vec::new();
                timeout(Duration::from_secs(10), c.read_to_end(&mut got))
                    .await
                    .expect("echo timed out")
                    .unwrap();
                assert_eq!(got, msg.as_bytes());
            }
        });
    }
    while let Some(r) = clients.join_next().await {
        r.unwrap();
    }
    let reports = timeout(Duration::from_secs(10), acceptor)
        .await
        .expect("flows not all ended")
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    eprintln!("{mode:?}: 2000 short flows in {:?}", t.elapsed());
    assert_eq!(reports.len(), 2000);
    for r in &reports {
        assert_eq!(r.termination, Termination::Closed, "{r:?}");
    }
    // The listener is gone with the acceptor: one fd fewer than before.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let allowed = before - 1 + 2 * (pooled(&splicer) - pooled_before);
        let now = open_fds();
        if now == allowed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{mode:?}: {now} fds open, want {allowed} ({before} before, pool {} -> {})",
            pooled_before,
            pooled(&splicer)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(p) = splicer.pipe() {
        let st = p.stats();
        assert!(st.pooled <= st.pool_max);
        eprintln!("{mode:?}: {st:?}");
    }
    drop(echo);
}

#[test]
fn pipe_splice_2000_short_flows_leave_only_pooled_fds() {
    const NAME: &str = "pipe_splice_2000_short_flows_leave_only_pooled_fds";
    if !privileged(NAME) || !alone(NAME) {
        return;
    }
    in_netns_mt("fds-pipe", || short_flows(SpliceMode::Splice));
}

#[test]
fn uring_splice_2000_short_flows_leave_no_fds() {
    const NAME: &str = "uring_splice_2000_short_flows_leave_no_fds";
    if !privileged(NAME) || !alone(NAME) {
        return;
    }
    in_netns_mt("fds-uring", || short_flows(SpliceMode::Uring));
}

// === the pipe splicer's handover of bulk flows ===

/// Like `send_stream`, but never more than `window` bytes ahead of what the far end has
/// checked (`acked`), as a windowed bulk protocol would be.
async fn send_paced(
    mut w: impl AsyncWrite + Unpin,
    seed: u64,
    len: u64,
    window: u64,
    sent: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 128 * 1024];
    let mut off = 0u64;
    while off < len {
        while off >= acked.load(Ordering::Relaxed) + window {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let n = buf.len().min((len - off) as usize);
        fill(seed, off, &mut buf[..n]);
        w.write_all(&buf[..n]).await.expect("write");
        off += n as u64;
        sent.store(off, Ordering::Relaxed);
    }
    w.shutdown().await.expect("shutdown(write)");
}

/// Streams `len` bytes each way at once through `splice_until_bulk`; once handed over,
/// the test carries the flow on with plain tokio copies, and both peers check every
/// byte in order: nothing lost or duplicated at the handover.
///
/// The senders stay at most 4 MiB ahead of their receivers. A handover needs an instant
/// at which the gateway has drained both sockets (an EAGAIN on each); a sender that is
/// always ahead of a slower receiver keeps the gateway's socket non-empty, and such a
/// flow stays on the pipe path.
async fn handover_mid_stream(len: u64, seed: u64) {
    const WINDOW: u64 = 4 << 20;
    let splicer = PipeSplicer::new(PipeConfig::default()).unwrap();
    let policy = OffloadPolicy {
        min_bytes: 1 << 20,
        ..OffloadPolicy::default()
    };
    let (client, down, up, server) = four_sockets().await;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let within = Duration::from_secs(40);
    let counter = || Arc::new(AtomicU64::new(0));
    let (c_sent, s_sent, c_got, s_got) = (counter(), counter(), counter(), counter());
    let peers = [
        tokio::spawn(send_paced(
            cw,
            seed,
            len,
            WINDOW,
            c_sent.clone(),
            s_got.clone(),
        )),
        tokio::spawn(send_paced(
            sw,
            seed + 1,
            len,
            WINDOW,
            s_sent.clone(),
            c_got.clone(),
        )),
    ];
    let checkers = [
        tokio::spawn(check_stream(cr, seed + 1, within, Some(c_got))),
        tokio::spawn(check_stream(sr, seed, within, Some(s_got))),
    ];
    // Both directions have bytes queued before the splice starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c_sent.load(Ordering::Relaxed) == 0 || s_sent.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "peers did not start");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let outcome = splicer.splice_until_bulk(down, up, &policy).await;
    let PipeOutcome::Handover {
        down,
        up,
        down_to_upstream: d2u,
        upstream_to_downstream: u2d,
    } = outcome
    else {
        panic!("a bulk flow was not handed over: {outcome:?}");
    };
    assert!(
        d2u > 0 && d2u < len,
        "not mid-stream client -> upstream: {d2u}"
    );
    assert!(
        u2d > 0 && u2d < len,
        "not mid-stream upstream -> client: {u2d}"
    );
    assert_eq!(
        splicer.stats().in_use,
        0,
        "pipes still held after the handover"
    );
    let (mut dr, mut dw) = down.into_split();
    let (mut ur, mut uw) = up.into_split();
    let rest_up = tokio::spawn(async move {
        let n = tokio::io::copy(&mut dr, &mut uw).await.unwrap();
        uw.shutdown().await.unwrap();
        n
    });
    let rest_down = tokio::spawn(async move {
        let n = tokio::io::copy(&mut ur, &mut dw).await.unwrap();
        dw.shutdown().await.unwrap();
        n
    });
    for p in peers {
        p.await.unwrap();
    }
    let mut got = Vec::new();
    for c in checkers {
        got.push(c.await.unwrap());
    }
    assert_eq!((got[0], got[1]), (len, len), "lengths at the peers");
    assert_eq!(d2u + rest_up.await.unwrap(), len);
    assert_eq!(u2d + rest_down.await.unwrap(), len);
    eprintln!("handover after {d2u} / {u2d} bytes");
}

#[test]
fn pipe_hands_over_bulk_flow_mid_stream_both_ways() {
    if !privileged("pipe_hands_over_bulk_flow_mid_stream_both_ways") {
        return;
    }
    in_netns_mt("handover", || async {
        for i in 0..4 {
            handover_mid_stream(32 << 20, 10 * i + 1).await;
        }
    });
}

/// Lock-step requests (1 KiB) and responses (4 KiB), 3,000 of them: far more than
/// `min_bytes` each way, but one small message per wake-up: never handed over.
#[test]
fn pipe_never_hands_over_request_response() {
    if !privileged("pipe_never_hands_over_request_response") {
        return;
    }
    in_netns_mt("reqresp", || async {
        const N: usize = 3000;
        let splicer = PipeSplicer::new(PipeConfig::default()).unwrap();
        let policy = OffloadPolicy::default();
        let (mut client, down, up, mut server) = four_sockets().await;
        let flow = tokio::spawn(async move { splicer.splice_until_bulk(down, up, &policy).await });
        let srv = tokio::spawn(async move {
            let mut req = vec![0u8; 1024];
            let resp = vec![5u8; 4096];
            while server.read_exact(&mut req).await.is_ok() {
                server.write_all(&resp).await.unwrap();
            }
            server.shutdown().await.unwrap();
        });
        let req = vec![1u8; 1024];
        let mut resp = vec![0u8; 4096];
        for _ in 0..N {
            client.write_all(&req).await.unwrap();
            timeout(Duration::from_secs(5), client.read_exact(&mut resp))
                .await
                .expect("response timed out")
                .unwrap();
        }
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        srv.await.unwrap();
        match timeout(Duration::from_secs(10), flow)
            .await
            .unwrap()
            .unwrap()
        {
            PipeOutcome::Done(r) => {
                assert_eq!(r.termination, Termination::Closed);
                assert_eq!(r.downstream_to_upstream, (N * 1024) as u64);
                assert_eq!(r.upstream_to_downstream, (N * 4096) as u64);
            }
            h => panic!("a request/response flow was handed over: {h:?}"),
        }
    });
}

#[test]
fn offload_policy_bulk_rule() {
    let p = OffloadPolicy::default();
    assert!(!p.is_bulk(0, 0));
    assert!(!p.is_bulk(p.min_bytes - 1, 1));
    assert!(p.is_bulk(p.min_bytes, 1));
    assert!(p.is_bulk(p.min_bytes, p.min_bytes / p.min_chunk));
    assert!(!p.is_bulk(p.min_bytes, p.min_bytes / p.min_chunk + 1));
    // A long request/response flow: 1 KiB per wake-up, whatever the total.
    assert!(!p.is_bulk(1 << 30, (1 << 30) / 1024));
}

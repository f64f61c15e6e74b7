//! Binding the Gateway ports and accepting connections.
use std::{net::SocketAddr, sync::Arc, sync::atomic::Ordering, time::Duration};

use tokio::net::TcpListener;

use crate::{
    config::ListenerProtocol,
    http, proxy,
    server::{Active, Gateway},
    telemetry::metrics::ListenerStats,
};

/// Binds every port first, so a port that can't be bound fails the start before any
/// traffic is served. Dual stack (no `--bind`): an IPv4 socket on 0.0.0.0 and an
/// IPv6-only one on [::] per port, so IPv4 clients keep arriving on AF_INET sockets
/// (no v4-mapped addresses for the splice, the access log or AuthorizationPolicy); a
/// host without IPv6 keeps the IPv4 socket, with a warning.
///
/// With several workers ([`crate::sys::workers`]) each gets its own socket of every
/// port, bound with `SO_REUSEPORT` (the kernel spreads connections over them by their
/// addresses' hash, as for Envoy's and HAProxy's threads): `out[w]` are worker `w`'s.
/// The sockets are std ones, registered with a runtime by whoever accepts on them
/// ([`crate::runtime::ports::Ports::start`]): `out[port][w]` are worker `w`'s.
pub fn bind_all(
    gw: &Gateway,
    ports: impl IntoIterator<Item = u16>,
    workers: usize,
) -> std::io::Result<Vec<(u16, Vec<Vec<std::net::TcpListener>>)>> {
    let reuse_port = workers > 1;
    let mut out = vec![];
    for port in ports {
        let per_worker = (0..workers.max(1))
            .map(|_| bind_port_std(gw, port, reuse_port))
            .collect::<std::io::Result<Vec<_>>>()?;
        out.push((port, per_worker));
    }
    Ok(out)
}

/// One port on every address the Gateway ports listen on ([`Gateway::listen_addrs`]),
/// as [`bind_all`] binds them: also the status and Prometheus ports (served by the main
/// runtime, so registered with it here).
pub fn bind_port(gw: &Gateway, port: u16) -> std::io::Result<Vec<TcpListener>> {
    bind_port_std(gw, port, false)?
        .into_iter()
        .map(TcpListener::from_std)
        .collect()
}

fn bind_port_std(
    gw: &Gateway,
    port: u16,
    reuse_port: bool,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out = vec![];
    for (i, ip) in gw.listen_addrs().into_iter().enumerate() {
        let addr = SocketAddr::new(ip, port);
        match bind_one(addr, i > 0, reuse_port) {
            Ok(sock) => out.push(sock),
            Err(e) if i > 0 => tracing::warn!("IPv6 not served on port {port}: {e}"),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn bind_one(
    addr: SocketAddr,
    v6_only: bool,
    reuse_port: bool,
) -> std::io::Result<std::net::TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    // The dual-stack [::] socket is IPv6 only (IPv4 has its own socket), whatever
    // net.ipv6.bindv6only says; an explicit `--bind ::` binds as the system does.
    if v6_only {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())
        .map_err(|e| std::io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    sock.listen(4096)?;
    Ok(sock.into())
}

/// Accepts until the port's drain starts (SIGTERM, or a reload removing the port;
/// then the listening socket is closed, so a new connect is refused); each connection
/// is served on its own task, by the Plan serving when it was accepted.
/// `worker` is the accepting worker's index ([`crate::sys::workers`]).
pub async fn accept_loop(
    gw: Arc<Gateway>,
    port: u16,
    sock: TcpListener,
    worker: usize,
    drain: Arc<crate::sys::drain::Drain>,
) {
    let mut errors = ErrorLog::default();
    loop {
        let accepted = tokio::select! {
            biased;
            () = drain.draining() => {
                tracing::debug!(port, "listener closed: draining");
                return;
            }
            a = sock.accept() => a,
        };
        let (conn, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning; the listener stays,
                // and established connections are untouched.
                if let Some(s) = gw.stats.listener(port) {
                    s.accept_errors.fetch_add(1, Ordering::Relaxed);
                }
                errors.warn(port, &e);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let plan = gw.plan();
        let Some(listener) = plan.listener(port).cloned() else {
            // The port is being removed by a reload: as if it were already closed.
            let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
            continue;
        };
        // AuthorizationPolicy address rules: closed before any byte is read.
        if !plan.authz.allow_accept(peer, port) {
            drop(conn);
            continue;
        }
        let stats = gw.stats.listener(port);
        if over_cap(&gw, stats) {
            // Refused as cheaply as possible: a reset, no task, no byte read.
            if let Some(s) = stats {
                s.overflow.fetch_add(1, Ordering::Relaxed);
            }
            let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
            drop(conn);
            continue;
        }
        gw.stats.worker_accepted(worker);
        let active = Active::enter(&gw, port);
        let gw = gw.clone();
        // One task per connection, spawned per protocol: a task's future is as large as
        // its largest state, so an HTTP connection must not carry the L4 path's.
        match listener.protocol {
            ListenerProtocol::Tcp | ListenerProtocol::Tls => tokio::spawn(async move {
                let _active = active;
                proxy::tcp::serve(gw, plan, listener, conn, peer).await
            }),
            ListenerProtocol::Http | ListenerProtocol::Https => tokio::spawn(async move {
                let _active = active;
                let tls = listener.protocol == ListenerProtocol::Https;
                http::serve(gw, plan, listener, conn, peer, vec![], tls).await
            }),
        };
    }
}

/// Whether a new connection would exceed `--max-connections` or
/// `--listener-max-connections`.
fn over_cap(gw: &Gateway, stats: Option<&ListenerStats>) -> bool {
    let global = gw
        .opts
        .max_connections
        .is_some_and(|max| gw.stats.active_total.load(Ordering::Relaxed) >= max);
    let listener = match (gw.opts.listener_max_connections, stats) {
        (Some(max), Some(s)) => s.active.load(Ordering::Relaxed) >= max,
        _ => false,
    };
    global || listener
}

/// Logs accept() failures at most once a second per listener, with how many were not
/// logged: a flood of EMFILE must not flood the log too.
#[derive(Default)]
pub(crate) struct ErrorLog {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl ErrorLog {
    pub(crate) fn warn(&mut self, port: u16, e: &std::io::Error) {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            port,
            suppressed = self.suppressed,
            "accept failed: {e}; backing off"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: a proxy needs two sockets per L4
/// flow (and a pipe's two fds while a direction is busy), and the usual soft limit of
/// 1,024 caps it at a few hundred flows. Returns (old, new) soft limits.
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into a valid, exclusively borrowed struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let old = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads one valid rlimit; raising the soft limit up to the hard
        // one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((old, lim.rlim_cur))
}

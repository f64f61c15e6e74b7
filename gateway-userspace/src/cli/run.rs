//! `gateway run`: load, compile, bind, start the workers, serve until drained.
use std::{net::IpAddr, sync::Arc};

use anyhow::Context as _;

use crate::{
    admin,
    config::{self},
    kernel::splice::{
        SpliceOptions, Splicer,
        pipe::{OffloadPolicy, PipeConfig},
    },
    listener,
    server::{Gateway, Options},
};

use super::*;

pub(super) fn http_options(args: &RunArgs) -> crate::http::HttpOptions {
    let mut http = crate::http::HttpOptions {
        upgrade_idle_timeout: Some(args.upgrade_idle_timeout).filter(|d| !d.is_zero()),
        internal_addresses: args.internal_addresses.clone(),
        stream_idle_timeout: Some(args.stream_idle_timeout).filter(|d| !d.is_zero()),
        idle_timeout: Some(args.http_idle_timeout).filter(|d| !d.is_zero()),
        http2_keepalive_interval: Some(args.http2_keepalive_interval).filter(|d| !d.is_zero()),
        http2_keepalive_timeout: args.http2_keepalive_timeout,
        ..Default::default()
    };
    for t in &args.upgrade_types {
        if !http.upgrade_types.contains(t) {
            http.upgrade_types.push(t.clone());
        }
    }
    http
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // From here on SIGTERM and SIGINT start the drain instead of killing the process.
    let signals = crate::runtime::shutdown::Signals::install()
        .context("installing SIGTERM/SIGINT handlers")?;
    // Istio's failure isolation: a reference to something missing leaves that server or
    // route inactive, with a warning, and the rest is served.
    let snapshot = args
        .config
        .load_or_exit(config::Missing::Isolate, |w| tracing::warn!("{w}"));
    for s in &snapshot.inactive {
        tracing::warn!(
            "gateway {} server {} (port {}, hosts {}) is inactive: its credential Secret {:?} does not exist",
            s.gateway,
            s.name.clone().unwrap_or_else(|| s.index.to_string()),
            s.port,
            s.hosts.join(","),
            s.credential_name
        );
    }
    // Access logs and metrics; the access logs are compiled with the Plan, below.
    let id = args.config.identity(&snapshot.mesh);
    let telemetry = Arc::new(crate::telemetry::Telemetry::new(
        &id,
        args.access_log_buffer,
    ));
    tracing::info!(
        "request paths normalized as pathNormalization {} (MeshConfig)",
        snapshot.mesh.normalization().name()
    );
    let mesh_dns_refresh_rate = snapshot.mesh.dns_refresh_rate();
    let splice_opts = SpliceOptions {
        pipe: PipeConfig {
            pipe_size: args.splice_pipe_size,
            pool_max: args.splice_pipe_pool,
            idle_timeout: None,
        },
        idle_timeout: Some(args.tcp_idle_timeout).filter(|d| !d.is_zero()),
        budget: args.splice_budget as u64,
        offload: OffloadPolicy {
            min_bytes: args.offload_bytes as u64,
            min_chunk: args.offload_min_chunk as u64,
            retry_bytes: (args.offload_bytes as u64 / 4).max(1),
            own_cpus_only: !args.offload_foreign_cpus,
        },
    };
    let splicer = Splicer::with_options(args.splice, splice_opts).context(
        "the splice could not start (eBPF needs root or CAP_BPF+CAP_NET_ADMIN, and a binary built after `cargo xtask setup`); try --splice splice",
    )?;
    let nofile = match listener::raise_nofile() {
        Ok((old, new)) => {
            if old != new {
                tracing::info!("open-file limit raised from {old} to {new}");
            }
            new
        }
        Err(e) => {
            tracing::warn!("open-file limit unchanged: {e}");
            1024
        }
    };
    let max_connections = match args.max_connections {
        Some(0) => None,
        Some(n) => Some(n),
        None => Some(nofile.saturating_sub(256).max(64) / 3),
    };
    let opts = Options {
        bind: args.bind.unwrap_or(IpAddr::from([0, 0, 0, 0])),
        dual_stack: args.bind.is_none(),
        client_hello_timeout: args.client_hello_timeout,
        connect_timeout: args.connect_timeout,
        max_connections,
        listener_max_connections: args.listener_max_connections.filter(|&n| n > 0),
        http: http_options(&args),
        istio_ports: crate::server::IstioPorts {
            status: args.status_port.0,
            prometheus: args.prometheus_port.0,
        },
    };
    let (plan, access) = crate::runtime::reload::compile_all(snapshot, 1, &telemetry)
        .unwrap_or_else(|errors| exit_config_errors(errors.0));
    telemetry.apply(access, &plan.snapshot);
    let mut gw = Gateway::new(plan, splicer, opts);
    gw.telemetry = telemetry;
    let gw = Arc::new(gw);
    gw.plan().authz.start(&args.xdp_iface);
    let ports: Vec<u16> = gw.plan().ports().collect();
    let workers = args
        .workers
        .map_or_else(crate::sys::workers::default_count, usize::from);
    let listeners = listener::bind_all(&gw, ports.iter().copied(), workers)
        .context("binding the Gateway ports")?;
    let admin = admin::bind(args.admin_addr)
        .await
        .context("binding the admin API")?;
    // Istio's status and Prometheus ports: bound like the Gateway ports, served from
    // now on (/healthz/ready answers 503 until the accept loops run).
    let istio_ports = [
        (
            gw.opts.istio_ports.status,
            admin::IstioPort::Status,
            "--status-port",
        ),
        (
            gw.opts.istio_ports.prometheus,
            admin::IstioPort::Prometheus,
            "--prometheus-port",
        ),
    ];
    for (port, which, flag) in istio_ports {
        let Some(port) = port else { continue };
        let socks = listener::bind_port(&gw, port).with_context(|| {
            format!("binding {which:?} port {port} (move it with {flag} PORT, or {flag} off)")
        })?;
        for sock in socks {
            tokio::spawn(admin::serve_istio_port(gw.clone(), sock, which));
        }
    }
    tokio::spawn(admin::serve(gw.clone(), admin));
    if !args.heap_trim_interval.is_zero() {
        let g = gw.clone();
        tokio::spawn(crate::sys::heap::run(args.heap_trim_interval, move || {
            crate::sys::heap::look(&g.stats.heap);
        }));
    }
    let dns_rate = args
        .dns_refresh_rate
        .or(mesh_dns_refresh_rate)
        .unwrap_or(crate::runtime::dns::DEFAULT_REFRESH_RATE);
    tokio::spawn(crate::runtime::dns::run(gw.clone(), dns_rate));
    let runtimes = crate::sys::workers::start(workers).context("starting the workers")?;
    let per_worker = (0..workers).map(|_| Default::default()).collect();
    let _ = gw.stats.worker_accepted.set(per_worker);
    gw.ports.set_workers(runtimes);
    for (port, socks) in listeners {
        crate::runtime::ports::start(&gw, port, socks)?;
    }
    let reload = crate::runtime::reload::Source {
        config: Arc::new(Files(args.config.clone())),
        drain_duration: args.drain_duration,
        dns_refresh_rate_flag: args.dns_refresh_rate.is_some(),
    };
    tokio::spawn(crate::runtime::reload::run(gw.clone(), reload));
    gw.readiness.set(crate::server::ReadyState::Serving);
    tracing::info!(
        splice = gw.splicer.name(),
        admin = %args.admin_addr,
        ports = ?ports,
        workers,
        status_port = ?gw.opts.istio_ports.status,
        prometheus_port = ?gw.opts.istio_ports.prometheus,
        "gateway ready"
    );
    crate::runtime::shutdown::on_signals(gw.clone(), signals, args.drain_duration).await;
    // Access-log lines of the last connections, before the process exits.
    gw.telemetry.flush(std::time::Duration::from_secs(2));
    tracing::info!("exiting");
    Ok(())
}

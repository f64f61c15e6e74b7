//! TLS origination on `tcp` routes: a DestinationRule `tls` (SIMPLE or MUTUAL) on the
//! cluster a TCP route (or a TLS-terminating server's route) goes to. Envoy gives the
//! cluster an `UpstreamTlsContext` transport socket whatever the filter in front of it,
//! so its tcp_proxy originates TLS too (Istio's pilot/pkg/networking/core/cluster_tls.go
//! builds it per cluster, not per protocol). The rustls client config is the HTTP
//! origination's (http::upstream_tls: SNI, CA, `subjectAltNames`, client certificate,
//! `caCrl`), built once per config; no ALPN is offered on TCP.
//!
//! A handshake that fails (a certificate that does not verify, a wrong name, a revoked
//! certificate) fails closed as Envoy's tcp_proxy does on an upstream connection
//! failure: the client's connection is closed and the access log says `UF` with the
//! reason. The flow is then copied in userspace (proxy::l4_copy).
use std::{sync::atomic::Ordering, time::Duration};

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::tcp::{FlowCtx, Upstream, refused};
use crate::{plan::tcp_tls::Origin, telemetry::ResponseFlag};

/// The TLS handshake with the upstream on `stream`; on a failure writes the `UF`
/// access-log line and returns None (the caller closes the client's connection).
pub(super) async fn originate(
    ctx: &FlowCtx<'_>,
    up: &Upstream,
    origin: &Result<Origin, String>,
    stream: TcpStream,
    timeout: Duration,
) -> Option<TlsStream<TcpStream>> {
    let result = match origin {
        Err(e) => Err(format!("TLS origination cannot be set up: {e}")),
        Ok(o) => {
            let connector = tokio_rustls::TlsConnector::from(o.cfg.clone());
            match tokio::time::timeout(timeout, connector.connect(o.sni.clone(), stream)).await {
                Ok(Ok(tls)) => Ok(tls),
                Ok(Err(e)) => Err(format!("upstream TLS handshake: {e}")),
                Err(_) => Err("upstream TLS handshake timed out".to_string()),
            }
        }
    };
    match result {
        Ok(tls) => Some(tls),
        Err(why) => {
            let gw = ctx.gw;
            gw.stats
                .upstream_connect_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %ctx.peer, port = ctx.port, cluster = %up.cluster, endpoint = %up.endpoint, "closing connection: {why}");
            refused(
                gw,
                ctx.start,
                ctx.peer,
                ctx.local,
                ctx.sni,
                ResponseFlag::UpstreamConnectionFailure,
                Some((&up.cluster, Some(up.endpoint), Some(why))),
            );
            None
        }
    }
}

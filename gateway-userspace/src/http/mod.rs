//! HTTP/1.1 and HTTP/2 virtual hosting (hyper) with TLS termination (rustls): Gateway
//! servers with protocol HTTP/HTTP2/GRPC, and HTTPS servers with SIMPLE/MUTUAL/
//! OPTIONAL_MUTUAL TLS.
use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;

use crate::{
    config::{Listener, Snapshot},
    server::Gateway,
};

/// Everything the HTTP data path needs that is built once per snapshot (route tables,
/// certificate resolvers, upstream pools).
#[derive(Default)]
pub struct HttpState {}

impl HttpState {
    pub fn build(_snapshot: &Snapshot) -> Result<HttpState, String> {
        Ok(HttpState {})
    }
}

/// True when a TLS connection on this listener with this SNI (None: no SNI) is to be
/// terminated here by an HTTPS server, rather than passed through or sent to TCP.
pub fn terminates(_listener: &Listener, _sni: Option<&str>) -> bool {
    false
}

/// Serves one connection on an HTTP port (`tls == false`), or a TLS connection to be
/// terminated (`tls == true`). `prelude` holds bytes already read from the client (the
/// ClientHello on a port shared with TLS passthrough); they come before the socket's.
pub async fn serve(
    _gw: Arc<Gateway>,
    listener: Arc<Listener>,
    _stream: TcpStream,
    peer: SocketAddr,
    _prelude: Vec<u8>,
    tls: bool,
) {
    tracing::warn!(%peer, port = listener.port, tls, "HTTP is not served by this build yet; closing");
}

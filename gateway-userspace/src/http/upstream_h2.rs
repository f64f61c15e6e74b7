//! HTTP/2 to the endpoints of a cluster whose port speaks it (ServiceEntry protocol
//! HTTP2, GRPC, GRPC-WEB): one multiplexed connection per endpoint, h2c with prior
//! knowledge on plain TCP, ALPN `h2` over TLS origination (Envoy's cluster with
//! `http2_protocol_options`). hyper's connection API rather than the pooled client, so
//! that `:authority` is the request's host while the connection goes to the endpoint
//! (Envoy turns `Host` into `:authority`).
use std::{collections::HashMap, net::SocketAddr, sync::Mutex, time::Duration};

use hyper::{Request, Response, body::Incoming, client::conn::http2::SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;

use super::body::Body;

/// Why a request did not get a response: `connect` for a connection (or TLS handshake)
/// that failed, else the stream or connection was reset.
pub struct SendError {
    pub connect: bool,
    pub message: String,
}

pub struct H2Pool {
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    conns: Mutex<HashMap<SocketAddr, SendRequest<Body>>>,
}

impl H2Pool {
    pub fn new(
        connect_timeout: Duration,
        tls: Option<(rustls::ClientConfig, ServerName<'static>)>,
    ) -> H2Pool {
        H2Pool {
            tls: tls.map(|(mut cfg, sni)| {
                cfg.alpn_protocols = vec![b"h2".to_vec()];
                (
                    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)),
                    sni,
                )
            }),
            connect_timeout,
            conns: Mutex::new(HashMap::new()),
        }
    }

    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    pub async fn send(
        &self,
        endpoint: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut sender = self.sender(endpoint).await?;
        sender.send_request(req).await.map_err(|e| SendError {
            connect: false,
            message: super::upstream::error_chain(&e),
        })
    }

    /// The endpoint's open connection, or a new one.
    async fn sender(&self, endpoint: SocketAddr) -> Result<SendRequest<Body>, SendError> {
        if let Some(s) = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&endpoint)
            .filter(|s| !s.is_closed())
        {
            return Ok(s.clone());
        }
        let fail = |message: String| SendError {
            connect: true,
            message,
        };
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(endpoint),
        )
        .await
        .map_err(|_| fail("connect timeout".into()))?
        .map_err(|e| fail(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let sender = match &self.tls {
            None => handshake(TokioIo::new(tcp)).await,
            Some((connector, sni)) => {
                let tls =
                    tokio::time::timeout(self.connect_timeout, connector.connect(sni.clone(), tcp))
                        .await
                        .map_err(|_| fail("TLS handshake timeout".into()))?
                        .map_err(|e| fail(super::upstream::error_chain(&e)))?;
                handshake(TokioIo::new(tls)).await
            }
        }
        .map_err(|e| fail(super::upstream::error_chain(&e)))?;
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(endpoint, sender.clone());
        Ok(sender)
    }
}

async fn handshake<T>(io: T) -> hyper::Result<SendRequest<Body>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(target: "gateway::http", "upstream HTTP/2 connection ended: {e}");
        }
    });
    Ok(sender)
}

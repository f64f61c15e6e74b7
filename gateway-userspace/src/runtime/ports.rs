//! Starting a Gateway port's accept loops, one per worker, on the worker's runtime; the
//! running ports and their drains are [`crate::server::ports::Ports`].
use std::sync::Arc;

use tokio::runtime::Handle;

use crate::server::Gateway;

/// Starts accepting on `port` with one socket per worker (`socks[w]` are worker `w`'s
/// sockets, every address).
pub fn start(
    gw: &Arc<Gateway>,
    port: u16,
    socks: Vec<Vec<std::net::TcpListener>>,
) -> std::io::Result<()> {
    let drain = Arc::new(gw.drain.child());
    let mut loops = vec![];
    for (worker, socks) in socks.into_iter().enumerate() {
        let rt = gw.ports.worker(worker).unwrap_or_else(Handle::current);
        // Registered with the worker's own reactor: its connections are polled there.
        let _in_worker = rt.enter();
        for sock in socks {
            let sock = tokio::net::TcpListener::from_std(sock)?;
            let accept =
                crate::listener::accept_loop(gw.clone(), port, sock, worker, drain.clone());
            loops.push(rt.spawn(accept));
        }
    }
    gw.ports.register(port, drain, loops);
    Ok(())
}

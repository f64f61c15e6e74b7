//! The CLI's side of the admin API: one GET, and Envoy's `/logging` answer.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// GETs `path` from the admin API (HTTP/1.0: the server closes when done).
pub fn fetch(admin: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(5))
        .map_err(|e| format!("cannot reach the gateway's admin API at {admin}: {e} (is `gateway run` up? see --admin-addr)"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {admin}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("reading from {admin}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{admin}: not an HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!(
            "{admin}{path}: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    Ok(body.to_string())
}

/// Envoy's `/logging` answer for this process: `active loggers:` then one
/// `  <logger>: <level>` line per RUST_LOG directive (`default` for the bare level;
/// Envoy's level names, `warn` is `warning`). As main.rs reads it: unset or invalid
/// RUST_LOG is `info`.
pub fn active_loggers() -> String {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| tracing_subscriber::EnvFilter::try_new(v).is_ok() && !v.trim().is_empty())
        .unwrap_or_else(|| "info".into());
    let mut out = String::from("active loggers:\n");
    for d in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (logger, level) = d.rsplit_once('=').unwrap_or(("default", d));
        let level = match level.to_ascii_lowercase().as_str() {
            "warn" => "warning".to_string(),
            l => l.to_string(),
        };
        out += &format!("  {logger}: {level}\n");
    }
    out
}

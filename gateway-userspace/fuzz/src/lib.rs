//! Helpers the fuzz targets share.

pub mod xdp_model;
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arbitrary::{Result, Unstructured};
use gateway::{
    kernel::splice::Termination,
    telemetry::{AccessRecord, ResponseFlag},
};

/// Splits an input at its first NUL byte: the text before it (lossy UTF-8) and the bytes
/// after it, which drive [`arbitrary`]. A seed without NUL is all text.
pub fn text_and_rest(data: &[u8]) -> (String, &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (
            String::from_utf8_lossy(&data[..i]).into_owned(),
            &data[i + 1..],
        ),
        None => (String::from_utf8_lossy(data).into_owned(), &[]),
    }
}

/// Any access-log record, including the odd ones the data path could produce: times
/// before 1970 or after 9999, empty and non-ASCII strings, IPv6 and IPv4 addresses,
/// HTTP requests and L4 flows.
pub fn record(u: &mut Unstructured<'_>) -> Result<AccessRecord> {
    let mut r = AccessRecord::new(time(u)?, addr(u)?);
    r.method = u.arbitrary()?;
    r.path = u.arbitrary()?;
    r.protocol = *u.choose(&[None, Some("HTTP/1.1"), Some("HTTP/2")])?;
    r.status = u.arbitrary()?;
    for f in ResponseFlag::ALL {
        if u.arbitrary()? {
            r.response_flags.insert(f);
        }
    }
    r.details = *u.choose(&["", "route_not_found", "upstream_reset_before_response_started{overflow}"])?;
    r.termination = match u.int_in_range(0..=7)? {
        0 => Some(Termination::Closed),
        1 => Some(Termination::DownstreamReset),
        2 => Some(Termination::UpstreamReset),
        3 => Some(Termination::Error(u.arbitrary()?)),
        4 => Some(Termination::IdleTimeout),
        5 => Some(Termination::DrainTimeout),
        6 => Some(Termination::MaxDuration),
        _ => None,
    };
    r.failure = u.arbitrary()?;
    r.bytes_received = u.arbitrary()?;
    r.bytes_sent = u.arbitrary()?;
    r.duration = Duration::from_millis(u.arbitrary()?);
    r.upstream_service_time = u.arbitrary::<Option<u64>>()?.map(Duration::from_millis);
    r.x_forwarded_for = u.arbitrary()?;
    r.user_agent = u.arbitrary()?;
    r.request_id = u.arbitrary()?;
    r.authority = u.arbitrary()?;
    r.upstream_host = opt_addr(u)?;
    r.upstream_cluster = u.arbitrary()?;
    r.upstream_local = opt_addr(u)?;
    r.downstream_local = opt_addr(u)?;
    r.grpc_status = u.arbitrary()?;
    r.sni = u.arbitrary()?;
    r.route_name = u.arbitrary()?;
    Ok(r)
}

fn time(u: &mut Unstructured<'_>) -> Result<SystemTime> {
    let d = Duration::new(u.arbitrary()?, u.int_in_range(0..=999_999_999)?);
    let t = if u.arbitrary()? {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    };
    Ok(t.unwrap_or(UNIX_EPOCH))
}

fn addr(u: &mut Unstructured<'_>) -> Result<SocketAddr> {
    let ip = if u.arbitrary()? {
        IpAddr::V6(Ipv6Addr::from(u.arbitrary::<u128>()?))
    } else {
        IpAddr::V4(Ipv4Addr::from(u.arbitrary::<u32>()?))
    };
    Ok(SocketAddr::new(ip, u.arbitrary()?))
}

fn opt_addr(u: &mut Unstructured<'_>) -> Result<Option<SocketAddr>> {
    Ok(if u.arbitrary()? { Some(addr(u)?) } else { None })
}

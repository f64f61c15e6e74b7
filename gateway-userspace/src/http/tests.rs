use super::*;
use crate::authz::Cidr;
use std::net::IpAddr;

#[test]
fn internal_requests_need_an_internal_peer_and_no_xff() {
    let none = HttpOptions::default();
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    assert!(
        !none.is_internal(lo, false),
        "no internal addresses by default"
    );
    let opts = HttpOptions {
        internal_addresses: vec![Cidr::parse("127.0.0.0/8").unwrap()],
        ..HttpOptions::default()
    };
    assert!(opts.is_internal(lo, false));
    assert!(opts.is_internal("::ffff:127.0.0.9".parse().unwrap(), false));
    assert!(!opts.is_internal(lo, true));
    assert!(!opts.is_internal("10.0.0.1".parse().unwrap(), false));
}

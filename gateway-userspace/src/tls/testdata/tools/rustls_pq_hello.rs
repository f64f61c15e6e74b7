//! Throwaway generator for src/tls/testdata/rustls_x25519mlkem768.bin (not part of the crate).
//! Build it as its own crate (`[workspace]` table, edition 2024) with:
//!   rustls = { version = "0.23", default-features = false, features = ["aws_lc_rs", "std", "tls12"] }
//! Run: `cargo run --release -- OUT.bin`
use std::sync::Arc;
fn main() {
    let out = std::env::args().nth(1).expect("out path");
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    use rustls::crypto::aws_lc_rs::kx_group;
    provider.kx_groups = vec![kx_group::X25519MLKEM768, kx_group::X25519, kx_group::SECP256R1];
    eprintln!("kx groups: {:?}", provider.kx_groups.iter().map(|g| g.name()).collect::<Vec<_>>());
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions().unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = "simple-sni-1.istioinaction.io".try_into().unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut buf = Vec::new();
    while conn.wants_write() { conn.write_tls(&mut buf).unwrap(); }
    std::fs::write(&out, &buf).unwrap();
    eprintln!("{} bytes", buf.len());
}

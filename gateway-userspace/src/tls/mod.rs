pub mod sni;

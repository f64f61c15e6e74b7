pub mod routes;
pub mod sni;

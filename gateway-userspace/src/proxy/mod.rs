//! Per-connection proxying once a listener accepted a connection.
pub mod l4_copy;
pub mod tcp;
pub mod tls_origin;
pub mod tls_terminate;

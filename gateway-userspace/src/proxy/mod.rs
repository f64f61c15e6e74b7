//! Per-connection proxying once a listener accepted a connection.
pub mod tcp;
pub mod tls_terminate;

//! The `gateway` library: everything the binary does, so tests can drive it.
//!
//! Control plane: [`config`] parses and validates the Istio resources into one
//! immutable [`config::Snapshot`]. Data plane: [`listener`] accepts, [`proxy`] routes,
//! [`kernel::splice`] moves L4 payload (in the kernel when it can); [`authz`] decides
//! what may enter, and [`xdp`] drops denied sources before the TCP stack; [`lb`] picks
//! each request's endpoint. [`admin`] and [`telemetry`]
//! show what it is doing.
pub mod admin;
pub mod authz;
pub mod cli;
pub mod config;
pub mod http;
pub mod kernel;
pub mod lb;
pub mod listener;
pub mod plan;
pub mod proxy;
pub mod proxyconfig;
pub mod runtime;
pub mod server;
pub mod sys;
pub mod telemetry;
pub mod tls;
pub mod xdp;

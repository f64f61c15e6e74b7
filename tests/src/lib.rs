//! Support for the gateway's integration tests: network namespaces, a gateway process,
//! demo backends and real clients.
pub mod backends;
pub mod data;
pub mod gateway;
pub mod netns;
pub mod scale;
pub mod scalebench;
pub mod stream;
pub mod upgrade_probe;
pub mod xdpbench;

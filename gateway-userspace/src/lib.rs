//! The `gateway` library: everything the binary does, so tests can drive it.
pub mod splice;

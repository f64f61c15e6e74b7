//! What the gateway counts and logs.
pub mod metrics;

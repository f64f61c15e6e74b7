//! What runs a gateway over time (see DESIGN.md, "Architecture"): binding and removing
//! ports ([`ports`]), reloading the config ([`reload`]) and re-resolving DNS clusters
//! ([`dns`]). The top of the data path's layers: it may use everything below it, and
//! nothing below uses it.
pub mod dns;
pub mod ports;
pub mod reload;
pub mod shutdown;

//! Process-wide services of a running gateway (see DESIGN.md, "Architecture": the
//! runtime owns what lives as long as the process does).
pub mod dns;
pub mod drain;
pub mod heap;
pub mod ports;
pub mod reload;
pub mod workers;

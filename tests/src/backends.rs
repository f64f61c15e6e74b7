//! Demo backends (owned by the backends work).

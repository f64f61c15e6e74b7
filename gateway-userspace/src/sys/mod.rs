//! Process-wide primitives below everything that serves: the drain signal every
//! connection watches ([`drain`]), the heap trimmer ([`heap`]) and the worker threads'
//! identities ([`workers`]), and the Prometheus text format ([`prom`]). Nothing here
//! knows about config, the Plan or the data path.
pub mod drain;
pub mod heap;
pub mod prom;
pub mod workers;

//! What the gateway asks of the kernel: moving L4 payload between sockets (`splice`:
//! the eBPF sockhash splice, and the userspace splice(2) / io_uring copies it falls back
//! to or starts flows on). The XDP guard joins this room when the object is loaded once
//! for both (DESIGN.md, "Architecture").
pub mod btf;
pub mod splice;

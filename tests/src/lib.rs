//! Support for the gateway's integration tests: network namespaces, a gateway process,
//! demo backends and real clients.
pub mod backends;
pub mod data;
pub mod gateway;
pub mod netns;
pub mod recorder;
pub mod scale;
pub mod scalebench;
pub mod stream;
pub mod upgrade_probe;
pub mod xdpbench;

/// Raises this process's soft open-file limit to the hard one and returns it: tests and
/// the soak hold both ends of every connection (client and backend), and a gateway they
/// start inherits the hard limit and raises its own soft limit to it, as the tested
/// gateway does. Raising the hard limit itself needs CAP_SYS_RESOURCE.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this process with a valid, exclusively borrowed
    // struct; raising the soft limit up to the hard one needs no privilege.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    lim.rlim_max
}

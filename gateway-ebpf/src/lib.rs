#![no_std]
// Exists so gateway-userspace can list this package as a build-dependency, which makes
// cargo re-run its build.rs (and so aya-build) whenever the kernel programs change.

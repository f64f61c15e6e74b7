//! Builds the kernel programs (gateway-ebpf) with aya-build and embeds the object.
//!
//! Needs the eBPF toolchain that `cargo xtask setup` installs (rust-src for build-std,
//! bpf-linker). Without it a plain `cargo build` still succeeds: an empty object is
//! embedded and `gateway run` falls back to the userspace splice, saying why — unless
//! GATEWAY_REQUIRE_EBPF=1 (set by xtask), which turns a missing toolchain into an error.
use std::{env, path::PathBuf, process::Command};

fn toolchain_ready() -> Result<(), String> {
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !matches!(linker, Ok(ref o) if o.status.success()) {
        return Err("bpf-linker not found on PATH".into());
    }
    let sysroot = Command::new(env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("rustc --print sysroot: {e}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let core = sysroot.join("lib/rustlib/src/rust/library/core/src/lib.rs");
    if !core.exists() {
        return Err(format!("rust-src missing ({} not found)", core.display()));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=GATEWAY_REQUIRE_EBPF");
    println!("cargo:rerun-if-env-changed=GATEWAY_EBPF_TOOLCHAIN");
    println!("cargo:rustc-check-cfg=cfg(gateway_no_ebpf)");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    if let Err(why) = toolchain_ready() {
        if env::var("GATEWAY_REQUIRE_EBPF").as_deref() == Ok("1") {
            anyhow::bail!("eBPF toolchain missing: {why}; run `cargo xtask setup`");
        }
        println!(
            "cargo:warning=building without kernel programs ({why}); run `cargo xtask setup` for the eBPF splice"
        );
        std::fs::write(out.join("gateway"), b"")?;
        println!("cargo:rustc-cfg=gateway_no_ebpf");
        return Ok(());
    }
    // The eBPF crate needs `-Z build-std=core` (no prebuilt core for bpfel-unknown-none).
    // aya-build passes it when RUSTC_BOOTSTRAP=1 is in the nested cargo's environment.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    let toolchain = env::var("GATEWAY_EBPF_TOOLCHAIN").unwrap_or_else(|_| "stable".into());
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}

#!/usr/bin/env bash
# The Rust eBPF (aya) toolchain for Debian bookworm with rustup's stable toolchain and
# no internet except package registries (crates.io, Debian's mirror). Run by
# `cargo xtask setup`; can be run by hand (as root) too.
#
#   1. rust-src for the exact rustc version, taken from Debian's rust-src .deb
#      (trixie/trixie-backports/sid), unpacked with dpkg-deb -x under a private apt
#      state (the system's apt configuration is untouched), never apt-installed;
#      linked into <sysroot>/lib/rustlib/src/rust so `-Z build-std=core` works.
#   2. bpf-linker from crates.io, linked dynamically against an LLVM of the same
#      major version as rustc's: rustc's own libLLVM (default, LLVM_SOURCE=rustc)
#      or Debian bookworm's libllvmNN (LLVM_SOURCE=debian).
#   3. A self-test that compiles and links a dependency-free XDP program.
#
# Idempotent. Re-run after any rustup toolchain change (the rust-src symlink lives in
# the toolchain's sysroot, and bpf-linker links rustc's libLLVM by path).
# Options (env): TOOLCHAIN (default: $GATEWAY_EBPF_TOOLCHAIN or stable),
# BPF_LINKER_VERSION=0.13.0, LLVM_SOURCE=rustc|debian, PREFIX=/opt/ebpf-toolchain,
# DEBIAN_MIRROR=http://deb.debian.org/debian, SKIP_SELFTEST=1.
set -euo pipefail

TOOLCHAIN=${TOOLCHAIN:-${GATEWAY_EBPF_TOOLCHAIN:-stable}}
BPF_LINKER_VERSION=${BPF_LINKER_VERSION:-0.13.0}
LLVM_SOURCE=${LLVM_SOURCE:-rustc}          # rustc | debian
PREFIX=${PREFIX:-/opt/ebpf-toolchain}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
export DEBIAN_FRONTEND=noninteractive

step() { printf '    -- %s\n' "$*"; }
tstep=$(date +%s)
lap() { local n; n=$(date +%s); printf '       (%ss)\n' $((n - tstep)); tstep=$n; }

[ "$(id -u)" = 0 ] || { echo "ebpf-toolchain.sh: must run as root (writes $PREFIX, /usr/local/bin)" >&2; exit 1; }
command -v rustup >/dev/null || { echo "ebpf-toolchain.sh: rustup not found (the toolchain is expected from rustup)" >&2; exit 1; }

SYSROOT=$(rustc +"$TOOLCHAIN" --print sysroot)
VV=$(rustc +"$TOOLCHAIN" -vV)
RUST_VERSION=$(sed -n 's/^release: //p' <<<"$VV")          # e.g. 1.95.0
LLVM_VERSION=$(sed -n 's/^LLVM version: //p' <<<"$VV")     # e.g. 22.1.2
LLVM_MAJOR=${LLVM_VERSION%%.*}
echo "    toolchain=$TOOLCHAIN rustc=$RUST_VERSION llvm=$LLVM_VERSION sysroot=$SYSROOT"
case "$RUST_VERSION" in *-nightly|*-beta*)
  echo "    warning: Debian only ships rust-src for stable releases; $RUST_VERSION will not match" >&2;;
esac
mkdir -p "$PREFIX"

# ---------------------------------------------------------------------------
step "rust-src $RUST_VERSION (Debian .deb, unpacked)"
SRC_DIR=$PREFIX/rust-src-$RUST_VERSION
if [ -f "$SRC_DIR/library/core/src/lib.rs" ]; then
  echo "    already unpacked in $SRC_DIR"
else
  STATE=$PREFIX/apt                      # private apt state: system config untouched
  mkdir -p "$STATE/lists/partial" "$STATE/cache/archives/partial"
  cat >"$STATE/debian.sources" <<SRC
Types: deb
URIs: $DEBIAN_MIRROR
Suites: trixie trixie-backports sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  APT_OPTS=(-o "Dir::Etc::sourcelist=$STATE/debian.sources" -o Dir::Etc::sourceparts=/dev/null
            -o "Dir::State::Lists=$STATE/lists" -o "Dir::Cache=$STATE/cache"
            -o APT::Sandbox::User=root -o Acquire::Languages=none)
  apt-get "${APT_OPTS[@]}" -qq update
  PKGVER=$(apt-cache "${APT_OPTS[@]}" madison rust-src |
           awk -F' *[|] *' -v rv="$RUST_VERSION" 'index($2, rv "+dfsg") == 1 {print $2; exit}')
  if [ -z "$PKGVER" ]; then
    echo "no Debian rust-src matches rustc $RUST_VERSION; available:" >&2
    apt-cache "${APT_OPTS[@]}" madison rust-src >&2
    exit 1
  fi
  echo "    using Debian rust-src=$PKGVER"
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  (cd "$TMP" && apt-get "${APT_OPTS[@]}" -qq download "rust-src=$PKGVER")
  dpkg-deb -x "$TMP"/rust-src_*.deb "$TMP/x"
  # Only library/ is needed (core, alloc, std, compiler-builtins, library/Cargo.lock).
  rm -rf "$SRC_DIR.tmp" && mkdir -p "$SRC_DIR.tmp"
  mv "$TMP/x/usr/src/rustc-$RUST_VERSION/library" "$SRC_DIR.tmp/"
  rm -rf "$SRC_DIR" && mv "$SRC_DIR.tmp" "$SRC_DIR"
  echo "    unpacked into $SRC_DIR"
fi
mkdir -p "$SYSROOT/lib/rustlib/src"
if [ -e "$SYSROOT/lib/rustlib/src/rust" ] && [ ! -L "$SYSROOT/lib/rustlib/src/rust" ]; then
  echo "    keeping existing (rustup-installed?) $SYSROOT/lib/rustlib/src/rust"
else
  ln -sfn "$SRC_DIR" "$SYSROOT/lib/rustlib/src/rust"
  echo "    linked $SYSROOT/lib/rustlib/src/rust -> $SRC_DIR"
fi
lap

# ---------------------------------------------------------------------------
step "bpf-linker $BPF_LINKER_VERSION against LLVM $LLVM_MAJOR ($LLVM_SOURCE)"
LLVM_DIR=$PREFIX/llvm-$LLVM_SOURCE     # fake LLVM prefix: lib/libLLVM.so is all build.rs needs
BIN=$PREFIX/bpf-linker/bin/bpf-linker
if "$BIN" --version 2>/dev/null | grep -qx "bpf-linker $BPF_LINKER_VERSION"; then
  echo "    already installed: $BIN"
else
  rm -rf "$LLVM_DIR" && mkdir -p "$LLVM_DIR/lib"
  case "$LLVM_SOURCE" in
    rustc)
      # <sysroot>/lib/libLLVM.so.22.1-rust-1.95.0-stable (the -22-rust-*.so next to it is a
      # linker script). Link it under its SONAME too, so the binary's RUNPATH finds it.
      SO=$(cd "$SYSROOT/lib" && ls libLLVM.so.*-rust-* | head -n1)
      ln -s "$SYSROOT/lib/$SO" "$LLVM_DIR/lib/$SO"
      ln -s "$SYSROOT/lib/$SO" "$LLVM_DIR/lib/libLLVM.so";;
    debian)
      apt-get -qq update
      apt-get install -y -qq --no-install-recommends "libllvm$LLVM_MAJOR"
      ln -s "/usr/lib/x86_64-linux-gnu/libLLVM.so.$LLVM_MAJOR.1" "$LLVM_DIR/lib/libLLVM.so";;
    *) echo "LLVM_SOURCE must be rustc or debian" >&2; exit 1;;
  esac
  LLVM_PREFIX=$LLVM_DIR cargo +"$TOOLCHAIN" install "bpf-linker@$BPF_LINKER_VERSION" --locked \
    --no-default-features --features "llvm-$LLVM_MAJOR" --root "$PREFIX/bpf-linker"
fi
ln -sfn "$BIN" /usr/local/bin/bpf-linker
echo "    $(bpf-linker --version) at /usr/local/bin/bpf-linker -> $BIN"
lap

# ---------------------------------------------------------------------------
if [ "${SKIP_SELFTEST:-}" = 1 ]; then exit 0; fi
step "self-test: build-std=core + bpf-linker link of a tiny XDP program"
ST=$PREFIX/selftest
mkdir -p "$ST/src"
cat >"$ST/Cargo.toml" <<'TOML'
[package]
name = "ebpf-selftest"
version = "0.1.0"
edition = "2024"
[profile.release]
panic = "abort"
[profile.dev]
panic = "abort"
[workspace]
TOML
cat >"$ST/src/main.rs" <<'RS'
#![no_std]
#![no_main]
#[unsafe(no_mangle)]
#[unsafe(link_section = "xdp")]
pub extern "C" fn pass_all(_ctx: *mut u8) -> u32 { 2 /* XDP_PASS */ }
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! { loop {} }
RS
# Build outside any caller's target dir / cargo config (we may run under `cargo run`).
(cd "$ST" && env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET RUSTC_BOOTSTRAP=1 \
   cargo +"$TOOLCHAIN" build -q --release --target bpfel-unknown-none -Z build-std=core)
OBJ=$ST/target/bpfel-unknown-none/release/ebpf-selftest
readelf -SW "$OBJ" | grep -q ' xdp ' || { echo "self-test: no xdp section in $OBJ" >&2; exit 1; }
echo "    self-test OK: $(readelf -h "$OBJ" | sed -n 's/^ *Machine: *//p') object with an xdp section"
lap

//! How the static x86_64 device loader is linked (`--target
//! x86_64-unknown-linux-musl`): with LLD, the code a one-shot run executes
//! placed first.
//!
//! A one-shot `limes run` pays a page fault for every 64 KiB window of the
//! executable it touches, and the code it runs (about 1,300 functions, from
//! clap, serde, ed25519, Wasmtime's loader) lies scattered over 10 MiB of
//! text. `link/hot-symbols-x86_64-musl.txt`, written by
//! `scripts/hot-symbols.sh` from callgrind runs of the release loader, lists
//! those functions; LLD's `--symbol-ordering-file` lays them out first.
//! Measured (docs/results.md, #27): `limes run noop` 231 page faults with
//! GNU ld, 201 with LLD, 163 with LLD and the ordering; p50 1.20, 1.09 and
//! 1.01 ms in one 1,000-round comparison.
//!
//! The LLD is the toolchain's own (`rust-lld`, driven through the compiler
//! driver by the `gcc-ld` shim that rustc itself uses), so nothing is
//! installed for it. Names the list has and the binary lacks (another
//! profile or a dependency bump changes the hashes in symbol names) are
//! skipped without a warning: the link never fails because of the list,
//! and `scripts/hot-symbols.sh --check` (run by scripts/bench.sh) says when
//! it went stale. Other targets link as before: the aarch64 loader's gain
//! could not be measured here (qemu-user), and the list's names are
//! specific to one target.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let list = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("link/hot-symbols-x86_64-musl.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    if std::env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-musl") {
        return;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let host = std::env::var("HOST").expect("cargo sets HOST");
    let sysroot = std::process::Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let Some(gcc_ld) = sysroot.map(|s| s.join("lib/rustlib").join(&host).join("bin/gcc-ld")).filter(|d| d.join("ld.lld").is_file()) else {
        // A toolchain without rust-lld: link with the system linker, as
        // before (slower start-up, same program).
        println!("cargo:warning=no rust-lld in the toolchain: the device loader links with the system linker");
        return;
    };
    for arg in [
        format!("-B{}", gcc_ld.display()),
        "-fuse-ld=lld".into(),
        format!("-Wl,--symbol-ordering-file={}", list.display()),
        "-Wl,--no-warn-symbol-ordering".into(),
    ] {
        println!("cargo:rustc-link-arg-bin=limes={arg}");
    }
}

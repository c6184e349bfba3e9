//! `limes-pack doctor`: what a build needs from the machine, in one list,
//! checked. The same list names the fix for each item, and the missing-
//! toolchain errors of the build say the same things.

use std::path::Path;

/// One prerequisite, checked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: String,
    /// What needs it.
    pub needed_for: &'static str,
    /// Needed by the default `limes-pack build` (else by an option only).
    pub required: bool,
    pub ok: bool,
    /// The command that installs it.
    pub fix: String,
}

/// Rust targets every build, or an option, compiles for.
const TARGETS: &[(&str, &str, bool)] = &[
    ("wasm32-wasip2", "every build (the component)", true),
    ("x86_64-unknown-none", "the default microVM image (limes' Hermit boot loader)", true),
    ("x86_64-unknown-linux-musl", "--image linux, and the static device build of `limes`", false),
];

pub(crate) fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// Check everything, in the order a user would install it.
pub fn checks(cwd: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    for (t, needed_for, required) in TARGETS {
        out.push(Check {
            name: format!("Rust target {t}"),
            needed_for,
            required: *required,
            ok: crate::compile::ensure_target_installed(t, cwd).is_ok(),
            fix: format!("rustup target add {t}"),
        });
    }
    out.push(Check {
        name: format!("Hermit toolchain {} with rust-src and llvm-tools", crate::hermit::TOOLCHAIN),
        needed_for: "the default microVM image (the Hermit unikernel); --no-microvm or --image linux build without it",
        required: true,
        ok: crate::hermit::Toolchain::find().is_ok(),
        fix: crate::hermit::INSTALL.to_string(),
    });
    for (cmd, pkg, needed_for) in [
        ("musl-gcc", "musl-tools", "--image linux and the static device build (their C dependencies)"),
        ("qemu-system-x86_64", "qemu-system-x86", "booting microVM images on this machine (limes run --backend microvm)"),
        ("minisign", "minisign", "checking bundle signatures with the stock tool (optional)"),
    ] {
        out.push(Check { name: cmd.to_string(), needed_for, required: false, ok: on_path(cmd), fix: format!("sudo apt-get install {pkg}") });
    }
    out
}

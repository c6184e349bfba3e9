//! The microVM image of a function: its static native build as `/init` in a
//! newc initramfs, and a Firecracker config. The image answers exactly like
//! the component (same source, same frame protocol) over the serial console.

use crate::compile::{self, CargoOptions, CompileError};
use crate::project::Project;
use std::path::PathBuf;

/// Static target of the native build (static-pie by default on musl).
pub const MICROVM_TARGET: &str = "x86_64-unknown-linux-musl";
use limes_bundle::manifest::{INITRD_PATH, KERNEL_PATH};
/// Kernel command line: serial console, quiet, reboot ends the VM, and an
/// early TSC frequency so boots under `-M microvm` do not hang calibrating.
pub const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=-1 pci=off quiet loglevel=1 tsc_early_khz=2000000";

#[derive(Debug, thiserror::Error)]
pub enum MicroVmError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("{path}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Image {
    pub executable: PathBuf,
    pub initrd: Vec<u8>,
    pub firecracker_config: Vec<u8>,
    pub vcpus: u32,
    pub memory_mib: u32,
}

/// One newc entry.
struct Entry<'a> {
    name: &'a str,
    mode: u32,
    rdev: (u32, u32),
    data: &'a [u8],
}

/// One archive entry: path, mode, device numbers (major, minor), contents.
pub type CpioEntry<'a> = (&'a str, u32, (u32, u32), &'a [u8]);

/// Write a newc ("070701") cpio archive with fixed owners, times and inode
/// numbers, so the same inputs always give the same bytes.
pub fn newc(entries: &[CpioEntry<'_>], mtime: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut put = |e: &Entry<'_>, ino: u32| {
        let name_len = e.name.len() + 1;
        let header = format!(
            "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}{dmaj:08X}{dmin:08X}{rmaj:08X}{rmin:08X}{nl:08X}{chk:08X}",
            mode = e.mode,
            uid = 0,
            gid = 0,
            nlink = if e.mode & 0o170000 == 0o040000 { 2 } else { 1 },
            mtime = mtime as u32,
            size = e.data.len(),
            dmaj = 0,
            dmin = 0,
            rmaj = e.rdev.0,
            rmin = e.rdev.1,
            nl = name_len,
            chk = 0,
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(e.name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(e.data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    for (ino, (name, mode, rdev, data)) in (1..).zip(entries) {
        put(&Entry { name, mode: *mode, rdev: *rdev, data }, ino);
    }
    put(&Entry { name: "TRAILER!!!", mode: 0, rdev: (0, 0), data: &[] }, 0);
    out
}

/// The initramfs: `/init` plus the few nodes PID 1 needs.
pub fn initrd(init: &[u8], mtime: u64) -> Vec<u8> {
    const DIR: u32 = 0o040755;
    const CHR: u32 = 0o020600;
    newc(
        &[
            ("dev", DIR, (0, 0), b""),
            ("dev/console", CHR, (5, 1), b""),
            ("dev/ttyS0", CHR, (4, 64), b""),
            ("dev/null", 0o020666, (1, 3), b""),
            ("init", 0o100755, (0, 0), init),
            ("proc", DIR, (0, 0), b""),
            ("sys", DIR, (0, 0), b""),
            ("tmp", 0o041777, (0, 0), b""),
        ],
        mtime,
    )
}

/// Firecracker `--config-file` JSON. Paths are relative to the unpacked
/// bundle; the kernel is a device-side setting unless one is embedded.
pub fn firecracker_config(vcpus: u32, memory_mib: u32, kernel_embedded: bool) -> Vec<u8> {
    let kernel = if kernel_embedded { KERNEL_PATH } else { "@DEVICE_KERNEL@" };
    config_json(kernel, INITRD_PATH, BOOT_ARGS, vcpus, memory_mib)
}

/// The Firecracker config of any image kind.
pub(crate) fn config_json(kernel: &str, initrd: &str, boot_args: &str, vcpus: u32, memory_mib: u32) -> Vec<u8> {
    let v = serde_json::json!({
        "boot-source": {
            "kernel_image_path": kernel,
            "initrd_path": initrd,
            "boot_args": boot_args,
        },
        "drives": [],
        "machine-config": {
            "vcpu_count": vcpus,
            "mem_size_mib": memory_mib,
            "smt": false,
        },
    });
    let mut out = serde_json::to_vec_pretty(&v).expect("config serializes");
    out.push(b'\n');
    out
}

/// Build the function statically for the microVM and pack its image.
pub fn build_image(project: &Project, cargo: &CargoOptions, mtime: u64, kernel_embedded: bool) -> Result<Image, MicroVmError> {
    let exe = compile::build_native(project, Some(MICROVM_TARGET), cargo)?;
    let init = std::fs::read(&exe).map_err(|source| MicroVmError::Io { path: exe.clone(), source })?;
    let vcpus = project.meta.microvm.as_ref().and_then(|m| m.vcpus).unwrap_or(1);
    // Room for the unpacked initramfs, the function's memory limit, and the kernel.
    let default_mem = ((project.limits().memory_bytes >> 20) as u32 + 64).max(128);
    let memory_mib = project.meta.microvm.as_ref().and_then(|m| m.memory_mib).unwrap_or(default_mem);
    Ok(Image { initrd: initrd(&init, mtime), firecracker_config: firecracker_config(vcpus, memory_mib, kernel_embedded), executable: exe, vcpus, memory_mib })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let a = initrd(b"\x7fELF", 0);
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
        assert_eq!(a, initrd(b"\x7fELF", 0), "deterministic");
        assert_ne!(a, initrd(b"\x7fELF", 1));
        // dev/console is a character device 5:1.
        let i = a.windows(12).position(|w| w == b"dev/console\0").unwrap();
        let h = &a[i - 110..i];
        assert_eq!(&h[14..22], b"00002180"); // mode 020600
        assert_eq!(&h[78..86], b"00000005");
        assert_eq!(&h[86..94], b"00000001");
    }
}

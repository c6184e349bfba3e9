//! Removing a directory tree that someone else may change while it goes:
//! a staged bundle in the store's `tmp/`, which the store's writer can
//! reach. One remover for the store and the watchdog, so both keep the
//! same rule: nothing is followed.
//!
//! Every step works on directory descriptors, never on paths: a directory
//! is opened from its parent's descriptor with `O_NOFOLLOW`, made writable
//! with `fchmod` (bundles are staged read-only), listed with `getdents64`
//! and emptied with `unlinkat`. An entry swapped for a symlink while the
//! tree goes is unlinked itself; what it points at is never opened,
//! `chmod`ed or removed. (A path-based walk, `lstat` then `opendir` then
//! `unlink("dir/file")`, follows a directory that became a symlink between
//! those calls.)
//!
//! Only raw system calls, no allocation and a fixed stack buffer per level:
//! the watchdog's `SIGALRM` handler runs this while the interrupted code may
//! hold the allocator's lock.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Deeper trees are left in place with an error (a staged bundle is a few
/// levels deep; each level holds one descriptor and 1 KiB of stack, which
/// a signal stack has room for).
pub const MAX_DEPTH: usize = 16;

/// Remove `name` in the directory `parent`, and everything under it if it
/// is a directory. A missing entry is not an error. The first failure is
/// returned; the rest of the tree is still attempted.
pub fn remove_at(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    match remove_entry(parent.as_raw_fd(), name, 0) {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// Remove one entry: 0 or the first errno met.
fn remove_entry(parent: libc::c_int, name: &CStr, depth: usize) -> i32 {
    // As a non-directory first: `unlinkat` without AT_REMOVEDIR removes a
    // symlink itself, whatever it points at.
    // SAFETY: `name` is NUL-terminated; `parent` is an open descriptor.
    if unsafe { libc::unlinkat(parent, name.as_ptr(), 0) } == 0 {
        return 0;
    }
    match errno() {
        libc::ENOENT => 0,
        // Linux answers EISDIR for a directory.
        libc::EISDIR => remove_dir(parent, name, depth),
        e => e,
    }
}

fn remove_dir(parent: libc::c_int, name: &CStr, depth: usize) -> i32 {
    if depth >= MAX_DEPTH {
        return libc::ELOOP;
    }
    // SAFETY: as above. O_NOFOLLOW: if the entry became a symlink since the
    // unlink above, this fails (ELOOP/ENOTDIR) instead of entering it.
    let fd = unsafe { libc::openat(parent, name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return match errno() {
            libc::ENOENT => 0,
            e => e,
        };
    }
    let mut first = 0;
    // A failure here shows up as the unlinks' EACCES below.
    // SAFETY: `fd` is the directory just opened.
    unsafe { libc::fchmod(fd, 0o700) };
    // Two passes at most: entries created while the first pass ran are
    // found by the second, and a writer that keeps adding cannot keep us.
    for _ in 0..2 {
        let e = empty(fd, depth);
        if first == 0 {
            first = e;
        }
        if !has_entries(fd) {
            break;
        }
    }
    // SAFETY: `fd` was opened above and is closed once.
    unsafe { libc::close(fd) };
    // SAFETY: as for the first unlinkat.
    if unsafe { libc::unlinkat(parent, name.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
        let e = errno();
        if e != libc::ENOENT && first == 0 {
            first = e;
        }
    }
    first
}

const DENTS: usize = 1024;

/// A buffer for `getdents64`, aligned for its records.
#[repr(C, align(8))]
struct Dents([u8; DENTS]);

/// Remove every entry of the directory `fd`, read from its start: 0 or
/// the first errno.
fn empty(fd: libc::c_int, depth: usize) -> i32 {
    let mut first = 0;
    let mut buf = Dents([0; DENTS]);
    // SAFETY: `fd` is open; rewinding a directory stream is lseek to 0.
    unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
    loop {
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.0.as_mut_ptr(), buf.0.len()) };
        if n <= 0 {
            if n < 0 && first == 0 {
                first = errno();
            }
            return first;
        }
        let mut off = 0usize;
        while off < n as usize {
            // linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name.
            let rec = &buf.0[off..n as usize];
            let reclen = u16::from_ne_bytes([rec[16], rec[17]]) as usize;
            if reclen < 20 || reclen > rec.len() {
                return if first == 0 { libc::EIO } else { first };
            }
            let name = match CStr::from_bytes_until_nul(&rec[19..reclen]) {
                Ok(n) => n,
                Err(_) => return if first == 0 { libc::EIO } else { first },
            };
            off += reclen;
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            // Whatever its d_type said: the entry may have been swapped
            // since it was listed, and `remove_entry` looks again.
            let e = remove_entry(fd, name, depth + 1);
            if first == 0 {
                first = e;
            }
        }
    }
}

/// Whether the directory `fd`, read from its start, still lists anything
/// but `.` and `..`.
fn has_entries(fd: libc::c_int) -> bool {
    let mut buf = Dents([0; DENTS]);
    // SAFETY: as in `empty`.
    unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
    // SAFETY: as in `empty`.
    let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.0.as_mut_ptr(), buf.0.len()) };
    if n <= 0 {
        return false;
    }
    let mut off = 0usize;
    while off < n as usize {
        let rec = &buf.0[off..n as usize];
        let reclen = u16::from_ne_bytes([rec[16], rec[17]]) as usize;
        if reclen < 20 || reclen > rec.len() {
            return false;
        }
        let name = CStr::from_bytes_until_nul(&rec[19..reclen]).map(CStr::to_bytes).unwrap_or(b".");
        if name != b"." && name != b".." {
            return true;
        }
        off += reclen;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn dir_fd(p: &std::path::Path) -> std::fs::File {
        std::fs::File::open(p).unwrap()
    }

    /// A read-only tree with a symlink to a directory outside it goes; the
    /// outside directory keeps its files and its mode.
    #[test]
    fn removes_read_only_trees_and_follows_nothing() {
        let base = std::env::temp_dir().join(format!("limes-tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let outside = base.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o500)).unwrap();
        let t = base.join("t");
        std::fs::create_dir_all(t.join("aot/deeper")).unwrap();
        // More entries than one getdents64 buffer holds.
        for i in 0..200 {
            std::fs::write(t.join(format!("aot/file-with-a-longish-name-{i:04}")), b"x").unwrap();
        }
        std::fs::write(t.join("aot/deeper/f"), b"x").unwrap();
        symlink(&outside, t.join("link")).unwrap();
        symlink(&outside, t.join("aot/deeper/link")).unwrap();
        for d in ["aot/deeper", "aot", ""] {
            std::fs::set_permissions(t.join(d), std::fs::Permissions::from_mode(0o500)).unwrap();
        }
        let parent = dir_fd(&base);
        remove_at(parent.as_fd(), c"t").unwrap();
        assert!(!t.exists());
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"k");
        assert_eq!(std::fs::metadata(&outside).unwrap().permissions().mode() & 0o777, 0o500);
        // A missing entry is not an error; a symlink as the root is unlinked.
        remove_at(parent.as_fd(), c"t").unwrap();
        symlink(&outside, base.join("l")).unwrap();
        remove_at(parent.as_fd(), c"l").unwrap();
        assert!(std::fs::symlink_metadata(base.join("l")).is_err() && outside.join("keep").exists());
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// Beyond MAX_DEPTH the tree is left with an error, not a stack overflow.
    #[test]
    fn depth_is_bounded() {
        let base = std::env::temp_dir().join(format!("limes-tree-deep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let mut p = base.join("t");
        for _ in 0..MAX_DEPTH + 2 {
            p = p.join("d");
        }
        std::fs::create_dir_all(&p).unwrap();
        let e = remove_at(dir_fd(&base).as_fd(), c"t").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        std::fs::remove_dir_all(&base).unwrap();
    }
}

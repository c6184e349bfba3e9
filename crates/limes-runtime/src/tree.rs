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
//! [`remove_at`] makes only raw system calls, with no allocation and a fixed
//! stack buffer per level: the watchdog's `SIGALRM` handler runs it while
//! the interrupted code may hold the allocator's lock. [`names`] and
//! [`open_file_or_dir_at`] are the same walk's steps for callers that
//! change a tree instead of removing it (the store seals a staged bundle
//! read-only with them).

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Deeper trees are left in place with an error (a staged bundle is a few
/// levels deep; each level holds one descriptor and 1 KiB of stack, which
/// a signal stack has room for).
pub const MAX_DEPTH: usize = 16;

/// A tree named by path, held as what [`remove_at`] takes: its parent
/// directory's descriptor (the parent opened with `O_NOFOLLOW`) and its
/// name there. The store removes through one at once; the watchdog opens
/// one when armed and removes through it at expiry.
#[derive(Debug)]
pub struct Entry {
    dir: OwnedFd,
    name: CString,
}

impl Entry {
    /// Hold the entry `path` names. Errors name the path; a missing parent
    /// is `NotFound`.
    pub fn of(path: &Path) -> io::Result<Entry> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} names no entry of a directory", path.display())));
        };
        let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(parent)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", parent.display())))?;
        let name = CString::new(name.as_bytes()).map_err(io::Error::other)?;
        Ok(Entry { dir: dir.into(), name })
    }

    /// [`remove_at`] on this entry: async-signal-safe.
    pub fn remove(&self) -> io::Result<()> {
        remove_at(self.dir.as_fd(), &self.name)
    }
}

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

/// Remove every entry of the directory `fd`: 0 or the first errno.
fn empty(fd: libc::c_int, depth: usize) -> i32 {
    let mut first = 0;
    let listed = each_name(fd, &mut |name| {
        // Whatever its d_type said: the entry may have been swapped since
        // it was listed, and `remove_entry` looks again.
        let e = remove_entry(fd, name, depth + 1);
        if first == 0 {
            first = e;
        }
        ControlFlow::Continue(())
    });
    if first == 0 {
        listed
    } else {
        first
    }
}

/// Whether the directory `fd` still lists anything but `.` and `..`.
fn has_entries(fd: libc::c_int) -> bool {
    let mut any = false;
    each_name(fd, &mut |_| {
        any = true;
        ControlFlow::Break(())
    });
    any
}

/// Call `f` with the name of each entry of the directory `fd`, read from
/// its start (`.` and `..` left out), until it breaks: 0 or the listing's
/// errno. No allocation: one buffer on the stack.
fn each_name(fd: libc::c_int, f: &mut dyn FnMut(&CStr) -> ControlFlow<()>) -> i32 {
    let mut buf = Dents([0; DENTS]);
    // SAFETY: `fd` is open; rewinding a directory stream is lseek to 0.
    unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
    loop {
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.0.as_mut_ptr(), buf.0.len()) };
        if n <= 0 {
            return if n < 0 { errno() } else { 0 };
        }
        let filled = &buf.0[..n as usize];
        let mut off = 0usize;
        while off < filled.len() {
            // linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name.
            let rec = &filled[off..];
            let reclen = match rec.get(16..18) {
                Some(b) => u16::from_ne_bytes([b[0], b[1]]) as usize,
                None => return libc::EIO,
            };
            if reclen < 20 || reclen > rec.len() {
                return libc::EIO;
            }
            let Ok(name) = CStr::from_bytes_until_nul(&rec[19..reclen]) else {
                return libc::EIO;
            };
            off += reclen;
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            if f(name).is_break() {
                return 0;
            }
        }
    }
}

/// The names in the directory `dir` (`.` and `..` left out).
pub fn names(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let mut out = Vec::new();
    match each_name(dir.as_raw_fd(), &mut |n| {
        out.push(n.to_owned());
        ControlFlow::Continue(())
    }) {
        0 => Ok(out),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Open the entry `name` of the directory `dir` for reading if it is a
/// regular file or a directory, without following it. Anything else (a
/// symlink, a FIFO, a device) is refused with `InvalidInput` before it is
/// opened, and an entry swapped between that look and the open is refused
/// too.
pub fn open_file_or_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<File> {
    // SAFETY: a zeroed stat is a valid value to fill in.
    let mut before: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated, `dir` is open, `before` is writable.
    if unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut before, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let kind = before.st_mode & libc::S_IFMT;
    if kind != libc::S_IFREG && kind != libc::S_IFDIR {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file or directory"));
    }
    // SAFETY: as above. O_NONBLOCK: should a FIFO appear in its place, the
    // open does not wait for a writer (and the check below refuses it).
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let f = unsafe { File::from_raw_fd(fd) };
    let m = f.metadata()?;
    use std::os::unix::fs::MetadataExt;
    if m.ino() != before.st_ino as u64 || m.dev() != before.st_dev as u64 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "changed while it was opened"));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn dir_fd(p: &std::path::Path) -> std::fs::File {
        std::fs::File::open(p).unwrap()
    }

    /// A fresh, empty directory for one test (what an earlier run left is
    /// removed first); each test removes it at its end.
    fn scratch(tag: &str) -> std::path::PathBuf {
        let base = std::env::temp_dir().join(format!("limes-tree-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        base
    }

    /// A read-only tree with a symlink to a directory outside it goes; the
    /// outside directory keeps its files and its mode.
    #[test]
    fn removes_read_only_trees_and_follows_nothing() {
        let base = scratch("remove");
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

    /// The steps for callers that change a tree: every name is listed, a
    /// file and a directory open, and a symlink (to a directory or a file)
    /// or a FIFO is refused without being opened.
    #[test]
    fn lists_names_and_opens_only_files_and_directories() {
        let base = scratch("open");
        std::fs::create_dir_all(base.join("dir")).unwrap();
        std::fs::write(base.join("file"), b"x").unwrap();
        symlink(base.join("dir"), base.join("link-dir")).unwrap();
        symlink(base.join("file"), base.join("link-file")).unwrap();
        let fifo = std::ffi::CString::new(base.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: `fifo` is a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let d = dir_fd(&base);
        let mut names: Vec<String> = names(d.as_fd()).unwrap().into_iter().map(|n| n.into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["dir", "fifo", "file", "link-dir", "link-file"]);
        assert!(open_file_or_dir_at(d.as_fd(), c"file").unwrap().metadata().unwrap().is_file());
        assert!(open_file_or_dir_at(d.as_fd(), c"dir").unwrap().metadata().unwrap().is_dir());
        for n in [c"link-dir", c"link-file", c"fifo"] {
            assert_eq!(open_file_or_dir_at(d.as_fd(), n).unwrap_err().kind(), io::ErrorKind::InvalidInput, "{n:?}");
        }
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// An entry is held by its parent and name (a bare name's parent is the
    /// current directory); a path with no parent entry is refused, a
    /// missing parent is NotFound, and a missing entry removes as nothing.
    #[test]
    fn entries_by_path() {
        let base = scratch("entry");
        std::fs::create_dir_all(base.join("t/aot")).unwrap();
        let e = Entry::of(&base.join("t")).unwrap();
        assert_eq!(e.name.as_bytes(), b"t");
        e.remove().unwrap();
        assert!(!base.join("t").exists());
        e.remove().unwrap();
        assert_eq!(Entry::of(Path::new("bare")).unwrap().name.as_bytes(), b"bare");
        assert_eq!(Entry::of(Path::new("/")).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(Entry::of(&base.join("absent/t")).unwrap_err().kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// Beyond MAX_DEPTH the tree is left with an error, not a stack overflow.
    #[test]
    fn depth_is_bounded() {
        let base = scratch("deep");
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

//! Directories that builds of different crates share under one home
//! (`$LIMES_PACK_HOME`): the Hermit build directory, and the target
//! directory of component builds, where the SDK's dependencies compile once
//! per machine instead of once per crate. This module owns the two rules
//! that make sharing safe: builds take turns ([`BuildLock`]), and a crate
//! never picks up the output another crate of the same name left there
//! ([`Claim`]). It must not decide *whether* a crate shares (that is
//! [`crate::project::Project::shared_target`]).

use std::path::{Path, PathBuf};

/// The target directory every crate that asks for the SDK by version builds
/// its component in, unless it chose a target directory of its own.
pub fn component_target_dir(home: &Path) -> PathBuf {
    home.join("target")
}

/// An exclusive `flock` on `DIR/.build.lock`, held until dropped (and
/// released by the kernel if the process dies). Its descriptor is
/// close-on-exec, so the cargo processes a build starts never hold it.
pub struct BuildLock {
    _file: std::fs::File,
}

impl BuildLock {
    /// Errors are those of `DIR/.build.lock`.
    pub fn take(dir: &Path, quiet: bool) -> std::io::Result<BuildLock> {
        use std::os::fd::AsRawFd;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(".build.lock");
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            if !quiet {
                eprintln!("waiting for another limes-pack build that uses {}", dir.display());
            }
            loop {
                // SAFETY: as above.
                if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                    break;
                }
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
        Ok(BuildLock { _file: file })
    }
}

/// Who last built a `cdylib` into a shared target directory.
///
/// Cargo names a `cdylib`'s output after the library alone (`deps/hello.wasm`,
/// no hash), and it judges a unit fresh when its outputs are newer than its
/// inputs. Two crates named `hello` (two checkouts, two `limes-pack new
/// hello`) therefore write the same file, and the one built first would later
/// find the other's newer output "fresh" and ship it. A claim records who
/// wrote the outputs (manifest path and everything else that changes them);
/// when that differs from the build about to run, the outputs are removed
/// first, and cargo, finding them missing, compiles the crate again. The
/// dependencies (the point of sharing) are untouched.
pub struct Claim {
    record: PathBuf,
    outputs: [PathBuf; 2],
    owner: String,
}

impl Claim {
    /// `profile_dir` is cargo's directory for the profile (`release`,
    /// `debug` for `dev`); `lib` the library's file stem (`hello_world`).
    pub fn new(target_dir: &Path, target: &str, profile_dir: &str, lib: &str, owner: String) -> Claim {
        let out = target_dir.join(target).join(profile_dir);
        Claim {
            record: target_dir.join(".limes-owners").join(format!("{target}.{profile_dir}.{lib}")),
            outputs: [out.join("deps").join(format!("{lib}.wasm")), out.join(format!("{lib}.wasm"))],
            owner,
        }
    }

    /// Before the build, under the [`BuildLock`]: remove outputs another
    /// owner left. Errors name the file concerned.
    pub fn take(&self) -> Result<(), (PathBuf, std::io::Error)> {
        if std::fs::read_to_string(&self.record).ok().as_deref() == Some(self.owner.as_str()) {
            return Ok(());
        }
        for f in &self.outputs {
            match std::fs::remove_file(f) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err((f.clone(), e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// After a successful build, still under the lock: the outputs are ours.
    pub fn record(&self) -> Result<(), (PathBuf, std::io::Error)> {
        let dir = self.record.parent().expect("the record has a directory");
        std::fs::create_dir_all(dir).map_err(|e| (dir.to_path_buf(), e))?;
        crate::aot::write_atomic(&self.record, self.owner.as_bytes()).map_err(|e| (self.record.clone(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_sharing_a_directory_take_turns() {
        let dir = tempfile::tempdir().unwrap();
        let first = BuildLock::take(dir.path(), true).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.path().to_path_buf();
        let second = std::thread::spawn(move || {
            let _l = BuildLock::take(&d, true).unwrap();
            tx.send(()).unwrap();
        });
        // The second waits while the first holds the lock...
        assert!(rx.recv_timeout(std::time::Duration::from_millis(300)).is_err());
        drop(first);
        // ...and goes on once it is released.
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        second.join().unwrap();
    }

    #[test]
    fn another_owner_s_outputs_are_removed_and_ours_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("wasm32-wasip2/release");
        std::fs::create_dir_all(out.join("deps")).unwrap();
        let write = || {
            std::fs::write(out.join("deps/hello.wasm"), b"x").unwrap();
            std::fs::write(out.join("hello.wasm"), b"x").unwrap();
        };
        let a = Claim::new(dir.path(), "wasm32-wasip2", "release", "hello", "/a/Cargo.toml".into());
        let b = Claim::new(dir.path(), "wasm32-wasip2", "release", "hello", "/b/Cargo.toml".into());
        // Nobody recorded: whatever is there is not known to be ours.
        write();
        a.take().unwrap();
        assert!(!out.join("deps/hello.wasm").exists() && !out.join("hello.wasm").exists());
        write();
        a.record().unwrap();
        // Ours: kept, so cargo's incremental build stays.
        a.take().unwrap();
        assert!(out.join("deps/hello.wasm").exists());
        // Another crate of the same name: removed.
        b.take().unwrap();
        assert!(!out.join("deps/hello.wasm").exists() && !out.join("hello.wasm").exists());
        // Another library in the same directory is not touched.
        std::fs::write(out.join("deps/other.wasm"), b"x").unwrap();
        Claim::new(dir.path(), "wasm32-wasip2", "release", "other", "/c".into());
        b.take().unwrap();
        assert!(out.join("deps/other.wasm").exists());
    }
}

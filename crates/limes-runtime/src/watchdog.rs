//! Deadlines for one-shot runs. Compiled code carries no epoch checks (see
//! the engine profile), so nothing inside a call can stop it: the process
//! ends instead. Shared by `limes run`, `limes-pack run` and the containerd
//! shim, so a runaway call ends the same way everywhere.
//!
//! How: the process's real-time interval timer (`setitimer(ITIMER_REAL)`)
//! raises `SIGALRM` at the deadline, and the handler ends the process. There
//! is no watchdog thread: one cost 33 µs of a 1.1 ms `limes run` (p50 over
//! 1,000 rounds taking turns, docs/results.md, #27): its creation, its
//! allocator and signal-stack set-up on the other CPU, and its teardown at
//! exit.
//!
//! A signal handler may only make async-signal-safe calls, and the call it
//! interrupts may hold the allocator's or stdout's lock. So everything a
//! timeout does is decided when the watchdog is armed, as an [`Expiry`]:
//! bytes to write to stdout and stderr, trees to remove (each as its parent
//! directory's descriptor and its name), an exit code. The handler writes,
//! removes the trees with [`crate::tree::remove_at`] (system calls on
//! descriptors, nothing followed) and calls `_exit`, nothing else.
//!
//! One watchdog at a time per process (the timer is the process's): a
//! second [`Watchdog::arm`] while one is armed is refused.

use crate::tree;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// What the process does when its deadline passes, prepared in advance.
#[derive(Debug, Default)]
pub struct Expiry {
    /// Written to stdout (e.g. a JSON error line).
    stdout: Vec<u8>,
    /// Written to stderr (e.g. `error: ... timed out ...`).
    stderr: Vec<u8>,
    /// Trees to remove, each held since the watchdog was armed.
    trees: Vec<tree::Entry>,
}

impl Expiry {
    /// Write `stdout` and `stderr` at expiry.
    pub fn new(stdout: impl Into<Vec<u8>>, stderr: impl Into<Vec<u8>>) -> Expiry {
        Expiry { stdout: stdout.into(), stderr: stderr.into(), trees: Vec::new() }
    }

    /// Also remove the tree at `path` at expiry (a staged bundle), as it is
    /// then: it is walked at expiry, from its parent directory opened now
    /// ([`tree::Entry`]), so a directory in it swapped for a symlink while
    /// the function runs is unlinked, never followed.
    pub fn remove_tree(&mut self, path: &Path) -> std::io::Result<()> {
        self.trees.push(tree::Entry::of(path)?);
        Ok(())
    }
}

/// Why a watchdog could not be armed.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("a watchdog is already armed in this process")]
    AlreadyArmed,
    #[error("cannot arm the deadline timer: {0}")]
    Timer(std::io::Error),
}

/// The armed expiry, owned by whoever takes it out first: the handler (and
/// then the process ends) or [`Watchdog`]'s drop (and then it is freed).
static ARMED: AtomicPtr<Armed> = AtomicPtr::new(ptr::null_mut());

struct Armed {
    expiry: Expiry,
    exit_code: u8,
}

/// Ends the process `limit` after [`Watchdog::arm`] unless dropped first.
#[must_use = "dropping the watchdog disarms it"]
#[derive(Debug)]
pub struct Watchdog(());

impl Watchdog {
    /// Arm: if not dropped within `limit`, carry out `expiry` and exit with
    /// `exit_code`.
    pub fn arm(limit: Duration, exit_code: u8, expiry: Expiry) -> Result<Watchdog, WatchdogError> {
        install_handler().map_err(WatchdogError::Timer)?;
        let armed = Box::into_raw(Box::new(Armed { expiry, exit_code }));
        if ARMED.compare_exchange(ptr::null_mut(), armed, Ordering::AcqRel, Ordering::Acquire).is_err() {
            // SAFETY: `armed` came from `Box::into_raw` just above and was
            // never published.
            drop(unsafe { Box::from_raw(armed) });
            return Err(WatchdogError::AlreadyArmed);
        }
        // A zero interval would disarm the timer: the shortest deadline is 1 µs.
        let limit = limit.max(Duration::from_micros(1));
        // `as _`: musl's libc crate deprecates the names of these field types
        // (they become 64-bit in musl 1.2); the values fit either way.
        let value = libc::timeval { tv_sec: limit.as_secs().min(i32::MAX as u64) as _, tv_usec: limit.subsec_micros() as _ };
        // From here the drop disarms and frees, on the error path too (no
        // timer ran, so no handler took the expiry).
        let watchdog = Watchdog(());
        set_timer(value).map_err(WatchdogError::Timer)?;
        Ok(watchdog)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = set_timer(libc::timeval { tv_sec: 0, tv_usec: 0 });
        let armed = ARMED.swap(ptr::null_mut(), Ordering::AcqRel);
        if armed.is_null() {
            // The handler took the expiry on another thread and is ending
            // the process: wait for it rather than go on as if in time.
            loop {
                // SAFETY: pause() only waits for a signal.
                unsafe { libc::pause() };
            }
        }
        // SAFETY: a non-null `ARMED` came from `Box::into_raw` in `arm`, and
        // the swap made this drop its only owner.
        drop(unsafe { Box::from_raw(armed) });
    }
}

fn set_timer(value: libc::timeval) -> std::io::Result<()> {
    let t = libc::itimerval { it_interval: libc::timeval { tv_sec: 0, tv_usec: 0 }, it_value: value };
    // SAFETY: `t` is a valid itimerval; the old value is not asked for.
    if unsafe { libc::setitimer(libc::ITIMER_REAL, &t, ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Install the `SIGALRM` handler, once per process.
fn install_handler() -> std::io::Result<()> {
    static RESULT: OnceLock<i32> = OnceLock::new();
    let errno = *RESULT.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid value to fill in; the
        // handler is an `extern "C" fn(c_int)`, as `sa_sigaction` expects
        // without SA_SIGINFO. SA_ONSTACK runs it on the thread's signal
        // stack when there is one (Wasmtime sets one up), so a guest deep
        // in its stack still times out.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_alarm as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_ONSTACK | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(libc::SIGALRM, &sa, ptr::null_mut()) == 0 {
                0
            } else {
                std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL)
            }
        }
    });
    match errno {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// The `SIGALRM` handler: async-signal-safe calls only (`write`, the
/// descriptor calls of [`crate::tree`], `_exit`) and no allocation.
extern "C" fn on_alarm(_: libc::c_int) {
    let armed = ARMED.swap(ptr::null_mut(), Ordering::AcqRel);
    if armed.is_null() {
        // Disarmed while the signal was on its way.
        return;
    }
    // SAFETY: the swap made this handler the only owner of the expiry
    // (never freed: the process ends below).
    let armed = unsafe { &*armed };
    let e = &armed.expiry;
    write_all(libc::STDOUT_FILENO, &e.stdout);
    write_all(libc::STDERR_FILENO, &e.stderr);
    for t in &e.trees {
        // Nothing to report to: what is left is swept with tmp/'s leftovers.
        let _ = t.remove();
    }
    // SAFETY: _exit ends the process without running anything else.
    unsafe { libc::_exit(armed.exit_code.into()) }
}

fn write_all(fd: libc::c_int, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: `buf` is a live slice of `buf.len()` bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n > 0 {
            buf = &buf[n as usize..];
        } else if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        } else {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timer_left() -> Duration {
        // SAFETY: a zeroed itimerval is a valid value.
        let mut t: libc::itimerval = unsafe { std::mem::zeroed() };
        // SAFETY: `t` is a valid itimerval to fill in.
        assert_eq!(unsafe { libc::getitimer(libc::ITIMER_REAL, &mut t) }, 0);
        Duration::new(t.it_value.tv_sec as u64, t.it_value.tv_usec as u32 * 1000)
    }

    /// Arming sets the process's timer, a second arm is refused, and the
    /// drop stops the timer and lets a new watchdog arm. (That expiry ends
    /// the process with its message, exit code and removals is what the
    /// loader's timeout tests run: tests/loader.rs.)
    #[test]
    fn one_at_a_time_and_drop_disarms() {
        let w = Watchdog::arm(Duration::from_secs(60), 5, Expiry::new("", "first\n")).expect("arm");
        let left = timer_left();
        assert!(left > Duration::from_secs(50) && left <= Duration::from_secs(60), "timer set to {left:?}");
        assert!(matches!(Watchdog::arm(Duration::from_secs(1), 5, Expiry::default()), Err(WatchdogError::AlreadyArmed)));
        drop(w);
        assert_eq!(timer_left(), Duration::ZERO, "the drop stops the timer");
        let w = Watchdog::arm(Duration::from_secs(60), 5, Expiry::default()).expect("arm again");
        drop(w);
    }

    /// A tree to remove is held from the moment it is named (how it is
    /// held: `tree::tests::entries_by_path`); a path with no parent entry
    /// is refused.
    #[test]
    fn trees_are_held_when_named() {
        let mut e = Expiry::default();
        e.remove_tree(&std::env::temp_dir().join("limes-watchdog-absent")).unwrap();
        assert_eq!(e.trees.len(), 1);
        assert!(e.remove_tree(Path::new("/")).is_err());
        assert_eq!(e.trees.len(), 1);
    }
}

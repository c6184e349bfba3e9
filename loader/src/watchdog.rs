//! Deadlines for one-shot runs. Compiled code carries no epoch checks (see
//! the engine profile), so nothing inside a call can stop it: the process
//! ends instead. Shared by `limes run`, `limes-pack run` and the containerd
//! shim, so a runaway call ends the same way everywhere.
//!
//! The usual deadline is a kernel timer (`setitimer`) whose signal handler
//! writes the words prepared at arming and calls `_exit`: no thread to start
//! and wake, which cost a no-op `limes run` about 0.16 ms of its 2.7 ms on
//! this machine kind. A deadline that must also clean up (a staged bundle
//! file to remove) needs code that is not async-signal-safe, so it keeps a
//! watchdog thread.

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// What a process past its deadline does and says before it exits.
#[derive(Default)]
pub struct Alarm {
    /// Written to stdout (the `--json` line), then
    pub stdout: Vec<u8>,
    /// written to stderr.
    pub stderr: Vec<u8>,
    /// Work to do first (removing a staged bundle file).
    pub cleanup: Option<Box<dyn FnOnce() + Send>>,
}

impl Alarm {
    /// `error: MESSAGE` on stderr.
    pub fn error(message: impl std::fmt::Display) -> Alarm {
        Alarm { stderr: format!("error: {message}\n").into_bytes(), ..Default::default() }
    }
}

/// Ends the process `limit` after [`Watchdog::arm`] unless dropped first.
#[must_use = "dropping the watchdog disarms it"]
pub struct Watchdog(Armed);

enum Armed {
    Timer,
    Thread(Option<mpsc::Sender<()>>),
}

/// The armed timer's words and exit code, for the signal handler (which may
/// only read them). Null while no timer is armed.
struct Last {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    code: i32,
}
static ARMED: AtomicPtr<Last> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_alarm(_: libc::c_int) {
    let last = ARMED.load(Ordering::Acquire);
    if last.is_null() {
        return;
    }
    // SAFETY: `last` stays allocated while armed and is only read here;
    // write(2) and _exit(2) are async-signal-safe.
    unsafe {
        let l = &*last;
        for (fd, bytes) in [(1, &l.stdout), (2, &l.stderr)] {
            let mut rest: &[u8] = bytes;
            while !rest.is_empty() {
                let n = libc::write(fd, rest.as_ptr().cast(), rest.len());
                if n <= 0 {
                    break;
                }
                rest = &rest[n as usize..];
            }
        }
        libc::_exit(l.code);
    }
}

fn set_timer(limit: Duration) -> bool {
    let it = libc::itimerval {
        it_interval: libc::timeval { tv_sec: 0, tv_usec: 0 },
        it_value: libc::timeval { tv_sec: limit.as_secs() as libc::time_t, tv_usec: limit.subsec_micros() as libc::suseconds_t },
    };
    // SAFETY: plain syscall with a valid argument.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) == 0 }
}

impl Watchdog {
    /// Arm: if not dropped within `limit`, say `alarm` and exit with
    /// `exit_code`. One timer per process: arming again replaces it.
    pub fn arm(limit: Duration, exit_code: u8, alarm: Alarm) -> Watchdog {
        if alarm.cleanup.is_some() {
            return Watchdog(Armed::Thread(Some(thread(limit, exit_code, alarm))));
        }
        // A zero timer value would disarm instead of firing.
        let limit = limit.max(Duration::from_micros(1));
        let last = Box::into_raw(Box::new(Last { stdout: alarm.stdout, stderr: alarm.stderr, code: exit_code.into() }));
        let old = ARMED.swap(last, Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: the previous arming's box; no handler can be reading it
            // once replaced, because a running handler never returns.
            drop(unsafe { Box::from_raw(old) });
        }
        // SAFETY: installing a handler that only uses async-signal-safe calls.
        // SA_ONSTACK: the signal may land in deep Wasm recursion.
        let installed = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_alarm as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_ONSTACK;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut()) == 0
        };
        if installed && set_timer(limit) {
            return Watchdog(Armed::Timer);
        }
        // Not expected on Linux; the thread still keeps the deadline.
        let last = ARMED.swap(std::ptr::null_mut(), Ordering::AcqRel);
        // SAFETY: ours, just taken back.
        let last = unsafe { Box::from_raw(last) };
        let alarm = Alarm { stdout: last.stdout, stderr: last.stderr, cleanup: None };
        Watchdog(Armed::Thread(Some(thread(limit, exit_code, alarm))))
    }
}

fn thread(limit: Duration, exit_code: u8, alarm: Alarm) -> mpsc::Sender<()> {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("limes-watchdog".into())
        .spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                if let Some(cleanup) = alarm.cleanup {
                    cleanup();
                }
                use std::io::Write as _;
                let _ = std::io::stdout().write_all(&alarm.stdout).and_then(|_| std::io::stdout().flush());
                let _ = std::io::stderr().write_all(&alarm.stderr);
                std::process::exit(exit_code.into());
            }
        })
        .expect("spawn watchdog thread");
    tx
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        match &mut self.0 {
            Armed::Timer => {
                set_timer(Duration::ZERO);
                let last = ARMED.swap(std::ptr::null_mut(), Ordering::AcqRel);
                if !last.is_null() {
                    // SAFETY: the timer is off, so no handler will read it.
                    drop(unsafe { Box::from_raw(last) });
                }
            }
            // Closing the channel wakes the thread, which then returns.
            Armed::Thread(tx) => drop(tx.take()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs this test binary again as a child that arms a deadline and
    /// then spins; returns its exit status and output.
    fn child(case: &str) -> std::process::Output {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "watchdog::tests::child_process", "--nocapture", "--test-threads=1"])
            .env("LIMES_WATCHDOG_CASE", case)
            .output()
            .unwrap()
    }

    #[test]
    fn child_process() {
        let Ok(case) = std::env::var("LIMES_WATCHDOG_CASE") else { return };
        let dir = std::env::temp_dir().join(format!("limes-watchdog-{}", std::process::id()));
        let mut alarm = Alarm { stdout: b"{\"kind\":\"timeout\"}\n".to_vec(), ..Alarm::error("too slow") };
        if case == "thread" {
            std::fs::create_dir_all(dir.join("inner")).unwrap();
            println!("staged {}", dir.display());
            alarm.cleanup = Some(Box::new(move || std::fs::remove_dir_all(&dir).unwrap()));
        }
        if case == "disarm" {
            drop(Watchdog::arm(Duration::from_millis(50), 5, alarm));
            std::thread::sleep(Duration::from_millis(200));
            std::process::exit(0);
        }
        let _w = Watchdog::arm(Duration::from_millis(100), 5, alarm);
        let t = std::time::Instant::now();
        // A busy loop, as a runaway guest would be.
        while t.elapsed() < Duration::from_secs(10) {
            std::hint::spin_loop();
        }
        std::process::exit(0);
    }

    #[test]
    fn a_deadline_ends_the_process_with_its_words() {
        for case in ["timer", "thread"] {
            let t = std::time::Instant::now();
            let out = child(case);
            assert_eq!(out.status.code(), Some(5), "{case}: {out:?}");
            assert!(t.elapsed() < Duration::from_secs(5), "{case}: the deadline did not end the spin");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains("{\"kind\":\"timeout\"}"), "{case}: {stdout}");
            assert!(String::from_utf8_lossy(&out.stderr).contains("error: too slow\n"), "{case}");
            if case == "thread" {
                // libtest may print its own words before ours on the line.
                let staged = stdout.lines().find_map(|l| l.split_once("staged ").map(|(_, p)| p)).unwrap();
                assert!(!std::path::Path::new(staged).exists(), "the staged tree was left behind");
            }
        }
    }

    #[test]
    fn a_dropped_watchdog_never_fires() {
        let out = child("disarm");
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

//! Deadlines for one-shot runs. Compiled code carries no epoch checks (see
//! the engine profile), so nothing inside a call can stop it: the process
//! ends instead. Shared by `limes run`, `limes-pack run` and the containerd
//! shim, so a runaway call ends the same way everywhere.

use std::sync::mpsc;
use std::time::Duration;

/// Ends the process `limit` after [`Watchdog::arm`] unless dropped first.
#[must_use = "dropping the watchdog disarms it"]
pub struct Watchdog(Option<mpsc::Sender<()>>);

impl Watchdog {
    /// Arm: if not dropped within `limit`, call `report` (which prints the
    /// timeout in the caller's format) and exit with `exit_code`.
    pub fn arm(limit: Duration, exit_code: u8, report: impl FnOnce() + Send + 'static) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("limes-watchdog".into())
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                    report();
                    use std::io::Write as _;
                    let _ = std::io::stdout().flush();
                    std::process::exit(exit_code.into());
                }
            })
            .expect("spawn watchdog thread");
        Watchdog(Some(tx))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Closing the channel wakes the thread, which then returns.
        self.0.take();
    }
}

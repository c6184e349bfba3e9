//! The native runner: serve request frames from stdin (or a serial console)
//! with one handler, answering on stdout.

use crate::frame::{self, Frame};
use crate::{Error, Handler, Request, Response};
use std::io::{self, BufReader, BufWriter, Read, Write};

/// Call `handler`, turning a panic into an `internal` error so that one bad
/// request never kills a long-running runner.
pub fn call(handler: Handler, req: Request) -> Result<Response, Error> {
    match std::panic::catch_unwind(move || handler(req)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Internal(format!("function panicked: {msg}")))
        }
    }
}

/// Serve frames from `input` to `output` until EOF or a shutdown frame.
/// Returns how many requests were served.
pub fn serve(handler: Handler, input: impl Read, output: impl Write) -> Result<u64, frame::FrameError> {
    let mut input = BufReader::new(input);
    let mut output = BufWriter::new(output);
    let mut served = 0;
    loop {
        match frame::read_frame(&mut input, frame::REQUEST_MAGIC)? {
            Frame::Eof | Frame::Shutdown => return Ok(served),
            Frame::Payload(p) => {
                let res = match frame::decode_request(&p) {
                    Ok(req) => call(handler, req),
                    Err(e) => Err(Error::BadRequest(format!("undecodable request frame: {e}"))),
                };
                frame::write_frame(&mut output, frame::RESPONSE_MAGIC, &frame::encode_response(&res))?;
                served += 1;
            }
        }
    }
}

/// Entry point of a native function executable: serve stdin -> stdout and
/// exit 0 on EOF, 2 on a protocol error. As PID 1 (inside a microVM image)
/// it is the whole userland instead: see [`init`].
pub fn main(handler: Handler) -> ! {
    #[cfg(target_os = "linux")]
    if std::process::id() == 1 {
        init::run(handler);
    }
    // A panic message on stderr is useful; the default hook's output is fine.
    let code = match serve(handler, io::stdin().lock(), io::stdout().lock()) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("limes native runner: {e}");
            2
        }
    };
    std::process::exit(code)
}

/// Frame announcing that the runner in a VM is ready for its request.
pub const READY_MAGIC: &[u8; 4] = b"LMB1";

#[cfg(target_os = "linux")]
pub mod init {
    //! PID 1 in a microVM: put the serial console in raw mode, silence the
    //! kernel's console log, announce readiness, serve one request (or until
    //! a shutdown frame), then reboot, which ends the VM (QEMU runs with
    //! `-no-reboot`; Firecracker stops on a guest reset).

    use super::*;
    use std::os::fd::AsRawFd;

    fn raw_console() -> std::fs::File {
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/ttyS0")
            .or_else(|_| std::fs::OpenOptions::new().read(true).write(true).open("/dev/console"))
            .unwrap_or_else(|e| halt(&format!("no console: {e}")));
        // SAFETY: plain termios calls on a file descriptor we own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(tty.as_raw_fd(), &mut t) == 0 {
                libc::cfmakeraw(&mut t);
                libc::tcsetattr(tty.as_raw_fd(), libc::TCSANOW, &t);
            }
        }
        tty
    }

    fn halt(msg: &str) -> ! {
        eprintln!("limes init: {msg}");
        reboot()
    }

    fn reboot() -> ! {
        // SAFETY: we are PID 1 and everything worth keeping was written.
        unsafe {
            libc::sync();
            libc::reboot(libc::RB_AUTOBOOT);
        }
        loop {
            std::thread::park();
        }
    }

    pub fn run(handler: Handler) -> ! {
        // Console log level 1: kernel messages would corrupt frames.
        // SAFETY: klogctl with a null buffer only sets the level.
        unsafe {
            libc::klogctl(8, std::ptr::null_mut(), 1);
        }
        let tty = raw_console();
        let mut out = tty.try_clone().unwrap_or_else(|e| halt(&format!("console: {e}")));
        if frame::write_frame(&mut out, READY_MAGIC, &[]).is_err() {
            halt("cannot write to the console");
        }
        let mut input = BufReader::new(tty);
        loop {
            match frame::read_frame(&mut input, frame::REQUEST_MAGIC) {
                Ok(Frame::Payload(p)) => {
                    let res = match frame::decode_request(&p) {
                        Ok(req) => call(handler, req),
                        Err(e) => Err(Error::BadRequest(format!("undecodable request frame: {e}"))),
                    };
                    let _ = frame::write_frame(&mut out, frame::RESPONSE_MAGIC, &frame::encode_response(&res));
                    // One request per boot: a fresh VM per invocation, like
                    // a fresh instance per invocation on the Wasm side.
                    reboot();
                }
                Ok(_) => reboot(),
                Err(e) => halt(&format!("bad request frame: {e}")),
            }
        }
    }
}

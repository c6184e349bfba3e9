//! The native runner: serve request frames from stdin (or a serial console)
//! with one handler, answering on stdout.

use crate::frame::{self, Frame};
use crate::{Error, Handler, Request};
use std::io::{self, BufReader, BufWriter, Read, Write};

/// Call `handler`. A panic is a fault (the counterpart of a Wasm trap), not
/// an answer; it never kills a long-running runner.
pub fn call(handler: Handler, req: Request) -> frame::Answer {
    match std::panic::catch_unwind(move || handler(req)) {
        Ok(r) => frame::Answer::Response(r),
        Err(p) => frame::Answer::Fault(panic_fault(&*p)),
    }
}

/// The trap fault for a panic with this payload.
fn panic_fault(payload: &(dyn std::any::Any + Send)) -> frame::Fault {
    let msg =
        payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned()).unwrap_or_else(|| "unknown panic".into());
    frame::Fault::Trap(format!("function panicked: {msg}"))
}

/// The response payload for `answer`.
fn encode(answer: &frame::Answer) -> Vec<u8> {
    match answer {
        frame::Answer::Response(r) => frame::encode_response(r),
        frame::Answer::Fault(f) => frame::encode_fault(f),
    }
}

#[cfg(any(target_os = "linux", target_os = "hermit"))]
pub use limit::LimitedAlloc;

#[cfg(any(target_os = "linux", target_os = "hermit"))]
mod limit {
    //! The native executable's allocator: the system allocator with a
    //! limit on the bytes allocated at once (`LIMES_MEMORY_LIMIT`, from the
    //! environment, or in a microVM from the kernel command line, which
    //! Linux hands to init as its environment). An allocation past it is
    //! answered with a memory-limit fault frame, written without allocating,
    //! and the runner ends: the counterpart of a Wasm instance hitting its
    //! limit (not an out-of-memory kernel panic).

    use std::alloc::{GlobalAlloc, Layout, System};
    #[cfg(target_os = "linux")]
    use std::sync::atomic::{AtomicBool, AtomicI32};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
    static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
    #[cfg(target_os = "linux")]
    static FAULT_FD: AtomicI32 = AtomicI32::new(1);
    #[cfg(target_os = "linux")]
    static IN_VM: AtomicBool = AtomicBool::new(false);

    /// Read the limit from the environment (call once, at start).
    pub(crate) fn configure() {
        if let Some(n) = std::env::var("LIMES_MEMORY_LIMIT").ok().and_then(|v| v.parse::<usize>().ok()) {
            LIMIT.store(n, Ordering::Relaxed);
        }
    }

    /// Where the fault frame goes, and whether ending means rebooting.
    #[cfg(target_os = "linux")]
    pub(crate) fn fault_to(fd: i32, in_vm: bool) {
        FAULT_FD.store(fd, Ordering::Relaxed);
        IN_VM.store(in_vm, Ordering::Relaxed);
    }

    fn reserve(n: usize) -> bool {
        let prev = ALLOCATED.fetch_add(n, Ordering::Relaxed);
        if prev.saturating_add(n) > LIMIT.load(Ordering::Relaxed) {
            ALLOCATED.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// In a Hermit unikernel the frame goes straight to the serial port
    /// (see `hermit`), and ending the program ends the VM.
    #[cfg(target_os = "hermit")]
    fn over_limit() -> ! {
        super::hermit::Com1::put(&crate::frame::MEMORY_LIMIT_FRAME);
        std::process::exit(5)
    }

    #[cfg(target_os = "linux")]
    fn over_limit() -> ! {
        let f = &crate::frame::MEMORY_LIMIT_FRAME;
        // SAFETY: writing a static buffer to a descriptor, then ending the
        // process (or, as PID 1, the VM); nothing here allocates.
        unsafe {
            libc::write(FAULT_FD.load(Ordering::Relaxed), f.as_ptr().cast(), f.len());
            if IN_VM.load(Ordering::Relaxed) {
                libc::sync();
                libc::reboot(libc::RB_AUTOBOOT);
            }
            libc::_exit(5)
        }
    }

    /// The allocator; install it with `#[global_allocator]` (the native
    /// build's generated `main.rs` does).
    pub struct LimitedAlloc;

    /// Account for `size` bytes around `alloc`: over the limit is a fault,
    /// and a failed allocation gives its reservation back.
    fn counted(size: usize, alloc: impl FnOnce() -> *mut u8) -> *mut u8 {
        if !reserve(size) {
            over_limit();
        }
        let p = alloc();
        if p.is_null() {
            ALLOCATED.fetch_sub(size, Ordering::Relaxed);
        }
        p
    }

    // SAFETY: forwards to the system allocator; only the accounting is ours.
    unsafe impl GlobalAlloc for LimitedAlloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded with the caller's layout.
            counted(layout.size(), || unsafe { System.alloc(layout) })
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded with the caller's layout.
            counted(layout.size(), || unsafe { System.alloc_zeroed(layout) })
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded from the caller.
            unsafe { System.dealloc(ptr, layout) };
            ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let old = layout.size();
            // SAFETY: forwarded from the caller.
            let realloc = || unsafe { System.realloc(ptr, layout, new_size) };
            if new_size > old {
                return counted(new_size - old, realloc);
            }
            let p = realloc();
            if !p.is_null() {
                ALLOCATED.fetch_sub(old - new_size, Ordering::Relaxed);
            }
            p
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
                    Err(e) => frame::Answer::Response(Err(Error::BadRequest(format!("undecodable request frame: {e}")))),
                };
                frame::write_frame(&mut output, frame::RESPONSE_MAGIC, &encode(&res))?;
                served += 1;
            }
        }
    }
}

/// Entry point of a native function executable: serve stdin -> stdout and
/// exit 0 on EOF, 2 on a protocol error. As PID 1 (inside a microVM image)
/// it is the whole userland instead: see [`init`]; in a Hermit unikernel,
/// the whole guest: see [`hermit`].
pub fn main(handler: Handler) -> ! {
    #[cfg(any(target_os = "linux", target_os = "hermit"))]
    limit::configure();
    #[cfg(target_os = "hermit")]
    {
        hermit::run(handler)
    }
    #[cfg(not(target_os = "hermit"))]
    {
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
        super::limit::fault_to(out.as_raw_fd(), true);
        if frame::write_frame(&mut out, READY_MAGIC, &[]).is_err() {
            halt("cannot write to the console");
        }
        let mut input = BufReader::new(tty);
        // One request per boot: a fresh VM per invocation, like a fresh
        // instance per invocation on the Wasm side.
        match frame::read_frame(&mut input, frame::REQUEST_MAGIC) {
            Ok(Frame::Payload(p)) => {
                let res = match frame::decode_request(&p) {
                    Ok(req) => call(handler, req),
                    Err(e) => frame::Answer::Response(Err(Error::BadRequest(format!("undecodable request frame: {e}")))),
                };
                let _ = frame::write_frame(&mut out, frame::RESPONSE_MAGIC, &encode(&res));
                reboot()
            }
            Ok(_) => reboot(),
            Err(e) => halt(&format!("bad request frame: {e}")),
        }
    }
}

#[cfg(target_os = "hermit")]
pub mod hermit {
    //! The function as a Hermit unikernel: it is the whole guest. Frames
    //! travel raw over the first serial port, which this runner drives
    //! itself (a unikernel program runs in ring 0): the kernel's console
    //! would echo every input byte (followed by NULs), turn `\r` into
    //! `\n` and hold output until a newline, none of which a binary frame
    //! survives. Its receive interrupt is switched off first, so the
    //! kernel's handler never takes a byte of ours. One request per boot,
    //! as in the Linux image; the program's exit ends the VM.

    use super::*;

    const COM1: u16 = 0x3F8;
    const IER: u16 = COM1 + 1;
    const LSR: u16 = COM1 + 5;
    const LSR_DATA_READY: u8 = 1;
    const LSR_THR_EMPTY: u8 = 0x20;
    const SPIN_BEFORE_IDLE: std::time::Duration = std::time::Duration::from_millis(50);
    const IDLE_LOOK: std::time::Duration = std::time::Duration::from_millis(10);

    fn outb(port: u16, v: u8) {
        // SAFETY: port I/O on the 16550 UART has no memory effects.
        unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags)) }
    }

    fn inb(port: u16) -> u8 {
        let v: u8;
        // SAFETY: as above.
        unsafe { core::arch::asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags)) };
        v
    }

    /// The first serial port, polled.
    pub struct Com1;

    impl Com1 {
        /// Take the port from the kernel's console driver.
        fn claim() -> Com1 {
            outb(IER, 0);
            Com1
        }

        /// Write `bytes` without allocating (the memory-limit fault path).
        pub fn put(bytes: &[u8]) {
            for &b in bytes {
                while inb(LSR) & LSR_THR_EMPTY == 0 {
                    core::hint::spin_loop();
                }
                outb(COM1, b);
            }
        }
    }

    impl Read for Com1 {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if buf.is_empty() {
                return Ok(0);
            }
            // A VM waits at its ready frame for as long as it sits in a
            // pre-booted pool: spinning there would burn a host core per
            // waiting VM. So spin for a moment (a one-shot run's request
            // follows the ready frame at once, and a frame in flight refills
            // the FIFO), then look every IDLE_LOOK, sleeping in between:
            // Hermit blocks the task for sleeps of 10 ms or more (shorter
            // ones busy-wait) and its idle loop halts the vCPU.
            let waiting = std::time::Instant::now();
            while inb(LSR) & LSR_DATA_READY == 0 {
                if waiting.elapsed() < SPIN_BEFORE_IDLE {
                    core::hint::spin_loop();
                } else {
                    std::thread::sleep(IDLE_LOOK);
                }
            }
            let mut n = 0;
            while n < buf.len() && inb(LSR) & LSR_DATA_READY != 0 {
                buf[n] = inb(COM1);
                n += 1;
            }
            Ok(n)
        }
    }

    impl Write for Com1 {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Com1::put(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    pub fn run(handler: Handler) -> ! {
        // Whatever the program printed so far leaves the kernel's buffer
        // before the port is ours.
        let _ = io::stdout().flush();
        let mut port = Com1::claim();
        // Hermit's target aborts on panic (no unwinding), so `call` cannot
        // catch one: the hook answers with the same trap fault instead.
        std::panic::set_hook(Box::new(|info| {
            let fault = frame::encode_fault(&panic_fault(info.payload()));
            let _ = frame::write_frame(&mut Com1, frame::RESPONSE_MAGIC, &fault);
            std::process::exit(0)
        }));
        let _ = frame::write_frame(&mut port, READY_MAGIC, &[]);
        let code = match frame::read_frame(&mut port, frame::REQUEST_MAGIC) {
            Ok(Frame::Payload(p)) => {
                let res = match frame::decode_request(&p) {
                    Ok(req) => call(handler, req),
                    Err(e) => frame::Answer::Response(Err(Error::BadRequest(format!("undecodable request frame: {e}")))),
                };
                let _ = frame::write_frame(&mut port, frame::RESPONSE_MAGIC, &encode(&res));
                0
            }
            Ok(_) => 0,
            Err(e) => {
                eprintln!("limes hermit runner: bad request frame: {e}");
                2
            }
        };
        std::process::exit(code)
    }
}

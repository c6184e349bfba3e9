//! The microVM backend: boot a function's image under Firecracker (when it
//! and a working KVM are present) or QEMU `-M microvm` (KVM if it works,
//! else TCG software emulation), send the request over the serial console,
//! and read the answer. Every launch runs under a timeout, and the VM
//! process is killed and reaped on every path.

pub mod kvm;
pub mod pool;

use crate::store::InstalledFunction;
use limes_bundle::manifest::ImageKind;
use limes_sdk::frame::{self, Frame};
use limes_sdk::{Request, Response};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when it runs guests here (probed once, remembered), else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Kernel to boot; else the bundle's embedded one, else `$LIMES_KERNEL`.
    pub kernel: Option<PathBuf>,
    /// Launch to the function's ready frame (boot has its own limit).
    pub boot_timeout: Duration,
    /// Request sent to answer: the function's wall-time limit, measured from
    /// the moment the request reaches the booted function, as on Wasm.
    pub timeout: Duration,
    pub accel: Accel,
    /// Where the KVM probe result is remembered (`None`: probe every time).
    pub probe_cache: Option<PathBuf>,
    /// Overrides the manifest's memory limit.
    pub memory_limit: Option<u64>,
    /// Run the VM at the lowest CPU priority (a spare booted in the
    /// background must not slow the requests being served).
    pub background: bool,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            kernel: None,
            boot_timeout: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            accel: Accel::Auto,
            probe_cache: None,
            memory_limit: None,
            background: false,
        }
    }
}

#[derive(Debug)]
pub struct VmOutcome {
    pub result: Result<Response, limes_sdk::Error>,
    /// What the function wrote to its console while it ran (stdout and
    /// stderr share the serial line), its last `frame::KEPT_NOISE` bytes: a
    /// one-shot run prints it on stderr and a server logs it, as they do a
    /// Wasm function's output.
    pub output: Vec<u8>,
    /// Launch to the guest's ready frame.
    pub boot_time: Duration,
    /// Request sent to response received.
    pub exec_time: Duration,
    /// Launch to answer (teardown excluded).
    pub total: Duration,
    /// `qemu-tcg`, `qemu-kvm` or `firecracker`.
    pub hypervisor: String,
    /// The KVM probe, when one ran (not remembered from an earlier run).
    pub kvm_probe: Option<crate::microvm::kvm::Probe>,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{0} has no microVM image: {1}")]
    NoImage(String, &'static str),
    #[error("{name}'s microVM image is built for {image} ({target}) and this device is {host}; run it as Wasm (--backend wasm)")]
    WrongArch { name: String, image: String, target: String, host: &'static str },
    #[error("{0}'s microVM image was not fetched; pull it again with --with-microvm")]
    NotFetched(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("no kernel to boot: pass --kernel PATH or set LIMES_KERNEL (a Debian linux-image kernel works)")]
    NoKernel,
    #[error("no hypervisor: install QEMU (`apt-get install qemu-system-x86`) or Firecracker")]
    NoHypervisor,
    #[error("could not start {cmd}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("the VM did not boot within {}{detail}", show_duration(*ms))]
    BootTimeout { ms: u64, detail: String },
    /// The function did not answer within its limit (the same fault as a
    /// Wasm timeout: exit 5, 504).
    #[error(transparent)]
    Run(#[from] crate::runtime::RunError),
    #[error("the VM ended before answering{detail}")]
    Ended { detail: String },
    #[error("bad frame from the VM: {0}")]
    Frame(String),
    #[error("the VM wrote more than {0} bytes to its console outside frames; it was killed")]
    Flood(u64),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl VmError {
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            VmError::Store(s) => s.kind(),
            VmError::Run(r) => r.kind(),
            // The guest's own misbehaviour: a fault of the function.
            VmError::Flood(_) => crate::ErrorKind::Trap,
            VmError::NoImage(..)
            | VmError::WrongArch { .. }
            | VmError::NotFetched(_)
            | VmError::NoKernel
            | VmError::NoHypervisor
            | VmError::Spawn { .. }
            | VmError::BootTimeout { .. }
            | VmError::Ended { .. }
            | VmError::Frame(_)
            | VmError::Io(_) => crate::ErrorKind::Other,
        }
    }
}

/// Kills and reaps the VM on every path out.
struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(cmd)).find(|p| p.is_file())
}

fn kvm_device() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

enum Event {
    Ready(Instant),
    /// The answer's payload, and what the function wrote to the console
    /// while it ran (its stdout and stderr: they share the serial line).
    Answer(Instant, Vec<u8>, Vec<u8>),
    Eof(Vec<u8>),
    Error(String),
    /// The guest wrote more than this many bytes outside frames; killed.
    Flood(u64),
}

/// Console bytes a guest may write before its ready frame (a Linux boot
/// log is tens of KiB).
pub const MAX_BOOT_NOISE: u64 = 4 << 20;
/// Console bytes a guest may write between its ready frame and its answer
/// (the function's own output included), and after the answer.
pub const MAX_RUN_NOISE: u64 = 1 << 20;

/// Read the VM's serial output through a 64 KiB buffer: ready frame, then
/// the response frame; anything else (boot noise) is skipped, its tail kept
/// for error messages. A guest that writes more than [`MAX_BOOT_NOISE`]
/// before its ready frame or [`MAX_RUN_NOISE`] after it is killed at once
/// (`pid`, our unreaped child) and reported as [`Event::Flood`]: the
/// host's memory never depends on what a guest writes.
fn reader(out: impl Read + Send + 'static, pid: Option<u32>, tx: mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        let mut out = std::io::BufReader::with_capacity(64 << 10, out);
        let mut noise = Vec::new();
        for (magic, ready, max) in [(limes_sdk::native::READY_MAGIC, true, MAX_BOOT_NOISE), (frame::RESPONSE_MAGIC, false, MAX_RUN_NOISE)] {
            match frame::scan_for_magic(&mut out, magic, max) {
                Ok((Frame::Payload(p), skipped)) => {
                    let now = Instant::now();
                    let _ = tx.send(if ready {
                        noise.extend(skipped);
                        Event::Ready(now)
                    } else {
                        Event::Answer(now, p, skipped)
                    });
                }
                Ok((Frame::Eof, skipped)) | Ok((Frame::Shutdown, skipped)) => {
                    noise.extend(skipped);
                    let _ = tx.send(Event::Eof(noise));
                    return;
                }
                Err(frame::FrameError::Noise(n)) => {
                    if let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()).filter(|p| *p > 0) {
                        // SAFETY: kill takes plain integers; `pid` is the VM's
                        // process, not reaped before its `Vm` is dropped, so
                        // the number cannot belong to another process yet.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    let _ = tx.send(Event::Flood(n));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Event::Error(e.to_string()));
                    return;
                }
            }
        }
        // After the answer the VM is torn down; read at most this much of
        // what it still writes (a full pipe then blocks the guest).
        let _ = std::io::copy(&mut (&mut out).take(MAX_RUN_NOISE), &mut std::io::sink());
    });
}

fn tail(noise: &[u8]) -> String {
    let t = String::from_utf8_lossy(&noise[noise.len().saturating_sub(800)..]).trim().to_string();
    if t.is_empty() {
        String::new()
    } else {
        format!("; console: {t}")
    }
}

struct Launch<'a> {
    kind: ImageKind,
    kernel: &'a Path,
    initrd: &'a Path,
    boot_args: &'a str,
    vcpus: u32,
    memory_mib: u32,
}

fn qemu_command(l: &Launch<'_>, kvm: bool) -> Option<Command> {
    let qemu = which("qemu-system-x86_64")?;
    let mut c = Command::new(qemu);
    match l.kind {
        ImageKind::Linux => {
            c.args(["-M", "microvm,isa-serial=on"]).args(["-cpu", if kvm { "host" } else { "max" }]);
        }
        // Hermit on microvm: no legacy timers or PIC (it uses the local
        // APIC), no ACPI; our loader (booted by PVH) receives the command
        // line untouched. Its exit goes through isa-debug-exit, ending QEMU.
        ImageKind::Hermit => {
            c.args(["-M", "microvm,x-option-roms=off,pit=off,pic=off,rtc=on,auto-kernel-cmdline=off,acpi=off"])
                .args(["-cpu", if kvm { "host" } else { "max" }])
                .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        }
    }
    c.args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .args(["-m", &l.memory_mib.to_string(), "-smp", &l.vcpus.to_string()])
        .args(["-accel", if kvm { "kvm" } else { "tcg" }])
        .arg("-kernel")
        .arg(l.kernel)
        .arg("-initrd")
        .arg(l.initrd)
        .args(["-append", l.boot_args])
        // A plain (non-mux) stdio chardev: no escape characters, so the
        // frames are binary-safe.
        .args(["-chardev", "stdio,id=ser0,signal=off", "-serial", "chardev:ser0"]);
    Some(c)
}

fn firecracker_command(l: &Launch<'_>, dir: &Path) -> Option<Result<Command, std::io::Error>> {
    let fc = which("firecracker")?;
    let cfg = serde_json::json!({
        "boot-source": {"kernel_image_path": l.kernel, "initrd_path": l.initrd, "boot_args": l.boot_args},
        "drives": [],
        "machine-config": {"vcpu_count": l.vcpus, "mem_size_mib": l.memory_mib, "smt": false},
    });
    let path = dir.join("firecracker.json");
    Some(std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).map(|_| {
        let mut c = Command::new(fc);
        c.arg("--no-api").arg("--config-file").arg(&path);
        c
    }))
}

/// A VM booted up to its function's ready frame, waiting for its one
/// request. Dropping it kills and reaps the VM.
pub struct BootedVm {
    vm: Vm,
    stdin: std::process::ChildStdin,
    rx: mpsc::Receiver<Event>,
    err_thread: std::thread::JoinHandle<Vec<u8>>,
    start: Instant,
    ready_at: Instant,
    name: String,
    memory_limit: u64,
    /// `qemu-tcg`, `qemu-kvm` or `firecracker`.
    pub hypervisor: String,
    /// The KVM probe, when this boot ran one.
    pub kvm_probe: Option<crate::microvm::kvm::Probe>,
    /// Booted in the idle CPU class (see [`VmOptions::background`]).
    background: bool,
}

impl BootedVm {
    /// The hypervisor's thread ids (empty once it has exited).
    pub fn threads(&self) -> Vec<libc::pid_t> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.vm.0.id())) else { return Vec::new() };
        tasks.flatten().filter_map(|t| t.file_name().to_str()?.parse().ok()).collect()
    }

    /// Give a VM booted in the background (SCHED_IDLE) the normal CPU
    /// class for the request it is about to run, thread by thread; a VM
    /// booted in the normal class is left alone. Leaving the idle class
    /// needs CAP_SYS_NICE: without it the VM runs as it booted, and says so
    /// in the log.
    pub fn to_foreground(&self) {
        if !self.background {
            return;
        }
        let param = priority_zero();
        for tid in self.threads() {
            // SAFETY: a plain syscall on a thread id of our own child.
            if unsafe { libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param) } != 0 {
                tracing::debug!(vm = %self.name, tid, error = %std::io::Error::last_os_error(), "a background VM keeps its CPU class");
            }
        }
    }

    /// Launch to ready frame.
    /// What went wrong with this VM while it waited for a request (it
    /// flooded its console and was killed, or it ended), if anything: a VM
    /// must say nothing between its ready frame and its request.
    pub fn fault(&self) -> Option<String> {
        match self.rx.try_recv() {
            Err(mpsc::TryRecvError::Empty) => None,
            Ok(Event::Flood(n)) => Some(VmError::Flood(n).to_string()),
            Ok(Event::Eof(_)) | Err(mpsc::TryRecvError::Disconnected) => Some("it ended while waiting".into()),
            Ok(Event::Error(e)) => Some(e),
            Ok(Event::Ready(_) | Event::Answer(..)) => Some("it sent a frame while waiting".into()),
        }
    }

    pub fn boot_time(&self) -> Duration {
        self.ready_at - self.start
    }

    /// Send the one request and wait at most `timeout` for the answer
    /// (measured from the request reaching the booted function). The VM
    /// ends afterwards: the returned handle finishes when it has been torn
    /// down (a server may leave it running; a one-shot process joins it).
    pub fn call(self, req: &Request, timeout: Duration) -> Result<(VmOutcome, std::thread::JoinHandle<()>), VmError> {
        let BootedVm { mut vm, mut stdin, rx, err_thread, start, ready_at, name, memory_limit, hypervisor, kvm_probe, background: _ } = self;
        frame::write_frame(&mut stdin, frame::REQUEST_MAGIC, &frame::encode_request(req))?;
        stdin.flush()?;
        let sent = Instant::now();
        let answer = rx.recv_timeout(timeout).map_err(|_| crate::runtime::RunError::Timeout { function: name.clone(), ms: timeout.as_millis() as u64 })?;
        let (answered, payload, output) = match answer {
            Event::Answer(t, p, output) => (t, p, output),
            // The function had its request and ended the VM without an
            // answer (an abort, a crash of PID 1): the fault a Wasm trap is.
            Event::Eof(noise) => {
                let detail = last_words(noise, vm, err_thread);
                return Err(crate::runtime::RunError::Trap { function: name, message: format!("it ended its VM without answering{detail}") }.into());
            }
            Event::Error(e) => return Err(VmError::Frame(e)),
            Event::Flood(n) => return Err(VmError::Flood(n)),
            Event::Ready(_) => return Err(VmError::Frame("second ready frame".into())),
        };
        let total = start.elapsed();
        // The guest reboots after answering, which ends the VM: the answer
        // does not wait for that. Teardown (a moment to exit, then kill and
        // reap) happens beside the caller.
        let teardown = std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until && vm.0.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(stdin);
            drop(vm);
            let _ = err_thread.join();
        });
        // A fault is the same fault as on Wasm: same error, same exit code.
        let result = match frame::decode_answer(&payload).map_err(|e| VmError::Frame(e.to_string()))? {
            frame::Answer::Response(r) => r,
            frame::Answer::Fault(frame::Fault::Trap(message)) => return Err(crate::runtime::RunError::Trap { function: name, message }.into()),
            frame::Answer::Fault(frame::Fault::MemoryLimit) => return Err(crate::runtime::RunError::MemoryLimit { function: name, limit: memory_limit }.into()),
        };
        tracing::debug!(function = %name, "microVM answered");
        Ok((VmOutcome { result, output, boot_time: ready_at - start, exec_time: answered - sent, total, hypervisor, kvm_probe }, teardown))
    }
}

fn ended(noise: Vec<u8>, vm: Vm, err_thread: std::thread::JoinHandle<Vec<u8>>) -> VmError {
    VmError::Ended { detail: last_words(noise, vm, err_thread) }
}

/// Tear the VM down and quote the end of its console and of the
/// hypervisor's stderr.
fn last_words(noise: Vec<u8>, vm: Vm, err_thread: std::thread::JoinHandle<Vec<u8>>) -> String {
    drop(vm);
    let err = err_thread.join().unwrap_or_default();
    format!("{}{}", tail(&noise), tail(&err).replace("console", "hypervisor"))
}

/// Boot up to the ready frame.
fn boot(mut cmd: Command, name: &str, memory_limit: u64, boot_timeout: Duration, background: bool) -> Result<BootedVm, VmError> {
    let shown = format!("{:?}", cmd.get_program());
    if background {
        use std::os::unix::process::CommandExt;
        // SCHED_IDLE rather than nice 19: a request's worker that wakes up
        // preempts an idle-class thread at once, where a nice-19 one may
        // keep the core for the rest of its slice (about a millisecond, four
        // times a no-op request). The hypervisor's threads inherit it.
        // SAFETY: sched_setscheduler is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| {
                let param = priority_zero();
                libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
                Ok(())
            });
        }
    }
    let start = Instant::now();
    let child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|source| VmError::Spawn { cmd: shown, source })?;
    let mut vm = Vm(child);
    let mut stderr = vm.0.stderr.take().expect("piped");
    // A pidfd names this very process even after it is reaped (a plain pid
    // could be reused by then); without one (kernels before 5.3) the boot
    // deadline ends a paused VM instead.
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, vm.0.id() as libc::pid_t, 0) };
    // SAFETY: a descriptor pidfd_open just returned is ours alone.
    let pidfd = (pidfd >= 0).then(|| unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(pidfd as i32) });
    let err_thread = std::thread::spawn(move || {
        // The hypervisor's stderr, its last 64 KiB kept. QEMU under a KVM
        // that cannot run the guest prints `KVM internal error` and pauses
        // the VM, which would then sit out the whole boot deadline: it is
        // ended at once instead (its console closes, and the boot fails
        // quoting this text).
        let mut v = Vec::new();
        let mut buf = [0u8; 4096];
        let mut ended = false;
        while let Ok(n @ 1..) = stderr.read(&mut buf) {
            v.extend_from_slice(&buf[..n]);
            if !ended && v.windows(KVM_FAILED.len()).any(|w| w == KVM_FAILED) {
                ended = true;
                if let Some(fd) = &pidfd {
                    use std::os::fd::AsRawFd;
                    // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
                    unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<libc::siginfo_t>(), 0) };
                }
            }
            if v.len() > 64 << 10 {
                v.drain(..v.len() - (64 << 10));
            }
        }
        v
    });
    let (tx, rx) = mpsc::channel();
    reader(vm.0.stdout.take().expect("piped"), Some(vm.0.id()), tx);
    let booted = rx.recv_timeout(boot_timeout).map_err(|_| VmError::BootTimeout { ms: boot_timeout.as_millis() as u64, detail: String::new() })?;
    let ready_at = match booted {
        Event::Ready(t) => t,
        Event::Eof(noise) => return Err(ended(noise, vm, err_thread)),
        Event::Error(e) => return Err(VmError::Frame(e)),
        Event::Flood(n) => return Err(VmError::Flood(n)),
        Event::Answer(..) => return Err(VmError::Frame("answer before ready".into())),
    };
    let stdin = vm.0.stdin.take().expect("piped");
    Ok(BootedVm { vm, stdin, rx, err_thread, start, ready_at, name: name.to_string(), memory_limit, hypervisor: String::new(), kvm_probe: None, background })
}

/// What QEMU prints when KVM fails to run the guest (then it pauses it).
const KVM_FAILED: &[u8] = b"KVM internal error";

/// `1500 ms`, `60 s`.
fn show_duration(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

/// Bound of the ioctl probe.
const KVM_PROBE_BOUND: Duration = Duration::from_secs(1);
/// Boot deadline of the first, unconfirmed KVM boot (a kernel under working
/// KVM reaches the function well within it).
const KVM_BOOT_CHECK: Duration = Duration::from_millis(1500);

/// Run `f`'s microVM image once with `req`: boot, then one call.
pub fn run(f: &InstalledFunction, req: &Request, opts: &VmOptions) -> Result<VmOutcome, VmError> {
    let (outcome, teardown) = boot_function(f, opts)?.call(req, opts.timeout)?;
    // Nothing of the VM outlives a one-shot run.
    let _ = teardown.join();
    Ok(outcome)
}

/// Boot `f`'s microVM image up to its ready frame (choosing the hypervisor
/// and, once per store, probing KVM), ready for one request.
pub fn boot_function(f: &InstalledFunction, opts: &VmOptions) -> Result<BootedVm, VmError> {
    let name = &f.manifest.function.name;
    let vm = f.manifest.microvm.as_ref().ok_or_else(|| VmError::NoImage(name.clone(), f.manifest.why_no_microvm().unwrap_or_default()))?;
    // The image's architecture is the signed `target` of its native build
    // (today every image is x86_64): an aarch64 device runs such a function
    // as Wasm only, and says so before looking for a hypervisor.
    let image_arch = vm.arch();
    let host = limes_bundle::profile::Arch::host();
    if image_arch.is_none() || image_arch != host {
        return Err(VmError::WrongArch {
            name: name.clone(),
            image: image_arch.map_or_else(|| "an unknown architecture".to_string(), |a| a.name().to_string()),
            target: vm.target.clone(),
            host: host.map_or("not one limes boots images on", |a| a.name()),
        });
    }
    if !f.has(&vm.initrd) {
        return Err(VmError::NotFetched(name.clone()));
    }
    // A Linux image may leave its kernel to the device (`--kernel`,
    // `$LIMES_KERNEL`); a Hermit image always boots its own signed loader.
    let kernel_override = opts.kernel.clone().filter(|_| vm.kind == ImageKind::Linux);
    let kernel = kernel_override
        .clone()
        .or_else(|| vm.kernel.as_ref().map(|k| f.path_of(k)))
        .or_else(|| std::env::var_os("LIMES_KERNEL").map(PathBuf::from).filter(|_| vm.kind == ImageKind::Linux))
        .ok_or(VmError::NoKernel)?;
    // The image runs in a VM, but it is still only what was signed: hash
    // what the hypervisor will read against the manifest before it boots.
    let mut signed: Vec<&str> = vec![&vm.initrd];
    if kernel_override.is_none() {
        signed.extend(vm.kernel.as_deref());
    }
    f.check_files(&signed, crate::store::Integrity::Rehash)?;
    let initrd = f.path_of(&vm.initrd);
    // The function's memory limit, as on Wasm, enforced by the runner's
    // allocator; kept below the VM's RAM (less what the kernel needs) so
    // the limit, not the guest kernel, answers. Linux hands `KEY=VALUE`
    // boot arguments to init as its environment; Hermit takes `env=KEY=VALUE`
    // and the program's arguments after `--`.
    let kernel_mib = match vm.kind {
        ImageKind::Linux => 48,
        ImageKind::Hermit => 16,
    };
    let memory_limit = opts.memory_limit.unwrap_or(f.manifest.limits.memory_bytes).min((u64::from(vm.memory_mib).saturating_sub(kernel_mib)) << 20);
    let boot_args = match vm.kind {
        ImageKind::Linux => format!("{} LIMES_MEMORY_LIMIT={memory_limit}", vm.boot_args),
        ImageKind::Hermit => format!("{} env=LIMES_MEMORY_LIMIT={memory_limit} --", vm.boot_args),
    };
    let l = Launch { kind: vm.kind, kernel: &kernel, initrd: &initrd, boot_args: &boot_args, vcpus: vm.vcpus, memory_mib: vm.memory_mib };

    // KVM runs guests here? Asked once and remembered in the store; `--accel`
    // overrides. First a one-millisecond ioctl probe (a long-mode guest);
    // then, since some nested setups run that but hang a real kernel, the
    // first KVM boot gets a short deadline and falls back to TCG. Only a
    // boot that reached the function confirms KVM.
    let remembered =
        opts.probe_cache.as_ref().and_then(|p| crate::store::read_nofollow(p, 16).ok().flatten()).map(|b| String::from_utf8_lossy(&b).trim().to_string());
    let remember = |answer: &[u8]| {
        if let Some(c) = &opts.probe_cache {
            let _ = crate::store::write_atomic(c, answer);
        }
    };
    let mut kvm_probe = None;
    let (use_kvm, confirmed) = match opts.accel {
        Accel::Tcg => (false, true),
        Accel::Kvm => (true, true),
        Accel::Auto => match remembered.as_deref() {
            Some("kvm") => (true, true),
            Some("tcg") => (false, true),
            _ => {
                let p = if kvm_device() {
                    crate::microvm::kvm::probe(KVM_PROBE_BOUND)
                } else {
                    crate::microvm::kvm::Probe { runs_guests: false, took: Duration::ZERO }
                };
                tracing::info!(runs_guests = p.runs_guests, took_us = p.took.as_micros() as u64, "KVM ioctl probe");
                if !p.runs_guests {
                    remember(b"tcg\n");
                }
                kvm_probe = Some(p);
                (p.runs_guests, false)
            }
        },
    };
    if use_kvm {
        let boot_timeout = if confirmed { opts.boot_timeout } else { opts.boot_timeout.min(KVM_BOOT_CHECK) };
        // A KVM boot that reached the function confirms KVM.
        let booted = |mut o: BootedVm, hypervisor: &str, probe: Option<crate::microvm::kvm::Probe>| {
            if !confirmed {
                remember(b"kvm\n");
            }
            o.hypervisor = hypervisor.into();
            o.kvm_probe = probe;
            o
        };
        let tmp = tempfile::tempdir()?;
        if let Some(cmd) = firecracker_command(&l, tmp.path()) {
            match boot(cmd?, name, memory_limit, boot_timeout, opts.background) {
                Ok(o) => return Ok(booted(o, "firecracker", kvm_probe)),
                Err(e) => tracing::info!(error = %e, "firecracker did not run the guest; trying QEMU"),
            }
        }
        let cmd = qemu_command(&l, true).ok_or(VmError::NoHypervisor)?;
        let t = Instant::now();
        match boot(cmd, name, memory_limit, boot_timeout, opts.background) {
            Ok(o) => return Ok(booted(o, "qemu-kvm", kvm_probe)),
            Err(e) if confirmed => return Err(e),
            Err(e) => {
                tracing::info!(error = %e, "KVM did not boot the kernel; using TCG from now on");
                remember(b"tcg\n");
                if let Some(p) = kvm_probe.as_mut() {
                    p.runs_guests = false;
                    p.took += t.elapsed();
                }
            }
        }
    }
    let cmd = qemu_command(&l, false).ok_or(VmError::NoHypervisor)?;
    let mut o = boot(cmd, name, memory_limit, opts.boot_timeout, opts.background)?;
    o.hypervisor = "qemu-tcg".into();
    o.kvm_probe = kvm_probe;
    Ok(o)
}

/// Priority 0, the only one SCHED_OTHER and SCHED_IDLE take. musl's
/// `sched_param` has more fields than glibc's, so it starts zeroed.
fn priority_zero() -> libc::sched_param {
    // SAFETY: sched_param is plain integers; all zero is a valid value.
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest that floods its console (here `yes`, a real process writing
    /// as fast as it can) is cut off at the bound and killed: the host reads
    /// in chunks and keeps a bounded tail, whatever the guest writes.
    #[test]
    fn a_console_flood_is_bounded_and_kills_the_guest() {
        let mut child = Command::new("yes").arg("flood").stdout(Stdio::piped()).spawn().unwrap();
        let (tx, rx) = mpsc::channel();
        let t = Instant::now();
        reader(child.stdout.take().unwrap(), Some(child.id()), tx);
        match rx.recv_timeout(Duration::from_secs(30)).unwrap() {
            Event::Flood(n) => assert_eq!(n, MAX_BOOT_NOISE),
            _ => panic!("expected a flood"),
        }
        // Killed by the reader, not by us.
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL), "{status:?}");
        assert!(t.elapsed() < Duration::from_secs(30));
    }

    /// Noise within the bounds is skipped, and the frames still arrive; the
    /// answer carries the last `KEPT_NOISE` bytes of the noise before it.
    #[test]
    fn noise_within_bounds_is_skipped() {
        let mut out = vec![b'.'; 100_000];
        frame::write_frame(&mut out, limes_sdk::native::READY_MAGIC, b"").unwrap();
        out.extend(vec![b'-'; 100_000]);
        frame::write_frame(&mut out, frame::RESPONSE_MAGIC, b"answer").unwrap();
        let (tx, rx) = mpsc::channel();
        reader(std::io::Cursor::new(out), None, tx);
        assert!(matches!(rx.recv().unwrap(), Event::Ready(_)));
        assert!(matches!(rx.recv().unwrap(), Event::Answer(_, p, output) if p == b"answer" && output == vec![b'-'; frame::KEPT_NOISE]));
    }
}

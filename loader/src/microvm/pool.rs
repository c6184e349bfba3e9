//! Pre-booted microVMs of one function for `limes serve` (see [`VmPool`]).

use crate::exec::pool::{replacement_backoff, REPLACEMENT_ATTEMPTS};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Pre-booted microVMs of one function for `limes serve`: each VM waits at
/// its function's ready frame for its one request, so a request pays
/// execution, not boot; a VM taken from the pool is replaced by booting
/// another in the background.
pub struct VmPool {
    function: crate::store::InstalledFunction,
    opts: super::VmOptions,
    idle_tx: std::sync::mpsc::Sender<super::BootedVm>,
    idle_rx: Mutex<std::sync::mpsc::Receiver<super::BootedVm>>,
    /// VMs booted, and boots that failed.
    pub boots: std::sync::atomic::AtomicU64,
    pub boot_failures: std::sync::atomic::AtomicU64,
    /// VMs that faulted: flooded their console or ended while waiting, or
    /// while answering.
    pub faults: std::sync::atomic::AtomicU64,
    /// The hypervisor the first VM booted under.
    pub hypervisor: String,
    /// Boot replacements at the lowest CPU priority (set by `auto` while it
    /// routes to Wasm, so spare VMs do not slow the requests it serves).
    pub background: std::sync::atomic::AtomicBool,
}

impl VmPool {
    /// Boot `size` VMs (in parallel) and wait until all wait at their ready
    /// frame. Blocking.
    pub fn start(function: crate::store::InstalledFunction, opts: super::VmOptions, size: usize) -> Result<Arc<VmPool>, super::VmError> {
        let booted: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..size.max(1)).map(|_| s.spawn(|| super::boot_function(&function, &opts))).collect();
            handles.into_iter().map(|h| h.join().expect("boot thread")).collect()
        });
        let (idle_tx, idle_rx) = std::sync::mpsc::channel();
        let mut hypervisor = String::new();
        let n = booted.len() as u64;
        for vm in booted {
            let vm = vm?;
            if hypervisor.is_empty() {
                hypervisor = vm.hypervisor.clone();
            }
            let _ = idle_tx.send(vm);
        }
        Ok(Arc::new(VmPool {
            function,
            opts,
            idle_tx,
            idle_rx: Mutex::new(idle_rx),
            boots: n.into(),
            boot_failures: 0.into(),
            faults: 0.into(),
            hypervisor,
            background: false.into(),
        }))
    }

    /// Boot a replacement in the background.
    fn refill(self: &Arc<Self>) {
        let pool = Arc::downgrade(self);
        std::thread::spawn(move || {
            // A boot in the idle CPU class can starve on a saturated host
            // and time out; without another attempt the pool would shrink
            // for good.
            for attempt in 0..REPLACEMENT_ATTEMPTS {
                let Some(p) = pool.upgrade() else { return };
                let mut opts = p.opts.clone();
                opts.background = p.background.load(std::sync::atomic::Ordering::Relaxed);
                match super::boot_function(&p.function, &opts) {
                    Ok(vm) => {
                        p.boots.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let _ = p.idle_tx.send(vm);
                        return;
                    }
                    Err(e) => {
                        p.boot_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!(function = %p.function.manifest.function.name, attempt, error = %e, "a replacement microVM did not boot");
                    }
                }
                drop(p);
                std::thread::sleep(replacement_backoff(attempt));
            }
        });
    }

    /// Run one request on a pre-booted VM (blocking): at most
    /// `queue_timeout` waiting for a VM, then at most `timeout` for the
    /// answer, measured from the request reaching the function.
    pub fn call(self: &Arc<Self>, req: &limes_sdk::Request, timeout: Duration, queue_timeout: Duration) -> Result<super::VmOutcome, VmCallError> {
        let until = std::time::Instant::now() + queue_timeout;
        let vm = loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            let vm = self.idle_rx.lock().unwrap().recv_timeout(left).map_err(|_| VmCallError::Busy)?;
            self.refill();
            // A VM that faulted while it waited (flooded its console, ended)
            // is dropped (killed and reaped), counted, and replaced.
            match vm.fault() {
                None => break vm,
                Some(why) => {
                    self.faults.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(function = %self.function.manifest.function.name, reason = %why, "a pre-booted microVM faulted while waiting; replaced");
                }
            }
        };
        vm.to_foreground();
        // The VM's teardown runs on beside the server.
        vm.call(req, timeout).map(|(outcome, _teardown)| outcome).map_err(|e| {
            if matches!(e, super::VmError::Flood(_) | super::VmError::Ended { .. }) {
                self.faults.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            VmCallError::Vm(e)
        })
    }
}

/// Why a pre-booted VM gave no answer.
#[derive(Debug)]
pub enum VmCallError {
    /// No VM was ready within the queue timeout.
    Busy,
    Vm(super::VmError),
}

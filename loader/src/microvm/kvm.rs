//! Does KVM run guests here? Answered in milliseconds by running a tiny
//! guest the way a kernel runs: one vCPU put straight into 64-bit long mode
//! with paging (identity-mapped 2 MiB page), executing `mov byte [0x9000],
//! 42; hlt`. Only a `KVM_EXIT_HLT` with the byte written through the page
//! tables counts. Real mode alone is not enough: on some nested setups a
//! guest runs until it enables paging, then hangs (a Linux kernel stops
//! after its real-mode setup). Any error, other exit, or no answer within
//! the bound means "use TCG".

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_GET_VCPU_MMAP_SIZE: libc::c_ulong = 0xAE04;
const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_AE46;
const KVM_RUN: libc::c_ulong = 0xAE80;
const KVM_GET_REGS: libc::c_ulong = 0x8090_AE81;
const KVM_SET_REGS: libc::c_ulong = 0x4090_AE82;
const KVM_GET_SREGS: libc::c_ulong = 0x8138_AE83;
const KVM_SET_SREGS: libc::c_ulong = 0x4138_AE84;
const KVM_EXIT_HLT: u32 = 5;

/// `struct kvm_segment`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Segment {
    base: u64,
    limit: u32,
    selector: u16,
    type_: u8,
    present: u8,
    dpl: u8,
    db: u8,
    s: u8,
    l: u8,
    g: u8,
    avl: u8,
    unusable: u8,
    padding: u8,
}

/// `struct kvm_dtable`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DTable {
    base: u64,
    limit: u16,
    padding: [u16; 3],
}

/// `struct kvm_sregs` (x86).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SRegs {
    cs: Segment,
    ds: Segment,
    es: Segment,
    fs: Segment,
    gs: Segment,
    ss: Segment,
    tr: Segment,
    ldt: Segment,
    gdt: DTable,
    idt: DTable,
    cr0: u64,
    cr2: u64,
    cr3: u64,
    cr4: u64,
    cr8: u64,
    efer: u64,
    apic_base: u64,
    interrupt_bitmap: [u64; 4],
}

const _: () = assert!(std::mem::size_of::<SRegs>() == 312);

/// `struct kvm_regs` (x86): rax..r15, rip, rflags.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Regs {
    gpr: [u64; 16],
    rip: u64,
    rflags: u64,
}

const _: () = assert!(std::mem::size_of::<Regs>() == 144);

const MEM: usize = 0x10000;
const PML4: usize = 0x1000;
const PDPT: usize = 0x2000;
const PD: usize = 0x3000;
const CODE: usize = 0x8000;
const PROOF: usize = 0x9000;

#[repr(C)]
struct MemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

/// The probe's answer and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub runs_guests: bool,
    pub took: Duration,
}

/// Probe KVM, giving up after `bound`.
pub fn probe(bound: Duration) -> Probe {
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    // A KVM_RUN that never returns keeps this thread; the process moves on.
    let spawned = std::thread::Builder::new().name("limes-kvm-probe".into()).spawn(move || {
        let _ = tx.send(run_hlt_guest().is_ok());
    });
    let runs_guests = spawned.is_ok() && rx.recv_timeout(bound).unwrap_or(false);
    Probe { runs_guests, took: start.elapsed() }
}

/// `ioctl(2)` on `fd`, an error as text.
///
/// # Safety
/// `arg` must be what `req` expects: an integer, or the address of a live
/// struct of exactly the layout and size the kernel reads or writes for
/// `req`, valid for the whole call.
unsafe fn ioctl(fd: &OwnedFd, req: libc::c_ulong, arg: libc::c_ulong) -> Result<i32, String> {
    // SAFETY: forwarded to the caller (see above). The request's C type
    // differs between libcs (glibc: c_ulong, musl: c_int).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error().to_string())
    } else {
        Ok(r)
    }
}

fn run_hlt_guest() -> Result<(), String> {
    let path = c"/dev/kvm";
    // SAFETY: a valid C string and flags.
    let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: `raw` is a descriptor we own from here.
    let kvm = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: KVM_GET_API_VERSION takes no argument.
    if unsafe { ioctl(&kvm, KVM_GET_API_VERSION, 0) }? != 12 {
        return Err("unexpected KVM API version".into());
    }
    // SAFETY: KVM_CREATE_VM takes the machine type (0: default) and returns
    // a new descriptor we then own.
    let vm = unsafe { OwnedFd::from_raw_fd(ioctl(&kvm, KVM_CREATE_VM, 0)?) };
    // SAFETY: an anonymous private mapping, unmapped on every path below.
    let mem = unsafe { libc::mmap(std::ptr::null_mut(), MEM, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
    if mem == libc::MAP_FAILED {
        return Err("mmap failed".into());
    }
    let result = (|| {
        // SAFETY: `mem` is a MEM-byte writable mapping, zeroed by the kernel.
        let guest = unsafe { std::slice::from_raw_parts_mut(mem as *mut u8, MEM) };
        let put = |g: &mut [u8], at: usize, v: u64| g[at..at + 8].copy_from_slice(&v.to_le_bytes());
        // Identity-map the first 2 MiB: PML4 -> PDPT -> one 2 MiB page.
        put(guest, PML4, PDPT as u64 | 3);
        put(guest, PDPT, PD as u64 | 3);
        put(guest, PD, 0x83);
        // mov byte [PROOF], 42 ; hlt
        guest[CODE..CODE + 9].copy_from_slice(&[0xC6, 0x04, 0x25, 0x00, 0x90, 0x00, 0x00, 0x2A, 0xF4]);
        let region = MemoryRegion { slot: 0, flags: 0, guest_phys_addr: 0, memory_size: MEM as u64, userspace_addr: mem as u64 };
        // SAFETY: a live `struct kvm_userspace_memory_region` (MemoryRegion is
        // its #[repr(C)] layout) naming the mapping above, which outlives the VM.
        unsafe { ioctl(&vm, KVM_SET_USER_MEMORY_REGION, &region as *const MemoryRegion as libc::c_ulong) }?;
        // SAFETY: KVM_CREATE_VCPU takes the vCPU id and returns a new
        // descriptor we then own.
        let vcpu = unsafe { OwnedFd::from_raw_fd(ioctl(&vm, KVM_CREATE_VCPU, 0)?) };
        let mut sregs = SRegs::default();
        // SAFETY: a live, writable `struct kvm_sregs` (SRegs, #[repr(C)]).
        unsafe { ioctl(&vcpu, KVM_GET_SREGS, &mut sregs as *mut SRegs as libc::c_ulong) }?;
        let code = Segment { base: 0, limit: 0xffff_ffff, selector: 8, type_: 11, present: 1, s: 1, l: 1, g: 1, ..Default::default() };
        let data = Segment { selector: 16, type_: 3, l: 0, db: 1, ..code };
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.cr3 = PML4 as u64;
        sregs.cr4 = 1 << 5; // PAE
        sregs.cr0 = 0x8005_0033; // PE MP ET NE WP AM PG
        sregs.efer = 0x500; // LME LMA
                            // SAFETY: a live `struct kvm_sregs` (SRegs, #[repr(C)]).
        unsafe { ioctl(&vcpu, KVM_SET_SREGS, &sregs as *const SRegs as libc::c_ulong) }?;
        let mut regs = Regs::default();
        // SAFETY: a live, writable `struct kvm_regs` (Regs, #[repr(C)]).
        unsafe { ioctl(&vcpu, KVM_GET_REGS, &mut regs as *mut Regs as libc::c_ulong) }?;
        regs.rip = CODE as u64;
        regs.rflags = 2;
        regs.gpr[4] = 0x7000; // rsp
                              // SAFETY: a live `struct kvm_regs` (Regs, #[repr(C)]).
        unsafe { ioctl(&vcpu, KVM_SET_REGS, &regs as *const Regs as libc::c_ulong) }?;
        // SAFETY: KVM_GET_VCPU_MMAP_SIZE takes no argument.
        let size = unsafe { ioctl(&kvm, KVM_GET_VCPU_MMAP_SIZE, 0) }? as usize;
        // SAFETY: the kernel's shared run structure of this vCPU.
        let run = unsafe { libc::mmap(std::ptr::null_mut(), size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, vcpu.as_raw_fd(), 0) };
        if run == libc::MAP_FAILED {
            return Err("mmap of the vCPU failed".to_string());
        }
        // SAFETY: KVM_RUN takes no argument (it writes the mapped run structure).
        let ran = unsafe { ioctl(&vcpu, KVM_RUN, 0) };
        // SAFETY: `exit_reason` is the u32 at offset 8 of `struct kvm_run`.
        let exit_reason = unsafe { *((run as *const u8).add(8) as *const u32) };
        // SAFETY: unmapping what was mapped above.
        unsafe { libc::munmap(run, size) };
        ran?;
        if exit_reason != KVM_EXIT_HLT {
            return Err(format!("the probe guest exited with reason {exit_reason}"));
        }
        if guest[PROOF] != 42 {
            return Err("the probe guest halted without writing through its page tables".into());
        }
        Ok(())
    })();
    // SAFETY: unmapping what was mapped above.
    unsafe { libc::munmap(mem, MEM) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_answers_within_its_bound() {
        let p = probe(Duration::from_secs(1));
        println!("KVM runs guests: {} ({:?})", p.runs_guests, p.took);
        assert!(p.took < Duration::from_millis(1500), "{p:?}");
    }
}

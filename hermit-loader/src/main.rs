//! limes' boot loader for Hermit unikernels, booted by the PVH protocol, as
//! Firecracker and QEMU boot a 64-bit ELF kernel that is not Linux.
//!
//! Owns: taking the Hermit application image the hypervisor passed as the
//! first module (the initrd), relocating it to free memory clear of every
//! boot structure, describing the machine to the kernel (boot info and
//! a device tree with the memory map and the command line), and jumping to
//! it. It does not own the image's contents: limes verified them against the
//! signed manifest before the hypervisor was started.
//!
//! Any failure is printed on the first serial port as `[limes-loader] ...`
//! and the CPU halts; the host sees the VM stop without the function's ready
//! frame and reports the line.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::format;
use core::fmt::Write;
use core::mem::MaybeUninit;

use hermit_entry::boot_info::{BootInfo, DeviceTreeAddress, HardwareInfo, PlatformInfo, RawBootInfo, SerialPortBase};
use hermit_entry::elf::KernelObject;

core::arch::global_asm!(include_str!("entry.s"), options(att_syntax));

const SERIAL: u16 = 0x3F8;
const MIB2: u64 = 2 << 20;
/// The kernel's boot stack: its `_start` adds its own top offset.
const KERNEL_STACK_SIZE: usize = 0x8000;

mod heap {
    //! A bump allocator over a fixed arena: the loader allocates a device
    //! tree and a few small values once and never frees.
    use core::alloc::{GlobalAlloc, Layout};
    use core::cell::UnsafeCell;

    const SIZE: usize = 256 * 1024;

    #[repr(C, align(4096))]
    struct Arena(UnsafeCell<[u8; SIZE]>, UnsafeCell<usize>);
    // SAFETY: the loader runs on one CPU with interrupts off.
    unsafe impl Sync for Arena {}

    #[global_allocator]
    static ARENA: Arena = Arena(UnsafeCell::new([0; SIZE]), UnsafeCell::new(0));

    unsafe impl GlobalAlloc for Arena {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let base = self.0.get() as usize;
            let next = unsafe { &mut *self.1.get() };
            let start = (base + *next).next_multiple_of(layout.align());
            let end = start + layout.size();
            if end > base + SIZE {
                return core::ptr::null_mut();
            }
            *next = end - base;
            start as *mut u8
        }
        unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
    }
}

struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            // SAFETY: writing a byte to the 16550's data port has no memory effects.
            unsafe { core::arch::asm!("out dx, al", in("dx") SERIAL, in("al") b, options(nomem, nostack)) };
        }
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = writeln!(Serial, "[limes-loader] {}", info.message());
    loop {
        // SAFETY: halting with interrupts off stops this CPU; the host times out.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
    }
}

/// Read a value the hypervisor wrote (identity-mapped, below 4 GiB).
fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: the address comes from the boot information the hypervisor wrote,
    // inside the identity-mapped first 4 GiB.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

unsafe extern "C" {
    static __loader_end: u8;
}

/// What the boot protocol told us: the module (the Hermit image), the RAM,
/// the command line; where what the kernel still reads after the jump ends
/// (`keep_end`: the kernel only ever hands out memory above itself), and
/// what must survive only until the image is loaded (`busy`).
struct Machine {
    image: &'static [u8],
    regions: alloc::vec::Vec<(u64, u64)>,
    command_line: Option<&'static str>,
    keep_end: u64,
    busy: alloc::vec::Vec<(u64, u64)>,
}

/// The lowest 2 MiB-aligned address above `keep_end` where `size` bytes
/// (and a 2 MiB start of the kernel's heap) fit in RAM beside `busy`.
fn place(size: u64, m: &Machine) -> Option<u64> {
    let mut candidates: alloc::vec::Vec<u64> = core::iter::once(m.keep_end).chain(m.busy.iter().map(|b| b.1)).map(|a| a.next_multiple_of(MIB2)).collect();
    candidates.sort_unstable();
    candidates.into_iter().find(|&at| {
        let end = at + size + MIB2;
        at >= m.keep_end
            && m.regions.iter().any(|&(b, l)| b <= at && end <= b + l)
            && m.busy.iter().all(|&(s, e)| e <= at || s >= end)
    })
}

/// A NUL-terminated string QEMU or Firecracker wrote; its end.
fn c_string(p: u64) -> (&'static str, u64) {
    let mut len = 0u64;
    while read::<u8>(p + len) != 0 {
        len += 1;
    }
    // SAFETY: the hypervisor wrote this string and nothing writes it later.
    let bytes = unsafe { core::slice::from_raw_parts(p as usize as *const u8, len as usize) };
    (core::str::from_utf8(bytes).unwrap_or_else(|_| panic!("the command line is not UTF-8")), p + len + 1)
}

/// The module at [start, end).
fn module(start: u64, end: u64) -> &'static [u8] {
    // SAFETY: the hypervisor copied the module there before starting us.
    unsafe { core::slice::from_raw_parts(start as usize as *const u8, (end - start) as usize) }
}

/// PVH `hvm_start_info` (Firecracker, or QEMU with a 64-bit ELF): version
/// 1 carries the memory map.
fn pvh(info: u64, loader_end: u64) -> Machine {
    if read::<u32>(info) != PVH_MAGIC {
        panic!("bad hvm_start_info magic");
    }
    let version: u32 = read(info + 4);
    // The hypervisor may put these anywhere (QEMU puts the module at the
    // top of RAM); the kernel needs none of them after the jump (the
    // command line travels in the device tree).
    let mut busy = alloc::vec![(info, info + 56)];
    let cmdline: u64 = read(info + 24);
    let command_line = (cmdline != 0).then(|| {
        let (s, end) = c_string(cmdline);
        busy.push((cmdline, end));
        s
    });
    let (count, modlist): (u32, u64) = (read(info + 12), read(info + 16));
    if count == 0 {
        panic!("no module: pass the Hermit image as the initrd");
    }
    busy.push((modlist, modlist + 32 * count as u64));
    for i in 0..count as u64 {
        let (addr, size): (u64, u64) = (read(modlist + 32 * i), read(modlist + 32 * i + 8));
        busy.push((addr, addr + size));
    }
    let (addr, size): (u64, u64) = (read(modlist), read(modlist + 8));
    let image = module(addr, addr + size);
    if version < 1 || read::<u32>(info + 48) == 0 {
        panic!("no memory map in hvm_start_info (version {version})");
    }
    let (memmap, entries): (u64, u32) = (read(info + 40), read(info + 48));
    busy.push((memmap, memmap + 24 * entries as u64));
    let mut regions = alloc::vec::Vec::new();
    for i in 0..entries as u64 {
        let (base, len, kind): (u64, u64, u32) = (read(memmap + 24 * i), read(memmap + 24 * i + 8), read(memmap + 24 * i + 16));
        if kind == 1 && len > 0 {
            regions.push((base, len));
        }
    }
    Machine { image, regions, command_line, keep_end: loader_end, busy }
}

const PVH_MAGIC: u32 = 0x336e_c578;

/// Called from entry.s in long mode with the hvm_start_info address.
#[unsafe(no_mangle)]
extern "C" fn loader_main(info: u64) -> ! {
    let machine = pvh(info, core::ptr::addr_of!(__loader_end) as u64);

    let kernel = KernelObject::parse(machine.image).unwrap_or_else(|e| panic!("the module is not a Hermit image: {e:?}"));
    let mem_size = kernel.mem_size() as u64;
    let kernel_addr = match kernel.start_addr() {
        Some(fixed) => fixed,
        None => place(mem_size, &machine).unwrap_or_else(|| panic!("no room for the image's {} KiB: give the VM more memory", mem_size / 1024)),
    };
    // SAFETY: [kernel_addr, +mem_size) is RAM clear of every structure we still read.
    let memory = unsafe { core::slice::from_raw_parts_mut(kernel_addr as usize as *mut MaybeUninit<u8>, mem_size as usize) };
    let loaded = kernel.load_kernel(memory, kernel_addr);

    let fdt = device_tree(&machine.regions, machine.command_line).unwrap_or_else(|e| panic!("device tree: {e:?}"));
    let boot_info = BootInfo {
        hardware_info: HardwareInfo {
            phys_addr_range: 0..0,
            serial_port_base: SerialPortBase::new(SERIAL),
            device_tree: DeviceTreeAddress::new(fdt.as_ptr() as u64),
        },
        load_info: loaded.load_info,
        // The kernel reads the command line from the device tree.
        platform_info: PlatformInfo::Fdt,
    };
    let raw: &'static RawBootInfo = Box::leak(Box::new(RawBootInfo::from(boot_info)));
    let layout = core::alloc::Layout::from_size_align(KERNEL_STACK_SIZE, 4096).expect("stack layout");
    // SAFETY: a non-zero layout; the arena's memory is zeroed (it is .bss).
    let stack = unsafe { alloc::alloc::alloc(layout) };
    if stack.is_null() {
        panic!("no memory left for the kernel's stack");
    }

    // SAFETY: the kernel's entry point, per hermit_entry::Entry; the stack and
    // the boot info live in loader memory below the kernel, which the kernel
    // never hands out.
    unsafe {
        core::arch::asm!(
            "mov rsp, {stack}",
            "jmp {entry}",
            stack = in(reg) stack,
            entry = in(reg) loaded.entry_point,
            in("rdi") raw as *const RawBootInfo,
            in("rsi") 0u64,
            options(noreturn)
        )
    }
}

/// The device tree Hermit reads its memory map and command line from.
fn device_tree(regions: &[(u64, u64)], command_line: Option<&str>) -> vm_fdt::FdtWriterResult<&'static [u8]> {
    let mut w = vm_fdt::FdtWriter::new()?;
    let root = w.begin_node("")?;
    w.property_string("compatible", "hermit,pvh")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    for &(base, len) in regions {
        let node = w.begin_node(&format!("memory@{base:x}"))?;
        w.property_string("device_type", "memory")?;
        w.property_array_u64("reg", &[base, len])?;
        w.end_node(node)?;
    }
    let chosen = w.begin_node("chosen")?;
    if let Some(c) = command_line {
        w.property_string("bootargs", c)?;
    }
    w.end_node(chosen)?;
    w.end_node(root)?;
    Ok(alloc::vec::Vec::leak(w.finish()?))
}

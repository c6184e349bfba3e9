//! limes' Multiboot (v1) loader for Hermit unikernels.
//!
//! Owns: taking the Hermit application image QEMU passed as the first
//! Multiboot module (`-initrd`), relocating it to free memory above every
//! Multiboot structure, describing the machine to the kernel (boot info and
//! a device tree with the memory map and the command line), and jumping to
//! it. It does not own the image's contents: limes verified them against the
//! signed manifest before QEMU was started.
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
use core::num::NonZeroU64;

use hermit_entry::boot_info::{BootInfo, DeviceTreeAddress, HardwareInfo, PlatformInfo, RawBootInfo, SerialPortBase};
use hermit_entry::elf::KernelObject;

core::arch::global_asm!(include_str!("entry.s"), options(att_syntax));

const SERIAL: u16 = 0x3F8;
const MULTIBOOT_LOADER_MAGIC: u64 = 0x2BAD_B002;
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

/// Read a value of the Multiboot information (identity-mapped, below 4 GiB).
fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: the address comes from the Multiboot information QEMU wrote,
    // inside the identity-mapped first 4 GiB.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

unsafe extern "C" {
    static __loader_end: u8;
}

/// Called from entry.s in long mode with the Multiboot registers.
#[unsafe(no_mangle)]
extern "C" fn loader_main(mbi: u64, magic: u64) -> ! {
    if magic != MULTIBOOT_LOADER_MAGIC {
        panic!("not started by a Multiboot loader (magic {magic:#x})");
    }
    let flags: u32 = read(mbi);
    // Everything the loader must not overwrite ends below `highest`.
    let mut highest = core::ptr::addr_of!(__loader_end) as u64;
    highest = highest.max(mbi + 88);

    let command_line: Option<&'static str> = (flags & (1 << 2) != 0).then(|| {
        let p: u32 = read(mbi + 16);
        let mut len = 0u64;
        while read::<u8>(p as u64 + len) != 0 {
            len += 1;
        }
        highest = highest.max(p as u64 + len + 1);
        // SAFETY: QEMU wrote this NUL-terminated string and nothing writes it later.
        let bytes = unsafe { core::slice::from_raw_parts(p as usize as *const u8, len as usize) };
        core::str::from_utf8(bytes).unwrap_or_else(|_| panic!("the command line is not UTF-8"))
    });

    if flags & (1 << 3) == 0 || read::<u32>(mbi + 20) == 0 {
        panic!("no module: pass the Hermit image with -initrd");
    }
    let mods: u32 = read(mbi + 24);
    let count: u32 = read(mbi + 20);
    highest = highest.max(mods as u64 + 16 * count as u64);
    for i in 0..count as u64 {
        highest = highest.max(read::<u32>(mods as u64 + 16 * i + 4) as u64);
    }
    let (start, end): (u32, u32) = (read(mods as u64), read(mods as u64 + 4));
    // SAFETY: QEMU copied the module to [start, end) before starting us.
    let image = unsafe { core::slice::from_raw_parts(start as usize as *const u8, (end - start) as usize) };

    if flags & (1 << 6) == 0 {
        panic!("no memory map in the Multiboot information");
    }
    let (mmap_len, mmap_addr): (u32, u32) = (read(mbi + 44), read(mbi + 48));
    highest = highest.max(mmap_addr as u64 + mmap_len as u64);
    let mut regions = alloc::vec::Vec::new();
    let mut at = mmap_addr as u64;
    while at < mmap_addr as u64 + mmap_len as u64 {
        let size: u32 = read(at);
        let (base, len, kind): (u64, u64, u32) = (read(at + 4), read(at + 12), read(at + 20));
        if kind == 1 && len > 0 {
            regions.push((base, len));
        }
        at += size as u64 + 4;
    }

    let kernel = KernelObject::parse(image).unwrap_or_else(|e| panic!("the module is not a Hermit image: {e:?}"));
    let mem_size = kernel.mem_size() as u64;
    let kernel_addr = kernel.start_addr().unwrap_or(highest.next_multiple_of(MIB2));
    let fits = regions.iter().any(|&(b, l)| b <= kernel_addr && kernel_addr + mem_size + MIB2 <= b + l);
    if !fits {
        panic!("the image needs {} KiB at {kernel_addr:#x}: give the VM more memory", mem_size / 1024);
    }
    // SAFETY: [kernel_addr, +mem_size) is RAM above every structure we still read.
    let memory = unsafe { core::slice::from_raw_parts_mut(kernel_addr as usize as *mut MaybeUninit<u8>, mem_size as usize) };
    let loaded = kernel.load_kernel(memory, kernel_addr);

    let fdt = device_tree(&regions, command_line).unwrap_or_else(|e| panic!("device tree: {e:?}"));
    let boot_info = BootInfo {
        hardware_info: HardwareInfo {
            phys_addr_range: 0..0,
            serial_port_base: SerialPortBase::new(SERIAL),
            device_tree: DeviceTreeAddress::new(fdt.as_ptr() as u64),
        },
        load_info: loaded.load_info,
        platform_info: PlatformInfo::Multiboot { command_line, multiboot_info_addr: NonZeroU64::new(mbi).expect("mbi is not null") },
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
    w.property_string("compatible", "hermit,multiboot")?;
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

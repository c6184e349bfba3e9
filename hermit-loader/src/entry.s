# PVH entry (Xen's ELF note 18, XEN_ELFNOTE_PHYS32_ENTRY): how Firecracker
# and QEMU boot a 64-bit ELF kernel that is not Linux. The hypervisor jumps
# to pvh_start in 32-bit protected mode, paging off, EBX = hvm_start_info.
# We identity-map the first 4 GiB with 2 MiB pages (enough for any guest
# this loader is given; the kernel maps the rest itself), enter long mode
# and call loader_main.

.section .note.Xen, "a", @note
.align 4
    .4byte 4                    # name size
    .4byte 4                    # descriptor size
    .4byte 18                   # XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .4byte pvh_start

.section .rodata.boot, "a"
.align 16
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF    # 0x08: 64-bit code, ring 0
    .quad 0x00CF92000000FFFF    # 0x10: data, ring 0
boot_gdtr:
    .word 23
    .quad boot_gdt

.section .bss.boot, "aw", @nobits
.align 4096
boot_pml4:  .skip 4096
boot_pdpt:  .skip 4096
boot_pd:    .skip 4096 * 4
boot_stack: .skip 65536
boot_stack_top:

.section .text.entry, "ax"
.code32
.global pvh_start
pvh_start:
    cli
    movl %ebx, %edi             # hvm_start_info: the argument
    movl $boot_stack_top, %esp

    # Without CPUID's long-mode bit there is nothing we can boot.
    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb no_long_mode
    movl $0x80000001, %eax
    cpuid
    testl $(1 << 29), %edx
    jz no_long_mode

    movl $boot_pdpt, %eax
    orl $3, %eax
    movl %eax, boot_pml4
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $12, %eax
    addl $boot_pd, %eax
    orl $3, %eax
    movl %eax, boot_pdpt(, %ecx, 8)
    incl %ecx
    cmpl $4, %ecx
    jb 1b
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax             # present, writable, 2 MiB page
    movl %eax, boot_pd(, %ecx, 8)
    incl %ecx
    cmpl $2048, %ecx
    jb 2b

    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $(1 << 5), %eax         # PAE
    movl %eax, %cr4
    movl $0xC0000080, %ecx      # EFER.LME
    rdmsr
    orl $(1 << 8), %eax
    wrmsr
    movl %cr0, %eax
    andl $~(1 << 2), %eax       # no FPU emulation
    orl $((1 << 31) | (1 << 1)), %eax   # paging, FPU monitoring
    movl %eax, %cr0
    lgdt boot_gdtr
    ljmp $0x08, $start64

no_long_mode:
    # "LM?" on the first serial port, then stop.
    movw $0x3F8, %dx
    movb $'L', %al
    outb %al, %dx
    movb $'M', %al
    outb %al, %dx
    movb $'?', %al
    outb %al, %dx
3:  hlt
    jmp 3b

.code64
start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movl $boot_stack_top, %esp
    # The upper halves of 64-bit registers are undefined after the switch.
    movl %edi, %edi
    cld
    call loader_main
4:  hlt
    jmp 4b

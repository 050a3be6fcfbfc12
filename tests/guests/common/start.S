/*
 * Entry code shared by every freestanding test guest.
 *
 * The monitor loads the ELF at its physical addresses and starts the boot
 * vCPU at the PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY below) in 32-bit
 * protected mode, paging off, with %ebx holding the physical address of the
 * hvm_start_info structure.  We build identity page tables for the low
 * 4 GiB (2 MiB pages, so MMIO windows and the LAPIC/IOAPIC are reachable),
 * enter long mode and call guest_main(start_info).  Its return value is
 * written to the debug-exit port 0xF4, which ends the VM with exit status
 * (value << 1) | 1.
 */
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define DEBUG_EXIT_PORT 0xf4

	.section .note.Xen, "a", @note
	.p2align 2
	.long 4				/* namesz: "Xen\0" */
	.long 8				/* descsz: 64-bit entry address, like Linux */
	.long XEN_ELFNOTE_PHYS32_ENTRY
	.asciz "Xen"
	.p2align 2
	.quad pvh_start
	.p2align 2

	.section .text.boot, "ax"
	.code32
	.globl pvh_start
pvh_start:
	cli
	cld
	mov	%ebx, %esi			/* keep start_info across setup */
	mov	$boot_stack_top, %esp

	/* PD entries: 2048 x 2 MiB, present | writable | page size. */
	mov	$pd_tables, %edi
	xor	%ecx, %ecx
1:	mov	%ecx, %eax
	shl	$21, %eax
	or	$0x83, %eax
	mov	%eax, (%edi,%ecx,8)
	mov	%ecx, %eax
	shr	$11, %eax			/* high dword: entry index >> 11 (0) */
	mov	%eax, 4(%edi,%ecx,8)
	inc	%ecx
	cmp	$2048, %ecx
	jb	1b

	/* PDPT: four entries pointing at the four page directories. */
	mov	$pdpt, %edi
	mov	$pd_tables + 0x003, %eax
	mov	%eax, 0(%edi)
	add	$0x1000, %eax
	mov	%eax, 8(%edi)
	add	$0x1000, %eax
	mov	%eax, 16(%edi)
	add	$0x1000, %eax
	mov	%eax, 24(%edi)

	/* PML4[0] -> PDPT. */
	mov	$pml4, %edi
	mov	$pdpt + 0x003, %eax
	mov	%eax, (%edi)

	mov	%edi, %cr3
	mov	%cr4, %eax
	or	$0x20, %eax			/* PAE */
	mov	%eax, %cr4
	mov	$0xc0000080, %ecx		/* EFER */
	rdmsr
	or	$0x100, %eax			/* LME */
	wrmsr
	mov	%cr0, %eax
	or	$0x80000001, %eax		/* PG | PE */
	mov	%eax, %cr0

	lgdt	gdt_desc
	ljmp	$0x08, $long_entry

	.code64
long_entry:
	mov	$0x10, %ax
	mov	%ax, %ds
	mov	%ax, %es
	mov	%ax, %ss
	mov	%ax, %fs
	mov	%ax, %gs
	mov	$boot_stack_top, %rsp
	mov	%esi, %edi			/* zero-extends: rdi = start_info */
	call	guest_main
	.globl	guest_exit_asm
guest_exit_asm:
	mov	$DEBUG_EXIT_PORT, %dx
	outl	%eax, %dx
2:	cli
	hlt
	jmp	2b

	.section .rodata
	.p2align 3
gdt:
	.quad 0				/* null */
	.quad 0x00af9a000000ffff	/* 0x08: 64-bit code, DPL 0 */
	.quad 0x00cf92000000ffff	/* 0x10: data, DPL 0 */
gdt_end:
	.p2align 3
gdt_desc:
	.word gdt_end - gdt - 1
	.long gdt
	.long 0

	.section .bss
	.p2align 12
pml4:	.skip 0x1000
pdpt:	.skip 0x1000
pd_tables:
	.skip 0x4000
	.p2align 4
boot_stack:
	.skip 0x4000
boot_stack_top:

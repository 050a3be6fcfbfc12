/*
 * smp: start the second vCPU the way firmware does, with INIT-SIPI-SIPI
 * from the boot CPU's LAPIC, through a real-mode trampoline copied to
 * 0x10000 (SIPI vector 0x10) that enters long mode on the boot CPU's page
 * tables.  Both CPUs then run: the AP switches its LAPIC to x2APIC mode,
 * reads its ID through MSR 0x802 and counts; the BSP checks CPUID topology
 * (leaf 1 and leaf 0xB) and waits for the AP's results.
 */
#include "guest.h"

#define TRAMP_BASE 0x10000

extern char tramp_start[], tramp_end[], tramp_cr3[], tramp_stack[], tramp_entry[];

__asm__(
	"	.section .rodata\n"
	"	.code16\n"
	"	.globl tramp_start\n"
	"tramp_start:\n"
	"	cli\n"
	"	mov %cs, %ax\n"
	"	mov %ax, %ds\n"
	"	lgdtl (tramp_gdt_desc - tramp_start)\n"
	"	mov %cr0, %eax\n"
	"	or $1, %eax\n"
	"	mov %eax, %cr0\n"
	"	.byte 0x66, 0xea\n"
	"	.long 0x10000 + (tramp32 - tramp_start)\n"
	"	.word 0x08\n"
	"	.code32\n"
	"tramp32:\n"
	"	mov $0x10, %ax\n"
	"	mov %ax, %ds\n"
	"	mov %ax, %es\n"
	"	mov %ax, %ss\n"
	"	mov 0x10000 + (tramp_cr3 - tramp_start), %eax\n"
	"	mov %eax, %cr3\n"
	"	mov %cr4, %eax\n"
	"	or $0x20, %eax\n"
	"	mov %eax, %cr4\n"
	"	mov $0xc0000080, %ecx\n"
	"	rdmsr\n"
	"	or $0x100, %eax\n"
	"	wrmsr\n"
	"	mov %cr0, %eax\n"
	"	or $0x80000000, %eax\n"
	"	mov %eax, %cr0\n"
	"	ljmp $0x18, $(0x10000 + (tramp64 - tramp_start))\n"
	"	.code64\n"
	"tramp64:\n"
	"	mov $0x10, %ax\n"
	"	mov %ax, %ds\n"
	"	mov %ax, %es\n"
	"	mov %ax, %ss\n"
	"	mov 0x10000 + (tramp_stack - tramp_start), %rsp\n"
	"	mov 0x10000 + (tramp_entry - tramp_start), %rax\n"
	"	call *%rax\n"
	"1:	cli\n"
	"	hlt\n"
	"	jmp 1b\n"
	"	.p2align 3\n"
	"tramp_gdt:\n"
	"	.quad 0\n"
	"	.quad 0x00cf9a000000ffff\n"
	"	.quad 0x00cf92000000ffff\n"
	"	.quad 0x00af9a000000ffff\n"
	"tramp_gdt_desc:\n"
	"	.word 31\n"
	"	.long 0x10000 + (tramp_gdt - tramp_start)\n"
	"	.p2align 3\n"
	"	.globl tramp_cr3, tramp_stack, tramp_entry, tramp_end\n"
	"tramp_cr3:\n"
	"	.quad 0\n"
	"tramp_stack:\n"
	"	.quad 0\n"
	"tramp_entry:\n"
	"	.quad 0\n"
	"tramp_end:\n"
	"	.text\n");

static u8 ap_stack[16384] __attribute__((aligned(16)));
static volatile u32 ap_started, ap_x2apic_id = 0xffffffff, ap_count, ap_leaf1_apic = 0xff;

static inline u64 rdmsr(u32 msr)
{
	u32 lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((u64)hi << 32) | lo;
}

static inline void wrmsr(u32 msr, u64 v)
{
	__asm__ volatile("wrmsr" : : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)));
}

void ap_main(void)
{
	u32 a, b, c, d;
	ap_started = 1;
	cpuid(1, 0, &a, &b, &c, &d);
	ap_leaf1_apic = b >> 24;
	if (c & (1u << 21)) {
		wrmsr(0x1b, rdmsr(0x1b) | (1u << 11) | (1u << 10)); /* enable, x2APIC */
		ap_x2apic_id = (u32)rdmsr(0x802);
	}
	for (u32 i = 0; i < 1000; i++)
		ap_count++;
	for (;;)
		__asm__ volatile("cli; hlt");
}

static int wait(volatile u32 *v, u32 want)
{
	for (long i = 0; i < 50000000; i++) {
		if (*v == want)
			return 1;
		cpu_relax();
	}
	return 0;
}

static void icr(u32 dest, u32 low)
{
	lapic_write(0x310, dest << 24);
	lapic_write(0x300, low);
	for (int i = 0; i < 100000 && (lapic_read(0x300) & (1u << 12)); i++)
		cpu_relax();
}

u32 guest_main(struct hvm_start_info *si)
{
	(void)si;
	u32 a, b, c, d;
	cpuid(1, 0, &a, &b, &c, &d);
	printf("bsp: apic id %u, logical cpus %u, x2apic %u\n", b >> 24, (b >> 16) & 0xff, (c >> 21) & 1);
	CHECK((b >> 24) == 0);
	cpuid(0, 0, &a, &b, &c, &d);
	if (a >= 0xb) {
		cpuid(0xb, 1, &a, &b, &c, &d);
		printf("bsp: leaf 0xb core level: %u cpus, shift %u\n", b & 0xffff, a & 0x1f);
	}

	cpuid(0x40000000, 0, &a, &b, &c, &d);
	if (a >= 0x40000010) {
		cpuid(0x40000010, 0, &a, &b, &c, &d);
		printf("bsp: tsc %s\n", a > 100000 ? "frequency published" : "frequency missing");
	}

	usize n = (usize)(tramp_end - tramp_start);
	u64 cr3;
	__asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
	memcpy((void *)TRAMP_BASE, tramp_start, n);
	*(u64 *)(TRAMP_BASE + (tramp_cr3 - tramp_start)) = cr3;
	*(u64 *)(TRAMP_BASE + (tramp_stack - tramp_start)) = (u64)(ap_stack + sizeof(ap_stack));
	*(u64 *)(TRAMP_BASE + (tramp_entry - tramp_start)) = (u64)ap_main;

	lapic_enable();
	icr(1, 0x00004500);                       /* INIT */
	for (volatile int i = 0; i < 100000; i++)
		;
	icr(1, 0x00004600 | (TRAMP_BASE >> 12)); /* SIPI */
	if (!ap_started)
		icr(1, 0x00004600 | (TRAMP_BASE >> 12));
	CHECK(wait(&ap_started, 1));
	CHECK(wait(&ap_count, 1000));
	printf("ap: running, cpuid apic id %u, x2apic id %u, counted %u\n", ap_leaf1_apic, ap_x2apic_id,
	       ap_count);
	CHECK(ap_leaf1_apic == 1);
	CHECK(ap_x2apic_id == 1);
	printf("GUEST PASS\n");
	return GUEST_EXIT_PASS;
}

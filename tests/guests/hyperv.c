/*
 * hyperv: the Hyper-V interface a Windows guest sees with
 * `--cpus N,hyperv=on`, checked from inside: the "Microsoft Hv" leaves and
 * their feature bits, KVM's leaves moved to 0x40000100, the VP index, the
 * frequency MSRs, the partition reference counter against the TSC, the
 * reference TSC page, the hypercall page (guest OS ID first) with an IPI
 * hypercall to ourselves, a TLB flush hypercall, a message hypercall this
 * partition has no privilege for, the SynIC MSRs (a SIMP write reaches the
 * monitor as a KVM_EXIT_HYPERV) and a direct-mode synthetic timer.
 *
 * Every line starting "hv:" is for the test to read; the guest ends with
 * GUEST PASS (exit 0x10) or a CHECK failure.
 */
#include "guest.h"

#define HV_MSR_GUEST_OS_ID 0x40000000
#define HV_MSR_HYPERCALL 0x40000001
#define HV_MSR_VP_INDEX 0x40000002
#define HV_MSR_TIME_REF_COUNT 0x40000020
#define HV_MSR_REFERENCE_TSC 0x40000021
#define HV_MSR_TSC_FREQUENCY 0x40000022
#define HV_MSR_APIC_FREQUENCY 0x40000023
#define HV_MSR_SCONTROL 0x40000080
#define HV_MSR_SVERSION 0x40000081
#define HV_MSR_SIMP 0x40000083
#define HV_MSR_STIMER0_CONFIG 0x400000b0
#define HV_MSR_STIMER0_COUNT 0x400000b1

#define HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE 0x0002
#define HVCALL_SEND_IPI 0x000b
#define HVCALL_POST_MESSAGE 0x005c
#define HVCALL_FAST (1ul << 16)

#define IPI_VECTOR 0x61
#define STIMER_VECTOR 0x62

static u8 hypercall_page[4096] __attribute__((aligned(4096)));
static u8 tsc_page[4096] __attribute__((aligned(4096)));
static u8 simp_page[4096] __attribute__((aligned(4096)));
static u64 flush_input[3] __attribute__((aligned(8)));
static volatile u32 ipis, stimer_hits;

static inline u64 rdmsr(u32 msr)
{
	u32 lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((u64)hi << 32) | lo;
}

static inline void wrmsr(u32 msr, u64 v)
{
	__asm__ volatile("wrmsr" : : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)) : "memory");
}

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

/* A hypercall through the page KVM filled in: control in RCX, input in
 * RDX, output in R8; the status comes back in RAX. */
static u64 hypercall(u64 control, u64 in, u64 out)
{
	u64 status;
	register u64 r8 __asm__("r8") = out;
	void *page = hypercall_page;
	__asm__ volatile("call *%[page]"
			 : "=a"(status), "+c"(control), "+d"(in), "+r"(r8)
			 : [page] "r"(page)
			 : "cc", "memory", "r9", "r10", "r11");
	return status;
}

__attribute__((interrupt)) static void ipi_isr(struct interrupt_frame *f)
{
	(void)f;
	ipis++;
	lapic_eoi();
}

__attribute__((interrupt)) static void stimer_isr(struct interrupt_frame *f)
{
	(void)f;
	stimer_hits++;
	lapic_eoi();
}

__attribute__((interrupt)) static void spurious(struct interrupt_frame *f)
{
	(void)f;
}

static int wait_for(volatile u32 *c, u32 want)
{
	for (u64 i = 0; i < 200000000ul; i++) {
		if (*c >= want)
			return 1;
		cpu_relax();
	}
	return 0;
}

static void leaf(u32 l, u32 *a, u32 *b, u32 *c, u32 *d)
{
	cpuid(l, 0, a, b, c, d);
}

u32 guest_main(struct hvm_start_info *si)
{
	(void)si;
	u32 a, b, c, d;
	char sig[13];

	leaf(1, &a, &b, &c, &d);
	CHECK(c & (1u << 31)); /* hypervisor present */

	leaf(0x40000000, &a, &b, &c, &d);
	memcpy(sig, &b, 4);
	memcpy(sig + 4, &c, 4);
	memcpy(sig + 8, &d, 4);
	sig[12] = 0;
	printf("hv: vendor \"%s\" max leaf %x\n", sig, a);
	CHECK(memcmp(sig, "Microsoft Hv", 12) == 0);
	CHECK(a == 0x4000000a);

	leaf(0x40000001, &a, &b, &c, &d);
	CHECK(a == 0x31237648); /* "Hv#1" */
	leaf(0x40000002, &a, &b, &c, &d);
	printf("hv: version build %u %u.%u\n", a, b >> 16, b & 0xffff);

	leaf(0x40000003, &a, &b, &c, &d);
	printf("hv: features eax %x ebx %x edx %x\n", a, b, d);
	CHECK(a == 0xa7f);   /* runtime, refcount, synic, stimer, apic, hypercall, vp index, tsc page, freq */
	CHECK(b == 0);       /* no message/event ports */
	CHECK(d == 0x80100); /* frequency MSRs, direct-mode stimers */
	leaf(0x40000004, &a, &b, &c, &d);
	printf("hv: recommendations eax %x spin retries %x\n", a, b);
	CHECK(a == 0xc2c); /* remote TLB flush, APIC access, relaxed timing, cluster IPI, ex masks */
	CHECK(b == 0xffffffffu);
	leaf(0x40000005, &a, &b, &c, &d);
	CHECK(a >= 1);

	/* KVM's own leaves, one block up. */
	leaf(0x40000100, &a, &b, &c, &d);
	memcpy(sig, &b, 4);
	memcpy(sig + 4, &c, 4);
	memcpy(sig + 8, &d, 4);
	CHECK(memcmp(sig, "KVMKVMKVM\0\0\0", 12) == 0);
	CHECK(a >= 0x40000101 && a < 0x40000200);
	leaf(0x40000101, &a, &b, &c, &d);
	printf("hv: kvm leaves at 0x40000100, features %x\n", a);

	u64 vp = rdmsr(HV_MSR_VP_INDEX);
	printf("hv: vp index %lu\n", vp);
	CHECK(vp == 0);

	u64 tsc_hz = rdmsr(HV_MSR_TSC_FREQUENCY), apic_hz = rdmsr(HV_MSR_APIC_FREQUENCY);
	printf("hv: tsc %lu kHz, apic %lu kHz\n", tsc_hz / 1000, apic_hz / 1000);
	CHECK(tsc_hz > 1000000 && apic_hz > 1000000);

	/* The reference counter counts 100 ns units: over 20 ms of TSC time it
	 * advances by about 200000. */
	u64 r0 = rdmsr(HV_MSR_TIME_REF_COUNT), t0 = rdtsc();
	while (rdtsc() - t0 < tsc_hz / 50)
		cpu_relax();
	u64 r1 = rdmsr(HV_MSR_TIME_REF_COUNT);
	printf("hv: reference counter +%lu in 20 ms of TSC\n", r1 - r0);
	CHECK(r1 - r0 >= 100000 && r1 - r0 <= 400000);

	/* Reference TSC page: time = ((tsc * scale) >> 64) + offset. */
	wrmsr(HV_MSR_REFERENCE_TSC, (u64)tsc_page | 1);
	CHECK(rdmsr(HV_MSR_REFERENCE_TSC) == ((u64)tsc_page | 1));
	volatile u32 *seq = (volatile u32 *)tsc_page;
	volatile u64 *scale = (volatile u64 *)(tsc_page + 8);
	volatile i64 *offset = (volatile i64 *)(tsc_page + 16);
	if (*seq == 0 || *seq == 0xffffffffu) {
		printf("hv: reference tsc page sequence %x: invalid (host clock is not TSC-based), "
		       "guests fall back to the MSR\n",
		       *seq);
	} else {
		u64 m0 = rdmsr(HV_MSR_TIME_REF_COUNT);
		u64 now = (u64)(((unsigned __int128)rdtsc() * *scale) >> 64) + (u64)*offset;
		u64 m1 = rdmsr(HV_MSR_TIME_REF_COUNT);
		printf("hv: reference tsc page valid (sequence %u), page %lu vs msr %lu\n", *seq, now, m0);
		CHECK(now + 10000 >= m0 && now <= m1 + 10000); /* within 1 ms */
	}

	/* Hypercall page: the guest OS ID first, then enable. */
	CHECK(rdmsr(HV_MSR_HYPERCALL) == 0);
	wrmsr(HV_MSR_GUEST_OS_ID, 0x8100000000000000ul | (6ul << 16)); /* open-source OS, "Linux" type */
	wrmsr(HV_MSR_HYPERCALL, (u64)hypercall_page | 1);
	u64 hc = rdmsr(HV_MSR_HYPERCALL);
	printf("hv: hypercall msr %lx, page starts %x %x %x\n", hc, hypercall_page[0], hypercall_page[1],
	       hypercall_page[2]);
	CHECK(hc == ((u64)hypercall_page | 1));
	CHECK(hypercall_page[0] == 0x0f && hypercall_page[1] == 0x01); /* vmcall / vmmcall */

	u64 st = hypercall(0x7ff0, 0, 0);
	printf("hv: unknown hypercall status %lu\n", st & 0xffff);
	CHECK((st & 0xffff) == 2); /* HV_STATUS_INVALID_HYPERCALL_CODE */

	/* Flush every address space on every processor: success. */
	flush_input[0] = 0;
	flush_input[1] = 3; /* HV_FLUSH_ALL_PROCESSORS | HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES */
	flush_input[2] = 0;
	st = hypercall(HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE, (u64)flush_input, 0);
	printf("hv: tlb flush hypercall status %lu\n", st & 0xffff);
	CHECK((st & 0xffff) == 0);

	/* No message-port privilege: access denied (from KVM when it enforces
	 * the CPUID, otherwise from arbiter after a KVM_EXIT_HYPERV). */
	st = hypercall(HVCALL_POST_MESSAGE, (u64)flush_input, 0);
	printf("hv: post message hypercall status %lu\n", st & 0xffff);
	CHECK((st & 0xffff) == 6); /* HV_STATUS_ACCESS_DENIED */

	outb(0x21, 0xff); /* PICs masked */
	outb(0xa1, 0xff);
	idt_init();
	idt_set(IPI_VECTOR, ipi_isr);
	idt_set(STIMER_VECTOR, stimer_isr);
	idt_set(0xff, spurious);
	lapic_enable();
	lapic_write(0x350, 1u << 16);
	sti();

	/* IPI hypercall (fast: vector in RDX, processor mask in R8) to VP 0. */
	st = hypercall(HVCALL_SEND_IPI | HVCALL_FAST, IPI_VECTOR, 1);
	printf("hv: send ipi hypercall status %lu\n", st & 0xffff);
	CHECK((st & 0xffff) == 0);
	CHECK(wait_for(&ipis, 1));
	printf("hv: ipi delivered to vp 0\n");

	/* SynIC: version 1; enabling it and the message page (the SIMP write
	 * exits to the monitor, which must let the guest go on). */
	CHECK(rdmsr(HV_MSR_SVERSION) == 1);
	wrmsr(HV_MSR_SCONTROL, 1);
	CHECK(rdmsr(HV_MSR_SCONTROL) == 1);
	wrmsr(HV_MSR_SIMP, (u64)simp_page | 1);
	CHECK(rdmsr(HV_MSR_SIMP) == ((u64)simp_page | 1));
	printf("hv: synic enabled, message page set\n");

	/* Synthetic timer 0 in direct mode: one shot 2 ms from now, as a vector. */
	u64 due = rdmsr(HV_MSR_TIME_REF_COUNT) + 20000;
	wrmsr(HV_MSR_STIMER0_COUNT, due);
	wrmsr(HV_MSR_STIMER0_CONFIG, 1u | (STIMER_VECTOR << 4) | (1u << 12)); /* enable, vector, direct */
	CHECK(wait_for(&stimer_hits, 1));
	u64 at = rdmsr(HV_MSR_TIME_REF_COUNT);
	printf("hv: synthetic timer fired %ld us after its due time\n", (i64)(at - due) / 10);
	CHECK(at >= due);
	cli();

	printf("GUEST PASS\n");
	return GUEST_EXIT_PASS;
}

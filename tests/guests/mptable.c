/*
 * mptable: find the MP floating pointer the way a kernel does (last KiB
 * of base memory), check both checksums and print what the table says:
 * processors, IOAPIC, where ISA IRQ 0 and the PCI INTx pins go.
 */
#include "guest.h"

static u8 sum(const u8 *p, usize n)
{
	u8 s = 0;
	while (n--)
		s = (u8)(s + *p++);
	return s;
}

u32 guest_main(struct hvm_start_info *si)
{
	(void)si;
	const u8 *fp = NULL;
	for (u64 a = 639 * 1024; a < 640 * 1024; a += 16)
		if (!memcmp((const void *)a, "_MP_", 4))
			fp = (const u8 *)a;
	CHECK(fp != NULL);
	CHECK(sum(fp, 16) == 0);
	const u8 *t = (const u8 *)(u64) * (const u32 *)(fp + 4);
	CHECK(!memcmp(t, "PCMP", 4));
	u16 len = *(const u16 *)(t + 4), count = *(const u16 *)(t + 34);
	CHECK(sum(t, len) == 0);
	printf("mp: table at %p, %u bytes, %u entries, lapic %x\n", (const void *)t, len, count,
	       *(const u32 *)(t + 36));
	const u8 *e = t + 44;
	u32 cpus = 0;
	for (u16 i = 0; i < count; i++) {
		switch (e[0]) {
		case 0:
			cpus++;
			printf("mp: cpu apic %u%s\n", e[1], (e[3] & 2) ? " bsp" : "");
			e += 20;
			break;
		case 1:
			e += 8;
			break;
		case 2:
			printf("mp: ioapic id %u at %x\n", e[1], *(const u32 *)(e + 4));
			e += 8;
			break;
		case 3:
			if (e[4] == 1 && e[5] == 0)
				printf("mp: isa irq 0 -> pin %u\n", e[7]);
			if (e[4] == 0)
				printf("mp: pci slot %u pin %c -> pin %u flags %x\n", e[5] >> 2, 'A' + (e[5] & 3), e[7],
				       *(const u16 *)(e + 2));
			e += 8;
			break;
		case 4:
			e += 8;
			break;
		default:
			CHECK(0);
		}
	}
	CHECK(e == t + len);
	printf("mp: %u cpus\n", cpus);
	printf("GUEST PASS\n");
	return GUEST_EXIT_PASS;
}

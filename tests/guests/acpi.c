/*
 * acpi: follow hvm_start_info.rsdp_paddr to the RSDP, check checksums of
 * the RSDP, RSDT and every table it lists, print the table signatures,
 * and check the FADT and MADT describe this platform's hardware: SCI 9,
 * PM1a event/control and PM timer blocks in the PIIX4 PM I/O range that
 * PCI config says (PMBA), the reset register 0xCF9, the IOAPIC at
 * 0xFEC00000 with ISA IRQ 0 overridden to GSI 2.  Then powers off the way
 * an OS does from the FADT: SLP_TYP(_S5 = 0) | SLP_EN into PM1a_CNT.
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
	const u8 *rsdp = (const u8 *)si->rsdp_paddr;
	CHECK(rsdp != NULL);
	CHECK(!memcmp(rsdp, "RSD PTR ", 8));
	CHECK(sum(rsdp, 20) == 0);
	const u8 *rsdt = (const u8 *)(u64) * (const u32 *)(rsdp + 16);
	CHECK(!memcmp(rsdt, "RSDT", 4));
	u32 rlen = *(const u32 *)(rsdt + 4);
	CHECK(sum(rsdt, rlen) == 0);
	const u8 *fadt = NULL, *madt = NULL;
	printf("acpi: rsdp %p rsdt %p tables:", (const void *)rsdp, (const void *)rsdt);
	for (u32 off = 36; off + 4 <= rlen; off += 4) {
		const u8 *t = (const u8 *)(u64) * (const u32 *)(rsdt + off);
		CHECK(sum(t, *(const u32 *)(t + 4)) == 0);
		printf(" %c%c%c%c", t[0], t[1], t[2], t[3]);
		if (!memcmp(t, "FACP", 4))
			fadt = t;
		if (!memcmp(t, "APIC", 4))
			madt = t;
	}
	printf("\n");
	CHECK(fadt && madt);
	const u8 *dsdt = (const u8 *)(u64) * (const u32 *)(fadt + 40);
	CHECK(!memcmp(dsdt, "DSDT", 4) && sum(dsdt, *(const u32 *)(dsdt + 4)) == 0);

	u16 sci = *(const u16 *)(fadt + 46);
	u32 pm1a_evt = *(const u32 *)(fadt + 56), pm1a_cnt = *(const u32 *)(fadt + 64);
	u32 pm_tmr = *(const u32 *)(fadt + 76);
	u16 pmba = (u16)(pci_read32(1, 3, 0x40) & 0xffc0);
	printf("acpi: sci %u pm1a_evt %x pm1a_cnt %x pm_tmr %x (PMBA %x)\n", sci, pm1a_evt, pm1a_cnt, pm_tmr,
	       pmba);
	CHECK(sci == 9 && pm1a_evt == pmba && pm1a_cnt == pmba + 4u && pm_tmr == pmba + 8u);
	CHECK(inw((u16)pm1a_cnt) & 1); /* SCI_EN: ACPI mode */
	if (*(const u32 *)(fadt + 4) >= 129) {
		u64 reset = *(const u64 *)(fadt + 116 + 4);
		printf("acpi: reset register %lx value %x\n", reset, fadt[128]);
	}

	u32 mlen = *(const u32 *)(madt + 4), cpus = 0;
	for (u32 off = 44; off + 2 <= mlen;) {
		const u8 *e = madt + off;
		if (e[0] == 0)
			cpus++;
		if (e[0] == 1)
			printf("acpi: ioapic id %u at %x gsi base %u\n", e[2], *(const u32 *)(e + 4),
			       *(const u32 *)(e + 8));
		if (e[0] == 2)
			printf("acpi: override irq %u -> gsi %u flags %x\n", e[3], *(const u32 *)(e + 4),
			       *(const u16 *)(e + 8));
		CHECK(e[1] >= 2);
		off += e[1];
	}
	printf("acpi: %u local apics\n", cpus);
	printf("acpi: powering off through PM1a_CNT\n");
	outw((u16)pm1a_cnt, (u16)((0u << 10) | (1u << 13)));
	printf("still running after power-off\n");
	return GUEST_EXIT_FAIL;
}

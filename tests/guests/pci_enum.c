/*
 * pci_enum: scan bus 0 with configuration mechanism #1 and check the
 * i440FX/PIIX functions: 00:00.0 8086:1237 host bridge, 00:01.0 8086:7000
 * ISA bridge (multi-function), 00:01.3 8086:7113 PM with PMBA enabled.
 * Prints one line per function found.
 */
#include "guest.h"

u32 guest_main(struct hvm_start_info *si)
{
	(void)si;
	int found = 0, host = 0, isa = 0, pm = 0;
	for (u8 dev = 0; dev < 32; dev++) {
		u8 nfn = (pci_read8(dev, 0, 0x0e) & 0x80) ? 8 : 1;
		for (u8 fn = 0; fn < nfn; fn++) {
			u32 id = pci_read32(dev, fn, 0);
			if ((id & 0xffff) == 0xffff)
				continue;
			u32 class = pci_read32(dev, fn, 8) >> 8;
			printf("pci 00:%02x.%u %04x:%04x class %06x\n", dev, fn, id & 0xffff, id >> 16, class);
			found++;
			if (dev == 0 && fn == 0 && id == 0x12378086 && class == 0x060000)
				host = 1;
			if (dev == 1 && fn == 0 && id == 0x70008086 && class == 0x060100)
				isa = 1;
			if (dev == 1 && fn == 3 && id == 0x71138086 && class == 0x068000)
				pm = 1;
		}
	}
	CHECK(host && isa && pm);
	/* Read-only IDs stay read-only. */
	pci_write32(0, 0, 0, 0xdeadbeef);
	CHECK(pci_read32(0, 0, 0) == 0x12378086);
	/* The ISA bridge's PIRQ routes are writable. */
	u32 pirq = pci_read32(1, 0, 0x60);
	pci_write32(1, 0, 0x60, 0x0b0a0b0a);
	CHECK(pci_read32(1, 0, 0x60) == 0x0b0a0b0a);
	pci_write32(1, 0, 0x60, pirq);
	/* PM: PMBA points at the PM1 block; the PM timer runs. */
	u32 pmba = pci_read32(1, 3, 0x40);
	CHECK(pmba & 1);
	CHECK(pci_read8(1, 3, 0x80) & 1);
	u16 base = (u16)(pmba & 0xffc0);
	u32 t0 = inl(base + 8) & 0xffffff;
	u32 t1 = t0;
	for (int i = 0; i < 1000000 && t1 == t0; i++)
		t1 = inl(base + 8) & 0xffffff;
	CHECK(t1 != t0);
	printf("pm base %x timer %u -> %u\n", base, t0, t1);
	/* An absent device reads all-ones. */
	CHECK(pci_read32(31, 0, 0) == 0xffffffffu);
	printf("PCI functions: %d\n", found);
	printf("GUEST PASS\n");
	return GUEST_EXIT_PASS;
}

/*
 * msix: drive the pci-testdev (arbiter run --pci-testdev).
 *  1. find 1234:11e5, size its BARs with the all-ones probe;
 *  2. move BAR0 (MMIO) and BAR2 (I/O) and check the registers follow;
 *  3. program two MSI-X vectors to this CPU's LAPIC (vectors 0x41, 0x42),
 *     enable MSI-X, raise vector 0 and count it in an IDT handler;
 *  4. per-vector mask: a raise while masked sets the PBA bit and is
 *     delivered on unmask; the function mask does the same;
 *  5. ring the doorbell (an ioeventfd in the moved BAR0): the VMM's event
 *     loop answers through vector 1's irqfd.
 */
#include "guest.h"

#define NEW_BAR0 0xd0000000u
#define NEW_IO 0xd000u

static volatile u32 hits[2];

__attribute__((interrupt)) static void isr41(struct interrupt_frame *f)
{
	(void)f;
	hits[0]++;
	lapic_eoi();
}

__attribute__((interrupt)) static void isr42(struct interrupt_frame *f)
{
	(void)f;
	hits[1]++;
	lapic_eoi();
}

__attribute__((interrupt)) static void spurious(struct interrupt_frame *f)
{
	(void)f;
}

static int wait_for(volatile u32 *c, u32 want)
{
	for (long i = 0; i < 20000000; i++) {
		if (*c >= want)
			return 1;
		cpu_relax();
	}
	return 0;
}

static u32 bar_size(u8 dev, u8 off, u32 mask)
{
	u32 orig = pci_read32(dev, 0, off);
	pci_write32(dev, 0, off, 0xffffffffu);
	u32 v = pci_read32(dev, 0, off);
	pci_write32(dev, 0, off, orig);
	CHECK(pci_read32(dev, 0, off) == orig);
	return ~(v & mask) + 1;
}

u32 guest_main(struct hvm_start_info *si)
{
	(void)si;
	u8 dev = 0xff;
	for (u8 d = 0; d < 32; d++)
		if (pci_read32(d, 0, 0) == 0x11e51234u)
			dev = d;
	CHECK(dev != 0xff);
	printf("testdev at 00:%02x.0\n", dev);

	u32 sz0 = bar_size(dev, 0x10, 0xfffffff0u);
	u32 sz1 = bar_size(dev, 0x14, 0xfffffff0u);
	u32 sz2 = bar_size(dev, 0x18, 0xfffffffcu) & 0xffff;
	printf("bar sizes %x %x %x\n", sz0, sz1, sz2);
	CHECK(sz0 == 0x1000 && sz1 == 0x1000 && sz2 == 0x20);

	u32 bar0 = pci_read32(dev, 0, 0x10) & ~0xfu;
	u32 bar1 = pci_read32(dev, 0, 0x14) & ~0xfu;
	CHECK(mmio_read32(bar0) == 0x54425241u);
	pci_write16(dev, 0, 0x04, 0x0007); /* I/O, memory, bus master */

	/* Move BAR0 and BAR2. */
	pci_write32(dev, 0, 0x10, NEW_BAR0);
	CHECK(pci_read32(dev, 0, 0x10) == NEW_BAR0);
	CHECK(mmio_read32(NEW_BAR0) == 0x54425241u);
	CHECK(mmio_read32(bar0) == 0xffffffffu);
	pci_write32(dev, 0, 0x18, NEW_IO | 1);
	CHECK(inl(NEW_IO) == 0x54425241u);
	mmio_write32(NEW_BAR0 + 4, 0x1234abcd);
	CHECK(inl(NEW_IO + 4) == 0x1234abcdu);
	printf("bars moved to %x and io %x\n", NEW_BAR0, NEW_IO);

	/* Interrupts. */
	idt_init();
	idt_set(0x41, isr41);
	idt_set(0x42, isr42);
	idt_set(0xff, spurious);
	lapic_enable();
	u32 apic = lapic_id();
	sti();

	u8 cap = pci_find_cap(dev, 0, 0x11);
	CHECK(cap != 0);
	u16 ctrl = pci_read16(dev, 0, cap + 2);
	CHECK((ctrl & 0x7ff) == 1); /* 2 vectors */
	u32 tbl = pci_read32(dev, 0, cap + 4), pba = pci_read32(dev, 0, cap + 8);
	CHECK((tbl & 7) == 1 && (pba & 7) == 1);
	u64 table = bar1 + (tbl & ~7u), pbaa = bar1 + (pba & ~7u);
	for (u32 v = 0; v < 2; v++) {
		CHECK(mmio_read32(table + 16 * v + 12) & 1); /* masked at reset */
		mmio_write32(table + 16 * v + 0, 0xfee00000u | (apic << 12));
		mmio_write32(table + 16 * v + 4, 0);
		mmio_write32(table + 16 * v + 8, 0x41 + v);
		mmio_write32(table + 16 * v + 12, 0);
	}
	pci_write16(dev, 0, cap + 2, 0x8000); /* MSI-X enable */
	CHECK(pci_read16(dev, 0, cap + 2) & 0x8000);

	mmio_write32(NEW_BAR0 + 8, 0);
	CHECK(wait_for(&hits[0], 1));
	printf("msix: vector 0x41 delivered, count %u\n", hits[0]);

	/* Per-vector mask: pending bit, then delivery on unmask. */
	mmio_write32(table + 12, 1);
	mmio_write32(NEW_BAR0 + 8, 0);
	for (volatile int i = 0; i < 200000; i++)
		;
	CHECK(hits[0] == 1);
	CHECK(mmio_read32(pbaa) & 1);
	mmio_write32(table + 12, 0);
	CHECK(wait_for(&hits[0], 2));
	CHECK((mmio_read32(pbaa) & 1) == 0);
	printf("msix: masked raise pending, delivered on unmask, count %u\n", hits[0]);

	/* Function mask. */
	pci_write16(dev, 0, cap + 2, 0xc000);
	mmio_write32(NEW_BAR0 + 8, 0);
	for (volatile int i = 0; i < 200000; i++)
		;
	CHECK(hits[0] == 2);
	CHECK(mmio_read32(pbaa) & 1);
	pci_write16(dev, 0, cap + 2, 0x8000);
	CHECK(wait_for(&hits[0], 3));
	printf("msix: function mask honoured, count %u\n", hits[0]);

	/* Doorbell through the ioeventfd in the moved BAR, answered by irqfd. */
	mmio_write32(NEW_BAR0 + 0x10, 1);
	CHECK(wait_for(&hits[1], 1));
	CHECK(mmio_read32(NEW_BAR0 + 0x14) == 1);
	printf("doorbell: vector 0x42 via ioeventfd+irqfd, count %u\n", hits[1]);
	CHECK(mmio_read32(NEW_BAR0 + 0xc) == 3);
	cli();
	printf("GUEST PASS\n");
	return GUEST_EXIT_PASS;
}

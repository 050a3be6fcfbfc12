/*
 * virtio_scsi_mq: two request queues with MSI-X, as vioscsi runs them.
 *
 * Run with --scsi controller=0,queues=2 and one disk (block n byte i =
 * (n * 7 + i) & 0xff) at target 0 LUN 0.
 *  1. enable MSI-X, program vectors 0x50 (config), 0x51 (control), 0x52
 *     (event), 0x53 (request 0), 0x54 (request 1) to this CPU;
 *  2. a READ on each request queue completes and raises that queue's
 *     vector only;
 *  3. READs posted on both queues before either is kicked both complete
 *     (each queue is served by its own worker);
 *  4. with vector 0x54 masked, a completion on request queue 1 sets its
 *     pending bit instead, and unmasking delivers it.
 */
#include "guest.h"
#include "virtio_scsi_drv.h"

static struct vscsi s;
static u8 in[2][4096] __attribute__((aligned(4096)));
static u8 reqs[2][64] __attribute__((aligned(64)));
static struct vscsi_resp resps[2];
static volatile u32 hits[8];

#define ISR(n)                                                                                     \
	__attribute__((interrupt)) static void isr##n(struct interrupt_frame *f)                    \
	{                                                                                          \
		(void)f;                                                                           \
		hits[n]++;                                                                         \
		lapic_eoi();                                                                       \
	}
ISR(0)
ISR(1)
ISR(2)
ISR(3)
ISR(4)

static int wait_for(volatile u32 *c, u32 want)
{
	for (long i = 0; i < 100000000; i++) {
		if (*c >= want)
			return 1;
		cpu_relax();
	}
	return 0;
}

static void wait_used(u16 rq, u16 want)
{
	for (long i = 0; i < 200000000; i++) {
		if (vscsi_used(&s, rq) == want)
			return;
		cpu_relax();
	}
	printf("request queue %u: no completion\n", rq);
	CHECK(0);
}

static void read_at(u16 rq, u32 lba)
{
	u8 cdb[10] = {0x28, 0, (u8)(lba >> 24), (u8)(lba >> 16), (u8)(lba >> 8), (u8)lba, 0, 0, 1, 0};
	memset(in[rq], 0, 512);
	vscsi_post_cmd(&s, rq, &resps[rq], reqs[rq], 0, 0, cdb, 10, in[rq], 512);
}

static void check_read(u16 rq, u32 lba)
{
	CHECK(resps[rq].response == 0);
	if (resps[rq].status == 0x02) /* the power-on unit attention, once */
		return;
	CHECK(resps[rq].status == 0);
	for (u32 i = 0; i < 512; i++)
		CHECK(in[rq][i] == (u8)((lba * 7 + i) & 0xff));
}

u32 guest_main(struct hvm_start_info *si)
{
	(void)si;
	idt_init();
	idt_set(0x50, isr0);
	idt_set(0x51, isr1);
	idt_set(0x52, isr2);
	idt_set(0x53, isr3);
	idt_set(0x54, isr4);
	lapic_enable();
	u32 apic = lapic_id();
	sti();

	u8 dev;
	CHECK(vscsi_find(&dev, 1) == 1);
	u8 cap = pci_find_cap(dev, 0, 0x11);
	CHECK(cap);
	u16 ctrl = pci_read16(dev, 0, (u8)(cap + 2));
	CHECK((ctrl & 0x7ff) + 1 == 5); /* 4 queues + config */
	u32 tbl = pci_read32(dev, 0, (u8)(cap + 4)), pba = pci_read32(dev, 0, (u8)(cap + 8));
	CHECK((tbl & 7) == 0 && (pba & 7) == 0);
	u64 bar0 = pci_read32(dev, 0, 0x10) & ~0xfu;
	u64 table = bar0 + tbl, pbaa = bar0 + pba;
	pci_write16(dev, 0, 0x04, 0x0006);
	pci_write16(dev, 0, (u8)(cap + 2), (u16)(ctrl | 0x8000)); /* MSI-X enable */
	for (u32 v = 0; v < 5; v++) {
		CHECK(mmio_read32(table + 16 * v + 12) & 1); /* masked at reset */
		mmio_write32(table + 16 * v + 0, 0xfee00000u | (apic << 12));
		mmio_write32(table + 16 * v + 4, 0);
		mmio_write32(table + 16 * v + 8, 0x50 + v);
		mmio_write32(table + 16 * v + 12, 0);
	}
	const u16 vectors[5] = {0, 1, 2, 3, 4};
	vscsi_init_ex(&s, dev, 1u << 1, 2, vectors);
	CHECK(mmio_read32(s.devcfg) == 2); /* num_queues */
	printf("msix: 5 vectors, 2 request queues\n");

	/* One READ per queue: each raises its own vector. */
	read_at(0, 3);
	vscsi_kick_rq(&s, 0);
	wait_used(0, 1);
	CHECK(wait_for(&hits[3], 1));
	check_read(0, 3);
	read_at(1, 4);
	vscsi_kick_rq(&s, 1);
	wait_used(1, 1);
	CHECK(wait_for(&hits[4], 1));
	check_read(1, 4);
	CHECK(hits[3] == 1 && hits[4] == 1 && hits[1] == 0);
	printf("queue 0 -> vector 0x53, queue 1 -> vector 0x54\n");

	/* Both queues busy at once. */
	read_at(0, 10);
	read_at(1, 11);
	vscsi_kick_rq(&s, 0);
	vscsi_kick_rq(&s, 1);
	wait_used(0, 2);
	wait_used(1, 2);
	CHECK(wait_for(&hits[3], 2) && wait_for(&hits[4], 2));
	check_read(0, 10);
	check_read(1, 11);
	CHECK(resps[0].status == 0 && resps[1].status == 0);
	printf("both queues served: lba 10 on queue 0, lba 11 on queue 1\n");

	/* Masked vector: pending bit, delivered on unmask. */
	mmio_write32(table + 16 * 4 + 12, 1);
	read_at(1, 12);
	vscsi_kick_rq(&s, 1);
	wait_used(1, 3);
	for (long i = 0; i < 1000000; i++)
		cpu_relax();
	CHECK(hits[4] == 2);
	CHECK(mmio_read32(pbaa) & (1u << 4));
	mmio_write32(table + 16 * 4 + 12, 0);
	CHECK(wait_for(&hits[4], 3));
	CHECK(!(mmio_read32(pbaa) & (1u << 4)));
	check_read(1, 12);
	printf("masked vector 0x54 pending, delivered on unmask\n");

	vscsi_reset(&s);
	printf("GUEST PASS\n");
	return GUEST_EXIT_PASS;
}

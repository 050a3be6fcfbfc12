/*
 * virtio_scsi: a polling virtio-scsi driver against Arbiter's controller.
 *
 * Run as (see vmm/tests/virtio_scsi_guest.rs):
 *   arbiter run --memory 64M --scsi controller=0,queues=1
 *     --scsi-disk path=A,controller=0,target=0,lun=0,serial=ARBSER01   (1 MiB)
 *     --scsi-disk path=B,controller=0,target=0,lun=3                   (512 KiB)
 *     --kernel virtio_scsi.elf
 * Disk A block n byte i holds (n * 7 + i) & 0xff; B holds 0x5B everywhere.
 *
 *  1. find 1AF4:1048 by PCI enumeration, check IDs, walk the virtio
 *     capabilities (common, notify, ISR, device config);
 *  2. reset, negotiate VERSION_1 + HOTPLUG, check FEATURES_OK, read the
 *     configuration space;
 *  3. set up control, event (4 buffers posted) and one request queue;
 *  4. TEST UNIT READY (power-on unit attention first), INQUIRY, VPD 0x00 /
 *     0x80 / 0x83, READ CAPACITY(10) on both LUNs, READ of host-written
 *     data, WRITE + READ back (the host checks the file afterwards),
 *     REPORT LUNS, a missing LUN and a missing target, TMFs (LOGICAL UNIT
 *     RESET, QUERY TASK, bad target), AN query;
 *  5. reset the device.
 */
#include "guest.h"

#define QSZ 16
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2

struct vdesc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

struct vq {
	u16 index;
	u16 notify_off;
	u16 avail_idx;
	u16 used_seen;
	struct vdesc *desc;
	volatile u16 *avail; /* flags, idx, ring[QSZ], used_event */
	volatile u32 *used;  /* flags|idx, then (id, len) pairs */
};

static u8 ring_mem[3][3][4096] __attribute__((aligned(4096)));
static u8 bufs[8][4096] __attribute__((aligned(4096)));
static u8 evbufs[4][16] __attribute__((aligned(16)));

static u64 common, notify, isr, devcfg;
static u32 notify_mult;
static struct vq queues[3];

static void check_bytes(const u8 *got, const u8 *want, u32 n, const char *what)
{
	for (u32 i = 0; i < n; i++) {
		if (got[i] != want[i]) {
			printf("%s: byte %u is %02x, want %02x\n", what, i, got[i], want[i]);
			CHECK(got[i] == want[i]);
		}
	}
}

/* Common configuration registers (virtio 1.2, 4.1.4.3). */
#define C_DFSEL 0x00
#define C_DF 0x04
#define C_GFSEL 0x08
#define C_GF 0x0c
#define C_MSIX 0x10
#define C_NUMQ 0x12
#define C_STATUS 0x14
#define C_QSEL 0x16
#define C_QSIZE 0x18
#define C_QMSIX 0x1a
#define C_QENABLE 0x1c
#define C_QNOFF 0x1e
#define C_QDESC 0x20
#define C_QDRIVER 0x28
#define C_QDEVICE 0x30

static void setup_queue(u16 idx)
{
	struct vq *q = &queues[idx];
	q->index = idx;
	q->desc = (struct vdesc *)ring_mem[idx][0];
	q->avail = (volatile u16 *)ring_mem[idx][1];
	q->used = (volatile u32 *)ring_mem[idx][2];
	mmio_write16(common + C_QSEL, idx);
	u16 max = mmio_read16(common + C_QSIZE);
	CHECK(max >= QSZ);
	mmio_write16(common + C_QSIZE, QSZ);
	CHECK(mmio_read16(common + C_QSIZE) == QSZ);
	q->notify_off = mmio_read16(common + C_QNOFF);
	mmio_write64(common + C_QDESC, (u64)q->desc);
	mmio_write64(common + C_QDRIVER, (u64)q->avail);
	mmio_write64(common + C_QDEVICE, (u64)q->used);
	mmio_write16(common + C_QENABLE, 1);
	CHECK(mmio_read16(common + C_QENABLE) == 1);
}

/* Post a chain made of n buffers (descriptors 0..n-1) without waiting. */
static void post(struct vq *q, const u64 *addr, const u32 *len, const u16 *flags, int n, u16 first)
{
	for (int i = 0; i < n; i++) {
		struct vdesc *d = &q->desc[first + i];
		d->addr = addr[i];
		d->len = len[i];
		d->flags = flags[i] | (i + 1 < n ? VRING_DESC_F_NEXT : 0);
		d->next = (u16)(first + i + 1);
	}
	q->avail[2 + q->avail_idx % QSZ] = first;
	barrier();
	q->avail_idx++;
	q->avail[1] = q->avail_idx;
	barrier();
}

static void kick(struct vq *q)
{
	mmio_write16(notify + (u64)q->notify_off * notify_mult, q->index);
}

/* Wait for the next used entry; returns its length. */
static u32 wait_used(struct vq *q)
{
	for (long i = 0; i < 200000000; i++) {
		u16 idx = (u16)(q->used[0] >> 16);
		if (idx != q->used_seen) {
			barrier();
			u32 len = q->used[1 + 2 * (q->used_seen % QSZ) + 1];
			q->used_seen++;
			return len;
		}
		cpu_relax();
	}
	printf("queue %u: no completion\n", q->index);
	CHECK(0);
	return 0;
}

/* One command on the request queue. */
struct resp {
	u32 sense_len;
	u32 resid;
	u16 status_qualifier;
	u8 status;
	u8 response;
	u8 sense[96];
} __attribute__((packed));

static struct resp *rsp = (struct resp *)bufs[1];

static u32 scsi_cmd(u8 target, u16 lun, const u8 *cdb, u32 cdb_len, const u8 *out, u32 out_len,
		    u8 *in, u32 in_len)
{
	static u32 tag = 1;
	u8 *req = bufs[0];
	memset(req, 0, 51);
	req[0] = 1;
	req[1] = target;
	req[2] = (u8)(lun >> 8); /* peripheral addressing, as Windows vioscsi sends */
	req[3] = (u8)lun;
	u32 t = tag++;
	memcpy(req + 8, &t, 4);
	memcpy(req + 19, cdb, cdb_len);
	memset(rsp, 0xEE, sizeof(*rsp));
	u64 a[4];
	u32 l[4];
	u16 f[4];
	int n = 0;
	a[n] = (u64)req, l[n] = 51, f[n++] = 0;
	if (out_len)
		a[n] = (u64)out, l[n] = out_len, f[n++] = 0;
	a[n] = (u64)rsp, l[n] = sizeof(*rsp), f[n++] = VRING_DESC_F_WRITE;
	if (in_len)
		a[n] = (u64)in, l[n] = in_len, f[n++] = VRING_DESC_F_WRITE;
	post(&queues[2], a, l, f, n, 0);
	kick(&queues[2]);
	return wait_used(&queues[2]);
}

static u8 tmf(u32 subtype, u8 target, u16 lun, u64 tag)
{
	u8 *req = bufs[2];
	u8 *r = bufs[2] + 64;
	memset(req, 0, 24);
	memcpy(req + 4, &subtype, 4);
	req[8] = 1;
	req[9] = target;
	req[10] = (u8)(lun >> 8);
	req[11] = (u8)lun;
	memcpy(req + 16, &tag, 8);
	r[0] = 0xEE;
	u64 a[2] = {(u64)req, (u64)r};
	u32 l[2] = {24, 1};
	u16 f[2] = {0, VRING_DESC_F_WRITE};
	post(&queues[0], a, l, f, 2, 0);
	kick(&queues[0]);
	CHECK(wait_used(&queues[0]) == 1);
	return r[0];
}

static u8 disk_a_byte(u32 lba, u32 i) { return (u8)((lba * 7 + i) & 0xff); }

u32 guest_main(struct hvm_start_info *si)
{
	(void)si;
	u8 dev = 0xff;
	for (u8 d = 0; d < 32; d++)
		if (pci_read32(d, 0, 0) == 0x10481af4u)
			dev = d;
	CHECK(dev != 0xff);
	printf("virtio-scsi at 00:%02x.0\n", dev);
	CHECK(pci_read8(dev, 0, 0x08) == 1);           /* revision 1: modern */
	CHECK((pci_read32(dev, 0, 0x08) >> 8) == 0x010000); /* SCSI storage */
	CHECK(pci_read32(dev, 0, 0x2c) == 0x11001af4u);
	pci_write16(dev, 0, 0x04, 0x0006); /* memory, bus master */
	u64 bar0 = pci_read32(dev, 0, 0x10) & ~0xfu;

	int found = 0;
	for (u8 c = pci_read8(dev, 0, 0x34); c; c = pci_read8(dev, 0, (u8)(c + 1))) {
		if (pci_read8(dev, 0, c) != 0x09)
			continue;
		u8 type = pci_read8(dev, 0, (u8)(c + 3));
		CHECK(pci_read8(dev, 0, (u8)(c + 4)) == 0); /* BAR 0 */
		u64 addr = bar0 + pci_read32(dev, 0, (u8)(c + 8));
		if (type == 1)
			common = addr, found |= 1;
		else if (type == 2)
			notify = addr, notify_mult = pci_read32(dev, 0, (u8)(c + 16)), found |= 2;
		else if (type == 3)
			isr = addr, found |= 4;
		else if (type == 4)
			devcfg = addr, found |= 8;
	}
	CHECK(found == 15);
	printf("caps: common %lx notify %lx (x%u) isr %lx device %lx\n", common, notify,
	       notify_mult, isr, devcfg);

	/* Reset and negotiate. */
	mmio_write8(common + C_STATUS, 0);
	CHECK(mmio_read8(common + C_STATUS) == 0);
	mmio_write8(common + C_STATUS, 1);
	mmio_write8(common + C_STATUS, 3);
	mmio_write32(common + C_DFSEL, 0);
	u32 f0 = mmio_read32(common + C_DF);
	mmio_write32(common + C_DFSEL, 1);
	u32 f1 = mmio_read32(common + C_DF);
	printf("device features %08x %08x\n", f1, f0);
	CHECK(f1 & 1);         /* VERSION_1 */
	CHECK(f0 & (1u << 1)); /* HOTPLUG */
	CHECK(f0 & (1u << 2)); /* CHANGE */
	mmio_write32(common + C_GFSEL, 0);
	mmio_write32(common + C_GF, 1u << 1);
	mmio_write32(common + C_GFSEL, 1);
	mmio_write32(common + C_GF, 1);
	mmio_write8(common + C_STATUS, 0x0b);
	CHECK(mmio_read8(common + C_STATUS) == 0x0b); /* FEATURES_OK accepted */

	u32 num_queues = mmio_read32(devcfg + 0), seg_max = mmio_read32(devcfg + 4);
	u32 max_sectors = mmio_read32(devcfg + 8), cmd_per_lun = mmio_read32(devcfg + 12);
	u32 sense_size = mmio_read32(devcfg + 20), cdb_size = mmio_read32(devcfg + 24);
	u16 max_target = mmio_read16(devcfg + 30);
	u32 max_lun = mmio_read32(devcfg + 32);
	printf("config: num_queues %u seg_max %u max_sectors %u cmd_per_lun %u sense %u cdb %u "
	       "max_target %u max_lun %u\n",
	       num_queues, seg_max, max_sectors, cmd_per_lun, sense_size, cdb_size, max_target,
	       max_lun);
	CHECK(num_queues == 1 && seg_max == 254 && max_sectors == 0xffff && cmd_per_lun == 128);
	CHECK(sense_size == 96 && cdb_size == 32 && max_target == 255 && max_lun == 16383);
	CHECK(mmio_read16(common + C_NUMQ) == 3);

	for (u16 q = 0; q < 3; q++)
		setup_queue(q);
	/* Four event buffers. */
	for (u16 i = 0; i < 4; i++) {
		u64 a = (u64)evbufs[i];
		u32 l = 16;
		u16 fl = VRING_DESC_F_WRITE;
		post(&queues[1], &a, &l, &fl, 1, i);
	}
	mmio_write8(common + C_STATUS, 0x0f);
	CHECK(mmio_read8(common + C_STATUS) == 0x0f);
	kick(&queues[1]);
	printf("queues ready, DRIVER_OK\n");

	/* TEST UNIT READY: the power-on unit attention first. */
	u8 tur[6] = {0x00, 0, 0, 0, 0, 0};
	scsi_cmd(0, 0, tur, 6, NULL, 0, NULL, 0);
	CHECK(rsp->response == 0 && rsp->status == 0x02);
	CHECK(rsp->sense_len >= 14 && (rsp->sense[2] & 0xf) == 0x6 && rsp->sense[12] == 0x29);
	scsi_cmd(0, 0, tur, 6, NULL, 0, NULL, 0);
	CHECK(rsp->response == 0 && rsp->status == 0x00 && rsp->sense_len == 0);
	printf("tur: unit attention 6/29/%02x, then GOOD\n", 0);

	/* Standard INQUIRY. */
	u8 *in = bufs[3];
	u8 inq[6] = {0x12, 0x00, 0x00, 0x00, 96, 0x00}; /* INQUIRY, alloc 96 */
	memset(in, 0xEE, 96);
	scsi_cmd(0, 0, inq, 6, NULL, 0, in, 96);
	CHECK(rsp->response == 0 && rsp->status == 0);
	CHECK((in[0] & 0x1f) == 0x00 && (in[0] >> 5) == 0); /* disk, connected */
	check_bytes(in + 8, (const u8 *)"ARBITER VIRTUAL DISK    ", 24, "inquiry vendor/product");
	printf("inquiry: %c%c%c%c%c%c%c%c, resid %u\n", in[8], in[9], in[10], in[11], in[12],
	       in[13], in[14], in[15], rsp->resid);
	CHECK(rsp->resid == 96 - (u32)(in[4] + 5));

	/* VPD 0x00, 0x80, 0x83. */
	u8 vpd0[6] = {0x12, 0x01, 0x00, 0x00, 64, 0x00};
	scsi_cmd(0, 0, vpd0, 6, NULL, 0, in, 64);
	CHECK(rsp->status == 0 && in[1] == 0x00);
	int has80 = 0, has83 = 0;
	for (u32 i = 0; i < in[3]; i++)
		has80 |= in[4 + i] == 0x80, has83 |= in[4 + i] == 0x83;
	CHECK(has80 && has83);
	u8 vpd80[6] = {0x12, 0x01, 0x80, 0x00, 64, 0x00};
	scsi_cmd(0, 0, vpd80, 6, NULL, 0, in, 64);
	CHECK(rsp->status == 0 && in[1] == 0x80 && in[3] == 8);
	check_bytes(in + 4, (const u8 *)"ARBSER01", 8, "unit serial number");
	u8 vpd83[6] = {0x12, 0x01, 0x83, 0x00, 0xff, 0x00};
	scsi_cmd(0, 0, vpd83, 6, NULL, 0, in, 255);
	CHECK(rsp->status == 0 && in[1] == 0x83);
	CHECK((in[5] & 0x0f) == 3 && in[7] == 16 && (in[8] >> 4) == 6); /* NAA 6 */
	printf("vpd: serial ARBSER01, naa %02x%02x%02x%02x...\n", in[8], in[9], in[10], in[11]);

	/* READ CAPACITY(10) on both LUNs. */
	u8 rc10[10] = {0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0};
	scsi_cmd(0, 0, rc10, 10, NULL, 0, in, 8);
	const u8 cap_a[8] = {0, 0, 0x07, 0xff, 0, 0, 0x02, 0x00}; /* 2048 blocks of 512 */
	CHECK(rsp->status == 0);
	check_bytes(in, cap_a, 8, "read capacity lun 0");
	scsi_cmd(0, 3, tur, 6, NULL, 0, NULL, 0); /* LUN 3's own unit attention */
	scsi_cmd(0, 3, rc10, 10, NULL, 0, in, 8);
	const u8 cap_b[8] = {0, 0, 0x03, 0xff, 0, 0, 0x02, 0x00}; /* 1024 blocks */
	CHECK(rsp->status == 0);
	check_bytes(in, cap_b, 8, "read capacity lun 3");
	printf("capacity: lun 0 2048 x 512, lun 3 1024 x 512\n");

	/* READ(10) of what the host wrote: LBA 9, 2 blocks. */
	u8 r10[10] = {0x28, 0, 0, 0, 0, 9, 0, 0, 2, 0};
	scsi_cmd(0, 0, r10, 10, NULL, 0, in, 1024);
	CHECK(rsp->status == 0 && rsp->resid == 0);
	for (u32 b = 0; b < 2; b++)
		for (u32 i = 0; i < 512; i++)
			if (in[b * 512 + i] != disk_a_byte(9 + b, i)) {
				printf("read lba %u byte %u: %02x\n", 9 + b, i, in[b * 512 + i]);
				CHECK(0);
			}
	scsi_cmd(0, 3, r10, 10, NULL, 0, in, 1024);
	CHECK(rsp->status == 0 && in[0] == 0x5b && in[1023] == 0x5b);
	printf("read: lun 0 lba 9-10 and lun 3 match the host's data\n");

	/* WRITE(10) LBA 5, 2 blocks, then READ back. */
	u8 *out = bufs[4];
	for (u32 i = 0; i < 1024; i++)
		out[i] = (u8)(0xA5 ^ (i * 13));
	u8 w10[10] = {0x2a, 0, 0, 0, 0, 5, 0, 0, 2, 0};
	scsi_cmd(0, 0, w10, 10, out, 1024, NULL, 0);
	CHECK(rsp->response == 0 && rsp->status == 0 && rsp->resid == 0);
	u8 r5[10] = {0x28, 0, 0, 0, 0, 5, 0, 0, 2, 0};
	memset(in, 0, 1024);
	scsi_cmd(0, 0, r5, 10, NULL, 0, in, 1024);
	CHECK(rsp->status == 0);
	check_bytes(in, out, 1024, "write/read back");
	printf("write: lba 5-6 written and read back\n");
	/* MSI-X is off: completions raise INTx and set ISR bit 0, read-to-clear. */
	u8 isr_v = mmio_read8(isr);
	CHECK(isr_v & 1);
	CHECK(mmio_read8(isr) == 0);
	u8 line = pci_read8(dev, 0, 0x3c);
	CHECK(line != 0 && line != 0xff && pci_read8(dev, 0, 0x3d) == 1);
	printf("isr: queue bit set, cleared on read; INTA# irq %u\n", line);

	/* REPORT LUNS. */
	u8 rl[12] = {0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0};
	scsi_cmd(0, 0, rl, 12, NULL, 0, in, 64);
	const u8 luns[24] = {0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
			     0, 3, 0, 0, 0, 0, 0, 0};
	CHECK(rsp->status == 0);
	check_bytes(in, luns, 24, "report luns");
	printf("report luns: 0 and 3\n");

	/* A missing LUN and a missing target. */
	scsi_cmd(0, 9, inq, 6, NULL, 0, in, 96);
	CHECK(rsp->response == 0 && rsp->status == 0 && in[0] == 0x7f);
	scsi_cmd(0, 9, r10, 10, NULL, 0, in, 1024);
	CHECK(rsp->status == 0x02 && (rsp->sense[2] & 0xf) == 0x5 && rsp->sense[12] == 0x25);
	scsi_cmd(5, 0, inq, 6, NULL, 0, in, 96);
	CHECK(rsp->response == 3); /* BAD_TARGET */
	printf("missing lun: pq 3 and 5/25/00; missing target: BAD_TARGET\n");

	/* Task management. */
	CHECK(tmf(5, 0, 0, 0) == 0);       /* LOGICAL UNIT RESET: FUNCTION COMPLETE */
	u8 q = tmf(6, 0, 0, 12345);         /* QUERY TASK of a finished tag */
	CHECK(q == 0);                      /* FUNCTION COMPLETE: not in the task set */
	CHECK(tmf(5, 7, 0, 0) == 3);       /* bad target */
	CHECK(tmf(5, 0, 9, 0) == 12);      /* INCORRECT LUN */
	scsi_cmd(0, 0, tur, 6, NULL, 0, NULL, 0);
	CHECK(rsp->status == 0 || (rsp->status == 2 && (rsp->sense[2] & 0xf) == 6));
	printf("tmf: lu reset complete, query task complete, bad target, incorrect lun\n");

	/* AN query: no event classes supported. */
	u8 *an = bufs[5];
	memset(an, 0, 16);
	an[0] = 1; /* VIRTIO_SCSI_T_AN_QUERY */
	an[4] = 1;
	an[12] = 0x10;
	u8 *anr = bufs[5] + 64;
	memset(anr, 0xEE, 5);
	{
		u64 a[2] = {(u64)an, (u64)anr};
		u32 l[2] = {16, 5};
		u16 f[2] = {0, VRING_DESC_F_WRITE};
		post(&queues[0], a, l, f, 2, 0);
		kick(&queues[0]);
		CHECK(wait_used(&queues[0]) == 5);
	}
	CHECK(anr[0] == 0 && anr[1] == 0 && anr[2] == 0 && anr[3] == 0 && anr[4] == 0);
	printf("an query: event_actual 0, OK\n");

	mmio_write8(common + C_STATUS, 0);
	CHECK(mmio_read8(common + C_STATUS) == 0);
	printf("reset done\n");
	printf("GUEST PASS\n");
	return GUEST_EXIT_PASS;
}

/* Polling virtio-scsi driver for test guests: see virtio_scsi_drv.h. */
#include "virtio_scsi_drv.h"

#define F_NEXT 1
#define F_WRITE 2

#define C_DFSEL 0x00
#define C_DF 0x04
#define C_GFSEL 0x08
#define C_GF 0x0c
#define C_STATUS 0x14
#define C_QSEL 0x16
#define C_MSIX 0x10
#define C_QSIZE 0x18
#define C_QMSIX 0x1a
#define C_QENABLE 0x1c
#define C_QNOFF 0x1e
#define C_QDESC 0x20
#define C_QDRIVER 0x28
#define C_QDEVICE 0x30

int vscsi_find(u8 *slots, int max)
{
	int n = 0;
	for (u8 d = 0; d < 32 && n < max; d++)
		if (pci_read32(d, 0, 0) == 0x10481af4u)
			slots[n++] = d;
	return n;
}

static void vq_post(struct vscsi *s, struct vscsi_vq *q, const u64 *addr, const u32 *len,
		    const u16 *flags, int n, u16 first)
{
	(void)s;
	for (int i = 0; i < n; i++) {
		u16 f = (u16)(flags[i] | (i + 1 < n ? F_NEXT : 0));
		u16 next = (u16)(first + i + 1);
		q->desc[2 * (first + i)] = addr[i];
		q->desc[2 * (first + i) + 1] = (u64)len[i] | ((u64)f << 32) | ((u64)next << 48);
	}
	q->avail[2 + q->avail_idx % VSCSI_QSZ] = first;
	barrier();
	q->avail_idx++;
	q->avail[1] = q->avail_idx;
	barrier();
}

static void vq_kick(struct vscsi *s, struct vscsi_vq *q)
{
	mmio_write16(s->notify + (u64)q->notify_off * s->notify_mult, q->index);
}

static u32 vq_wait(struct vscsi_vq *q)
{
	for (long i = 0; i < 200000000; i++) {
		u16 idx = (u16)(q->used[0] >> 16);
		if (idx != q->used_seen) {
			barrier();
			u32 len = q->used[1 + 2 * (q->used_seen % VSCSI_QSZ) + 1];
			q->used_seen++;
			return len;
		}
		cpu_relax();
	}
	printf("virtio-scsi queue %u: no completion\n", q->index);
	CHECK(0);
	return 0;
}

void vscsi_init(struct vscsi *s, u8 dev, u32 driver_features_lo)
{
	vscsi_init_ex(s, dev, driver_features_lo, 1, NULL);
}

void vscsi_init_ex(struct vscsi *s, u8 dev, u32 driver_features_lo, u16 nreq,
		   const u16 *vectors)
{
	CHECK(nreq >= 1 && nreq + 2 <= VSCSI_MAXQ);
	s->nq = (u16)(nreq + 2);
	s->dev = dev;
	s->tag = 1;
	pci_write16(dev, 0, 0x04, 0x0006);
	u64 bar0 = pci_read32(dev, 0, 0x10) & ~0xfu;
	int found = 0;
	for (u8 c = pci_read8(dev, 0, 0x34); c; c = pci_read8(dev, 0, (u8)(c + 1))) {
		if (pci_read8(dev, 0, c) != 0x09)
			continue;
		u8 type = pci_read8(dev, 0, (u8)(c + 3));
		u64 addr = bar0 + pci_read32(dev, 0, (u8)(c + 8));
		if (type == 1)
			s->common = addr, found |= 1;
		else if (type == 2)
			s->notify = addr, s->notify_mult = pci_read32(dev, 0, (u8)(c + 16)),
			found |= 2;
		else if (type == 3)
			s->isr = addr, found |= 4;
		else if (type == 4)
			s->devcfg = addr, found |= 8;
	}
	CHECK(found == 15);
	mmio_write8(s->common + C_STATUS, 0);
	CHECK(mmio_read8(s->common + C_STATUS) == 0);
	mmio_write8(s->common + C_STATUS, 1);
	mmio_write8(s->common + C_STATUS, 3);
	mmio_write32(s->common + C_DFSEL, 1);
	CHECK(mmio_read32(s->common + C_DF) & 1);
	mmio_write32(s->common + C_GFSEL, 0);
	mmio_write32(s->common + C_GF, driver_features_lo);
	mmio_write32(s->common + C_GFSEL, 1);
	mmio_write32(s->common + C_GF, 1);
	mmio_write8(s->common + C_STATUS, 0x0b);
	CHECK(mmio_read8(s->common + C_STATUS) == 0x0b);
	if (vectors) {
		mmio_write16(s->common + C_MSIX, vectors[0]);
		CHECK(mmio_read16(s->common + C_MSIX) == vectors[0]);
	}
	for (u16 i = 0; i < s->nq; i++) {
		struct vscsi_vq *q = &s->q[i];
		q->index = i;
		q->avail_idx = 0;
		q->used_seen = 0;
		memset(s->rings[i], 0, sizeof(s->rings[i]));
		q->desc = (volatile u64 *)s->rings[i][0];
		q->avail = (volatile u16 *)s->rings[i][1];
		q->used = (volatile u32 *)s->rings[i][2];
		mmio_write16(s->common + C_QSEL, i);
		CHECK(mmio_read16(s->common + C_QSIZE) >= VSCSI_QSZ);
		mmio_write16(s->common + C_QSIZE, VSCSI_QSZ);
		q->notify_off = mmio_read16(s->common + C_QNOFF);
		if (vectors) {
			mmio_write16(s->common + C_QMSIX, vectors[1 + i]);
			CHECK(mmio_read16(s->common + C_QMSIX) == vectors[1 + i]);
		}
		mmio_write64(s->common + C_QDESC, (u64)s->rings[i][0]);
		mmio_write64(s->common + C_QDRIVER, (u64)s->rings[i][1]);
		mmio_write64(s->common + C_QDEVICE, (u64)s->rings[i][2]);
		mmio_write16(s->common + C_QENABLE, 1);
	}
	for (u16 i = 0; i < 4; i++) {
		u64 a = (u64)s->ev[i];
		u32 l = 16;
		u16 f = F_WRITE;
		vq_post(s, &s->q[1], &a, &l, &f, 1, i);
	}
	mmio_write8(s->common + C_STATUS, 0x0f);
	CHECK(mmio_read8(s->common + C_STATUS) == 0x0f);
	vq_kick(s, &s->q[1]);
}

u32 vscsi_cmd(struct vscsi *s, u8 target, u16 lun, const u8 *cdb, u32 cdb_len, const u8 *out,
	      u32 out_len, u8 *in, u32 in_len)
{
	u8 *req = s->req;
	memset(req, 0, 51);
	req[0] = 1;
	req[1] = target;
	req[2] = (u8)(lun >> 8);
	req[3] = (u8)lun;
	u32 t = s->tag++;
	memcpy(req + 8, &t, 4);
	memcpy(req + 19, cdb, cdb_len);
	memset(&s->resp, 0xee, sizeof(s->resp));
	u64 a[4];
	u32 l[4];
	u16 f[4];
	int n = 0;
	a[n] = (u64)req, l[n] = 51, f[n++] = 0;
	if (out_len)
		a[n] = (u64)out, l[n] = out_len, f[n++] = 0;
	a[n] = (u64)&s->resp, l[n] = sizeof(s->resp), f[n++] = F_WRITE;
	if (in_len)
		a[n] = (u64)in, l[n] = in_len, f[n++] = F_WRITE;
	vq_post(s, &s->q[2], a, l, f, n, 0);
	vq_kick(s, &s->q[2]);
	return vq_wait(&s->q[2]);
}

u8 vscsi_tmf(struct vscsi *s, u32 subtype, u8 target, u16 lun, u64 tag)
{
	u8 *req = s->req;
	memset(req, 0, 24);
	memcpy(req + 4, &subtype, 4);
	req[8] = 1;
	req[9] = target;
	req[10] = (u8)(lun >> 8);
	req[11] = (u8)lun;
	memcpy(req + 16, &tag, 8);
	u8 *r = s->req + 32;
	r[0] = 0xee;
	u64 a[2] = {(u64)req, (u64)r};
	u32 l[2] = {24, 1};
	u16 f[2] = {0, F_WRITE};
	vq_post(s, &s->q[0], a, l, f, 2, 0);
	vq_kick(s, &s->q[0]);
	CHECK(vq_wait(&s->q[0]) == 1);
	return r[0];
}

void vscsi_reset(struct vscsi *s)
{
	mmio_write8(s->common + C_STATUS, 0);
	CHECK(mmio_read8(s->common + C_STATUS) == 0);
}

int vscsi_event(struct vscsi *s, u32 *event, u8 *lun, u32 *reason, long spins)
{
	struct vscsi_vq *q = &s->q[1];
	for (long i = 0; i < spins; i++) {
		u16 idx = (u16)(q->used[0] >> 16);
		if (idx != q->used_seen) {
			barrier();
			u32 id = q->used[1 + 2 * (q->used_seen % VSCSI_QSZ)];
			q->used_seen++;
			CHECK(id < 4);
			const u8 *e = s->ev[id];
			memcpy(event, e, 4);
			memcpy(lun, e + 4, 8);
			memcpy(reason, e + 12, 4);
			u64 a = (u64)s->ev[id];
			u32 l = 16;
			u16 f = F_WRITE;
			vq_post(s, q, &a, &l, &f, 1, (u16)id);
			vq_kick(s, q);
			return 1;
		}
		cpu_relax();
	}
	return 0;
}

void vscsi_post_cmd(struct vscsi *s, u16 rq, struct vscsi_resp *resp, u8 *req, u8 target,
		    u16 lun, const u8 *cdb, u32 cdb_len, u8 *in, u32 in_len)
{
	memset(req, 0, 51);
	req[0] = 1;
	req[1] = target;
	req[2] = (u8)(lun >> 8);
	req[3] = (u8)lun;
	u32 t = s->tag++;
	memcpy(req + 8, &t, 4);
	memcpy(req + 19, cdb, cdb_len);
	memset(resp, 0xee, sizeof(*resp));
	u64 a[3] = {(u64)req, (u64)resp, (u64)in};
	u32 l[3] = {51, sizeof(*resp), in_len};
	u16 f[3] = {0, F_WRITE, F_WRITE};
	vq_post(s, &s->q[2 + rq], a, l, f, in_len ? 3 : 2, 0);
}

void vscsi_kick_rq(struct vscsi *s, u16 rq)
{
	vq_kick(s, &s->q[2 + rq]);
}

u16 vscsi_used(struct vscsi *s, u16 rq)
{
	return (u16)(s->q[2 + rq].used[0] >> 16);
}

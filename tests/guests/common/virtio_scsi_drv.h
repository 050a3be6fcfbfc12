/*
 * A small polling virtio-scsi driver for test guests, several controllers
 * at once (one struct vscsi each): PCI discovery, VERSION_1 negotiation,
 * control/event/request queues of 16 entries, one command at a time.
 */
#ifndef ARBITER_VIRTIO_SCSI_DRV_H
#define ARBITER_VIRTIO_SCSI_DRV_H

#include "guest.h"

#define VSCSI_QSZ 16
#define VSCSI_MAXQ 4 /* control, event and up to two request queues */

struct vscsi_vq {
	u16 index;
	u16 notify_off;
	u16 avail_idx;
	u16 used_seen;
	volatile u64 *desc; /* 16-byte descriptors: addr, len|flags<<32|next<<48 */
	volatile u16 *avail;
	volatile u32 *used;
};

/* virtio_scsi_cmd_resp with the default 96-byte sense buffer. */
struct vscsi_resp {
	u32 sense_len;
	u32 resid;
	u16 status_qualifier;
	u8 status;
	u8 response;
	u8 sense[96];
} __attribute__((packed));

struct vscsi {
	u8 dev;
	u64 common, notify, isr, devcfg;
	u32 notify_mult;
	u32 tag;
	u16 nq;
	struct vscsi_vq q[VSCSI_MAXQ];
	/* queues x (descriptors, avail, used), one page each. */
	u8 rings[VSCSI_MAXQ][3][4096] __attribute__((aligned(4096)));
	u8 req[64] __attribute__((aligned(64)));
	u8 ev[4][16];
	struct vscsi_resp resp;
};

/* Slots of every 1AF4:1048 function on bus 0, ascending; returns the count. */
int vscsi_find(u8 *slots, int max);
/* Reset, negotiate VERSION_1 (+ driver_features_lo), set up the queues,
 * post 4 event buffers, DRIVER_OK. CHECK-fails on any deviation. */
void vscsi_init(struct vscsi *s, u8 dev, u32 driver_features_lo);
/* Same with `nreq` request queues (1 or 2) and, if `vectors` is not NULL,
 * MSI-X vectors: vectors[0] for configuration changes, vectors[1 + i] for
 * queue i (written before the queues are enabled). */
void vscsi_init_ex(struct vscsi *s, u8 dev, u32 driver_features_lo, u16 nreq,
		   const u16 *vectors);
/* Post one command on request queue `rq` (0-based) without waiting. */
void vscsi_post_cmd(struct vscsi *s, u16 rq, struct vscsi_resp *resp, u8 *req, u8 target,
		    u16 lun, const u8 *cdb, u32 cdb_len, u8 *in, u32 in_len);
/* Ring request queue `rq`'s doorbell. */
void vscsi_kick_rq(struct vscsi *s, u16 rq);
/* Used entries seen so far on request queue `rq` (polls once). */
u16 vscsi_used(struct vscsi *s, u16 rq);
/* One command; returns the used length. The response is in s->resp. */
u32 vscsi_cmd(struct vscsi *s, u8 target, u16 lun, const u8 *cdb, u32 cdb_len, const u8 *out,
	      u32 out_len, u8 *in, u32 in_len);
/* One TMF; returns the virtio response byte. */
u8 vscsi_tmf(struct vscsi *s, u32 subtype, u8 target, u16 lun, u64 tag);
/* Wait (up to `spins` polls) for an event; on one, fill the fields,
 * give the buffer back to the device and return 1. */
int vscsi_event(struct vscsi *s, u32 *event, u8 *lun, u32 *reason, long spins);
/* Reset the device (status 0). */
void vscsi_reset(struct vscsi *s);

#endif

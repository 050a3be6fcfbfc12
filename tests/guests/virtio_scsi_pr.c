/*
 * virtio_scsi_pr: three virtio-scsi controllers (three initiator ports, so
 * three I_T nexuses to the same target port) on one shared disk replay the
 * persistent-reservation arbitration of cluster validation:
 *
 *  A registers (REGISTER AND IGNORE EXISTING KEY) and reserves WE-RO;
 *  unregistered B's WRITE conflicts; B's READ RESERVATION sees A's key;
 *  B and C register; READ KEYS lists A, B, C; B PREEMPTs A's key; A's next
 *  command reports 6/2A/05 and its WRITE conflicts; C sees B as holder and,
 *  as a registrant, may write; B CLEARs; C reports 6/2A/03; A writes again.
 *
 * Run with --scsi controller=0..2 and the same image as
 * --scsi-disk path=D,controller=N,target=0,lun=0,shared=on for each N.
 */
#include "guest.h"
#include "virtio_scsi_drv.h"

static struct vscsi nodes[3];
static u8 data[4096] __attribute__((aligned(4096)));
static u8 params[64] __attribute__((aligned(64)));
static const char *const names[3] = {"A", "B", "C"};

#define KA 0xaaaa00000000000aul
#define KB 0xbbbb00000000000bul
#define KC 0xcccc00000000000cul

static void put_be64(u8 *p, u64 v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (u8)(v >> (56 - 8 * i));
}

static u64 get_be64(const u8 *p)
{
	u64 v = 0;
	for (int i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

static u32 get_be32(const u8 *p)
{
	return ((u32)p[0] << 24) | ((u32)p[1] << 16) | ((u32)p[2] << 8) | p[3];
}

/* PERSISTENT RESERVE OUT with a 24-byte parameter list. */
static u8 pr_out(int n, u8 sa, u8 type, u64 key, u64 sa_key)
{
	u8 cdb[10] = {
		0x5f,        /* PERSISTENT RESERVE OUT */
		sa,          /* service action */
		type & 0x0f, /* scope 0 (LU), type */
		0, 0,        /* reserved */
		0, 0, 0, 24, /* parameter list length */
		0,           /* control */
	};
	memset(params, 0, 24);
	put_be64(params, key);
	put_be64(params + 8, sa_key);
	vscsi_cmd(&nodes[n], 0, 0, cdb, 10, params, 24, NULL, 0);
	CHECK(nodes[n].resp.response == 0);
	return nodes[n].resp.status;
}

/* PERSISTENT RESERVE IN into data[]. */
static u8 pr_in(int n, u8 sa)
{
	u8 cdb[10] = {
		0x5e,    /* PERSISTENT RESERVE IN */
		sa,      /* 0 READ KEYS, 1 READ RESERVATION */
		0, 0, 0, 0, 0,
		0, 0xff, /* allocation length 255 */
		0,       /* control */
	};
	memset(data, 0xee, 255);
	vscsi_cmd(&nodes[n], 0, 0, cdb, 10, NULL, 0, data, 255);
	CHECK(nodes[n].resp.response == 0);
	return nodes[n].resp.status;
}

static u8 write1(int n, u32 lba, u8 fill)
{
	u8 cdb[10] = {0x2a, 0, (u8)(lba >> 24), (u8)(lba >> 16), (u8)(lba >> 8), (u8)lba, 0, 0, 1, 0};
	memset(data, fill, 512);
	vscsi_cmd(&nodes[n], 0, 0, cdb, 10, data, 512, NULL, 0);
	CHECK(nodes[n].resp.response == 0);
	return nodes[n].resp.status;
}

static u8 read1(int n, u32 lba)
{
	u8 cdb[10] = {0x28, 0, (u8)(lba >> 24), (u8)(lba >> 16), (u8)(lba >> 8), (u8)lba, 0, 0, 1, 0};
	memset(data, 0, 512);
	vscsi_cmd(&nodes[n], 0, 0, cdb, 10, NULL, 0, data, 512);
	CHECK(nodes[n].resp.response == 0);
	return nodes[n].resp.status;
}

static u8 tur(int n)
{
	u8 cdb[6] = {0x00, 0, 0, 0, 0, 0}; /* TEST UNIT READY */
	vscsi_cmd(&nodes[n], 0, 0, cdb, 6, NULL, 0, NULL, 0);
	CHECK(nodes[n].resp.response == 0);
	return nodes[n].resp.status;
}

/* The last command ended CHECK CONDITION with this key/ASC/ASCQ. */
static void expect_sense(int n, u8 key, u8 asc, u8 ascq)
{
	struct vscsi_resp *r = &nodes[n].resp;
	if (r->status != 0x02 || (r->sense[2] & 0x0f) != key || r->sense[12] != asc ||
	    r->sense[13] != ascq) {
		printf("node %s: status %02x sense %x/%02x/%02x, want 2 %x/%02x/%02x\n", names[n],
		       r->status, r->sense[2] & 0x0f, r->sense[12], r->sense[13], key, asc, ascq);
		CHECK(0);
	}
}

u32 guest_main(struct hvm_start_info *si)
{
	(void)si;
	u8 slots[4];
	CHECK(vscsi_find(slots, 4) == 3);
	for (int n = 0; n < 3; n++) {
		vscsi_init(&nodes[n], slots[n], 1u << 1);
		/* Power-on unit attention, then GOOD. */
		int tries = 0;
		while (tur(n) != 0 && ++tries < 4)
			;
		CHECK(tries == 1);
		printf("node %s: controller 00:%02x.0 ready\n", names[n], slots[n]);
	}

	CHECK(pr_out(0, 0x06, 0, 0, KA) == 0); /* A: REGISTER AND IGNORE EXISTING KEY */
	CHECK(pr_out(0, 0x01, 5, KA, 0) == 0); /* A: RESERVE, Write Exclusive - Registrants Only */
	printf("A registered and reserved WE-RO\n");

	CHECK(write1(1, 0, 0xb0) == 0x18);
	printf("B (unregistered) write: RESERVATION CONFLICT\n");

	CHECK(pr_in(1, 0x01) == 0); /* B: READ RESERVATION */
	CHECK(get_be32(data + 4) == 16 && get_be64(data + 8) == KA && (data[21] & 0x0f) == 5);
	printf("B read reservation: holder key %lx type %u\n", get_be64(data + 8), data[21] & 0xf);

	CHECK(pr_out(1, 0x06, 0, 0, KB) == 0);
	CHECK(pr_out(2, 0x06, 0, 0, KC) == 0);
	CHECK(pr_in(1, 0x00) == 0); /* B: READ KEYS */
	CHECK(get_be32(data + 4) == 24);
	u64 keys[3] = {get_be64(data + 8), get_be64(data + 16), get_be64(data + 24)};
	int seen = 0;
	for (int i = 0; i < 3; i++)
		seen |= (keys[i] == KA) | ((keys[i] == KB) << 1) | ((keys[i] == KC) << 2);
	CHECK(seen == 7);
	printf("B and C registered; read keys lists A, B and C\n");

	CHECK(pr_out(1, 0x04, 5, KB, KA) == 0); /* B: PREEMPT A */
	printf("B preempted A\n");

	CHECK(tur(0) == 0x02);
	expect_sense(0, 0x6, 0x2a, 0x05); /* REGISTRATIONS PREEMPTED */
	CHECK(write1(0, 2, 0xa0) == 0x18);
	printf("A: unit attention 6/2a/05, then write RESERVATION CONFLICT\n");

	CHECK(pr_in(2, 0x01) == 0);
	CHECK(get_be64(data + 8) == KB && (data[21] & 0x0f) == 5);
	CHECK(write1(2, 1, 0xc1) == 0);
	CHECK(read1(0, 1) == 0 && data[0] == 0xc1 && data[511] == 0xc1);
	printf("C sees B as holder, writes as a registrant; A reads C's data\n");

	CHECK(pr_out(1, 0x03, 0, KB, 0) == 0); /* B: CLEAR */
	CHECK(tur(2) == 0x02);
	expect_sense(2, 0x6, 0x2a, 0x03); /* RESERVATIONS PREEMPTED */
	CHECK(tur(2) == 0);
	CHECK(write1(0, 2, 0xa2) == 0);
	CHECK(pr_in(0, 0x00) == 0 && get_be32(data + 4) == 0);
	CHECK(pr_in(0, 0x01) == 0 && get_be32(data + 4) == 0);
	printf("B cleared: C 6/2a/03, A writes again, no keys, no reservation\n");

	for (int n = 0; n < 3; n++)
		vscsi_reset(&nodes[n]);
	printf("GUEST PASS\n");
	return GUEST_EXIT_PASS;
}

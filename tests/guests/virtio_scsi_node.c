/*
 * virtio_scsi_node: one cluster node driven line by line from the serial
 * console, so a test can step two VMs (two arbiter processes) on the same
 * shared disk. Every command prints one result line starting with "= ".
 *
 *   tur                      TEST UNIT READY
 *   reg SAKEY                PR OUT REGISTER AND IGNORE EXISTING KEY
 *   res KEY TYPE             PR OUT RESERVE
 *   pre KEY VICTIM TYPE      PR OUT PREEMPT
 *   clr KEY                  PR OUT CLEAR
 *   rk                       PR IN READ KEYS        (prints the keys)
 *   rr                       PR IN READ RESERVATION (prints key and type)
 *   w LBA BYTE               WRITE(10) one block filled with BYTE
 *   r LBA                    READ(10) one block     (prints bytes 0 and 511)
 *   ev                       wait for an event-queue event (prints it or none)
 *   quit                     reset the controller and end the VM (pass)
 * Numbers are hexadecimal. Result: "= <cmd> status=SS sense=K/AA/QQ [...]".
 */
#include "guest.h"
#include "virtio_scsi_drv.h"

static struct vscsi node;
static u8 data[4096] __attribute__((aligned(4096)));
static u8 params[64] __attribute__((aligned(64)));

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

/* Read one line (without the newline) into buf; echo nothing. */
static void read_line(char *buf, int max)
{
	int n = 0;
	for (;;) {
		int c = serial_getc();
		if (c < 0) {
			cpu_relax();
			continue;
		}
		if (c == '\n' || c == '\r') {
			if (n == 0)
				continue;
			break;
		}
		if (n < max - 1)
			buf[n++] = (char)c;
	}
	buf[n] = 0;
}

/* Parse the next hex number at *p; 0 if none. */
static u64 hex(const char **p)
{
	while (**p == ' ')
		(*p)++;
	u64 v = 0;
	for (;;) {
		char c = **p;
		int d;
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			break;
		v = (v << 4) | (u64)d;
		(*p)++;
	}
	return v;
}

static void pr_out(u8 sa, u8 type, u64 key, u64 sa_key)
{
	u8 cdb[10] = {0x5f, sa, (u8)(type & 0xf), 0, 0, 0, 0, 0, 24, 0};
	memset(params, 0, 24);
	put_be64(params, key);
	put_be64(params + 8, sa_key);
	vscsi_cmd(&node, 0, 0, cdb, 10, params, 24, NULL, 0);
}

static void pr_in(u8 sa)
{
	u8 cdb[10] = {0x5e, sa, 0, 0, 0, 0, 0, 0, 0xff, 0};
	memset(data, 0, 255);
	vscsi_cmd(&node, 0, 0, cdb, 10, NULL, 0, data, 255);
}

static void rw(u8 op, u32 lba, u8 fill)
{
	u8 cdb[10] = {op, 0, (u8)(lba >> 24), (u8)(lba >> 16), (u8)(lba >> 8), (u8)lba, 0, 0, 1, 0};
	if (op == 0x2a) {
		memset(data, fill, 512);
		vscsi_cmd(&node, 0, 0, cdb, 10, data, 512, NULL, 0);
	} else {
		memset(data, 0, 512);
		vscsi_cmd(&node, 0, 0, cdb, 10, NULL, 0, data, 512);
	}
}

static void result(const char *cmd)
{
	struct vscsi_resp *r = &node.resp;
	CHECK(r->response == 0);
	u8 key = 0, asc = 0, ascq = 0;
	if (r->status == 0x02 && r->sense_len >= 14)
		key = r->sense[2] & 0x0f, asc = r->sense[12], ascq = r->sense[13];
	printf("= %s status=%02x sense=%x/%02x/%02x", cmd, r->status, key, asc, ascq);
}

u32 guest_main(struct hvm_start_info *si)
{
	(void)si;
	u8 slot;
	CHECK(vscsi_find(&slot, 1) == 1);
	vscsi_init(&node, slot, (1u << 1) | (1u << 2)); /* HOTPLUG, CHANGE */
	printf("node ready\n");
	char line[128];
	for (;;) {
		read_line(line, sizeof(line));
		const char *p = line + 2;
		if (!strcmp(line, "quit")) {
			vscsi_reset(&node);
			printf("= quit\nGUEST PASS\n");
			return GUEST_EXIT_PASS;
		} else if (!strcmp(line, "tur")) {
			u8 cdb[6] = {0, 0, 0, 0, 0, 0};
			vscsi_cmd(&node, 0, 0, cdb, 6, NULL, 0, NULL, 0);
			result("tur");
		} else if (!strncmp(line, "reg ", 4)) {
			p = line + 4;
			pr_out(0x06, 0, 0, hex(&p));
			result("reg");
		} else if (!strncmp(line, "res ", 4)) {
			p = line + 4;
			u64 k = hex(&p);
			pr_out(0x01, (u8)hex(&p), k, 0);
			result("res");
		} else if (!strncmp(line, "pre ", 4)) {
			p = line + 4;
			u64 k = hex(&p), v = hex(&p);
			pr_out(0x04, (u8)hex(&p), k, v);
			result("pre");
		} else if (!strncmp(line, "clr ", 4)) {
			p = line + 4;
			pr_out(0x03, 0, hex(&p), 0);
			result("clr");
		} else if (!strcmp(line, "ev")) {
			u32 ev, reason;
			u8 lun[8];
			if (vscsi_event(&node, &ev, lun, &reason, 400000000))
				printf("= ev event=%x lun=%02x%02x%02x%02x reason=%04x", ev, lun[0],
				       lun[1], lun[2], lun[3], reason);
			else
				printf("= ev none");
		} else if (!strcmp(line, "rk")) {
			pr_in(0x00);
			result("rk");
			u32 n = get_be32(data + 4) / 8;
			printf(" keys=%u", n);
			for (u32 i = 0; i < n && i < 8; i++)
				printf(" %lx", get_be64(data + 8 + 8 * i));
		} else if (!strcmp(line, "rr")) {
			pr_in(0x01);
			result("rr");
			if (get_be32(data + 4) >= 16)
				printf(" holder=%lx type=%u", get_be64(data + 8), data[21] & 0x0f);
			else
				printf(" holder=none");
		} else if (!strncmp(line, "w ", 2)) {
			u32 lba = (u32)hex(&p);
			rw(0x2a, lba, (u8)hex(&p));
			result("w");
		} else if (!strncmp(line, "r ", 2)) {
			rw(0x28, (u32)hex(&p), 0);
			result("r");
			printf(" data=%02x..%02x", data[0], data[511]);
		} else {
			printf("= ? unknown command");
		}
		printf("\n");
	}
}

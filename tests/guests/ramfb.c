/*
 * ramfb: set up QEMU's ramfb display the way OVMF's QemuRamfbDxe does — find
 * "etc/ramfb" in the fw_cfg file directory, DMA-write its 28-byte big-endian
 * configuration (framebuffer address, fourcc XR24, flags, width, height,
 * stride) — and paint a known picture into guest RAM. The host side
 * (`--display png=PATH`) must turn it into a PNG with these pixels:
 *
 *   64x48, stride 320 bytes (64 pixels + 16 bytes of padding per row):
 *   top-left quadrant red, top-right green, bottom-left blue,
 *   bottom-right white, pixel (x=5, y=7) 0x123456, padding bytes 0xEE.
 */
#include "guest.h"

#define FW_CFG_SEL 0x510
#define FW_CFG_DATA 0x511
#define FW_CFG_DMA_HI 0x514
#define FW_CFG_DMA_LO 0x518

#define DMA_READ 0x02
#define DMA_SELECT 0x08
#define DMA_WRITE 0x10

#define W 64
#define H 48
#define STRIDE 320 /* bytes */

struct dma_access {
	u32 control;
	u32 length;
	u64 address;
} __attribute__((packed, aligned(16)));

struct ramfb_cfg {
	u64 addr;
	u32 fourcc;
	u32 flags;
	u32 width;
	u32 height;
	u32 stride;
} __attribute__((packed));

static struct dma_access dma_req;
static u8 fb[H * STRIDE] __attribute__((aligned(4096)));
static struct ramfb_cfg cfg, back;

static u32 be32(u32 v) { return __builtin_bswap32(v); }
static u64 be64(u64 v) { return __builtin_bswap64(v); }

static u32 dma(u32 control, u64 address, u32 length)
{
	dma_req.control = be32(control);
	dma_req.length = be32(length);
	dma_req.address = be64(address);
	barrier();
	u64 at = (u64)&dma_req;
	outl(FW_CFG_DMA_HI, be32((u32)(at >> 32)));
	outl(FW_CFG_DMA_LO, be32((u32)at));
	barrier();
	return be32(dma_req.control);
}

static int find_file(const char *name, u16 *key, u32 *size)
{
	u8 b[64];
	outw(FW_CFG_SEL, 0x19);
	for (int i = 0; i < 4; i++)
		b[i] = inb(FW_CFG_DATA);
	u32 count = ((u32)b[0] << 24) | ((u32)b[1] << 16) | ((u32)b[2] << 8) | b[3];
	for (u32 f = 0; f < count; f++) {
		for (int i = 0; i < 64; i++)
			b[i] = inb(FW_CFG_DATA);
		if (strcmp((const char *)&b[8], name) == 0) {
			*size = ((u32)b[0] << 24) | ((u32)b[1] << 16) | ((u32)b[2] << 8) | b[3];
			*key = (u16)((b[4] << 8) | b[5]);
			return 1;
		}
	}
	return 0;
}

/* XRGB8888, little-endian in memory: B, G, R, X. */
static void put(int x, int y, u32 xrgb)
{
	u8 *p = &fb[y * STRIDE + x * 4];
	p[0] = (u8)xrgb;
	p[1] = (u8)(xrgb >> 8);
	p[2] = (u8)(xrgb >> 16);
	p[3] = 0xA5; /* the X byte: ignored by the display */
}

u32 guest_main(struct hvm_start_info *si)
{
	(void)si;
	u16 key = 0;
	u32 size = 0;
	CHECK(find_file("etc/ramfb", &key, &size));
	CHECK(size == 28);
	printf("ramfb: etc/ramfb key %x size %u\n", key, size);

	memset(fb, 0xEE, sizeof(fb));
	for (int y = 0; y < H; y++)
		for (int x = 0; x < W; x++) {
			u32 c = y < H / 2 ? (x < W / 2 ? 0xFF0000 : 0x00FF00)
					  : (x < W / 2 ? 0x0000FF : 0xFFFFFF);
			put(x, y, c);
		}
	put(5, 7, 0x123456);

	cfg.addr = be64((u64)fb);
	cfg.fourcc = be32(0x34325258); /* "XR24" as a little-endian u32 */
	cfg.flags = 0;
	cfg.width = be32(W);
	cfg.height = be32(H);
	cfg.stride = be32(STRIDE);
	CHECK(dma(((u32)key << 16) | DMA_SELECT | DMA_WRITE, (u64)&cfg, sizeof(cfg)) == 0);
	/* Read it back: the device kept what was written. */
	CHECK(dma(((u32)key << 16) | DMA_SELECT | DMA_READ, (u64)&back, sizeof(back)) == 0);
	CHECK(memcmp(&cfg, &back, sizeof(cfg)) == 0);
	printf("ramfb: %ux%u stride %u at %p configured\n", W, H, STRIDE, (void *)fb);
	return GUEST_EXIT_PASS;
}

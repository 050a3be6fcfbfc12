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
#include "fw_cfg_drv.h"

#define W 64
#define H 48
#define STRIDE 320 /* bytes */

struct ramfb_cfg {
	u64 addr;
	u32 fourcc;
	u32 flags;
	u32 width;
	u32 height;
	u32 stride;
} __attribute__((packed));

static u8 fb[H * STRIDE] __attribute__((aligned(4096)));
static struct ramfb_cfg cfg, back;

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
	CHECK(fwcfg_find_file("etc/ramfb", &key, &size, 0));
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

	cfg.addr = fwcfg_be64((u64)fb);
	cfg.fourcc = fwcfg_be32(0x34325258); /* "XR24" as a little-endian u32 */
	cfg.flags = 0;
	cfg.width = fwcfg_be32(W);
	cfg.height = fwcfg_be32(H);
	cfg.stride = fwcfg_be32(STRIDE);
	CHECK(fwcfg_dma(((u32)key << 16) | FW_CFG_DMA_SELECT | FW_CFG_DMA_WRITE, (u64)&cfg, sizeof(cfg)) == 0);
	/* Read it back: the device kept what was written. */
	CHECK(fwcfg_dma(((u32)key << 16) | FW_CFG_DMA_SELECT | FW_CFG_DMA_READ, (u64)&back, sizeof(back)) == 0);
	CHECK(memcmp(&cfg, &back, sizeof(cfg)) == 0);
	printf("ramfb: %ux%u stride %u at %p configured\n", W, H, STRIDE, (void *)fb);
	return GUEST_EXIT_PASS;
}

#include "fw_cfg_drv.h"

struct fwcfg_dma_access {
	u32 control;
	u32 length;
	u64 address;
} __attribute__((packed, aligned(16)));

static struct fwcfg_dma_access dma_req;

u32 fwcfg_dma(u32 control, u64 address, u32 length)
{
	dma_req.control = fwcfg_be32(control);
	dma_req.length = fwcfg_be32(length);
	dma_req.address = fwcfg_be64(address);
	barrier();
	u64 at = (u64)&dma_req;
	outl(FW_CFG_DMA_HI, fwcfg_be32((u32)(at >> 32)));
	outl(FW_CFG_DMA_LO, fwcfg_be32((u32)at));
	barrier();
	return fwcfg_be32(dma_req.control);
}

int fwcfg_find_file(const char *name, u16 *key, u32 *size, int verbose)
{
	u8 b[64];
	int found = 0;
	outw(FW_CFG_SEL, 0x19);
	for (int i = 0; i < 4; i++)
		b[i] = inb(FW_CFG_DATA);
	u32 count = ((u32)b[0] << 24) | ((u32)b[1] << 16) | ((u32)b[2] << 8) | b[3];
	if (verbose)
		printf("fw_cfg: %u files\n", count);
	for (u32 f = 0; f < count; f++) {
		for (int i = 0; i < 64; i++)
			b[i] = inb(FW_CFG_DATA);
		u32 sz = ((u32)b[0] << 24) | ((u32)b[1] << 16) | ((u32)b[2] << 8) | b[3];
		u16 k = (u16)((b[4] << 8) | b[5]);
		if (verbose)
			printf("  %04x %8u %s\n", k, sz, (const char *)&b[8]);
		if (!found && strcmp((const char *)&b[8], name) == 0) {
			*key = k;
			*size = sz;
			found = 1;
		}
	}
	return found;
}

/*
 * fw_cfg: read QEMU's firmware configuration interface the way OVMF does,
 * through both the port I/O and the DMA interface, and check what the
 * monitor put there: signature, ID with the DMA bit, the file directory,
 * etc/e820 (checked against the PVH memory map), and that a DMA request
 * naming memory outside guest RAM is refused with the ERROR bit.
 */
#include "fw_cfg_drv.h"

static u8 buf_io[4096], buf_dma[4096];

static void sel(u16 key) { outw(FW_CFG_SEL, key); }

static void read_io(u16 key, void *dst, u32 len)
{
	u8 *d = dst;
	sel(key);
	for (u32 i = 0; i < len; i++)
		d[i] = inb(FW_CFG_DATA);
}

struct e820 {
	u64 addr;
	u64 len;
	u32 type;
} __attribute__((packed));

u32 guest_main(struct hvm_start_info *si)
{
	u8 sig[4];
	read_io(0x0000, sig, 4);
	CHECK(memcmp(sig, "QEMU", 4) == 0);
	u32 id;
	read_io(0x0001, &id, 4);
	printf("fw_cfg: signature QEMU, id %x\n", id);
	CHECK(id & 2); /* DMA interface */

	/* The same signature through DMA. */
	memset(buf_dma, 0xEE, 8);
	CHECK(fwcfg_dma((0u << 16) | FW_CFG_DMA_SELECT | FW_CFG_DMA_READ, (u64)buf_dma, 4) == 0);
	CHECK(memcmp(buf_dma, "QEMU", 4) == 0);

	u16 key = 0;
	u32 size = 0;
	CHECK(fwcfg_find_file("etc/e820", &key, &size, 1));
	CHECK(size % 20 == 0 && size <= sizeof(buf_io));
	read_io(key, buf_io, size);
	memset(buf_dma, 0, sizeof(buf_dma));
	CHECK(fwcfg_dma(((u32)key << 16) | FW_CFG_DMA_SELECT | FW_CFG_DMA_READ, (u64)buf_dma, size) == 0);
	CHECK(memcmp(buf_io, buf_dma, size) == 0);

	/* SKIP then READ lands on the second entry. */
	if (size >= 40) {
		u8 second[20];
		CHECK(fwcfg_dma(((u32)key << 16) | FW_CFG_DMA_SELECT | FW_CFG_DMA_SKIP, 0, 20) == 0);
		CHECK(fwcfg_dma(FW_CFG_DMA_READ, (u64)second, 20) == 0);
		CHECK(memcmp(second, buf_io + 20, 20) == 0);
	}

	/*
	 * etc/e820 is QEMU-style (low RAM from 0, legacy holes left to the
	 * firmware), the PVH map is a BIOS-style map: they must agree on the
	 * top of RAM below 4 GiB and on the RAM above it.
	 */
	u64 top_fw = 0, high_fw = 0, top_pvh = 0, high_pvh = 0;
	const struct e820 *e = (const void *)buf_io;
	for (u32 i = 0; i < size / 20; i++) {
		printf("  e820 %016lx+%016lx type %u\n", e[i].addr, e[i].len, e[i].type);
		if (e[i].type != 1)
			continue;
		if (e[i].addr >= 0x100000000ul)
			high_fw += e[i].len;
		else if (e[i].addr + e[i].len > top_fw)
			top_fw = e[i].addr + e[i].len;
	}
	const struct hvm_memmap_entry *mm = (const void *)si->memmap_paddr;
	for (u32 i = 0; i < si->memmap_entries; i++) {
		if (mm[i].type != 1)
			continue;
		if (mm[i].addr >= 0x100000000ul)
			high_pvh += mm[i].size;
		else if (mm[i].addr + mm[i].size > top_pvh)
			top_pvh = mm[i].addr + mm[i].size;
	}
	printf("fw_cfg low RAM top %lx, high %lu KiB; PVH low RAM top %lx, high %lu KiB\n", top_fw,
	       high_fw >> 10, top_pvh, high_pvh >> 10);
	CHECK(top_fw == top_pvh && top_fw != 0 && high_fw == high_pvh);

	/* DMA to an address outside guest RAM: ERROR, and nothing breaks. */
	u32 c = fwcfg_dma((0u << 16) | FW_CFG_DMA_SELECT | FW_CFG_DMA_READ, 0xFFFFFFFF0000ul, 4);
	printf("DMA outside RAM: control %x\n", c);
	CHECK(c & FW_CFG_DMA_ERROR);

	printf("GUEST PASS\n");
	return GUEST_EXIT_PASS;
}

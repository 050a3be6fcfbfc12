/*
 * QEMU's fw_cfg interface for test guests: the selector/data ports, the DMA
 * interface (big-endian descriptor, address written high half then low half),
 * and the file directory (item 0x19).
 */
#ifndef ARBITER_FW_CFG_DRV_H
#define ARBITER_FW_CFG_DRV_H

#include "guest.h"

#define FW_CFG_SEL 0x510
#define FW_CFG_DATA 0x511
#define FW_CFG_DMA_HI 0x514
#define FW_CFG_DMA_LO 0x518

#define FW_CFG_DMA_ERROR 0x01
#define FW_CFG_DMA_READ 0x02
#define FW_CFG_DMA_SKIP 0x04
#define FW_CFG_DMA_SELECT 0x08
#define FW_CFG_DMA_WRITE 0x10

static inline u32 fwcfg_be32(u32 v) { return __builtin_bswap32(v); }
static inline u64 fwcfg_be64(u64 v) { return __builtin_bswap64(v); }

/* Run one DMA request; returns the control word the device wrote back
 * (0 when done, FW_CFG_DMA_ERROR set on failure). */
u32 fwcfg_dma(u32 control, u64 address, u32 length);
/* Look `name` up in the file directory through the data port; with
 * `verbose`, print every entry. Returns 1 and fills key/size when found. */
int fwcfg_find_file(const char *name, u16 *key, u32 *size, int verbose);

#endif

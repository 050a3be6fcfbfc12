/*
 * modules: print what the PVH start info says about the command line and
 * the modules (arbiter passes --initrd as module 0), with the module's
 * first bytes, for the test to compare with the file it passed.
 */
#include "guest.h"

u32 guest_main(struct hvm_start_info *si)
{
	CHECK(si->magic == HVM_START_MAGIC);
	printf("cmdline: [%s]\n", si->cmdline_paddr ? (const char *)si->cmdline_paddr : "");
	printf("modules: %u\n", si->nr_modules);
	const struct hvm_modlist_entry *m = (const void *)si->modlist_paddr;
	for (u32 i = 0; i < si->nr_modules; i++) {
		const u8 *p = (const u8 *)m[i].paddr;
		CHECK((m[i].paddr & 0xfff) == 0);
		printf("module %u: %lu bytes, page aligned, starts [", i, m[i].size);
		for (u64 j = 0; j < m[i].size && j < 16; j++)
			serial_putc((char)p[j]);
		printf("]\n");
		u32 s = 0;
		for (u64 j = 0; j < m[i].size; j++)
			s = s * 31 + p[j];
		printf("module %u: hash %x\n", i, s);
	}
	printf("GUEST PASS\n");
	return GUEST_EXIT_PASS;
}

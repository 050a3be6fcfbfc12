/*
 * Tiny runtime for freestanding Arbiter test guests.
 *
 * Integer-only C: built with -mgeneral-regs-only, so no x87/SSE code can be
 * emitted (the test suite checks the objects with objdump).  Guests print on
 * the 16550 UART at 0x3F8 and end the VM through the debug-exit port 0xF4.
 */
#ifndef ARBITER_GUEST_H
#define ARBITER_GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long i64;
typedef unsigned long usize;

#define NULL ((void *)0)

/* The structure the monitor hands over in %ebx at the PVH entry point. */
#define HVM_START_MAGIC 0x336ec578u
struct hvm_start_info {
	u32 magic;
	u32 version;
	u32 flags;
	u32 nr_modules;
	u64 modlist_paddr;
	u64 cmdline_paddr;
	u64 rsdp_paddr;
	u64 memmap_paddr;
	u32 memmap_entries;
	u32 reserved;
};

struct hvm_memmap_entry {
	u64 addr;
	u64 size;
	u32 type;
	u32 reserved;
};

struct hvm_modlist_entry {
	u64 paddr;
	u64 size;
	u64 cmdline_paddr;
	u64 reserved;
};

/* Port and memory-mapped I/O. */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline u8 mmio_read8(u64 a) { return *(volatile u8 *)a; }
static inline u16 mmio_read16(u64 a) { return *(volatile u16 *)a; }
static inline u32 mmio_read32(u64 a) { return *(volatile u32 *)a; }
static inline u64 mmio_read64(u64 a) { return *(volatile u64 *)a; }
static inline void mmio_write8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void mmio_write16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void mmio_write32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline void mmio_write64(u64 a, u64 v) { *(volatile u64 *)a = v; }

static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

/* String and memory helpers (gcc may emit calls to the first four). */
void *memset(void *d, int c, usize n);
void *memcpy(void *d, const void *s, usize n);
void *memmove(void *d, const void *s, usize n);
int memcmp(const void *a, const void *b, usize n);
usize strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, usize n);

/* Serial console (COM1, polled). */
void serial_putc(char c);
void serial_puts(const char *s);
int serial_getc(void); /* -1 when no byte is waiting */

/* printf subset: %s %c %d %i %u %x %X %p %% with l/ll, width and 0 flag. */
void printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* End the VM: the monitor exits with status (code << 1) | 1. */
void guest_exit(u32 code) __attribute__((noreturn));

/* Check helpers: print a parseable line; CHECK failures end the VM with code 2. */
#define GUEST_EXIT_PASS 0x10
#define GUEST_EXIT_FAIL 0x11
void check_fail(const char *file, int line, const char *expr) __attribute__((noreturn));
#define CHECK(e) do { if (!(e)) check_fail(__FILE__, __LINE__, #e); } while (0)

/* The guest's entry point. Its return value goes to guest_exit(). */
u32 guest_main(struct hvm_start_info *si);


/* ---- Platform helpers (PCI, CMOS, interrupts, LAPIC) ---- */

/* PCI configuration mechanism #1 (bus 0). */
u32 pci_read32(u8 dev, u8 fn, u8 off);
u16 pci_read16(u8 dev, u8 fn, u8 off);
u8 pci_read8(u8 dev, u8 fn, u8 off);
void pci_write32(u8 dev, u8 fn, u8 off, u32 v);
void pci_write16(u8 dev, u8 fn, u8 off, u16 v);
void pci_write8(u8 dev, u8 fn, u8 off, u8 v);
/* Offset of capability `id` in the function's list, 0 if absent. */
u8 pci_find_cap(u8 dev, u8 fn, u8 id);

/* CMOS/RTC (index 0x70 with NMI left enabled, data 0x71). */
u8 cmos_read(u8 reg);
void cmos_write(u8 reg, u8 v);

/* Interrupts: a 256-entry IDT with every vector pointing at a handler that
 * reports the vector and fails the test, until idt_set() replaces it. */
struct interrupt_frame;
typedef void (*isr_t)(struct interrupt_frame *);
void idt_init(void);
void idt_set(u8 vector, isr_t handler);
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void halt(void) { __asm__ volatile("hlt" ::: "memory"); }

/* Local APIC in xAPIC mode at 0xFEE00000. */
#define LAPIC_BASE 0xfee00000ul
void lapic_enable(void);
void lapic_eoi(void);
u32 lapic_id(void);
void lapic_write(u32 reg, u32 v);
u32 lapic_read(u32 reg);

static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d)
{
	__asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}

#endif

/*
 * bql-shim.so: LD_PRELOAD shim for the *outer* QEMU (TCG) that runs the lab host.
 *
 * The bug: when a guest of the lab host's KVM (a nested SVM guest, emulated by
 * QEMU's TCG) writes CR8 while a virtual interrupt is pending, TCG's CR8 write
 * helper raises CPU_INTERRUPT_VIRQ with cpu_interrupt() from the vCPU thread
 * without holding QEMU's big lock (BQL).  cpu_interrupt() lands in the TCG
 * accelerator's tcg_handle_interrupt(), which asserts that the BQL is held,
 * and QEMU aborts.  OVMF hits this on every boot; Linux booted by SeaBIOS or
 * directly does not.
 *
 * The fix here: QEMU builds its TCG accelerator as a module
 * (accel-tcg-x86_64.so) that reaches tcg_handle_interrupt through its global
 * offset table, so a definition in a preloaded library wins.  Ours takes the
 * BQL when the caller does not hold it and then calls the module's own
 * function.  When the caller holds it (every other path) it only forwards.
 *
 * QEMU's lock functions changed names in 8.2 (qemu_mutex_*_iothread ->
 * bql_*); both spellings are looked up at run time.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*handle_interrupt_fn)(void *cpu, int mask);
typedef bool (*locked_fn)(void);
typedef void (*lock_fn)(const char *file, int line);
typedef void (*unlock_fn)(void);

static handle_interrupt_fn real_handler;
static locked_fn bql_held;
static lock_fn bql_take;
static unlock_fn bql_drop;
static unsigned long unlocked_calls;

static int find_tcg_module(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	const char *name = info->dlpi_name;
	if (name && strstr(name, "accel-tcg-")) {
		void *h = dlopen(name, RTLD_NOW | RTLD_NOLOAD);
		if (h) {
			*(handle_interrupt_fn *)data =
				(handle_interrupt_fn)dlsym(h, "tcg_handle_interrupt");
			dlclose(h);
			return 1;
		}
	}
	return 0;
}

static void *either(const char *a, const char *b)
{
	void *p = dlsym(RTLD_DEFAULT, a);
	return p ? p : dlsym(RTLD_DEFAULT, b);
}

void tcg_handle_interrupt(void *cpu, int mask);

static void resolve(void)
{
	dl_iterate_phdr(find_tcg_module, &real_handler);
	bql_held = (locked_fn)either("qemu_mutex_iothread_locked", "bql_locked");
	bql_take = (lock_fn)either("qemu_mutex_lock_iothread_impl", "bql_lock_impl");
	bql_drop = (unlock_fn)either("qemu_mutex_unlock_iothread", "bql_unlock");
	if (!real_handler || real_handler == tcg_handle_interrupt || !bql_held || !bql_take ||
	    !bql_drop) {
		fprintf(stderr, "bql-shim: cannot find QEMU's TCG interrupt handler or BQL functions\n");
		abort();
	}
}

void tcg_handle_interrupt(void *cpu, int mask)
{
	if (!real_handler)
		resolve();
	if (bql_held()) {
		real_handler(cpu, mask);
		return;
	}
	if (unlocked_calls++ == 0)
		fprintf(stderr, "bql-shim: interrupt 0x%x raised without the BQL; taking it "
				"(reported once)\n", mask);
	bql_take(__FILE__, __LINE__);
	real_handler(cpu, mask);
	bql_drop();
}

#!/usr/bin/env bash
# Build the lab host: the Debian kernel plus an initramfs that loads kvm_amd and runs a
# scenario with hardware-style /dev/kvm, inside QEMU's software emulation of an AMD SVM CPU.
#
#   tests/lab/build-labhost.sh base
#       The cached base image (target/lab/labhost-<hash>/): kernel, kvm modules (irqbypass,
#       kvm, ccp, kvm_amd: dependency order), busybox, qemu-system-x86_64 with its libraries
#       and firmware (the peer monitor), OVMF, the Linux test guest (build-guest.sh), the lab
#       host /init and lablib.sh. Also decides whether the outer QEMU needs bql-shim.so.
#       Prints KEY=VALUE lines.
#   tests/lab/build-labhost.sh run OUTDIR ARBITER TEST_GUEST_DIR SCENARIO [RUNNER]
#       OUTDIR/initrd.gz = the base initramfs + a small one with the arbiter binary (and its
#       libraries), the freestanding test guests and the scenario script (/lab/run/scenario.sh);
#       with RUNNER, also that arbiter-lab binary as /usr/bin/arbiter-lab (scenarios that run
#       the runner itself inside the lab host, in its direct mode).
#       Linux unpacks concatenated cpio archives in order, so the base is never rebuilt for a
#       new arbiter binary.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lab_need apt-get dpkg-deb modinfo cpio gzip ldd

outer_qemu=${LAB_OUTER_QEMU:-qemu-system-x86_64}

# The outer QEMU's CR8/BQL bug (see bql-shim.c): present in QEMU's TCG from the SVM V_TPR
# rework (6.1) until the interrupt-request rework (10.2); measured on Debian's 7.2. The shim
# only works when TCG is a loadable module (Debian's packages build it so).
shim_needed() {
	local v maj min
	v=$("$outer_qemu" --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
	read -r maj min <<<"$v"
	[ -n "${maj:-}" ] || return 1
	[ $((maj * 100 + min)) -ge 601 ] && [ $((maj * 100 + min)) -lt 1002 ]
}

build_base() {
	lab_need busybox gcc
	command -v "$outer_qemu" >/dev/null || lab_missing "$outer_qemu (apt-get install qemu-system-x86)"
	local guest_env
	guest_env=$("$LAB_SRC/build-guest.sh")
	eval "$guest_env"
	lab_kernel
	local qemu ovmf=/usr/share/ovmf/OVMF.fd
	qemu=$(command -v qemu-system-x86_64)
	[ -f "$ovmf" ] || lab_missing "$ovmf (apt-get install ovmf)"
	local key
	key=$(lab_hash "$KPKGVER" "busybox $(lab_pkg_version busybox-static)" \
		"qemu $(lab_pkg_version qemu-system-x86)" "ovmf $(lab_pkg_version ovmf)" "$LAB_GUEST_DIR" \
		"$LAB_SRC/lib.sh" "$LAB_SRC/build-labhost.sh" "$LAB_SRC/host")
	local out="$LAB_DIR/labhost-$key"
	if [ ! -f "$out/.done" ]; then
		rm -rf "$out"
		mkdir -p "$out"
		local root="$out/root"
		lab_install_busybox "$root"
		lab_install_modules "$root" kvm_amd
		# Linux's SCSI target for passthrough scenarios (lablib.sh's lab_lio loads them
		# on demand): a fileio LU behind tcm_loop ports, seen through sg nodes
		lab_install_module_set "$root" lio.order target_core_mod target_core_file tcm_loop sg
		lab_install_binary "$root" "$qemu" /usr/bin/qemu-system-x86_64
		local f
		for f in /usr/share/qemu/*.bin /usr/share/seabios/bios*.bin; do
			[ -e "$f" ] || continue
			mkdir -p "$root$(dirname "$f")"
			cp -L "$f" "$root$f"
		done
		mkdir -p "$root/lab/guest" "$root/lab/ovmf" "$root/lab/run"
		cp -L "$ovmf" "$root/lab/ovmf/OVMF.fd"
		for f in /usr/share/OVMF/OVMF_CODE_4M.fd /usr/share/OVMF/OVMF_VARS_4M.fd; do
			[ -f "$f" ] && cp -L "$f" "$root/lab/ovmf/"
		done
		cp "$LAB_GUEST_KERNEL" "$LAB_GUEST_INITRD" "$LAB_GUEST_ESP" "$root/lab/guest/"
		cp "$LAB_SRC/host/init" "$root/init"
		chmod 755 "$root/init"
		cp "$LAB_SRC/host/lablib.sh" "$root/lab/"
		lab_cpio "$root" "$out/base.cpio.gz"
		cp "$KIMAGE" "$out/vmlinuz"
		rm -rf "$root"
		touch "$out/.done"
		lab_prune labhost "$out"
	fi
	local preload=""
	if shim_needed; then
		preload="$LAB_DIR/bql-shim-$(lab_hash "$LAB_SRC/bql-shim.c").so"
		if [ ! -f "$preload" ]; then
			gcc -O2 -Wall -shared -fPIC -o "$preload.tmp" "$LAB_SRC/bql-shim.c" -ldl
			mv "$preload.tmp" "$preload"
			for f in "$LAB_DIR"/bql-shim-*.so; do [ "$f" = "$preload" ] || rm -f "$f"; done
		fi
	fi
	echo "LAB_HOST_DIR=$out"
	echo "LAB_HOST_KERNEL=$out/vmlinuz"
	echo "LAB_HOST_BASE=$out/base.cpio.gz"
	echo "LAB_OUTER_QEMU=$(command -v "$outer_qemu")"
	echo "LAB_OUTER_QEMU_VERSION=$("$outer_qemu" --version | sed -n "s/^QEMU emulator version \([^ ]*\).*/\1/p")"
	echo "LAB_OUTER_PRELOAD=$preload"
	echo "$guest_env"
}

build_run() {
	local outdir=$1 arbiter=$2 guests=$3 scenario=$4 runner=${5:--} base_env
	base_env=$(build_base)
	eval "$base_env"
	mkdir -p "$outdir"
	local root="$outdir/root"
	rm -rf "$root"
	mkdir -p "$root/lab/run/test-guests"
	if [ -n "$arbiter" ] && [ "$arbiter" != - ]; then
		lab_install_binary "$root" "$arbiter" /usr/bin/arbiter
		# debug builds carry ~30 MiB of DWARF that the lab host would unpack under TCG
		if command -v strip >/dev/null; then strip --strip-debug "$root/usr/bin/arbiter"; fi
	fi
	if [ "$runner" != - ]; then
		lab_install_binary "$root" "$runner" /usr/bin/arbiter-lab
		if command -v strip >/dev/null; then strip --strip-debug "$root/usr/bin/arbiter-lab"; fi
	fi
	if [ -d "$guests" ]; then
		cp "$guests"/*.elf "$root/lab/run/test-guests/" 2>/dev/null || true
	fi
	cp "$scenario" "$root/lab/run/scenario.sh"
	lab_cpio "$root" "$outdir/run.cpio.gz"
	cat "$LAB_HOST_BASE" "$outdir/run.cpio.gz" >"$outdir/initrd.gz.tmp"
	mv "$outdir/initrd.gz.tmp" "$outdir/initrd.gz"
	rm -rf "$root"
	echo "$base_env"
	echo "LAB_RUN_INITRD=$outdir/initrd.gz"
}

case ${1:-} in
base) build_base ;;
run)
	[ $# = 5 ] || [ $# = 6 ] ||
		lab_die "usage: build-labhost.sh run OUTDIR ARBITER|- TEST_GUEST_DIR SCENARIO [RUNNER|-]"
	build_run "$2" "$3" "$4" "$5" "${6:--}"
	;;
*) lab_die "usage: build-labhost.sh base | run OUTDIR ARBITER|- TEST_GUEST_DIR SCENARIO [RUNNER|-]" ;;
esac

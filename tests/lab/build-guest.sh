#!/usr/bin/env bash
# Build the lab's Linux test guest from Debian packages:
#   vmlinuz     the Debian kernel (linux-image-amd64's current version, unpacked, not installed)
#   initrd.gz   busybox-static + sg3-utils (+ its libraries) + virtio_pci, virtio_scsi, sd_mod,
#               sg, virtio_net (+ dependencies, in load order) + tests/lab/guest/{init,scripts}
#   esp.img     FAT EFI system partition: \EFI\BOOT\BOOTX64.EFI is the kernel with the initrd
#               and a command line built in (systemd-boot's EFI stub, a unified kernel image),
#               plus \EFI\lab\vmlinuz.efi and \EFI\lab\initrd.gz for loaders that take them apart
#
#   tests/lab/build-guest.sh            prints KEY=VALUE lines (paths) of the built images
#
# Outputs are cached in target/lab/guest-<hash>/, the hash covering the package versions and
# these scripts; a rebuild only happens when one of them changes.
# Needs (apt): busybox-static sg3-utils cpio kmod dosfstools mtools binutils (and apt access
# to download linux-image-amd64 and systemd-boot-efi).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lab_need apt-get dpkg-deb modinfo cpio gzip ldd
EFI_CMDLINE="console=ttyS0 panic=-1 lab.script=probe"
MODULES=(virtio_pci virtio_scsi sd_mod sg virtio_net crct10dif_generic crc64_rocksoft_generic)
# Linux's own SCSI target (LIO) with loopback initiator ports, loaded by scripts/pr-lio.sh:
# the reference the persistent-reservation sequence (scripts/pr.sh) is checked against.
LIO_MODULES=(target_core_mod target_core_file tcm_loop)
SG_TOOLS=(sg_inq sg_vpd sg_readcap sg_turs sg_persist sg_raw sg_luns sg_requests sg_modes sg_rtpg
	sg_reset sg_sync sg_map sg_dd)

lab_kernel
key=$(lab_hash "$KPKGVER" "busybox $(lab_pkg_version busybox-static)" \
	"sg3 $(lab_pkg_version sg3-utils)" "${MODULES[*]}" "${SG_TOOLS[*]}" "$EFI_CMDLINE" \
	"$LAB_SRC/lib.sh" "$LAB_SRC/build-guest.sh" "$LAB_SRC/guest")
out="$LAB_DIR/guest-$key"
if [ ! -f "$out/.done" ]; then
	lab_need busybox sg_inq mkfs.vfat mcopy objcopy objdump
	rm -rf "$out"
	mkdir -p "$out"
	root="$out/root"
	lab_install_busybox "$root"
	lab_install_modules "$root" "${MODULES[@]}"
	lab_install_module_set "$root" lio.order "${LIO_MODULES[@]}"
	for t in "${SG_TOOLS[@]}"; do
		lab_install_binary "$root" "$(command -v "$t")" "/usr/bin/$t"
	done
	mkdir -p "$root/lab/scripts"
	cp "$LAB_SRC/guest/init" "$root/init"
	chmod 755 "$root/init"
	cp "$LAB_SRC/guest/guestlib.sh" "$root/lab/"
	cp "$LAB_SRC/guest/scripts/"*.sh "$root/lab/scripts/"
	lab_cpio "$root" "$out/initrd.gz"
	cp "$KIMAGE" "$out/vmlinuz"

	# EFI: a unified kernel image (stub + .osrel + .cmdline + .linux + .initrd sections).
	stubdir=$(lab_unpack_pkg systemd-boot-efi)
	stub=$(find "$stubdir" -name 'linuxx64.efi.stub' | head -n 1)
	[ -n "$stub" ] || lab_die "no linuxx64.efi.stub in systemd-boot-efi"
	printf '%s' "$EFI_CMDLINE" >"$out/cmdline.txt"
	printf 'NAME="Arbiter lab guest"\nID=arbiter-lab\n' >"$out/os-release"
	align=$((16#$(objdump -p "$stub" | awk '$1 == "SectionAlignment" { print $2 }')))
	# first free address after the stub's last section, rounded up to the alignment
	next=0
	while read -r size vma; do
		[ $((16#$vma + 16#$size)) -gt $next ] && next=$((16#$vma + 16#$size))
	done < <(objdump -h -w "$stub" | awk '$1 ~ /^[0-9]+$/ { print $3, $4 }')
	up() { echo $(((($1) + align - 1) / align * align)); }
	osrel=$(up "$next")
	cmdl=$(up $((osrel + $(stat -c %s "$out/os-release"))))
	linux=$(up $((cmdl + $(stat -c %s "$out/cmdline.txt"))))
	initrd=$(up $((linux + $(stat -c %s "$out/vmlinuz"))))
	objcopy \
		--add-section .osrel="$out/os-release" --change-section-vma .osrel=$(printf 0x%x $osrel) \
		--add-section .cmdline="$out/cmdline.txt" --change-section-vma .cmdline=$(printf 0x%x $cmdl) \
		--add-section .linux="$out/vmlinuz" --change-section-vma .linux=$(printf 0x%x $linux) \
		--add-section .initrd="$out/initrd.gz" --change-section-vma .initrd=$(printf 0x%x $initrd) \
		"$stub" "$out/BOOTX64.EFI"
	size_kb=$(($(stat -c %s "$out/BOOTX64.EFI") * 2 / 1024 + $(stat -c %s "$out/vmlinuz") / 1024 + $(stat -c %s "$out/initrd.gz") / 1024 + 4096))
	rm -f "$out/esp.img"
	mkfs.vfat -C -n LABESP "$out/esp.img" "$size_kb" >/dev/null
	mmd -i "$out/esp.img" ::/EFI ::/EFI/BOOT ::/EFI/lab
	mcopy -i "$out/esp.img" "$out/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
	mcopy -i "$out/esp.img" "$out/vmlinuz" ::/EFI/lab/vmlinuz.efi
	mcopy -i "$out/esp.img" "$out/initrd.gz" ::/EFI/lab/initrd.gz
	rm -rf "$root"
	touch "$out/.done"
	lab_prune guest "$out"
fi
echo "LAB_GUEST_DIR=$out"
echo "LAB_GUEST_KERNEL=$out/vmlinuz"
echo "LAB_GUEST_INITRD=$out/initrd.gz"
echo "LAB_GUEST_ESP=$out/esp.img"
echo "LAB_GUEST_KVER=$KVER"

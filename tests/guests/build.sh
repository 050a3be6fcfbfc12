#!/usr/bin/env bash
# Build every freestanding test guest (tests/guests/*.c) into OUTDIR/<name>.elf.
#
#   tests/guests/build.sh [OUTDIR]        default OUTDIR: target/guests
#
# Guests are integer-only x86-64 code (no x87/SSE: -mgeneral-regs-only) linked
# at 1 MiB with a PVH entry note, so `arbiter run --kernel OUTDIR/NAME.elf`
# boots them.  Needs gcc and binutils; the Rust build script of the
# arbiter-tests crate runs this same script.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-$here/../../target/guests}
mkdir -p "$out"
CC=${CC:-gcc}
CFLAGS=(-std=gnu11 -O2 -g -Wall -Wextra -Werror
	-ffreestanding -fno-builtin -nostdlib -nostdinc -fno-pic -fno-pie -no-pie -static
	-mgeneral-regs-only -mno-red-zone -mcmodel=small
	-fno-stack-protector -fno-asynchronous-unwind-tables -fno-unwind-tables
	-fcf-protection=none -fno-common -I"$here/common")
LDFLAGS=(-Wl,-T,"$here/common/guest.ld" -Wl,--build-id=none -Wl,-z,noexecstack -Wl,-n)
common_objs=()
for src in "$here"/common/*.S "$here"/common/*.c; do
	obj="$out/common-$(basename "${src%.*}").o"
	"$CC" "${CFLAGS[@]}" -c "$src" -o "$obj"
	common_objs+=("$obj")
done
for src in "$here"/*.c; do
	name=$(basename "${src%.c}")
	"$CC" "${CFLAGS[@]}" -c "$src" -o "$out/$name.o"
	"$CC" "${CFLAGS[@]}" "${LDFLAGS[@]}" -o "$out/$name.elf" "$out/$name.o" "${common_objs[@]}"
done

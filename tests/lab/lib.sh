# Shared helpers of the lab image builders (sourced by build-*.sh; bash).
#
# Everything comes from Debian packages: the kernel is fetched with
# `apt-get download` and unpacked with `dpkg-deb -x` under $LAB_DIR, so
# nothing depends on the host's /boot or /lib/modules.

LAB_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_DIR=${ARBITER_LAB_DIR:-$LAB_SRC/../../target/lab}
mkdir -p "$LAB_DIR"
LAB_DIR=$(cd "$LAB_DIR" && pwd)

lab_die() {
	echo "lab: $*" >&2
	exit 1
}

# lab_missing WHAT: exit 3, which the runner reports as a skip (this host lacks a tool).
lab_missing() {
	echo "lab: missing $* (resources/lab-host.md lists the apt packages)" >&2
	exit 3
}

# lab_need COMMAND...: exit 3 (the runner's "this host lacks a tool: skip") if one is missing.
lab_need() {
	local c
	for c in "$@"; do
		if ! command -v "$c" >/dev/null 2>&1; then
			echo "lab: missing '$c' (resources/lab-host.md lists the apt packages)" >&2
			exit 3
		fi
	done
}

# Version of an installed Debian package (empty if not installed).
lab_pkg_version() {
	dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true
}

# The kernel package linux-image-amd64 points at, e.g. linux-image-6.1.0-56-amd64.
lab_kernel_pkg() {
	apt-cache depends linux-image-amd64 2>/dev/null |
		awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}

# Fetch and unpack a Debian package (not installing it) into $LAB_DIR/pkg/<name>_<version>/;
# prints that directory. Cached: a second call with the same candidate version is free.
lab_unpack_pkg() {
	local pkg=$1 ver dir deb
	ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ { print $2; exit }')
	[ -n "$ver" ] && [ "$ver" != "(none)" ] || lab_missing "the Debian package $pkg (apt knows none: run apt-get update)"
	dir="$LAB_DIR/pkg/${pkg}_${ver//:/%}"
	if [ ! -f "$dir/.unpacked" ]; then
		rm -rf "$dir" "$dir.deb.d"
		mkdir -p "$dir.deb.d"
		(cd "$dir.deb.d" && apt-get download "$pkg=$ver" >&2) ||
			lab_missing "the Debian package $pkg=$ver (apt-get download failed: no network or apt source?)"
		deb=$(ls "$dir.deb.d"/*.deb)
		dpkg-deb -x "$deb" "$dir" || lab_die "dpkg-deb -x $deb failed"
		rm -rf "$dir.deb.d"
		touch "$dir/.unpacked"
	fi
	echo "$dir"
}

# Unpacked Debian kernel: sets KROOT (unpacked tree), KVER (uname -r), KMOD (its modules dir).
lab_kernel() {
	local pkg
	pkg=$(lab_kernel_pkg)
	[ -n "$pkg" ] || lab_missing "linux-image-amd64 in apt (run apt-get update)"
	KROOT=$(lab_unpack_pkg "$pkg")
	KVER=$(ls "$KROOT/lib/modules" | head -n 1)
	KMOD="$KROOT/lib/modules/$KVER"
	[ -f "$KROOT/boot/vmlinuz-$KVER" ] || lab_die "no vmlinuz in $KROOT"
	KIMAGE="$KROOT/boot/vmlinuz-$KVER"
	KPKGVER="$pkg $(basename "$KROOT")"
}

# Path of module NAME (dashes and underscores are the same) in $KMOD, or empty.
lab_module_path() {
	local n=$1 f
	f=$(find "$KMOD/kernel" \( -name "$n.ko" -o -name "${n//_/-}.ko" -o -name "${n//-/_}.ko" \
		-o -name "$n.ko.xz" -o -name "${n//_/-}.ko.xz" -o -name "${n//-/_}.ko.xz" \
		-o -name "$n.ko.zst" -o -name "${n//_/-}.ko.zst" -o -name "${n//-/_}.ko.zst" \) | head -n 1)
	echo "$f"
}

# Print the module files needed for NAMES, dependencies first, each once. The
# Debian package carries no modules.dep, so dependencies come from each
# module's own "depends" field (modinfo).
lab_module_closure() {
	local -A seen=()
	local out=()
	_lab_visit() {
		local n=${1//-/_} f d
		[ -n "${seen[$n]:-}" ] && return 0
		seen[$n]=1
		f=$(lab_module_path "$1")
		[ -n "$f" ] || lab_die "kernel $KVER has no module $1"
		for d in $(modinfo -F depends "$f" | tr ',' ' '); do
			_lab_visit "$d"
		done
		out+=("$f")
	}
	local m
	for m in "$@"; do _lab_visit "$m"; done
	printf '%s\n' "${out[@]}"
}

# lab_install_modules ROOT NAMES...: copy the modules NAMES (+ deps) into ROOT/lib/modules/
# and write their load order to ROOT/lib/modules/load.order (file names, one per line).
lab_install_modules() {
	local root=$1
	shift
	lab_install_module_set "$root" load.order "$@"
}

# lab_install_module_set ROOT LIST NAMES...: the same with the order in ROOT/lib/modules/LIST
# (for modules a script loads on demand; insmod skips those already loaded).
lab_install_module_set() {
	local root=$1 list=$2 f base
	shift 2
	mkdir -p "$root/lib/modules"
	: >"$root/lib/modules/$list"
	while read -r f; do
		base=$(basename "$f")
		case $base in
		*.xz) xz -dc "$f" >"$root/lib/modules/${base%.xz}"; base=${base%.xz} ;;
		*.zst) zstd -qdc "$f" >"$root/lib/modules/${base%.zst}"; base=${base%.zst} ;;
		*) cp "$f" "$root/lib/modules/$base" ;;
		esac
		echo "$base" >>"$root/lib/modules/$list"
	done < <(lab_module_closure "$@")
}

# Copy an executable and every shared library ldd names (plus the loader) into ROOT,
# at the same paths.
lab_install_binary() {
	local root=$1 bin=$2 dest=${3:-$2} lib
	mkdir -p "$root$(dirname "$dest")"
	cp -L "$bin" "$root$dest"
	for lib in $(ldd "$bin" 2>/dev/null | grep -o '/[^ )]*'); do
		[ -e "$root$lib" ] && continue
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
}

# Busybox (static) with its applets linked at first boot by the init scripts.
lab_install_busybox() {
	local root=$1
	[ -x /bin/busybox ] || lab_missing "/bin/busybox (apt-get install busybox-static)"
	{ ldd /bin/busybox 2>&1 || true; } | grep -q 'not a dynamic' ||
		lab_missing "a static /bin/busybox (apt-get install busybox-static)"
	mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/proc" "$root/sys" \
		"$root/dev" "$root/tmp" "$root/run" "$root/mnt"
	cp /bin/busybox "$root/bin/busybox"
}

# newc cpio of DIR, gzip'd, to FILE (atomically).
lab_cpio() {
	local dir=$1 out=$2
	(cd "$dir" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner=0:0) |
		gzip -1 >"$out.tmp"
	mv "$out.tmp" "$out"
}

# sha256 of the arguments' contents and of the given strings, short form.
lab_hash() {
	{
		local a
		for a in "$@"; do
			if [ -f "$a" ]; then sha256sum "$a"; elif [ -d "$a" ]; then
				(cd "$a" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
			else echo "$a"; fi
		done
	} | sha256sum | cut -c1-16
}

# lab_prune PREFIX KEEP: remove older cached builds $LAB_DIR/PREFIX-* other than KEEP.
lab_prune() {
	local d
	for d in "$LAB_DIR/$1"-*; do
		[ -e "$d" ] && [ "$d" != "$2" ] && rm -rf "$d"
	done
	return 0
}

# Helpers for guest-side scripts (sourced by /init; busybox sh).

lab_uptime() { cut -d' ' -f1 /proc/uptime; }
lab_say() { echo "@@GUEST $*"; }
# Value of NAME=value on the kernel command line.
lab_arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p" | tail -n 1; }
_lab_count() { echo $(($(cat "/tmp/lab.$1" 2>/dev/null || echo 0) + 1)) >"/tmp/lab.$1"; }
# lab_result NAME pass|fail [key=value ...]   (values must not contain spaces)
lab_result() {
	local n=$1 s=$2
	shift 2
	echo "@@RESULT name=$n status=$s${*:+ $*}"
	_lab_count "$s"
}
# lab_check NAME CMD...: run CMD, result pass if it exits 0; its output goes to the console.
lab_check() {
	local n=$1 rc
	shift
	"$@"
	rc=$?
	if [ $rc = 0 ]; then lab_result "$n" pass; else lab_result "$n" fail rc=$rc; fi
	return $rc
}
# Wait up to SECONDS for at least one SCSI disk (/dev/sdX).
lab_wait_disks() {
	local i=0
	while [ $i -lt $(($1 * 5)) ]; do
		ls /dev/sd[a-z] >/dev/null 2>&1 && return 0
		sleep 0.2
		i=$((i + 1))
	done
	return 1
}
# Field of sg_inq's standard INQUIRY output, spaces squeezed to '_'.
lab_inq_field() { # DEV FIELD ("Vendor identification" ...)
	sg_inq "$1" 2>/dev/null | sed -n "s/^ *$2: *//p" | sed 's/ *$//; s/  */_/g' | head -n 1
}
# The first SCSI disk that is not the lab's own EFI system partition (label LABESP).
lab_data_disk() {
	local d
	for d in /dev/sd[a-z]; do
		[ -b "$d" ] || continue
		dd if=$d bs=512 count=1 2>/dev/null | grep -q LABESP && continue
		echo "$d"
		return 0
	done
	return 1
}
# Operations per second: OPS over the seconds between uptimes T0 and T1.
lab_rate() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { d = b - a; if (d <= 0) d = 0.01; printf "%d", n / d }'; }

# Scenario helpers: start VMs, watch their serial output, report in parseable lines.
# Sourced by the lab host's /init (busybox sh) and, on a host with hardware KVM, by the
# runner's direct mode (sh); POSIX sh only.
#
# Environment (set by the caller):
#   LAB_TMP            scratch directory for disks and serial logs
#   ARBITER, QEMU      the monitors (paths or names in PATH)
#   LAB_GUEST_KERNEL, LAB_GUEST_INITRD, LAB_GUEST_ESP, LAB_OVMF, LAB_TEST_GUESTS
#
# Output lines:
#   @@VM name=N event=start monitor=M uptime=S
#   @@SERIAL N| <line>            every line the VM printed (serial console and stderr)
#   @@VM name=N status=pass|fail exit=E time=S reason=R

lab_now() { cut -d' ' -f1 /proc/uptime; }
lab_elapsed() { awk -v a="$(lab_now)" -v b="$1" 'BEGIN { printf "%.2f", a - b }'; }

# lab_disk NAME SIZE_MIB: a zero-filled raw disk at $LAB_TMP/NAME.img
lab_disk() {
	rm -f "$LAB_TMP/$1.img"
	dd if=/dev/zero of="$LAB_TMP/$1.img" bs=1048576 count=0 seek="$2" 2>/dev/null
	echo "@@LAB disk name=$1 size_mib=$2"
}

# lab_vm_start NAME TIMEOUT_S EXPECT_EXIT PATTERN CMD...
#   EXPECT_EXIT: the exit status that counts as a pass, or '-' for any; with '-' and a
#                PATTERN the VM is stopped 5 s after the pattern appears if it has not
#                ended by itself (a guest that reaches its goal but cannot power off)
#   PATTERN: a fixed string the serial output must contain, or '' for none
lab_vm_start() {
	_n=$1
	echo "$2" >"$LAB_TMP/$_n.timeout"
	echo "$3" >"$LAB_TMP/$_n.expect"
	printf '%s' "$4" >"$LAB_TMP/$_n.pattern"
	shift 4
	echo "@@VM name=$_n event=start monitor=$(basename "$1") uptime=$(lab_now)"
	echo "@@VM name=$_n cmd=$*" | tr -s ' '
	lab_now >"$LAB_TMP/$_n.t0"
	rm -f "$LAB_TMP/$_n.rc" "$LAB_TMP/$_n.pid"
	# The monitor runs in a subshell that records its exit status in NAME.rc (no
	# reliance on how a shell reaps background children); NAME.pid is the monitor.
	(
		sh -c 'echo $$ >"$0"; exec "$@"' "$LAB_TMP/$_n.pid" "$@" \
			<"${LAB_STDIN:-/dev/null}" >"$LAB_TMP/$_n.serial" 2>"$LAB_TMP/$_n.stderr"
		echo $? >"$LAB_TMP/$_n.rc"
	) &
}

# lab_vm_wait NAME: wait for the VM to end (or time out) and report it. Returns 0 on pass.
lab_vm_wait() {
	_n=$1
	_t0=$(cat "$LAB_TMP/$_n.t0")
	_to=$(cat "$LAB_TMP/$_n.timeout")
	_exp=$(cat "$LAB_TMP/$_n.expect")
	_pat=$(cat "$LAB_TMP/$_n.pattern")
	_reason=""
	_seen=""
	while [ ! -f "$LAB_TMP/$_n.rc" ]; do
		_el=$(lab_elapsed "$_t0")
		if [ "$_exp" = "-" ] && [ -n "$_pat" ] && [ -z "$_reason" ]; then
			if [ -z "$_seen" ] && grep -qF "$_pat" "$LAB_TMP/$_n.serial"; then
				_seen=$_el
			elif [ -n "$_seen" ] && [ "$(awk -v a="$_el" -v b="$_seen" 'BEGIN { print (a - b >= 5) }')" = 1 ]; then
				_reason=stopped
				echo "@@VM name=$_n event=stopped after=pattern"
				kill "$(cat "$LAB_TMP/$_n.pid")" 2>/dev/null
				sleep 1
				kill -9 "$(cat "$LAB_TMP/$_n.pid")" 2>/dev/null
			fi
		fi
		if [ "${_el%.*}" -ge "$_to" ] && [ -z "$_reason" ]; then
			_reason=timeout
			kill "$(cat "$LAB_TMP/$_n.pid")" 2>/dev/null
			sleep 1
			kill -9 "$(cat "$LAB_TMP/$_n.pid")" 2>/dev/null
		fi
		sleep 0.5
	done
	_rc=$(cat "$LAB_TMP/$_n.rc")
	[ "$_reason" = stopped ] && _reason=""
	_el=$(lab_elapsed "$_t0")
	tr -d '\r' <"$LAB_TMP/$_n.serial" | sed "s/^/@@SERIAL $_n| /"
	sed "s/^/@@SERIAL $_n| stderr: /" "$LAB_TMP/$_n.stderr"
	if [ -z "$_reason" ] && [ "$_exp" != "-" ] && [ "$_rc" != "$_exp" ]; then
		_reason=exit_${_rc}_expected_$_exp
	fi
	if [ -z "$_reason" ] && [ -n "$_pat" ] && ! grep -qF "$_pat" "$LAB_TMP/$_n.serial"; then
		_reason=pattern_not_seen
	fi
	if [ -z "$_reason" ]; then
		echo "@@VM name=$_n status=pass exit=$_rc time=$_el"
		return 0
	fi
	echo "@@VM name=$_n status=fail exit=$_rc time=$_el reason=$_reason"
	return 1
}

# lab_vm NAME TIMEOUT_S EXPECT_EXIT PATTERN CMD...: start, wait, report.
lab_vm() {
	lab_vm_start "$@"
	lab_vm_wait "$1"
}

# Agent VMs: the guest runs scripts/agent.sh, which executes command lines arriving on its
# serial console; the monitor's stdin is a FIFO the scenario writes to.
#
# lab_agent_start NAME TIMEOUT_S PATTERN CMD...: start like lab_vm_start (any exit status)
lab_agent_start() {
	_n=$1
	rm -f "$LAB_TMP/$_n.in"
	mkfifo "$LAB_TMP/$_n.in"
	# keep a writer open so that the monitor never reads end-of-file between commands
	(exec sleep 100000 >"$LAB_TMP/$_n.in") &
	echo $! >"$LAB_TMP/$_n.keeper"
	echo 0 >"$LAB_TMP/$_n.seq"
	_to=$2
	_pat=$3
	shift 3
	LAB_STDIN="$LAB_TMP/$_n.in" lab_vm_start "$_n" "$_to" - "$_pat" "$@"
}

# _lab_send NAME LINE: write LINE to the agent's FIFO (never blocks for long: opening a FIFO
# whose reader, the monitor, is gone would wait forever).
_lab_send() {
	timeout 10 sh -c 'echo "$1" >"$2"' sh "$2" "$LAB_TMP/$1.in" ||
		echo "@@LAB agent name=$1 status=fail reason=cannot_send"
}

# _lab_wait_text NAME TEXT TIMEOUT_S: wait until the VM's output contains TEXT.
_lab_wait_text() {
	_t=$(lab_now)
	while ! grep -qF "$2" "$LAB_TMP/$1.serial" 2>/dev/null; do
		[ -f "$LAB_TMP/$1.rc" ] && return 1
		[ "$(lab_elapsed "$_t" | cut -d. -f1)" -ge "$3" ] && return 1
		sleep 0.3
	done
	return 0
}

# lab_agent NAME TIMEOUT_S COMMAND: run COMMAND (one line of sh) in the guest and wait for it.
lab_agent() {
	_n=$1
	if ! _lab_wait_text "$_n" "@@GUEST agent ready" "$2"; then
		echo "@@LAB agent name=$_n status=fail reason=not_ready"
		return 1
	fi
	_seq=$(($(cat "$LAB_TMP/$_n.seq") + 1))
	echo $_seq >"$LAB_TMP/$_n.seq"
	echo "@@LAB agent name=$_n seq=$_seq cmd=$3"
	_lab_send "$_n" "$_seq $3"
	if _lab_wait_text "$_n" "@@AGENT done seq=$_seq" "$2"; then
		echo "@@LAB agent name=$_n seq=$_seq status=done"
		return 0
	fi
	echo "@@LAB agent name=$_n seq=$_seq status=fail reason=no_answer"
	return 1
}

# lab_agent_stop NAME: end the agent loop, then wait for the VM as lab_vm_wait does.
lab_agent_stop() {
	[ -f "$LAB_TMP/$1.rc" ] || _lab_send "$1" "0 quit"
	kill "$(cat "$LAB_TMP/$1.keeper")" 2>/dev/null
	lab_vm_wait "$1"
}

# LIO logical units for passthrough scenarios (pr=passthrough needs each VM to be its own
# initiator on the storage): Linux's SCSI target with a fileio backstore exported through
# tcm_loop ports, each port its own SCSI host on this machine with its own initiator name
# (its own I_T nexus), so one LU shows up as one /dev/sgN per port.
#
# lab_lio LU SIZE_MIB PORT...: a SIZE_MIB fileio LU (file $LAB_TMP/lio-LU.img) behind one
# tcm_loop port per PORT; sets LAB_LIO_<PORT>=/dev/sgN (the runner's {lio:PORT}) and prints
#   @@LAB lio lu=LU port=PORT status=pass dev=/dev/sgN host=H:C:T wwn=... initiator=...
# or a status=fail line with the reason (and returns 1). PORT: letters, digits, '_'.
# The sg node is found through sysfs from the port's SCSI address (configfs
# tpgt_1/address, "host:0:tpgt"), never by reading disks. Modules: the lab host loads
# /lib/modules/lio.order (build-labhost.sh); direct mode uses modprobe.
LAB_LIO_CFG=/sys/kernel/config/target
LAB_LIO_HBA=fileio_73
lab_lio_fail() {
	echo "@@LAB lio $1 status=fail reason=$2"
	return 1
}
lab_lio_setup() {
	[ -n "${LAB_LIO_READY:-}" ] && return 0
	_m=""
	if [ -f /lib/modules/lio.order ] && [ "${LAB_MODE:-}" = nested ]; then
		while read -r _m; do
			[ -n "$_m" ] || continue
			[ -d "/sys/module/$(echo "${_m%.ko}" | tr - _)" ] && continue
			insmod "/lib/modules/$_m" || { lab_lio_fail setup "insmod_$_m"; return 1; }
		done </lib/modules/lio.order
	else
		for _m in target_core_mod target_core_file tcm_loop sg; do
			[ -d "/sys/module/$_m" ] && continue
			modprobe "$_m" || { lab_lio_fail setup "modprobe_$_m"; return 1; }
		done
	fi
	grep -q ' /sys/kernel/config ' /proc/mounts ||
		mount -t configfs configfs /sys/kernel/config ||
		{ lab_lio_fail setup mount_configfs; return 1; }
	[ -d "$LAB_LIO_CFG/loopback" ] || mkdir "$LAB_LIO_CFG/loopback" ||
		{ lab_lio_fail setup no_tcm_loop_fabric; return 1; }
	# LIO rewrites its APTPL file here on every PR OUT and answers NOT READY
	# (2/08/00) when it cannot
	mkdir -p /var/target/pr /var/target/alua ||
		{ lab_lio_fail setup no_var_target_pr; return 1; }
	LAB_LIO_READY=1
	LAB_LIO_PORTS=""
	LAB_LIO_LUS=""
	LAB_LIO_N=0
}
lab_lio() {
	_lu=$1
	_mib=$2
	shift 2
	lab_lio_setup || return 1
	_dev="$LAB_LIO_CFG/core/$LAB_LIO_HBA/lab_$_lu"
	rm -f "$LAB_TMP/lio-$_lu.img"
	dd if=/dev/zero of="$LAB_TMP/lio-$_lu.img" bs=1048576 count=0 seek="$_mib" 2>/dev/null
	mkdir -p "$_dev" || { lab_lio_fail "lu=$_lu" mkdir_backstore; return 1; }
	LAB_LIO_LUS="$LAB_LIO_LUS $_lu"
	echo "fd_dev_name=$LAB_TMP/lio-$_lu.img,fd_dev_size=$((_mib * 1048576))" >"$_dev/control" &&
		echo 1 >"$_dev/enable" ||
		{ lab_lio_fail "lu=$_lu" enable_backstore; return 1; }
	# the guest's sd driver may send FUA writes: LIO refuses them without write-cache
	# emulation
	echo 1 >"$_dev/attrib/emulate_write_cache" ||
		{ lab_lio_fail "lu=$_lu" emulate_write_cache; return 1; }
	for _p in "$@"; do
		LAB_LIO_N=$((LAB_LIO_N + 1))
		_wwn=$(printf 'naa.5001405%07x%02x' "$LAB_LIO_N" 1)
		_ini=$(printf 'naa.5001405%07x%02x' "$LAB_LIO_N" 15)
		_tpg="$LAB_LIO_CFG/loopback/$_wwn/tpgt_1"
		mkdir -p "$_tpg" || { lab_lio_fail "lu=$_lu port=$_p" mkdir_tpg; return 1; }
		LAB_LIO_PORTS="$LAB_LIO_PORTS $_wwn"
		# the nexus (this port's initiator name) before the LUN: linking the LUN scans
		# it on the port's SCSI host
		echo "$_ini" >"$_tpg/nexus" || { lab_lio_fail "lu=$_lu port=$_p" nexus; return 1; }
		mkdir -p "$_tpg/lun/lun_0" &&
			ln -s "$_dev" "$_tpg/lun/lun_0/lab_$_lu" ||
			{ lab_lio_fail "lu=$_lu port=$_p" link_lun; return 1; }
		_addr=$(cat "$_tpg/address" 2>/dev/null)
		[ -n "$_addr" ] || { lab_lio_fail "lu=$_lu port=$_p" no_address; return 1; }
		_sg=""
		for _ in $(seq 50); do
			_sg=$(ls "/sys/bus/scsi/devices/$_addr:0/scsi_generic" 2>/dev/null | head -n 1)
			[ -n "$_sg" ] && [ -c "/dev/$_sg" ] && break
			_sg=""
			sleep 0.2
		done
		[ -n "$_sg" ] || { lab_lio_fail "lu=$_lu port=$_p host=$_addr" no_sg_node; return 1; }
		eval "LAB_LIO_$_p=/dev/$_sg"
		echo "@@LAB lio lu=$_lu port=$_p status=pass dev=/dev/$_sg host=$_addr:0 wwn=$_wwn initiator=$_ini"
	done
}

# lab_lio_teardown: remove what lab_lio made (LUN links, ports, backstores) so that a
# direct-mode run leaves the host's target configuration as it found it.
lab_lio_teardown() {
	[ -n "${LAB_LIO_READY:-}" ] || return 0
	for _wwn in $LAB_LIO_PORTS; do
		_tpg="$LAB_LIO_CFG/loopback/$_wwn/tpgt_1"
		rm -f "$_tpg"/lun/lun_0/lab_* 2>/dev/null
		rmdir "$_tpg/lun/lun_0" 2>/dev/null
		echo NULL >"$_tpg/nexus" 2>/dev/null
		rmdir "$_tpg" "$LAB_LIO_CFG/loopback/$_wwn" 2>/dev/null
	done
	for _lu in $LAB_LIO_LUS; do
		rmdir "$LAB_LIO_CFG/core/$LAB_LIO_HBA/lab_$_lu" 2>/dev/null
		rm -f "$LAB_TMP/lio-$_lu.img"
	done
	rmdir "$LAB_LIO_CFG/core/$LAB_LIO_HBA" 2>/dev/null
	echo "@@LAB lio teardown"
	LAB_LIO_READY=""
}

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

# pr: the SCSI-3 persistent reservation sequence Windows failover-cluster validation runs,
# between two initiator ports (I_T nexuses) of one logical unit, with every status checked.
# Arguments: DEV_A DEV_B [STEP...] (block or sg nodes of the same LU seen through two
# ports; '-' for a node this VM does not play). Without STEPs the whole sequence runs.
# Node A holds key 0xa, node B key 0xb; the reservation type is 5, Write Exclusive -
# Registrants Only (WE-RO), as the cluster service uses.
# sg3-utils exit statuses: 0 GOOD, 6 UNIT ATTENTION, 24 RESERVATION CONFLICT.
A=$1
B=$2
echo arbiter-lab-pr | dd of=/tmp/pr-block bs=512 count=1 conv=sync 2>/dev/null
# WRITE(10) of one 512-byte block at LBA 16:
#   2a  operation code WRITE(10)
#   00  WRPROTECT=0, DPO=0, FUA=0
#   00 00 00 10  logical block address 16
#   00  group number
#   00 01  transfer length: 1 block
#   00  control
pr_write() { sg_raw -s 512 -i /tmp/pr-block "$1" 2a 00 00 00 00 10 00 00 01 00; }
# READ(10) of the same block: 28 (READ(10)), then the same fields.
pr_read() { sg_raw -r 512 -o /dev/null "$1" 28 00 00 00 00 10 00 00 01 00; }

# pr_expect NAME RC [-m REGEX] [-x REGEX] CMD...: CMD must exit RC; its output must match
# every -m and no -x (grep -E, case-insensitive). The output is printed indented.
pr_expect() {
	local n=$1 want=$2 rc why="" must="" mustnot=""
	shift 2
	while :; do
		case $1 in
		-m) must="$must
$2"; shift 2 ;;
		-x) mustnot="$mustnot
$2"; shift 2 ;;
		*) break ;;
		esac
	done
	"$@" >/tmp/pr.out 2>&1
	rc=$?
	sed 's/^/    /' /tmp/pr.out
	[ "$rc" = "$want" ] || why=rc_${rc}_expected_$want
	while IFS= read -r re; do
		[ -n "$re" ] || continue
		grep -qiE "$re" /tmp/pr.out || why="${why:+$why,}missing:$(echo "$re" | tr ' ' _)"
	done <<EOT
$must
EOT
	while IFS= read -r re; do
		[ -n "$re" ] || continue
		grep -qiE "$re" /tmp/pr.out && why="${why:+$why,}unexpected:$(echo "$re" | tr ' ' _)"
	done <<EOT
$mustnot
EOT
	if [ -z "$why" ]; then lab_result "pr_$n" pass rc=$rc; else lab_result "pr_$n" fail rc=$rc why=$why; fi
}

P="sg_persist -n"
PR_SEQUENCE="a_register a_reserve_wero b_sees_reservation b_write_unregistered_conflict b_read_allowed b_register b_write_as_registrant b_read_keys b_preempt_a b_holds_reservation a_unit_attention_registrations_preempted a_ready_after_unit_attention a_write_after_preempt_conflict a_read_keys_only_b b_clear a_no_keys_after_clear a_no_reservation_after_clear a_write_after_clear"
pr_step() {
	case $1 in
	a_register)
		pr_expect a_register 0 $P --out --register --param-sark=0xa "$A"
		;;
	a_reserve_wero)
		pr_expect a_reserve_wero 0 $P --out --reserve --param-rk=0xa --prout-type=5 "$A"
		;;
	b_sees_reservation)
		pr_expect b_sees_reservation 0 -m 'Key=0xa' -m 'Write Exclusive, registrants only' \
		$P --in --read-reservation "$B"
		;;
	b_write_unregistered_conflict)
		pr_expect b_write_unregistered_conflict 24 pr_write "$B"
		;;
	b_read_allowed)
		pr_expect b_read_allowed 0 pr_read "$B"
		;;
	b_register)
		pr_expect b_register 0 $P --out --register --param-sark=0xb "$B"
		;;
	b_write_as_registrant)
		pr_expect b_write_as_registrant 0 pr_write "$B"
		;;
	b_read_keys)
		pr_expect b_read_keys 0 -m '^ *0xa$' -m '^ *0xb$' $P --in --read-keys "$B"
		;;
	b_preempt_a)
		pr_expect b_preempt_a 0 $P --out --preempt --param-rk=0xb --param-sark=0xa --prout-type=5 "$B"
		;;
	b_holds_reservation)
		pr_expect b_holds_reservation 0 -m 'Key=0xb' -m 'Write Exclusive, registrants only' \
		$P --in --read-reservation "$B"
		;;
	a_unit_attention_registrations_preempted)
		pr_expect a_unit_attention_registrations_preempted 6 -m 'preempted' sg_turs -v "$A"
		;;
	a_ready_after_unit_attention)
		pr_expect a_ready_after_unit_attention 0 sg_turs "$A"
		;;
	a_write_after_preempt_conflict)
		pr_expect a_write_after_preempt_conflict 24 pr_write "$A"
		;;
	a_read_keys_only_b)
		pr_expect a_read_keys_only_b 0 -m '^ *0xb$' -x '^ *0xa$' $P --in --read-keys "$A"
		;;
	b_clear)
		pr_expect b_clear 0 $P --out --clear --param-rk=0xb "$B"
		;;
	a_no_keys_after_clear)
		pr_expect a_no_keys_after_clear 0 -m 'no registered reservation keys' $P --in --read-keys "$A"
		;;
	a_no_reservation_after_clear)
		pr_expect a_no_reservation_after_clear 0 -m 'no reservation' $P --in --read-reservation "$A"
		;;
	a_write_after_clear)
		pr_expect a_write_after_clear 0 pr_write "$A"
		;;
	*) lab_result "pr_$1" fail why=unknown_step ;;
	esac
}
shift 2
for _pr_s in ${*:-$PR_SEQUENCE}; do
	pr_step "$_pr_s"
done

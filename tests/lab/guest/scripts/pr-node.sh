# pr-node ROLE STEP...: run steps of the persistent-reservation sequence (pr.sh) as node
# ROLE (a or b) on this VM's data disk; the other node is another VM on the same disk.
pr_role=$1
shift
# The data disk is looked up once per boot and remembered: lab_data_disk reads the
# first block of each disk, and a block-layer READ that meets a unit attention is
# retried by Linux, which swallows the condition (it only logs "Parameters
# changed"). Reading the disk before the step that must see REGISTRATIONS
# PREEMPTED would hide it from that step.
[ -s /tmp/pr-node-disk ] || lab_data_disk >/tmp/pr-node-disk
pr_disk=$(cat /tmp/pr-node-disk)
if [ "$pr_role" = a ]; then
	. /lab/scripts/pr.sh "$pr_disk" - "$@"
else
	. /lab/scripts/pr.sh - "$pr_disk" "$@"
fi

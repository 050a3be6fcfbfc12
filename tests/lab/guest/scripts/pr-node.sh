# pr-node ROLE STEP...: run steps of the persistent-reservation sequence (pr.sh) as node
# ROLE (a or b) on this VM's data disk; the other node is another VM on the same disk.
pr_role=$1
shift
pr_disk=$(lab_data_disk)
if [ "$pr_role" = a ]; then
	. /lab/scripts/pr.sh "$pr_disk" - "$@"
else
	. /lab/scripts/pr.sh - "$pr_disk" "$@"
fi

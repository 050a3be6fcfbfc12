# pr-two-ports: the persistent-reservation sequence (pr.sh) on a disk the monitor shows
# through two virtio-scsi controllers (two initiator ports, so two I_T nexuses on one LU).
# The first two data disks are the two paths; their device identification VPD pages
# (0x83) must be the same LU.
lab_wait_disks 20
sleep 1
paths=""
for d in /dev/sd[a-z]; do
	[ -b "$d" ] || continue
	dd if=$d bs=512 count=1 2>/dev/null | grep -q LABESP && continue
	paths="$paths $d"
done
set -- $paths
if [ $# -ge 2 ]; then
	id_a=$(sg_vpd -p di "$1" 2>&1 | md5sum | cut -c1-12)
	id_b=$(sg_vpd -p di "$2" 2>&1 | md5sum | cut -c1-12)
	sg_vpd -p di "$1"
	if [ "$id_a" = "$id_b" ]; then
		lab_result two_paths_one_lu pass a=$1 b=$2
	else
		lab_result two_paths_one_lu fail a=$1 b=$2 reason=different_device_identification
	fi
	. /lab/scripts/pr.sh "$1" "$2"
else
	lab_result two_paths_one_lu fail disks=$(echo $paths | tr ' ' ,)
fi

# probe: a disk behind virtio-scsi is found by the kernel driver and answers
# SCSI commands through sg3-utils. Arguments: none.
lab_result boot pass kernel=$(uname -r) uptime=$(lab_uptime) \
	mem_kb=$(sed -n 's/^MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo)
if [ -d /sys/bus/virtio/drivers/virtio_scsi ] && ls /sys/bus/virtio/drivers/virtio_scsi | grep -q virtio; then
	lab_result virtio_scsi_bound pass
else
	lab_result virtio_scsi_bound fail
fi
if lab_wait_disks 20; then
	disk=$(lab_data_disk)
	lab_result disk_found pass dev=$disk sectors=$(cat /sys/block/${disk#/dev/}/size)
	sg=$(ls /sys/block/${disk#/dev/}/device/scsi_generic 2>/dev/null | head -n 1)
	[ -n "$sg" ] && lab_result sg_node pass dev=/dev/$sg || lab_result sg_node fail
	if sg_inq "$disk"; then
		lab_result sg_inq pass vendor=$(lab_inq_field "$disk" "Vendor identification") \
			product=$(lab_inq_field "$disk" "Product identification") \
			pdt=$(sg_inq "$disk" | sed -n 's/.*Peripheral device type: *//p' | tr ' ' _)
	else
		lab_result sg_inq fail
	fi
	lab_check sg_readcap sg_readcap "$disk"
	lab_check sg_turs sg_turs -v "$disk"
	# write a block through the disk, read it back
	echo arbiter-lab-block >/tmp/blk
	dd if=/tmp/blk of="$disk" bs=512 seek=8 count=1 conv=sync,fsync 2>/dev/null
	echo 3 >/proc/sys/vm/drop_caches
	if dd if="$disk" bs=512 skip=8 count=1 2>/dev/null | grep -q arbiter-lab-block; then
		lab_result rw_block pass
	else
		lab_result rw_block fail
	fi
else
	lab_result disk_found fail
fi

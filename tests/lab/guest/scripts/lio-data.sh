# lio-data inq | write TAG | check TAG: this VM's data disk is a passthrough of a real LU
# (a LIO fileio LU behind a tcm_loop port of the lab host); the other node sees the same LU
# through another port.
#   inq        the disk answers INQUIRY with LIO's vendor (the device's own data, not an
#              emulated disk): result lio_disk
#   write TAG  WRITE(10) one block at LBA 32 holding "arbiter-lio-TAG": result lio_data_write
#   check TAG  READ(10) of that block must give back exactly that block: result lio_data_read
# The disk is looked up once per boot, as pr-node.sh does (and shares its cache).
[ -s /tmp/pr-node-disk ] || lab_data_disk >/tmp/pr-node-disk
lio_disk=$(cat /tmp/pr-node-disk)
lio_block() { echo "arbiter-lio-$1" | dd of="$2" bs=512 count=1 conv=sync 2>/dev/null; }
case $1 in
inq)
	lio_vendor=$(lab_inq_field "$lio_disk" "Vendor identification")
	if [ "$lio_vendor" = LIO-ORG ]; then
		lab_result lio_disk pass disk=$lio_disk vendor=$lio_vendor
	else
		lab_result lio_disk fail disk=$lio_disk vendor=$lio_vendor
	fi
	;;
write)
	lio_block "$2" /tmp/lio-block
	# WRITE(10): 2a, flags 00, LBA 00 00 00 20 (32), group 00, length 00 01, control 00
	sg_raw -s 512 -i /tmp/lio-block "$lio_disk" 2a 00 00 00 00 20 00 00 01 00
	lio_rc=$?
	if [ $lio_rc = 0 ]; then lab_result lio_data_write pass rc=0; else lab_result lio_data_write fail rc=$lio_rc; fi
	;;
check)
	lio_block "$2" /tmp/lio-want
	rm -f /tmp/lio-got
	# READ(10) of the same block: 28, then the same fields
	sg_raw -r 512 -o /tmp/lio-got "$lio_disk" 28 00 00 00 00 20 00 00 01 00
	lio_rc=$?
	if [ $lio_rc = 0 ] && cmp -s /tmp/lio-want /tmp/lio-got; then
		lab_result lio_data_read pass rc=0
	else
		lab_result lio_data_read fail rc=$lio_rc got=$(head -c 32 /tmp/lio-got 2>/dev/null | tr -c 'a-z0-9-' .)
	fi
	;;
*) lab_result lio_data fail reason=usage ;;
esac

# bench: 4 KiB direct I/O at queue depth 1 on the data disk (busybox dd with
# O_DIRECT), sequential reads then writes. Argument: operations (default 1000).
# Results: @@RESULT name=bench_read|bench_write status=pass ops=N seconds=S iops=I
ops=${1:-1000}
disk=$(lab_data_disk) || { lab_result bench_read fail reason=no_disk; return 0; }
for dir in read write; do
	t0=$(lab_uptime)
	if [ $dir = read ]; then
		dd if="$disk" of=/dev/null bs=4096 count="$ops" iflag=direct 2>/dev/null
	else
		dd if=/dev/zero of="$disk" bs=4096 count="$ops" seek=256 oflag=direct conv=notrunc 2>/dev/null
	fi
	rc=$?
	t1=$(lab_uptime)
	if [ $rc = 0 ]; then
		lab_result bench_$dir pass ops=$ops seconds=$(awk -v a=$t0 -v b=$t1 'BEGIN { printf "%.2f", b - a }') \
			iops=$(lab_rate "$ops" "$t0" "$t1")
	else
		lab_result bench_$dir fail rc=$rc
	fi
done

# pr-lio: the persistent-reservation sequence (pr.sh) against Linux's own SCSI target (LIO):
# one fileio logical unit exported through two tcm_loop ports with different initiator
# names, so /dev/sdX and /dev/sdY are one LU seen by two I_T nexuses. The reference for
# the statuses pr.sh expects; needs no disk from the monitor.
while read -r m; do
	[ -n "$m" ] || continue
	mod=$(echo "${m%.ko}" | tr - _)
	[ -d "/sys/module/$mod" ] || insmod "/lib/modules/$m" || lab_result lio_modules fail module=$m
done </lib/modules/lio.order
grep -q ' /sys/kernel/config ' /proc/mounts || mount -t configfs configfs /sys/kernel/config
T=/sys/kernel/config/target
# LIO keeps APTPL metadata here and reports NOT READY to PR OUT when it cannot
mkdir -p /var/target/pr /var/target/alua /etc/target
dd if=/dev/zero of=/tmp/lio0.img bs=1048576 count=0 seek=64 2>/dev/null
mkdir -p $T/core/fileio_0/lu0
echo "fd_dev_name=/tmp/lio0.img,fd_dev_size=67108864" >$T/core/fileio_0/lu0/control
echo 1 >$T/core/fileio_0/lu0/enable
# lio_port WWN INITIATOR: a loopback target port with LUN 0 on the LU and its nexus; prints the
# disk that appears for it.
lio_port() {
	local before after d
	before=$(ls /sys/block | grep '^sd' | tr '\n' ' ')
	# the nexus first: adding the LUN scans it through the nexus
	mkdir -p "$T/loopback/$1/tpgt_1"
	echo "$2" >"$T/loopback/$1/tpgt_1/nexus"
	mkdir -p "$T/loopback/$1/tpgt_1/lun/lun_0"
	ln -s "$T/core/fileio_0/lu0" "$T/loopback/$1/tpgt_1/lun/lun_0/port"
	for _ in $(seq 50); do
		for d in $(ls /sys/block | grep '^sd'); do
			case " $before " in *" $d "*) ;; *) echo "/dev/$d"; return 0 ;; esac
		done
		sleep 0.2
	done
	return 1
}
A=$(lio_port naa.5001405000000a01 naa.5001405000000aaa)
B=$(lio_port naa.5001405000000b01 naa.5001405000000bbb)
if [ -b "$A" ] && [ -b "$B" ]; then
	lab_result lio_two_ports pass a=$A b=$B vendor=$(lab_inq_field "$A" "Vendor identification")
	. /lab/scripts/pr.sh "$A" "$B"
else
	lab_result lio_two_ports fail a=$A b=$B
fi

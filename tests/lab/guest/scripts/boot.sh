# boot: the guest reached init and can run userspace.
lab_result boot pass kernel=$(uname -r) uptime=$(lab_uptime) cpus=$(grep -c ^processor /proc/cpuinfo) \
	mem_kb=$(sed -n 's/^MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo)

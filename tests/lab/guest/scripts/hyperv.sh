# hyperv: what Linux made of arbiter's `--cpus N,hyperv=on` CPUID: which
# hypervisor it picked, its clock source, and every CPU up.
det=$(dmesg | sed -n 's/.*Hypervisor detected: //p' | head -n 1 | tr ' ' '_')
cs=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)
avail=$(tr ' ' ',' </sys/devices/system/clocksource/clocksource0/available_clocksource | sed 's/,*$//')
cpus=$(grep -c ^processor /proc/cpuinfo)
dmesg | grep -i -E 'hyper-v|hyperv|hypervisor|clocksource|kvm-clock|vmbus|hv_' | sed 's/^/@@DMESG /'
s=pass
[ -n "$det" ] || s=fail
lab_result hyperv $s detected=${det:-none} clocksource=$cs available=$avail cpus=$cpus

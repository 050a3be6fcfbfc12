# agent: run command lines that arrive on the serial console ("SEQ COMMAND"), each
# followed by "@@AGENT done seq=SEQ"; "SEQ quit" ends the loop. The lab host's
# lab_agent drives it, e.g. to interleave steps of two VMs.
stty -echo 2>/dev/null
lab_say "agent ready"
while read -r seq cmd; do
	[ "$cmd" = quit ] && break
	eval "$cmd"
	echo "@@AGENT done seq=$seq"
done
lab_say "agent end"

#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
fail() { echo "{{GUEST_RESULT}} fail $*"; sleep 1; poweroff -f; sleep 30; }
echo "{{GUEST_MARKER}} /init started at $(cut -d' ' -f1 /proc/uptime) s uptime"
cpus=$(grep -c ^processor /proc/cpuinfo)
echo "guest-init: $cpus CPU(s): $(grep -m1 '^CPU implementer' /proc/cpuinfo), $(grep MemTotal /proc/meminfo)"
want=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^pkvm.cpus=//p')
[ -z "$want" ] || [ "$cpus" = "$want" ] || fail "$cpus CPU(s) online, wanted $want"
t1=$(cut -d' ' -f1 /proc/uptime)
sleep 1
t2=$(cut -d' ' -f1 /proc/uptime)
echo "guest-init: uptime $t1 s, then $t2 s after sleep 1"
[ "${t1%.*}${t1#*.}" -lt "${t2%.*}${t2#*.}" ] || fail "the timer does not advance ($t1 -> $t2)"
echo "{{GUEST_RESULT}} pass"
# The console is polled (its UART has no interrupt): let it drain before powering off.
sleep 1
poweroff -f
sleep 30

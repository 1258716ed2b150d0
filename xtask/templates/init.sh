#!/bin/sh
{{PROLOGUE}}
want=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^{{CPUS_PARAM}}=//p')
cpus=$(grep -c ^processor /proc/cpuinfo)
echo "init: $cpus CPUs online, $(grep MemTotal /proc/meminfo)"
if grep -q {{BENCH_PARAM}} /proc/cmdline; then echo "{{RESULT}} pass"; poweroff -f; sleep 30; fi
[ -z "$want" ] || [ "$cpus" = "$want" ] || fail "$cpus CPUs online, wanted $want"
[ -e /pkvm_test.ko ] || fail "no pkvm_test.ko in the initramfs"
insmod /pkvm_test.ko || fail "insmod pkvm_test.ko failed"
[ -r /proc/pkvm_test ] || fail "no /proc/pkvm_test"
summary=$(head -n 1 /proc/pkvm_test)
echo "init: driver: $summary"
case "$summary" in
    *" passed, 0 failed") ;;
    *) fail "driver: $summary" ;;
esac
before=$(sed -n 's/^injected_aborts //p' /proc/pkvm_test)
echo "init: a child process reads a page donated to EL2"
sh -c 'echo read-donated > /proc/pkvm_test'
echo "init: the child ended (status $?); /init carries on"
after=$(sed -n 's/^injected_aborts //p' /proc/pkvm_test)
[ "$after" -gt "$before" ] || fail "no abort injected (before $before, after $after)"
dmesg | grep -q 'synchronous external abort' || fail "Linux did not report the external abort"
echo "init: a child process writes to EL2's carve-out"
sh -c 'echo write-carveout > /proc/pkvm_test'
echo "init: the child ended (status $?); /init carries on"
after2=$(sed -n 's/^injected_aborts //p' /proc/pkvm_test)
[ "$after2" -gt "$after" ] || fail "no abort injected for the carve-out write"
echo recheck > /proc/pkvm_test || fail "recheck"
summary=$(head -n 1 /proc/pkvm_test)
case "$summary" in
    *" passed, 0 failed") ;;
    *) fail "driver after the aborts: $summary" ;;
esac
if grep -q {{MEASURE_PARAM}} /proc/cmdline; then echo measure > /proc/pkvm_test; fi
echo survived > /tmp/check && [ "$(cat /tmp/check)" = survived ] || fail "tmpfs broken after the abort"
for c in $(seq 0 $((cpus - 1))); do
    taskset -c "$c" true 2>/dev/null || fail "cannot run on CPU $c after the abort"
done
echo "init: EL2 statistics at the end:"
sed 's/^/init:   /' /proc/pkvm_test
echo "init: $summary; survived the illegal accesses"
echo "{{RESULT}} pass"
poweroff -f
sleep 30

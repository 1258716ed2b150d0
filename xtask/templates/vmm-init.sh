#!/bin/sh
# /init of `cargo xtask run --host linux --scenario vmm`: Debian's Linux is pkvm-rs's host and
# starts Linux guests with pkvm-vmm through /dev/pkvm (linux/pkvm.ko).
{{PROLOGUE}}
echo "init: $(grep -c ^processor /proc/cpuinfo) CPUs online, $(grep MemTotal /proc/meminfo)"
insmod /pkvm.ko {{MODULE_PARAMS}} || fail "insmod pkvm.ko failed"
[ -c /dev/pkvm ] || fail "no /dev/pkvm"
dmesg | grep 'pkvm:' | sed 's/^/init: /'
passed=0
failed=0
check() {
    if [ "$1" = 0 ]; then passed=$((passed + 1)); echo "init: ok   $2"
    else failed=$((failed + 1)); echo "init: FAIL $2"; fi
}
leaks() { pkvm-vmm stat | grep -E '^(live_vms|guest_owned_pages|guest_shared_pages|donated_pages|hyp_mapped_host_pages|shared_pages|pinned_pages|pool_free_pages) '; }
CMDLINE="console=ttyS0 earlycon=uart8250,mmio,0x9000000 rdinit=/init panic=-1 cma=0"
# guest NAME CPUS [--protected]: one guest, its console in /tmp/NAME.log; its status.
guest() {
    name=$1; cpus=$2; shift 2
    pkvm-vmm run --kernel /guest/Image --initrd /guest/initramfs.cpio --mem {{GUEST_MEM}} \
        --cpus "$cpus" --cmdline "$CMDLINE pkvm.cpus=$cpus" "$@" > "/tmp/$name.log" 2>&1
}
# bg_guest NAME CPUS [--protected] &: the same in the background, $! being pkvm-vmm itself.
bg_guest() {
    name=$1; cpus=$2; shift 2
    exec pkvm-vmm run --kernel /guest/Image --initrd /guest/initramfs.cpio --mem {{GUEST_MEM}} \
        --cpus "$cpus" --cmdline "$CMDLINE pkvm.cpus=$cpus" "$@" > "/tmp/$name.log" 2>&1
}
# show NAME: the guest's banner, /init markers and the VMM's summary, on the host's console.
show() { grep -E 'Linux version|{{GUEST_MARKER}}|{{GUEST_RESULT}}|Kernel panic|pkvm-vmm:' "/tmp/$1.log" | sed "s/^/$1| /"; }
booted() { grep -q '{{GUEST_RESULT}} pass' "/tmp/$1.log"; }

if grep -q {{BENCH_PARAM}} /proc/cmdline; then
    # `cargo xtask bench --scenario vmm`: the run round trip through the module (meaningful
    # under -icount), then pkvm.boots=N timed protected boots.
    for p in "" --protected; do
        for g in "" --vgic; do pkvm-vmm bench --iterations {{BENCH_ITERATIONS}} $p $g || fail "bench $p $g"; done
    done
    boots=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^pkvm.boots=//p')
    k=1
    while [ "$k" -le "${boots:-0}" ]; do
        guest "b$k" 1 --protected --time-to '{{GUEST_MARKER}}'; st=$?
        show "b$k"
        [ "$st" = 0 ] && booted "b$k" || fail "bench guest b$k (status $st)"
        k=$((k + 1))
    done
    echo "{{RESULT}} pass"
    poweroff -f
    sleep 30
fi

before=$(leaks)
echo "init: EL2 before the guests:"; echo "$before" | sed 's/^/init:   /'

pkvm-vmm check > /tmp/check.log 2>&1; st=$?
sed 's/^/init: check: /' /tmp/check.log
[ "$st" = 0 ]
check $? "the module refuses every bad request with its errno (pkvm-vmm check)"

# A host process that keeps working while the guests run: its count must grow. (A read can
# catch the file between its truncation and the write: read until there is a number.)
( n=0; while :; do n=$((n + 1)); echo $n > /tmp/progress; done ) &
worker=$!
progress() { p=""; while [ -z "$p" ]; do p=$(cat /tmp/progress 2>/dev/null); done; echo "$p"; }

echo "init: two protected guests at once (2 vCPUs each); the second is killed mid-boot"
bg_guest g1 2 --protected & g1=$!
bg_guest g2 2 --protected & g2=$!
i=0
while ! grep -q 'Linux version' /tmp/g2.log 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
grep -q 'Linux version' /tmp/g2.log
check $? "the second guest printed its banner before the kill"
p0=$(progress)
kill -9 $g2
wait $g1; st=$?
show g1
[ "$st" = 0 ] && booted g1
check $? "first protected guest: booted to /init and powered off (status $st)"
p1=$(progress)
[ "$p1" -gt "$p0" ]
check $? "the host's worker kept going while the guest ran ($p0 -> $p1)"
wait $g2; st=$?
show g2
[ "$st" = 137 ] && ! booted g2
check $? "the killed VMM died of SIGKILL before its guest finished (status $st)"

n={{SEQUENTIAL}}
echo "init: $n guests in sequence (protected on odd runs, 2 vCPUs on even runs)"
k=1
while [ $k -le $n ]; do
    cpus=1; [ $((k % 2)) = 0 ] && cpus=2
    prot=""; [ $((k % 2)) = 1 ] && prot=--protected
    guest "s$k" $cpus $prot; st=$?
    show "s$k"
    [ "$st" = 0 ] && booted "s$k"
    check $? "guest s$k ($cpus vCPU(s) ${prot:-non-protected}): booted to /init and powered off (status $st)"
    k=$((k + 1))
done
kill $worker 2>/dev/null

# Refusals: pkvm-vmm's checks and the module's (pkvm-vmm's exit status 1, nothing created).
pkvm-vmm run --kernel /init --mem 112M > /tmp/bad.log 2>&1; st=$?
[ "$st" = 1 ] && grep -q 'not an arm64 Image\|kernel:' /tmp/bad.log
check $? "a kernel that is not an Image is refused (status $st)"
pkvm-vmm run --kernel /guest/Image --mem 256M > /tmp/big.log 2>&1; st=$?
[ "$st" = 1 ] && grep -q 'Invalid argument' /tmp/big.log
check $? "more RAM than EL2's memcache maps is refused with EINVAL (status $st)"

after=$(leaks)
echo "init: EL2 after the guests:"; echo "$after" | sed 's/^/init:   /'
[ "$before" = "$after" ]
check $? "EL2's leak counters are back where they started"
echo "$after" | grep -q '^live_vms 0$' && echo "$after" | grep -q '^guest_owned_pages 0$'
check $? "no VM and no guest page is left at EL2"
dmesg | grep -q 'Oops\|BUG:\|WARNING:' && r=1 || r=0
check $r "no oops, BUG or WARNING in the host's kernel log"
echo "init: vmm: $passed passed, $failed failed"
[ "$failed" = 0 ] || fail "$failed check(s) failed"
echo "{{RESULT}} pass"
poweroff -f
sleep 30

# The start of every host /init (xtask/templates/init.sh, vmm-init.sh): {{PROLOGUE}} there.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
fail() { echo "{{RESULT}} fail $*"; poweroff -f; sleep 30; }
echo "{{INIT_MARKER}} /init started at $(cut -d' ' -f1 /proc/uptime) s uptime"

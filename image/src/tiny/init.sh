#!/bin/busybox sh
# labspan tiny guest: PID 1 until busybox init takes over.
# Mounts the kernel filesystems, loads the virtio modules (virtio-net and
# virtio-console are modules in Debian's cloud kernel), names the host from the
# kernel command line, brings every NIC up, then hands over to busybox init
# (/etc/inittab), which keeps qemu-ga and the serial console shell running.
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /root /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
[ -e /var/run ] || ln -s /run /var/run
modules=/lib/modules/$(uname -r)/kernel
while read -r m; do
    [ -n "$m" ] && insmod "$modules/$m"
done < /etc/labspan/modules
ip link set lo up
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        labspan.hostname=*) hostname "${arg#labspan.hostname=}" ;;
    esac
done
for dev in /sys/class/net/*; do
    [ "${dev##*/}" = lo ] || ip link set "${dev##*/}" up
done
exec /sbin/init

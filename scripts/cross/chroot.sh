#!/usr/bin/env bash
# Run one command inside an (emulated) Debian root with /proc, /dev, /sys and a fresh /tmp.
#
#   unshare --mount --propagation private -- bash chroot.sh ROOT QEMU_CPU [NAME=VALUE...] -- CMD...
#
# Always called by run.sh through `unshare --mount`: the mounts below exist only in that private
# mount namespace, so they disappear with its last process, however it ends (even SIGKILL);
# nothing is ever mounted in the host's namespace. The command gets a clean environment: PATH,
# HOME, LANG, QEMU_CPU (read by qemu-user for every emulated process) and the NAME=VALUE pairs.
set -euo pipefail
root=$1
cpu=$2
shift 2
vars=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    vars+=("$1")
    shift
done
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "chroot.sh: no command" >&2; exit 2; }

# Belt and braces: even if unshare's propagation default changes, never leak back to the host.
mount --make-rprivate /
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --make-rslave "$root/dev"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
if [ -n "${NHLINK_CROSS_NETWORK:-}" ] && [ -e /etc/resolv.conf ]; then
    # Only to build an sdist under emulation (pip must reach the index): name resolution.
    touch "$root/etc/resolv.conf"
    mount --bind -o ro "$(readlink -f /etc/resolv.conf)" "$root/etc/resolv.conf"
fi
exec chroot "$root" /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb \
    QEMU_CPU="$cpu" "${vars[@]}" "$@"

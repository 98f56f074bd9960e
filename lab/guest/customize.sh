#!/bin/sh
# Runs inside the debootstrapped root (chroot, no /proc needed) after the files of guest/image/
# were copied in. Part of the image recipe: editing this file rebuilds the image.
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

# The hostname comes from the kernel command line (systemd.hostname=twin-a|twin-b).
rm -f /etc/hostname
# No DNS in the lab.
: > /etc/resolv.conf

systemctl enable systemd-networkd.service
# Nothing to wait for or to schedule in a short-lived lab VM: faster boot under TCG.
# Boot under TCG is CPU-bound: every unit skipped is seconds saved.
systemctl mask systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
    dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
    getty@tty1.service systemd-logind.service systemd-pstore.service nfs-blkmap.service \
    modprobe@fuse.service modprobe@drm.service modprobe@efi_pstore.service \
    modprobe@dm_mod.service modprobe@loop.service dev-hugepages.mount sys-kernel-debug.mount \
    sys-kernel-tracing.mount sys-fs-fuse-connections.mount proc-sys-fs-binfmt_misc.automount
# Without logind, pam_systemd would only log an error on every ssh login.
sed -i '/pam_systemd/d' /etc/pam.d/common-session

# Trim: documentation, translations, apt caches and kernel modules a virtio VM never loads.
rm -rf /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/locale/* \
    /usr/share/lintian /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /var/lib/apt/lists/*
kver=$(ls /lib/modules)
kmod_dir=/lib/modules/$kver/kernel
for d in sound drivers/gpu drivers/media drivers/net/wireless drivers/net/ethernet \
    drivers/net/can drivers/infiniband drivers/bluetooth drivers/staging drivers/usb \
    drivers/hid drivers/iio drivers/mmc drivers/isdn drivers/nvme drivers/mtd drivers/hwmon \
    drivers/target drivers/thunderbolt drivers/scsi drivers/ata drivers/md drivers/input \
    drivers/platform drivers/net/usb drivers/net/wwan drivers/net/ieee802154 drivers/atm \
    drivers/leds drivers/w1 drivers/i2c drivers/spi drivers/pinctrl drivers/gpio \
    net/bluetooth net/wireless net/mac80211 net/netfilter net/ipv4/netfilter \
    net/ipv6/netfilter net/bridge net/openvswitch fs/btrfs fs/xfs fs/ocfs2 \
    fs/gfs2 fs/f2fs fs/ntfs3 fs/smb fs/ceph fs/jfs fs/nilfs2 fs/ubifs; do
    rm -rf "${kmod_dir:?}/$d"
done
depmod -a "$kver"
update-initramfs -u -k "$kver"
echo "customize: done (kernel $kver)"

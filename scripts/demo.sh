#!/usr/bin/env bash
# The main job on the bundled example images: scan, mount, list, read, unmount.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PVFS=.venv/bin/pvfs
MNT=$(mktemp -d /tmp/pvfs-demo.XXXXXX)
trap '$PVFS umount "$MNT" 2>/dev/null || true; rmdir "$MNT"' EXIT

echo "== pvfs scan examples/"
$PVFS scan examples/ || true    # exit code 3: the damaged example has bad sectors
echo
echo "== pvfs mount examples/ $MNT"
$PVFS mount examples/ "$MNT"
echo
echo "== the tree"
find "$MNT" -maxdepth 4 | sed "s#^$MNT#MOUNTPOINT#" | sort
echo
echo "== VM 100's disk, as qemu-img sees it"
qemu-img info -f raw "$MNT/vms/100/disk-0.raw" | head -3
echo
echo "== a file inside VM 100's ext4 root partition (loop mount, read-only)"
GUEST=$(mktemp -d /tmp/pvfs-guest.XXXXXX)
if mount -o ro,noload,loop "$MNT/vms/100/disk-0.parts/p2" "$GUEST" 2>/dev/null; then
    cat "$GUEST/home/demo/hello.txt"
    umount "$GUEST"
else
    echo "(loop mounting needs root; skipped)"
fi
rmdir "$GUEST"
echo
echo "== README.txt in the mount"
cat "$MNT/README.txt"

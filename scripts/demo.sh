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
$PVFS mount examples/ "$MNT" || [ $? -eq 3 ]   # 3: mounted, the damaged example lost bytes
echo
echo "== the tree"
find "$MNT" -maxdepth 4 | sed "s#^$MNT#MOUNTPOINT#" | sort
echo
echo "== VM 100's disk, as qemu-img sees it"
qemu-img info -f raw "$MNT/vms/100/disk-0.raw" | head -3
echo
echo "== a file inside VM 100's ext4 root partition, read straight from the guest filesystem"
echo "   (no root, no loop device, no kernel driver): $MNT/vms/100/disk-0.files/p2/home/demo/hello.txt"
cat "$MNT/vms/100/disk-0.files/p2/home/demo/hello.txt"
ls -l "$MNT/vms/100/disk-0.files/p2/home/demo/"
echo
echo "== README.txt in the mount"
cat "$MNT/README.txt"

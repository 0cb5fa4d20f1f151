#!/usr/bin/env bash
# Makes the small demo images in examples/ with real tools (qemu-img, sfdisk, mke2fs).
# Needs: qemu-utils, fdisk, e2fsprogs. No root, no loop devices.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export E2FSPROGS_FAKE_TIME=1714550400 SOURCE_DATE_EPOCH=1714550400

# A guest root filesystem with a few known files.
mkdir -p "$work/root/etc" "$work/root/home/demo"
printf 'pve-demo-vm\n' > "$work/root/etc/hostname"
printf 'Hello from VM 100, recovered by pvfs.\n' > "$work/root/home/demo/hello.txt"
find "$work/root" -exec touch -d @1714550400 {} +
mke2fs -q -t ext4 -L demo-root -U 0b7c3a52-5e36-4b43-a3a7-1f2d7f0c0d01 -E hash_seed=0b7c3a52-5e36-4b43-a3a7-1f2d7f0c0d02 \
    -d "$work/root" "$work/root.ext4" 6M

# vm-100-disk-0: GPT, p1 = BIOS boot (1 MiB), p2 = ext4 root. qcow2 with an internal snapshot.
truncate -s 8M "$work/disk.raw"
sfdisk -q --label gpt "$work/disk.raw" <<'PARTS'
label-id: 6A6B1C2D-0000-4000-8000-0000000000AA
first-lba: 34
start=34, size=2014, type=21686148-6449-6E6F-744E-656564454649, uuid=6A6B1C2D-0000-4000-8000-000000000001, name="bios"
start=2048, size=12288, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=6A6B1C2D-0000-4000-8000-000000000002, name="root"
PARTS
dd if="$work/root.ext4" of="$work/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f vm-100-disk-0.qcow2
qemu-img convert -q -f raw -O qcow2 -o cluster_size=65536 "$work/disk.raw" vm-100-disk-0.qcow2
qemu-img snapshot -q -c before-upgrade vm-100-disk-0.qcow2
# After the snapshot, new data lands past the partitions (so the snapshot differs).
qemu-io -f qcow2 -c 'write -P 0x5a 7M 64k' vm-100-disk-0.qcow2 >/dev/null

# A Proxmox directory storage (a copy of /var/lib/vz) with VM 101: a raw MBR disk.
rm -rf pve-dir
mkdir -p pve-dir/images/101
truncate -s 4M "$work/d101.raw"
printf 'label: dos\nlabel-id: 0x1234abcd\nstart=2048, size=6144, type=83\n' | sfdisk -q "$work/d101.raw"
qemu-img convert -q -f raw -O qcow2 -c "$work/d101.raw" pve-dir/images/101/vm-101-disk-0.qcow2

# A damaged copy: the same VM 100 disk with a ddrescue mapfile marking bad sectors.
# Host offset 0x91800 holds the data block of /home/demo/hello.txt in p2.
mkdir -p damaged
cp vm-100-disk-0.qcow2 damaged/vm-102-disk-0.qcow2
cat > damaged/vm-102-disk-0.qcow2.map <<'MAP'
# Mapfile. Created by GNU ddrescue version 1.27 (hand-made example)
# current_pos  current_status  current_pass
0x00000000     +               1
#      pos        size  status
0x00000000  0x00091800  +
0x00091800  0x00000400  -
0x00091C00  0x7FFFFFFFF  +
MAP
sha256sum vm-100-disk-0.qcow2 pve-dir/images/101/vm-101-disk-0.qcow2 damaged/vm-102-disk-0.qcow2 > SHA256SUMS
qemu-img convert -O raw vm-100-disk-0.qcow2 "$work/check.raw"
sha256sum "$work/check.raw" | sed "s#$work/check.raw#vm-100-disk-0.raw (virtual disk)#" >> SHA256SUMS
echo "examples made:"; ls -la . pve-dir/images/101 damaged

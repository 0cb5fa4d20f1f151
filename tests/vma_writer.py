"""The pieces of a VMA archive (Proxmox vma_spec.txt), for tests and the PBS benchmark.

Only a writer for generated cases: the reader is checked against the fixture's real
VMA files, never only against this.
"""

from __future__ import annotations

import hashlib
import random
import struct

HEADER_BLOBS = 12288  # the blob buffer starts after the 12 KiB fixed header


def vma_header(configs: dict, device_sizes: dict, uuid: bytes, ctime=1700000000) -> bytes:
    """Fixed header + blob buffer: config blobs ``{name: bytes}`` and devices
    ``{name: size}`` (device ids from 1, in order), with the header MD5 filled in."""
    blobs = bytearray(b"\0")

    def blob(data):
        ptr = len(blobs)
        blobs.extend(struct.pack("<H", len(data)) + data)
        return ptr

    names, datas = [0] * 256, [0] * 256
    for i, (n, d) in enumerate(configs.items()):
        names[i], datas[i] = blob(n.encode() + b"\0"), blob(d)
    devinfo = bytearray(32 * 256)
    for dev_id, (n, size) in enumerate(device_sizes.items(), 1):
        struct.pack_into(">IIQ", devinfo, dev_id * 32, blob(n.encode() + b"\0"), 0, size)
    hsize = HEADER_BLOBS + -(-len(blobs) // 512) * 512
    head = bytearray(hsize)
    struct.pack_into(">4sI16sq", head, 0, b"VMA\0", 1, uuid, ctime)
    struct.pack_into(">III", head, 48, HEADER_BLOBS, len(blobs), hsize)
    struct.pack_into(">256I", head, 2044, *names)
    struct.pack_into(">256I", head, 3068, *datas)
    head[4096:HEADER_BLOBS] = devinfo
    head[HEADER_BLOBS:HEADER_BLOBS + len(blobs)] = blobs
    head[32:48] = hashlib.md5(bytes(head)).digest()
    return bytes(head)


def extent_header(infos, nblocks: int, uuid: bytes) -> bytes:
    """A 512-byte extent header for up to 59 cluster infos and ``nblocks`` 4 KiB blocks."""
    eh = bytearray(512)
    struct.pack_into(">4sHH16s", eh, 0, b"VMAE", 0, nblocks, uuid)
    struct.pack_into(">59Q", eh, 40, *(list(infos) + [0] * (59 - len(infos))))
    eh[24:40] = hashlib.md5(bytes(eh)).digest()
    return bytes(eh)


def make_vma(devices, configs, seed=1, per_extent=58, uuid=bytes(range(16))):
    """A VMA written from vma_spec.txt: header + blob buffer, shuffled clusters, masks."""
    head = vma_header(configs, {n: len(data) for n, data in devices.items()}, uuid)
    clusters = []
    for dev_id, (_n, data) in enumerate(devices.items(), 1):
        for c in range(-(-len(data) // 65536)):
            clusters.append((dev_id, c, data[c * 65536:(c + 1) * 65536].ljust(65536, b"\0")))
    random.Random(seed).shuffle(clusters)
    out = bytearray(head)
    extents = []
    for i in range(0, len(clusters), per_extent):
        group = clusters[i:i + per_extent]
        infos, body = [], bytearray()
        for dev_id, c, data in group:
            mask = 0
            for j in range(16):
                blk = data[j * 4096:(j + 1) * 4096]
                if any(blk):
                    mask |= 1 << j
                    body += blk
            infos.append((mask << 48) | (dev_id << 32) | c)
        eh = extent_header(infos, len(body) // 4096, uuid)
        extents.append((len(out), group))
        out += eh + body
    return bytes(out), extents

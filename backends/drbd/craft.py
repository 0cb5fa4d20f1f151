"""Synthetic DRBD internal meta data, for tests and benchmarks only (the reader never uses it).

Lays out flexible internal meta data as ``drbdmeta create-md`` does
(``re_initialize_md_offsets()`` for ``DRBD_MD_INDEX_FLEX_INT``): the bitmap,
then the activity log, then the 4 KiB superblock in the last 4 KiB-aligned
block of the device.  The real fixtures (written by drbdmeta) are what the
parser is checked against; this only builds larger or nested cases.
"""

from __future__ import annotations

import struct

from . import structs as S
from .meta import bm_bytes


def internal_layout(dev_size, max_peers=1, al_stripes=1, al_stripe_size_4k=8,
                    bm_bytes_per_bit=S.BM_BLOCK_SIZE_4k):
    """``(md_offset, al_offset_sect, bm_offset_sect, md_size_sect, data_bytes)`` for a device."""
    al_sect = al_stripes * al_stripe_size_4k * 8
    bm = bm_bytes(dev_size >> 9, bm_bytes_per_bit, max_peers)
    md_size_sect = -(-(bm >> 9) // 8) * 8 + S.MD_AL_OFFSET_07 + al_sect
    md_offset = (dev_size - 4096) & ~4095
    bm_offset_sect = -md_size_sect + S.MD_AL_OFFSET_07
    return md_offset, -al_sect, bm_offset_sect, md_size_sect, md_offset + bm_offset_sect * 512


def internal_md(dev_size, version="v09", current_uuid=0, bitmap_uuid=0, history=(),
                node_id=0, peer_node_id=1, flags=S.MDF_CONSISTENT | S.MDF_WAS_UP_TO_DATE | S.MDF_AL_CLEAN,
                bits=(), device_uuid=0x1234, la_size_sect=None, max_peers=1,
                bm_bytes_per_bit=S.BM_BLOCK_SIZE_4k, peers=None):
    """Patches ``[(offset, bytes)]`` that turn a ``dev_size`` file into a DRBD backing device.

    ``bits`` lists the set bits of bitmap 0, or maps bitmap index -> bits.
    ``peers`` (v09) maps peer node id -> (bitmap_index, bitmap_uuid); the default is
    ``{peer_node_id: (0, bitmap_uuid)}``.
    """
    md_offset, al_rel, bm_rel, md_size_sect, data = internal_layout(
        dev_size, max_peers=max_peers, bm_bytes_per_bit=bm_bytes_per_bit)
    if peers is None:
        peers = {peer_node_id: (0, bitmap_uuid)}
    if not isinstance(bits, dict):
        bits = {0: bits}
    la = data // 512 if la_size_sect is None else la_size_sect
    sb = bytearray(4096)
    if version == "v09":
        struct.pack_into(">QQQ", sb, 0, la, current_uuid, 0)
        struct.pack_into(">Q", sb, 48, device_uuid)
        struct.pack_into(">IIIiIiIIIiII", sb, 56, flags, S.DRBD_MD_MAGIC_09, md_size_sect, al_rel,
                         257, bm_rel, bm_bytes_per_bit, 1 << 20, max_peers, node_id, 1, 8)
        for p in range(S.DRBD_PEERS_MAX):
            idx, uuid = peers.get(p, (-1, 0))
            pflags = S.MDF_PEER_DEVICE_SEEN if p in peers else 0
            struct.pack_into(">QQIi", sb, 112 + 32 * p, uuid, 0, pflags, idx)
        for i, u in enumerate(list(history)[:S.HISTORY_UUIDS]):
            struct.pack_into(">Q", sb, 112 + 32 * S.DRBD_PEERS_MAX + 8 * i, u)
    else:
        hist = (list(history) + [0, 0])[:2]
        struct.pack_into(">QQQQQQ", sb, 0, la, current_uuid, bitmap_uuid, *hist, device_uuid)
        struct.pack_into(">IIIiIiIIII", sb, 56, flags, S.DRBD_MD_MAGIC_08, md_size_sect, al_rel,
                         257, bm_rel, S.BM_BLOCK_SIZE_4k, 1 << 20, 1, 8)
    nbm = md_offset + al_rel * 512 - (md_offset + bm_rel * 512)
    bm = bytearray(nbm)
    for index, indexed_bits in bits.items():
        for b in indexed_bits:  # interleaved 32-bit words (interleaved_word32)
            w = (b // 32) * max_peers + index
            struct.pack_into("<I", bm, w * 4, struct.unpack_from("<I", bm, w * 4)[0] | 1 << (b % 32))
    return [(md_offset + bm_rel * 512, bytes(bm)), (md_offset, bytes(sb))]


def write_device(path, data_source_path, version="v09", **kw):
    """A sparse device file: the contents of ``data_source_path`` as data area, then meta data.

    The device is sized so that the data area holds the whole source, and
    la-size-sect is the source's size in sectors; returns that size in bytes.
    """
    import os

    want = os.path.getsize(data_source_path)
    dev = -(-want // 4096) * 4096 + 4096
    lay_kw = {k: kw[k] for k in ("max_peers", "bm_bytes_per_bit") if k in kw}
    while internal_layout(dev, **lay_kw)[4] < want:
        dev += 4096 * 8
    with open(data_source_path, "rb") as src, open(path, "wb") as out:
        while True:
            chunk = src.read(4 << 20)
            if not chunk:
                break
            out.write(chunk)
        out.truncate(dev)
        data = internal_layout(dev, **lay_kw)[4]
        kw.setdefault("la_size_sect", -(-want // 512))  # the agreed size: the payload
        for off, blob in internal_md(dev, version=version, **kw):
            out.seek(off)
            out.write(blob)
    return min(data, kw["la_size_sect"] * 512)

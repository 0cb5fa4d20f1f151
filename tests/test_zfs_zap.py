"""ZAP reader (backends/zfs/zap.py): real blocks from the fixtures, built objects, fuzz.

Ground truth for the real blocks is the zdb dump of the same pool
(``zdb/<pool>.zdb.txt.xz``); the built objects only exercise layouts that no
fixture holds (several leaves, an external pointer table, big-endian).
"""

from __future__ import annotations

import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.zfs import zap
from conftest import FIXTURES, require_path, unpack
from pvfs.errors import FormatError, UnreadableError


class BlockDnode:
    """The duck-typed dnode zap.py needs: ``read``, ``datablksz``, ``size``."""

    def __init__(self, blocks, bs=None, unreadable=()):
        self.blocks = list(blocks)
        self.datablksz = bs or len(self.blocks[0])
        self.size = self.datablksz * len(self.blocks)
        self.unreadable = set(unreadable)

    def read(self, offset, length):
        out = bytearray()
        pos = offset
        while pos < offset + length and pos < self.size:
            b, o = divmod(pos, self.datablksz)
            if b in self.unreadable:
                raise UnreadableError(f"block {b} unreadable", [(pos, self.datablksz)])
            blk = self.blocks[b].ljust(self.datablksz, b"\0")
            n = min(self.datablksz - o, offset + length - pos)
            out += blk[o:o + n]
            pos += n
        return bytes(out)


# --------------------------------------------------------------------------- real blocks
def _fixture_image(archive, member):
    path = FIXTURES / "zfs" / "images" / archive
    require_path(path)
    return unpack(path) / member


def _read_at(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def test_real_micro_zap_master_node():
    # fxmirror/comp-off object 1 (ZFS master node): zdb "L0 0:125000:1000 200L/200P",
    # uncompressed; on a mirror member the DVA offset + the 4 MiB label/boot reserve.
    img = _fixture_image("fxmirror.tar.xz", "fxmirror/fxmirror-d0.img")
    block = _read_at(img, 0x400000 + 0x125000, 512)
    e = zap.zap_entries(BlockDnode([block]))
    assert e.kind == "micro" and not e.errors
    # zdb: SHARES = 4, casesensitivity = 0, VERSION = 4, ROOT = 3, DELETE_QUEUE = 2, ...
    assert dict(e) == {"SHARES": [4], "casesensitivity": [0], "VERSION": [4], "ROOT": [3],
                       "DELETE_QUEUE": [2], "utf8only": [0], "normalization": [0]}
    assert zap.zap_lookup(BlockDnode([block]), "ROOT") == [3]
    assert zap.zap_lookup(BlockDnode([block]), "nope") is None
    assert zap.zap_int(BlockDnode([block]), "VERSION") == 4


def _lz4_block(path, offset, psize, lsize):
    import lz4.block

    raw = _read_at(path, offset, psize)
    n, = struct.unpack(">I", raw[:4])  # ZFS's lz4 header: compressed length, big-endian
    return lz4.block.decompress(raw[4:4 + n], uncompressed_size=lsize)


def test_real_fat_zap_sa_layouts():
    # modern-tank/tank/zstd object 36 "SA attr layouts" (fat ZAP, integer size 2):
    # zdb "L0 0:14c00:200 4000L/200P" and "L0 0:14e00:e00 4000L/e00P" (lz4); the member is
    # GPT partition 1 at sector 2048, then the 4 MiB reserve.
    img = _fixture_image("modern-tank.tar.xz", "modern-tank/tank-disk0.img")
    base = 2048 * 512 + 0x400000
    b0 = _lz4_block(img, base + 0x14C00, 0x200, 0x4000)
    b1 = _lz4_block(img, base + 0x14E00, 0xE00, 0x4000)
    d = BlockDnode([b0, b1])
    e = zap.zap_entries(d)
    assert e.kind == "fat" and not e.errors
    # zdb: 2 = [ 5  6  4  12  13  7  11  0  1  2  3  8  21  16  19 ]
    assert dict(e) == {"2": [5, 6, 4, 12, 13, 7, 11, 0, 1, 2, 3, 8, 21, 16, 19]}
    assert zap.zap_lookup(d, "2") == e["2"]
    assert zap.zap_lookup(d, "3") is None
    assert e.salt == 0xF3264C9  # zdb: zap_salt: 0xf3264c9


# --------------------------------------------------------------------------- built objects
def _leaf_hash_shift(bs):
    return bs.bit_length() - 1 - 5


def build_fat_zap(entries, bs=4096, prefix_bits=1, external=False, order="<", salt=0x5A17,
                  flags=0):
    """A fat ZAP laid out as zap.c would: leaves by hash prefix, chains by LEAF_HASH."""
    E = order
    nleaves = 1 << prefix_bits
    leaves = [[] for _ in range(nleaves)]
    for name, value in entries.items():
        h = zap.zap_hash(name.encode(), salt, flags)
        leaves[h >> (64 - prefix_bits) if prefix_bits else 0].append((name, value, h))
    nhash = 1 << _leaf_hash_shift(bs)
    nchunks = (bs - 2 * nhash) // 24 - 2
    leaf_blocks = []
    for j, items in enumerate(leaves):
        chunks = []
        hashtab = [0xFFFF] * nhash

        def array(data, chunks=chunks):
            first = len(chunks)
            pieces = [data[i:i + 21] for i in range(0, len(data), 21)] or [b""]
            for k, p in enumerate(pieces):
                nxt = first + k + 1 if k + 1 < len(pieces) else 0xFFFF
                chunks.append(struct.pack(E + "B21sH", 251, p.ljust(21, b"\0"), nxt))
            return first

        for name, value, h in items:
            nb = name.encode() + b"\0"
            if isinstance(value, bytes):
                vint, vn, vraw = 1, len(value), value
            else:
                vint, vn, vraw = 8, len(value), b"".join(struct.pack(">Q", v) for v in value)
            ei = len(chunks)
            chunks.append(None)
            nc = array(nb)
            vc = array(vraw)
            idx = (h >> (64 - _leaf_hash_shift(bs) - prefix_bits)) & (nhash - 1)
            chunks[ei] = struct.pack(E + "BBHHHHHIQ", 252, vint, hashtab[idx], nc, len(nb), vc,
                                     vn, 0, h)
            hashtab[idx] = ei
        assert len(chunks) <= nchunks, "test leaf overflow"
        hdr = struct.pack(E + "QQQIHHHHB11s", zap.ZBT_LEAF, 0, j, zap.ZAP_LEAF_MAGIC,
                          nchunks - len(chunks), len(items), prefix_bits, len(chunks), 0, b"")
        body = hdr + struct.pack(E + f"{nhash}H", *hashtab) + b"".join(chunks)
        leaf_blocks.append(body.ljust(bs, b"\xfd"))  # 253 = free chunk
    if external:
        shift = (bs // 8).bit_length() - 1  # one table block of bs/8 entries
        ptrs = [2 + (i >> (shift - prefix_bits)) for i in range(1 << shift)]
        table = struct.pack(E + f"{len(ptrs)}Q", *ptrs)
        zt = (1, 1, shift, 0, 0)
        first_leaf = 2
    else:
        shift = prefix_bits
        ptrs = [1 + i for i in range(1 << shift)]
        zt = (0, 0, shift, 0, 0)
        first_leaf = 1
    hdr = struct.pack(E + "QQ5QQQQQQQ", zap.ZBT_HEADER, zap.ZAP_MAGIC, *zt,
                      first_leaf + nleaves, nleaves, len(entries), salt, 0, flags)
    block0 = bytearray(hdr.ljust(bs, b"\0"))
    if not external:
        block0[bs // 2:bs // 2 + 8 * len(ptrs)] = struct.pack(E + f"{len(ptrs)}Q", *ptrs)
    blocks = [bytes(block0)] + ([table] if external else []) + leaf_blocks
    return BlockDnode(blocks, bs)


ENTRIES = {f"entry-{i:05d}-{'x' * (i % 40)}.txt": [1000 + i] for i in range(120)}
ENTRIES.update({"a-string": b"hello\0", "a-list": [1, 2, 3, 0xFFFFFFFFFFFFFFFF]})


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("external", [False, True])
def test_built_fat_zap_listing_and_hash_lookup(order, external):
    d = build_fat_zap(ENTRIES, bs=8192, prefix_bits=2, external=external, order=order)
    e = zap.zap_entries(d)
    assert e.kind == "fat" and e.errors == []
    assert dict(e) == ENTRIES
    for name in ("entry-00007-xxxxxxx.txt", "a-string", "a-list"):
        assert zap.zap_lookup(d, name) == ENTRIES[name]
    assert zap.zap_lookup(d, "absent") is None


def test_hash_lookup_reads_one_leaf():
    d = build_fat_zap(ENTRIES, bs=8192, prefix_bits=2)
    name = "entry-00042-" + "x" * 2 + ".txt"
    leaf = 1 + (zap.zap_hash(name.encode(), 0x5A17) >> 62)
    d.unreadable = {b for b in range(1, 5) if b != leaf}  # every other leaf is gone
    assert zap.zap_lookup(d, name) == [1042]


def test_damaged_leaf_keeps_the_rest():
    d = build_fat_zap(ENTRIES, bs=8192, prefix_bits=2)
    d.unreadable = {2}
    e = zap.zap_entries(d)
    assert len(e.errors) == 1 and "leaf block 2" in e.errors[0]
    assert 0 < len(e) < len(ENTRIES)
    assert all(ENTRIES[k] == v for k, v in e.items())


def test_broken_array_chain_is_reported():
    d = build_fat_zap({"only": [7]}, bs=4096, prefix_bits=0)
    leaf = bytearray(d.blocks[1])
    base = 48 + 2 * (4096 // 32)
    # the name array is chunk 1: make it a free chunk
    leaf[base + 24] = 253
    d.blocks[1] = bytes(leaf)
    e = zap.zap_entries(d)
    assert dict(e) == {} and "not an array chunk" in e.errors[0]


def test_micro_zap_big_endian_and_odd_size():
    ents = {"ROOT": 3, "VERSION": 5}
    bs = 64 * 5 + 512  # micro ZAPs are any multiple of 512 (zfs-fuse wrote 96256 bytes)
    blk = bytearray(bs)
    struct.pack_into(">QQQ", blk, 0, zap.ZBT_MICRO, 99, 0)
    for i, (k, v) in enumerate(ents.items()):
        struct.pack_into(">QIH", blk, 64 * (i + 1), v, 0, 0)
        blk[64 * (i + 1) + 14:64 * (i + 1) + 14 + len(k)] = k.encode()
    e = zap.zap_entries(BlockDnode([bytes(blk)]))
    assert dict(e) == {"ROOT": [3], "VERSION": [5]}


@pytest.mark.parametrize("data,msg", [
    (bytes(512), "not a ZAP object"),
    (b"\xff" * 512, "not a ZAP object"),
    (struct.pack("<QQ", zap.ZBT_HEADER, 1234).ljust(4096, b"\0"), "bad magic"),
    (struct.pack("<QQ5Q", zap.ZBT_HEADER, zap.ZAP_MAGIC, 0, 0, 40, 0, 0).ljust(4096, b"\0"),
     "shift 40 is impossible"),
    (struct.pack("<QQ5Q", zap.ZBT_HEADER, zap.ZAP_MAGIC, 0, 0, 12, 0, 0).ljust(4096, b"\0"),
     "does not fit"),
    (struct.pack("<QQ5Q", zap.ZBT_HEADER, zap.ZAP_MAGIC, 1, 3, 12, 0, 0).ljust(4096, b"\0"),
     "3 blocks for 4096 entries"),
])
def test_bad_headers(data, msg):
    with pytest.raises(zap.ZapError, match=msg):
        zap.zap_entries(BlockDnode([data]))


def test_bad_block_size():
    d = BlockDnode([bytes(512)])
    d.datablksz = 100
    with pytest.raises(zap.ZapError, match="impossible block size 100"):
        zap.zap_entries(d)


def test_zap_error_is_format_error():
    assert issubclass(zap.ZapError, FormatError)


def test_hash_matches_real_zap():
    # The real SA layouts leaf chained "2" under its on-disk le_hash; zap_lookup found it
    # by hash in test_real_fat_zap_sa_layouts.  Here: the CRC64 table's first entries.
    assert zap._CRC64[1] == 0xB32E4CBE03A75F6F
    assert zap._CRC64[128] == 0xC96C5795D7870F42


# --------------------------------------------------------------------------- fuzz
_VALID_FAT = build_fat_zap({f"n{i}": [i] for i in range(30)}, bs=2048, prefix_bits=1)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.integers(0, 3 * 2048 - 1), st.integers(0, 255)), max_size=40))
def test_fuzz_fat_zap_mutations(mutations):
    blocks = [bytearray(b) for b in _VALID_FAT.blocks]
    for pos, val in mutations:
        blocks[pos // 2048][pos % 2048] = val
    d = BlockDnode([bytes(b) for b in blocks], 2048)
    t = time.monotonic()
    try:
        e = zap.zap_entries(d)
        assert isinstance(e, dict)
        zap.zap_lookup(d, "n3")
    except (zap.ZapError, UnreadableError):
        pass
    assert time.monotonic() - t < 2


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from([zap.ZBT_MICRO, zap.ZBT_HEADER, zap.ZBT_LEAF, 0]),
       st.binary(min_size=0, max_size=4096), st.sampled_from([512, 1024, 4096, 1536]))
def test_fuzz_random_blocks(btype, body, bs):
    blk = (struct.pack("<Q", btype) + body).ljust(bs, b"\0")[:bs]
    d = BlockDnode([blk, body.ljust(bs, b"\0")[:bs]], bs)
    try:
        e = zap.zap_entries(d)
        assert isinstance(e, dict)
    except (zap.ZapError, UnreadableError):
        pass


def test_lost_header_block_entries_salvaged_from_leaves():
    d = build_fat_zap(ENTRIES, bs=8192, prefix_bits=2)
    d.unreadable = {0}
    e = zap.zap_entries(d)
    assert dict(e) == ENTRIES
    assert "header block unreadable" in e.errors[0] and "salvaged from 4 leaf blocks" in e.errors[0]
    d.unreadable = {0, 3}
    e = zap.zap_entries(d)
    assert 0 < len(e) < len(ENTRIES) and all(ENTRIES[k] == v for k, v in e.items())


def test_lost_micro_zap_still_raises():
    d = BlockDnode([zap.ZBT_MICRO.to_bytes(8, "little").ljust(512, b"\0")], unreadable={0})
    with pytest.raises(UnreadableError):
        zap.zap_entries(d)


def test_real_fat_zap_header_lost():
    img = _fixture_image("modern-tank.tar.xz", "modern-tank/tank-disk0.img")
    base = 2048 * 512 + 0x400000
    b1 = _lz4_block(img, base + 0x14E00, 0xE00, 0x4000)
    d = BlockDnode([bytes(0x4000), b1], unreadable={0})
    e = zap.zap_entries(d)
    assert dict(e) == {"2": [5, 6, 4, 12, 13, 7, 11, 0, 1, 2, 3, 8, 21, 16, 19]}


def test_lookup_with_lost_header_uses_the_salvage():
    d = build_fat_zap(ENTRIES, bs=8192, prefix_bits=2)
    d.unreadable = {0}
    assert zap.zap_lookup(d, "a-list") == ENTRIES["a-list"]
    assert zap.zap_lookup(d, "absent") is None


def _slow_decode(leaf):
    """What decode_all must give: decode() of each entry chunk, broken ones reported."""
    out, errors = [], []
    for i in leaf.entries():
        try:
            name, value, _h = leaf.decode(i)
        except zap.ZapError as e:
            errors.append(str(e))
            continue
        out.append((name, value))
    return out, errors


_MIXED_FAT = build_fat_zap({**{f"n{i}": [i] for i in range(20)},
                            "a-name-longer-than-one-array-chunk": [7],
                            "ten-ints": list(range(10)), "é": [2 ** 64 - 1]},
                           bs=2048, prefix_bits=1, order=">")


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from([_VALID_FAT, _MIXED_FAT]),
       st.lists(st.tuples(st.integers(0, 2047), st.integers(0, 255)), max_size=40))
def test_fuzz_leaf_decode_all_equals_entry_by_entry(fat, mutations):
    """The numpy path of a whole leaf gives exactly the names, values and errors of the
    entry-by-entry decode, on built and on mutated leaves (both byte orders)."""
    for raw in fat.blocks[1:]:
        b = bytearray(raw)
        for pos, val in mutations:
            b[48 + pos % (len(b) - 48)] = val  # the header stays a leaf's
        leaf = zap._Leaf(bytes(b), "<" if fat is _VALID_FAT else ">", 1, 0)
        errors: list[str] = []
        assert (leaf.decode_all(errors), errors) == _slow_decode(leaf)


def test_real_fat_zap_leaves_decode_all():
    """fxmirror's ``names`` directory (made by zfs-fuse: a fat ZAP, names of every length
    and script), each leaf decoded both ways."""
    import scancases
    from pvfs.discover import Options, discover
    from pvfs.nodes import resolve

    ctx = discover(scancases.CASES_BY_NAME["zfs/fxmirror"].inputs(), Options())
    big = resolve(ctx.root, "storage/zfs/fxmirror/names")
    dn = big.space.objset.dnode(big.key)
    bs = dn.datablksz
    leaves = 0
    for blk in range(1, dn.size // bs):
        data = dn.read(blk * bs, bs)
        if zap._byteorder(data[:8], (zap.ZBT_LEAF,)) is None:
            continue
        leaf = zap._Leaf(data, zap._byteorder(data[:8], (zap.ZBT_LEAF,)), blk, 0)
        errors: list[str] = []
        got = leaf.decode_all(errors)
        assert (got, errors) == _slow_decode(leaf) and got and not errors
        leaves += 1
    assert leaves >= 1 and zap.zap_kind(dn) == "fat"
    assert sorted(zap.zap_entries(dn)) == sorted(big.children())

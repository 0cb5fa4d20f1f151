"""PV labels, metadata area headers and every VG text generation in the ring.

References: lvm2 ``lib/label/label.c`` (``_find_lvm_header``: the label is in one of the
first four sectors, its crc covers the sector from ``offset_xl``), ``lib/format_text/
text_label.c`` (``_text_read``: the data-area and metadata-area ``disk_locn`` lists),
``lib/format_text/format-text.c`` (``_raw_read_mda_header``, ``_vg_read_raw_area``:
the text may wrap from the end of the area back to ``MDA_HEADER_SIZE``; the crc of
``raw_locn`` covers both pieces), ``lib/metadata/metadata.h`` / ``lib/uuid/uuid.c``
(``id_write_format``: 6-4-4-4-4-4-6 groups).

The circular buffer keeps older VG texts until they are overwritten.  Every text still
present is found by scanning the ring for ``<vgname> {`` + ``id = "`` at the start of
a text (512-aligned, or after a NUL).  The text ``raw_locn`` points at is
verified by its crc; the others are validated by parsing.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from construct import ConstructError

from pvfs.errors import UnreadableError

from . import DEFAULT_MDA_OFFSET, looks_like_backup  # (shared with the light declaration)
from . import structs as S
from .config import ConfigError, parse_config
from .errors import LvmError

MAX_RAW_LOCNS = (S.MDA_HEADER_SIZE - S.MDA_HEADER_FIXED) // S.RAW_LOCN_SIZE
MAX_MDA_SIZE = 1 << 30  # an mda larger than 1 GiB is not something lvm2 writes
MAX_GENERATIONS = 1000
SCAN_CHUNK = 4 << 20
MAX_TEXT = 32 << 20
MAX_SCAN_BYTES = 256 << 20  # all scanned texts of one metadata area together


def lenient_read(source, offset, length, bad=None):
    """Read; on bad sectors read 512 bytes at a time and give zeros where unreadable
    (listed in ``bad``), so one bad sector costs one text, not the whole PV."""
    try:
        return source.read(offset, length)
    except UnreadableError:
        pass
    out = []
    for p in range(offset, offset + length, S.SECTOR_SIZE):
        n = min(S.SECTOR_SIZE, offset + length - p)
        try:
            out.append(source.read(p, n).ljust(n, b"\0"))
        except UnreadableError:
            out.append(bytes(n))
            if bad is not None:
                bad.append((p, n))
    return b"".join(out)


def format_uuid(raw: bytes) -> str:
    """``id_write_format``: 32 characters as 6-4-4-4-4-4-6."""
    s = raw.decode("ascii", "replace")
    out, pos = [], 0
    for n in (6, 4, 4, 4, 4, 4, 6):
        out.append(s[pos:pos + n])
        pos += n
    return "-".join(out)


@dataclass
class PVLabel:
    sector: int  # sector of the label (0..3)
    crc_ok: bool
    pv_uuid: str
    device_size: int
    data_areas: list  # [(offset, size)] in bytes from the PV start
    metadata_areas: list
    ext_version: int | None = None
    ext_flags: int | None = None


@dataclass
class Generation:
    """One VG text found in a metadata area."""

    vgname: str
    vg_id: str
    seqno: int
    mda_offset: int  # byte offset of the mda from the PV start
    offset: int  # of the text, relative to the mda start
    size: int
    how: str  # "committed" | "precommitted" | "scan"
    crc_ok: bool | None  # None: no checksum known (found by scanning)
    config: dict = field(repr=False, default_factory=dict)
    text: bytes = field(repr=False, default=b"")  # as found in the ring

    @property
    def vg(self) -> dict:
        return self.config[self.vgname]

    def describe(self):
        check = {True: "crc ok", False: "CRC MISMATCH", None: "parsed, no crc"}[self.crc_ok]
        if self.how == "backup":
            where = "in a backup file"
        else:
            where = f"at mda+{self.offset:#x}"
        desc = self.config.get("description", "")
        when = self.config.get("creation_time")
        extra = ""
        if isinstance(when, int) and 0 <= when < 1 << 40:
            extra = ", written " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
        return (f"seqno {self.seqno} {where} ({self.size} bytes, {self.how}, "
                f"{check}{extra}){': ' + desc if desc else ''}")


def _u64(b, o):
    return int.from_bytes(b[o:o + 8], "little")


def read_label(source) -> PVLabel | None:
    """Find ``LABELONE`` in sectors 0..3 and parse the pv_header; None when absent."""
    head = lenient_read(source, 0, S.SECTOR_SIZE * S.LABEL_SCAN_SECTORS)
    for sector in range(S.LABEL_SCAN_SECTORS):
        sec = head[sector * S.SECTOR_SIZE:(sector + 1) * S.SECTOR_SIZE]
        if len(sec) < S.SECTOR_SIZE or not sec.startswith(S.LABEL_ID):
            continue
        try:
            lh = S.label_header.parse(sec)
        except ConstructError:
            continue
        if lh.sector != sector or lh.type != S.LVM2_LABEL:
            continue
        if not 32 <= lh.offset <= S.SECTOR_SIZE - S.ID_LEN - 8 - 2 * S.DISK_LOCN_SIZE:
            continue
        crc_ok = S.calc_crc(sec[20:]) == lh.crc
        return _parse_pv_header(sec, sector, lh.offset, crc_ok)
    return None


def _parse_pv_header(sec, sector, off, crc_ok) -> PVLabel:
    ph = S.pv_header.parse(sec[off:])
    pos = off + S.ID_LEN + 8
    lists = []
    for _ in range(2):
        areas = []
        while True:
            if pos + S.DISK_LOCN_SIZE > len(sec):
                raise LvmError("pv_header: disk area list runs past the label sector")
            o, n = _u64(sec, pos), _u64(sec, pos + 8)
            pos += S.DISK_LOCN_SIZE
            if o == 0:
                break
            areas.append((o, n))
        lists.append(areas)
    ext_version = ext_flags = None
    if pos + 8 <= len(sec):
        ext = S.pv_header_extension.parse(sec[pos:pos + 8])
        if ext.version in (1, 2):
            ext_version, ext_flags = ext.version, ext.flags
    uuid = ph.pv_uuid
    if not re.fullmatch(rb"[0-9A-Za-z!#]{32}", uuid):
        raise LvmError("pv_header: PV UUID is not printable")
    return PVLabel(sector, crc_ok, format_uuid(uuid), ph.device_size, lists[0], lists[1],
                   ext_version, ext_flags)


@dataclass
class MdaHeader:
    offset: int  # from the PV start
    size: int
    crc_ok: bool
    raw_locns: list  # [(offset, size, checksum, flags)]


def read_mda_header(source, offset, size) -> MdaHeader:
    """Read and check ``struct mda_header`` at ``offset`` (bytes from the PV start)."""
    if size < 2 * S.MDA_HEADER_SIZE or size > MAX_MDA_SIZE:
        raise LvmError(f"metadata area at {offset:#x}: implausible size {size}")
    if offset + S.MDA_HEADER_SIZE > source.size:
        raise LvmError(f"metadata area at {offset:#x}: beyond the end of the PV")
    b = source.read(offset, S.MDA_HEADER_SIZE)
    h = S.mda_header.parse(b)
    if h.magic != S.FMTT_MAGIC:
        raise LvmError(f"metadata area at {offset:#x}: bad mda_header magic")
    if h.version != S.FMTT_VERSION:
        raise LvmError(f"metadata area at {offset:#x}: unknown mda_header version {h.version}")
    crc_ok = S.calc_crc(b[4:]) == h.checksum
    locns = []
    pos = S.MDA_HEADER_FIXED
    for _ in range(MAX_RAW_LOCNS):
        rl = S.raw_locn.parse(b[pos:pos + S.RAW_LOCN_SIZE])
        pos += S.RAW_LOCN_SIZE
        if rl.offset == 0:
            locns.append(None)
            if len(locns) >= 2:
                break
            continue
        locns.append((rl.offset, rl.size, rl.checksum, rl.flags))
    return MdaHeader(offset, size, crc_ok, locns)


class _Ring:
    """The circular text buffer of one metadata area: bytes [512, size) of the mda."""

    def __init__(self, source, mda_offset, mda_size):
        self.bad = []  # unreadable (offset, length) met while reading the ring
        self.source = source
        self.base = mda_offset
        self.size = min(mda_size, max(0, source.size - mda_offset))
        self.start = S.MDA_HEADER_SIZE

    def read(self, off, length):
        """Read ``length`` bytes from ring offset ``off``, wrapping to ``start``."""
        out = []
        length = min(length, max(0, self.size - self.start))
        while length > 0:
            if off >= self.size:
                off = self.start
            n = min(length, self.size - off)
            out.append(lenient_read(self.source, self.base + off, n, self.bad))
            length -= n
            off += n
        return b"".join(out)

    def text_at(self, off, limit):
        """The NUL-terminated text at ``off`` (wrapping), at most ``limit`` bytes."""
        out, total, pos = [], 0, off
        limit = min(limit, self.size - self.start)
        while total < limit:
            n = min(65536, limit - total)
            chunk = self.read(pos, n)
            nul = chunk.find(b"\0")
            if nul >= 0:
                out.append(chunk[:nul])
                break
            out.append(chunk)
            total += n
            pos += n
            if pos >= self.size:
                pos = self.start + (pos - self.size)
        return b"".join(out)


_SEQNO_NEAR_START = re.compile(rb'\A[^{]{1,160}\{\s{0,8}id = "[^"]{0,64}"\s{0,8}seqno = \d')
_TEXT_START = re.compile(rb'([0-9A-Za-z+_.-]{1,127}) \{\s{0,8}id = "')
_TEXT_ANCHOR = re.compile(rb' \{\s{0,8}id = "')  # _TEXT_START after its name
_NAME_BYTES = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+_.-")


def _text_starts(chunk: bytes, pos: int = 0):
    """``(start, name)`` of each ``_TEXT_START`` match in ``chunk[pos:]``, as its
    ``finditer`` finds them, 50x faster on a metadata ring (20 ms -> 0.4 ms for 1 MiB,
    on every scan of a PV): the expression begins with a character class, so ``re``
    tries it at every byte; the anchor after the name is a literal it searches for, and
    the name is the run of name bytes before it (at most 127, none before ``pos`` or
    inside the previous match)."""
    last = pos
    for m in _TEXT_ANCHOR.finditer(chunk, pos):
        end = m.start()
        start, low = end, max(last, end - 127)
        while start > low and chunk[start - 1] in _NAME_BYTES:
            start -= 1
        if start < end:
            yield start, chunk[start:end]
            last = m.end()


def _make_generation(vgname_hint, text, mda_offset, off, how, crc_ok, parse=parse_config):
    cfg = parse(text)
    candidates = [k for k, v in cfg.items() if isinstance(v, dict) and "seqno" in v
                  and "id" in v]
    if vgname_hint in candidates:
        vgname = vgname_hint
    elif len(candidates) == 1:
        vgname = candidates[0]
    else:
        raise LvmError("VG text holds no single volume group section")
    vg = cfg[vgname]
    if not isinstance(vg["seqno"], int) or not isinstance(vg["id"], str):
        raise LvmError("VG text: seqno or id has the wrong type")
    return Generation(vgname, vg["id"], vg["seqno"], mda_offset, off, len(text), how,
                      crc_ok, cfg, bytes(text))


def read_generations(source, mda: MdaHeader, problems: list, parse=parse_config) -> list:
    """Every VG text in the metadata area: raw_locn texts (crc checked) and scanned ones.
    ``parse``: config.parse_config, or one that keeps its results (backend.config_parser)."""
    ring = _Ring(source, mda.offset, mda.size)
    gens = {}
    pointed = {}
    for i, rl in enumerate(mda.raw_locns[:2]):
        if rl is None:
            continue
        off, size, csum, flags = rl
        how = "committed" if i == 0 else "precommitted"
        if flags & S.RAW_LOCN_IGNORED:
            problems.append(f"mda at {mda.offset:#x}: {how} copy is marked ignored")
        if not S.MDA_HEADER_SIZE <= off < ring.size or size > min(MAX_TEXT, ring.size):
            problems.append(f"mda at {mda.offset:#x}: {how} raw_locn out of range "
                            f"(offset {off:#x}, size {size})")
            continue
        text = ring.read(off, size)
        crc_ok = S.calc_crc(text) == csum
        if not crc_ok:
            problems.append(f"mda at {mda.offset:#x}: {how} VG text at +{off:#x} fails its crc")
        pointed[off] = crc_ok
        try:
            g = _make_generation(None, text, mda.offset, off, how, crc_ok, parse)
        except (LvmError, RecursionError) as e:
            problems.append(f"mda at {mda.offset:#x}: {how} VG text at +{off:#x}: {e}")
            continue
        gens[off] = g
    # Scan the ring for every other text still present.
    pos = ring.start
    starts = []
    while pos < ring.size and len(starts) < MAX_GENERATIONS * 4:
        n = min(SCAN_CHUNK + 256, ring.size - pos)
        chunk = lenient_read(ring.source, ring.base + pos - 1, n + 1, ring.bad)  # + 1 byte before
        for start, name in _text_starts(chunk, 1):
            if start > SCAN_CHUNK:
                break
            at = pos + start - 1
            name = name.decode()
            # lvm2 starts texts 512-aligned; older versions right after the previous
            # text's NUL.  The bytes before an aligned start may be stale left-overs of
            # older texts (a wrapped ring), even name characters: look inside the match.
            if at % S.SECTOR_SIZE and chunk[start - 1] != 0 and at not in pointed:
                aligned = at + (-at) % S.SECTOR_SIZE
                cut = aligned - at
                if cut >= len(name):
                    continue
                at, name = aligned, name[cut:]
            starts.append((at, name))
        pos += SCAN_CHUNK
    budget = MAX_SCAN_BYTES

    def inside_known(at):
        """Within a text already found (an LV section of it can start 512-aligned)."""
        for g in gens.values():
            end = g.offset + g.size
            if g.offset < at < end or (end > ring.size
                                       and ring.start <= at < ring.start + end - ring.size):
                return True
        return False

    for at, name in starts:
        if at in gens or len(gens) >= MAX_GENERATIONS or budget <= 0 or inside_known(at):
            continue
        # A VG section names its seqno within its first lines; an LV or PV section
        # (which also starts "<name> {\nid = ") does not.
        if not _SEQNO_NEAR_START.search(ring.read(at, 1024)):
            continue
        text = ring.text_at(at, min(MAX_TEXT, budget))
        budget -= len(text) + 1
        try:
            g = _make_generation(name, text, mda.offset, at, "scan", pointed.get(at), parse)
        except (LvmError, RecursionError):
            continue  # overwritten in part by a newer text: not a whole generation
        gens[at] = g
    if ring.bad:
        total = sum(n for _, n in ring.bad)
        problems.append(f"mda at {mda.offset:#x}: {total} bytes of the metadata ring are "
                        f"unreadable (read as zeros; texts there are lost)")
    return sorted(gens.values(), key=lambda g: (g.seqno, g.how == "committed"))


@dataclass
class PVInfo:
    """What one PV holds: its label, metadata areas and VG text generations."""

    label: PVLabel
    mdas: list
    generations: list
    problems: list

    @property
    def cache_cost(self):
        return 4096 + sum(g.size * 8 for g in self.generations)

    def newest(self):
        return self.generations[-1] if self.generations else None

    def current(self):
        """The generation that names the VG this PV belongs to now: the newest text the
        mda header points at with a good crc (what lvm2 itself reads), else the newest.
        A text of an earlier VG of the same name (vgremove + vgcreate: another VG id,
        maybe a higher seqno) left in the ring is history, never the PV's VG."""
        committed = [g for g in self.generations if g.how == "committed" and g.crc_ok]
        return committed[-1] if committed else self.newest()


def headless_mda(source):
    """``(offset, size)`` of a checksummed mda_header at the default place, for a PV whose
    label was wiped (``wipefs`` erases the ``LVM2 001`` type at 0x218), else None."""
    try:
        b = source.read(DEFAULT_MDA_OFFSET, S.MDA_HEADER_SIZE)
    except Exception:
        return None
    if len(b) < S.MDA_HEADER_SIZE or b[4:20] != S.FMTT_MAGIC:
        return None
    h = S.mda_header.parse(b)
    if S.calc_crc(b[4:]) != h.checksum or h.start != DEFAULT_MDA_OFFSET \
            or not 2 * S.MDA_HEADER_SIZE <= h.size <= MAX_MDA_SIZE:
        return None
    return DEFAULT_MDA_OFFSET, h.size


def _identify_headless(source, gens, problems):
    """Which PV of the VG a label-less device is: the only one, or the one whose
    ``dev_size`` is the device's size."""
    if not gens:
        return None
    pvs = [p for p in (gens[-1].vg.get("physical_volumes") or {}).values()
           if isinstance(p, dict) and isinstance(p.get("id"), str)]
    if len(pvs) == 1:
        return pvs[0]
    fit = [p for p in pvs if isinstance(p.get("dev_size"), int)
           and p["dev_size"] * S.SECTOR_SIZE == source.size]
    if len(fit) == 1:
        return fit[0]
    problems.append("label missing and the VG has several PVs of this size; cannot tell "
                    "which PV this is")
    return None


def read_pv(source, parse=parse_config) -> PVInfo | None:
    """Label, mda headers and all generations of the PV in ``source`` (None: no PV)."""
    label = read_label(source)
    problems = []
    if label is None:
        loc = headless_mda(source)
        if loc is None:
            return None
        problems.append("no valid LVM2 label (wiped?); found the metadata area at "
                        f"{loc[0]:#x} and rebuilt the PV from the VG text")
        label = PVLabel(-1, False, "", source.size, [], [loc])
    elif not label.crc_ok:
        problems.append("label_header crc mismatch (label sector damaged?)")
    mdas, gens = [], []
    for off, size in label.metadata_areas[:4]:
        try:
            mda = read_mda_header(source, off, size)
        except (LvmError, ConstructError, UnreadableError) as e:
            problems.append(str(e))
            if not (2 * S.MDA_HEADER_SIZE <= size <= MAX_MDA_SIZE and off < source.size):
                continue
            # The header is gone but the label says where the ring is: scan it anyway.
            problems.append(f"mda at {off:#x}: scanning the ring without its header")
            mda = MdaHeader(off, size, False, [])
        if not mda.crc_ok:
            problems.append(f"mda at {off:#x}: mda_header crc mismatch")
        mdas.append(mda)
        try:
            gens.extend(read_generations(source, mda, problems, parse))
        except ConfigError as e:
            problems.append(str(e))
    # One entry per (vg id, seqno): a checksummed copy wins over a scanned one.
    best = {}
    for g in gens:
        k = (g.vg_id, g.seqno)
        old = best.get(k)
        rank = (g.crc_ok is True, g.how == "committed")
        if old is None or rank > (old.crc_ok is True, old.how == "committed"):
            best[k] = g
    ordered = sorted(best.values(), key=lambda g: g.seqno)
    if label.sector < 0:
        pv = _identify_headless(source, ordered, problems)
        if pv is None:
            return None if not ordered else PVInfo(label, mdas, ordered, problems)
        label.pv_uuid = pv["id"]
        if isinstance(pv.get("pe_start"), int):
            label.data_areas = [(pv["pe_start"] * S.SECTOR_SIZE, 0)]
    return PVInfo(label, mdas, ordered, problems)




def read_backup(source) -> Generation:
    """The VG text of a backup file as a generation (no crc: validated by parsing)."""
    if not looks_like_backup(source):
        raise LvmError("not an LVM metadata backup file")
    text = source.read(0, source.size)
    return _make_generation(None, text, -1, 0, "backup", None)

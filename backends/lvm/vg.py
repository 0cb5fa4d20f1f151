"""A volume group from its text metadata: LVs as sources over the PVs.

References: lvm2 ``lib/format_text/import_vsn1.c`` (``_read_pv``, ``_read_lv``,
``_read_segment``, ``_read_segment_areas``: an area name is a PV name or an LV name),
``lib/format_text/export.c``, ``lib/metadata/segtype.h`` and the segment type
modules: ``lib/striped/striped.c`` (``stripe_count``, ``stripe_size``, ``stripes``),
``lib/mirror/mirrored.c`` (``mirror_count``, ``mirrors``), ``lib/raid/raid.c``
(``device_count``, ``raids`` = rmeta/rimage pairs), ``lib/thin/thin.c`` (``metadata``,
``pool``, ``chunk_size``, ``transaction_id``, ``thin_pool``, ``device_id``, ``origin``),
``lib/zero/zero.c``, ``lib/error/errseg.c``.  Sizes in the text are 512-byte sectors;
``pe_start`` is relative to the PV start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pvfs.damage import Problem
from pvfs.errors import UnreadableError
from pvfs.source import (DATA, UNREADABLE, ZERO, ExtentSource, MissingSource, Source,
                         ZeroSource)

from .errors import LvmError

SECTOR = 512
MAX_SEGMENTS = 100_000
MAX_STRIPES = 128
LINEAR_TYPES = ("striped", "linear")
MIRROR_TYPES = ("mirror", "raid1")
THIN_TYPES = ("thin-pool", "thin")


def _list(d, key, what=""):
    v = d.get(key, [])
    if not isinstance(v, list):
        raise LvmError(f"{what}: {key} is not a list")
    return v


def _int(d, key, default=None, what=""):
    v = d.get(key, default)
    if not isinstance(v, int) or v < 0:
        raise LvmError(f"{what}: {key} is missing or not a non-negative number")
    return v


@dataclass
class PVRef:
    name: str  # pv0, pv1 ...
    uuid: str
    pe_start: int  # bytes
    pe_count: int
    dev_size: int  # bytes (0 when unknown)
    source: Source | None = None  # None: missing
    path: str = ""


@dataclass
class Segment:
    start_extent: int
    extent_count: int
    type: str
    fields: dict


@dataclass
class LV:
    name: str
    id: str
    status: list
    flags: list
    segments: list
    extents: int
    creation_time: int | None = None
    visible: bool = field(init=False)

    def __post_init__(self):
        self.visible = "VISIBLE" in self.status

    @property
    def types(self):
        return {s.type for s in self.segments}


class StripedSource(Source):
    """``len(areas)`` stripes of ``stripe_bytes``, round robin (dm-stripe)."""

    def __init__(self, size, areas, stripe_bytes, label="striped"):
        super().__init__()
        self.size = size
        self.areas = areas  # [(source, offset)]
        self.stripe = stripe_bytes
        self.label = label

    def _locate(self, pos):
        c, within = divmod(pos, self.stripe)
        row, s = divmod(c, len(self.areas))
        src, off = self.areas[s]
        return src, off + row * self.stripe + within, self.stripe - within

    def _read(self, offset, length):
        parts, pos, end = [], offset, offset + length
        while pos < end:
            src, off, left = self._locate(pos)
            n = min(left, end - pos)
            parts.append(src.read(off, n))
            pos += n
        return b"".join(parts)

    def _block_status(self, offset, length):
        out, pos, end = [], offset, offset + length
        while pos < end and len(out) < 100_000:
            src, off, left = self._locate(pos)
            n = min(left, end - pos)
            out.extend((o - off + pos, ln, s) for o, ln, s in src.block_status(off, n))
            pos += n
        if pos < end:
            out.append((pos, end - pos, DATA))
        return out


class MirrorSource(Source):
    """Mirror legs holding the same bytes: read each piece from the first leg that can."""

    def __init__(self, size, legs, label="mirror"):
        super().__init__()
        self.size = size
        self.legs = legs
        self.label = label

    def _read(self, offset, length):
        err = None
        for leg in self.legs:
            if leg.unreadable_ranges(offset, length):
                continue
            try:
                return leg.read(offset, length)
            except UnreadableError as e:
                err = e
        # no leg is whole here: go piece by piece (512 bytes) so good sectors are used
        if length > SECTOR:
            parts = []
            for p in range(offset, offset + length, SECTOR):
                parts.append(self._read(p, min(SECTOR, offset + length - p)))
            return b"".join(parts)
        for leg in self.legs:
            try:
                return leg.read(offset, length)
            except UnreadableError as e:
                err = e
        raise err or UnreadableError(f"{self.label}: no healthy leg", [(offset, length)])

    def _block_status(self, offset, length):
        for leg in self.legs:
            st = leg.block_status(offset, length)
            if not any(s == UNREADABLE for _, _, s in st):
                return st
        return self.legs[0].block_status(offset, length)


class VolumeGroup:
    """The VG described by one metadata generation, over the PVs that were found."""

    def __init__(self, gen, pv_sources: dict, bad="eio"):
        self.gen = gen
        self.name = gen.vgname
        vg = gen.vg
        self.id = vg.get("id")
        self.seqno = vg.get("seqno")
        self.bad = bad
        self.problems: list[Problem] = []
        self.extent_bytes = _int(vg, "extent_size", what=f"VG {self.name}") * SECTOR
        if self.extent_bytes == 0:
            raise LvmError(f"VG {self.name}: extent_size is 0")
        self.pvs = {}
        for pvname, p in (vg.get("physical_volumes") or {}).items():
            if not isinstance(p, dict):
                continue
            uuid = str(p.get("id", ""))
            what = f"VG {self.name} PV {pvname}"
            try:
                ref = PVRef(pvname, uuid, _int(p, "pe_start", 0, what) * SECTOR,
                            _int(p, "pe_count", 0, what), _int(p, "dev_size", 0, what) * SECTOR)
            except LvmError as e:
                self.problems.append(Problem("error", "bad-pv", f"{e}; its extents are unreadable"))
                self.pvs[pvname] = PVRef(pvname, uuid, 0, 0, 0)
                continue
            src = pv_sources.get(uuid)
            if src is not None:
                ref.source, ref.path = src
            self.pvs[pvname] = ref
        self.lvs = {}
        for lvname, l in (vg.get("logical_volumes") or {}).items():
            if isinstance(l, dict):
                try:
                    self.lvs[lvname] = self._read_lv(lvname, l)
                except LvmError as e:
                    self.problems.append(Problem("error", "bad-lv", str(e)))
        for pvname, ref in self.pvs.items():
            if ref.source is None and ref.pe_count:
                self._missing_pv(pvname, ref)
        self._sources = {}
        self._building = set()

    def _missing_pv(self, pvname, ref):
        """A PV the metadata names that no input holds: a loss for the LVs with extents on
        it (named), only a missing member when none has (nothing of it is used)."""
        users = sorted({lv.name for lv in self.lvs.values() for seg in lv.segments
                        if pvname in [str(x) for x in (seg.fields.get("stripes")
                                                  or seg.fields.get("areas") or [])][::2]})
        covered = self._within_raid_redundancy(users)
        if users and covered:
            self.problems.append(Problem(
                "warning", "missing-pv", f"PV {pvname} ({ref.uuid}) of VG {self.name} was not "
                f"found; it holds {', '.join(users[:16])}, images of {', '.join(covered)} whose "
                f"other images still hold every byte (degraded, within the RAID redundancy)"))
        elif users:
            self.problems.append(Problem(
                "error", "missing-pv", f"PV {pvname} ({ref.uuid}) of VG {self.name} was not "
                f"found; the extents of {', '.join(users[:16])}"
                f"{f' (+{len(users) - 16} more)' if len(users) > 16 else ''} on it are "
                f"unreadable"))
        else:
            self.problems.append(Problem(
                "warning", "missing-pv", f"PV {pvname} ({ref.uuid}) of VG {self.name} was not "
                f"found; no LV has extents on it, so nothing is lost"))

    #: images a RAID type can lose and still read every byte (lib/raid/raid.c, dm-raid);
    #: raid1/mirror: all but one (``None``)
    RAID_TOLERANCE = {"raid1": None, "mirror": None, "raid4": 1, "raid5": 1, "raid5_la": 1,
                      "raid5_ra": 1, "raid5_ls": 1, "raid5_rs": 1, "raid5_n": 1, "raid6": 2,
                      "raid6_zr": 2, "raid6_nr": 2, "raid6_nc": 2, "raid10": 1}

    def _within_raid_redundancy(self, users):
        """The RAID LVs whose images (``*_rimage_N``/``*_rmeta_N``) are all of ``users``
        and within what their RAID type can lose; [] when any user is not such an image."""
        owner = {}
        for lv in self.lvs.values():
            for seg in lv.segments:
                raids = [str(x) for x in (seg.fields.get("raids") or seg.fields.get("mirrors")
                                          or [])]
                if seg.type in self.RAID_TOLERANCE and raids:
                    for sub in raids:
                        owner[sub] = (lv.name, seg.type, len([r for r in raids
                                                              if "_rmeta_" not in r]))
        if not users or any(u not in owner for u in users):
            return []
        lost: dict[str, set] = {}
        for u in users:
            name, _t, _n = owner[u]
            lost.setdefault(name, set()).add(u.rsplit("_", 1)[-1])  # the image index
        for name, idx in lost.items():
            _n, kind, n = next(v for v in owner.values() if v[0] == name)
            tol = self.RAID_TOLERANCE[kind]
            if len(idx) > (n - 1 if tol is None else tol):
                return []
        return sorted(lost)

    def _read_lv(self, name, l) -> LV:
        segs = []
        count = l.get("segment_count", 0)
        for key, s in l.items():
            if not (key.startswith("segment") and isinstance(s, dict)):
                continue
            what = f"LV {name} {key}"
            segs.append(Segment(_int(s, "start_extent", what=what),
                                _int(s, "extent_count", what=what),
                                str(s.get("type", "?")), s))
            if len(segs) > MAX_SEGMENTS:
                raise LvmError(f"LV {name}: too many segments")
        if isinstance(count, int) and count != len(segs):
            self.problems.append(Problem("warning", "segment-count",
                                  f"LV {name}: segment_count {count} but {len(segs)} segments"))
        segs.sort(key=lambda s: s.start_extent)
        extents = max((s.start_extent + s.extent_count for s in segs), default=0)
        status = [x for x in l.get("status", []) if isinstance(x, str)]
        flags = [x for x in l.get("flags", []) if isinstance(x, str)]
        ct = l.get("creation_time")
        ct = ct if isinstance(ct, int) and 0 < ct < 1 << 40 else None
        return LV(name, str(l.get("id", "")), status, flags, segs, extents, ct)

    # -- sources ----------------------------------------------------------------
    def pv_area(self, pvname, pe, length, what):
        """(source, offset) of ``length`` bytes from extent ``pe`` of PV ``pvname``."""
        ref = self.pvs.get(pvname)
        if ref is None:
            raise LvmError(f"{what}: unknown PV {pvname}")
        off = ref.pe_start + pe * self.extent_bytes
        if ref.source is None:
            return MissingSource(off + length, f"PV {pvname} ({ref.uuid}) is missing",
                                 bad=self.bad, label=f"{self.name}/{pvname}"), off
        return ref.source, off

    def area(self, name, start, length, what):
        """An area of a segment: a PV (by extent) or another LV (by logical extent)."""
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise LvmError(f"{what}: area {name!r} starts at {start!r}, not an extent number")
        if name in self.pvs:
            ref = self.pvs[name]
            if ref.pe_count and start * self.extent_bytes + length > \
                    ref.pe_count * self.extent_bytes:
                raise LvmError(f"{what}: area runs past the {ref.pe_count} extents of PV "
                               f"{name}")
            return self.pv_area(name, start, length, what)
        if name in self.lvs:
            return self.lv_source(name), start * self.extent_bytes
        raise LvmError(f"{what}: area names unknown PV or LV {name!r}")

    def lv_source(self, name) -> Source:
        src = self._sources.get(name)
        if src is not None:
            return src
        if name in self._building:
            raise LvmError(f"LV {name} is built from itself (a loop in the metadata)")
        self._building.add(name)
        try:
            src = self._build(self.lvs[name])
        finally:
            self._building.discard(name)
        self._sources[name] = src
        return src

    def _build(self, lv: LV) -> Source:
        eb = self.extent_bytes
        extents = []
        for seg in lv.segments:
            off, length = seg.start_extent * eb, seg.extent_count * eb
            what = f"LV {lv.name} segment at LE {seg.start_extent}"
            src = self._segment(lv, seg, length, what)
            extents.append((off, length, src[0], src[1]))
        return ExtentSource(lv.extents * eb, extents, label=f"{self.name}/{lv.name}")

    def _raid_images(self, f):
        """The data images of a raid segment: ``raids`` lists, per image, its metadata LV
        (``*_rmeta_*``, or ``"-"`` for none) then its data LV; raid0 may list data LVs
        only (lvm2 ``lib/raid/raid.c`` ``_raid_text_import_areas``)."""
        arr = [str(x) for x in _list(f, "raids", "raid segment")]
        images, i = [], 0
        while i < len(arr):
            if arr[i] == "-" or "_rmeta_" in arr[i]:
                i += 1  # a metadata device (or none): the data device follows
                if i >= len(arr):
                    raise LvmError("raids list ends after a metadata device")
            images.append(arr[i])
            i += 1
        return images

    def _segment(self, lv, seg, length, what):
        f = seg.fields
        t = seg.type
        if t in LINEAR_TYPES:
            n = _int(f, "stripe_count", 1, what)
            arr = _list(f, "stripes", what) or _list(f, "areas", what)
            if not 1 <= n <= MAX_STRIPES or len(arr) != 2 * n:
                raise LvmError(f"{what}: stripes list does not match stripe_count {n}")
            if seg.extent_count % n:
                raise LvmError(f"{what}: {seg.extent_count} extents do not divide into "
                               f"{n} stripes")
            per = length // n
            areas = [self.area(str(arr[2 * i]), arr[2 * i + 1], per, what) for i in range(n)]
            if n == 1:
                return areas[0]
            ss = _int(f, "stripe_size", what=what) * SECTOR
            if ss == 0:
                raise LvmError(f"{what}: stripe_size 0")
            return StripedSource(length, areas, ss, label=f"{self.name}/{lv.name}"), 0
        if t in MIRROR_TYPES:
            if t == "mirror":
                arr = _list(f, "mirrors", what)
                names = [(str(arr[i]), arr[i + 1]) for i in range(0, len(arr) - 1, 2)]
            else:
                names = [(n, 0) for n in self._raid_images(f)]
            if not names:
                raise LvmError(f"{what}: {t} segment without images")
            legs = []
            data_offset = _int(f, "data_offset", 0, what) * SECTOR  # dm-raid reshape space
            for nm, le in names:
                src, off = self.area(nm, le, length, what)
                start = off + data_offset
                n = max(0, min(length, src.size - start))
                ext = [(0, n, src, start)]
                if n < length:  # the image is shorter than the segment: that part is lost
                    ext.append((n, length - n, MissingSource(
                        length - n, f"{nm} ends early", bad=self.bad, label=nm), 0))
                legs.append(ExtentSource(length, ext, label=nm))
            return MirrorSource(length, legs, label=f"{self.name}/{lv.name}"), 0
        if t in ("raid0", "raid0_meta"):
            names = self._raid_images(f)
            if not 1 <= len(names) <= MAX_STRIPES:
                raise LvmError(f"{what}: {t} segment with {len(names)} images")
            per = length // len(names)
            data_offset = _int(f, "data_offset", 0, what) * SECTOR
            areas = [(src, off + data_offset)
                     for src, off in (self.area(nm, 0, per, what) for nm in names)]
            ss = _int(f, "stripe_size", what=what) * SECTOR
            if ss == 0 or length % len(names):
                raise LvmError(f"{what}: bad stripe_size or length for {t}")
            return StripedSource(length, areas, ss, label=f"{self.name}/{lv.name}"), 0
        if t == "zero":
            return ZeroSource(length, status=ZERO), 0
        if t == "error":
            return MissingSource(length, "error segment", bad=self.bad), 0
        self.problems.append(Problem("error", "unsupported-segment",
                              f"{what}: segment type {t!r} is not supported; its bytes "
                              f"read as unreadable"))
        return MissingSource(length, f"segment type {t} not supported", bad=self.bad,
                             label=f"{self.name}/{lv.name}"), 0

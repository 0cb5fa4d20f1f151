"""Container backups (vzdump-lxc-*.tar[.zst|.gz|.lzo]) browsable like ratarmount does it.

One pass over the decoded stream lists the members with Python's ``tarfile`` in stream
mode (POSIX pax headers, GNU sparse 1.0 maps, long names, hardlinks); the member list is
kept in the sidecar index, and files are slices of the decoded stream, so any file can be
read at any offset without unpacking.  After a lost region (a gap in a compressed stream
or a corrupt header) the next valid header is searched for (``ustar`` magic at offset 257
and a correct header checksum) and listing resumes there.

References: POSIX.1-2001 pax / ustar header layout; GNU tar manual "Sparse Formats"
(1.0: map at the start of the data); pve-container ``src/PVE/VZDump/LXC.pm`` (flags, the
``./etc/vzdump/pct.conf`` member first); ratarmount (member index + random access).
"""

from __future__ import annotations

import base64
import stat
import tarfile

from pvfs.nodes import Dir, File, Special, Symlink
from pvfs.source import ExtentSource, MissingSource, SliceSource, concat

from .streams import GapError, SequentialReader

MAX_MEMBERS = 10_000_000
TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.CONTTYPE: "file",
         tarfile.GNUTYPE_SPARSE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
         tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "chr", tarfile.BLKTYPE: "blk",
         tarfile.FIFOTYPE: "fifo"}
IFMT = {"chr": stat.S_IFCHR, "blk": stat.S_IFBLK, "fifo": stat.S_IFIFO}


def header_ok(block: bytes) -> bool:
    """A 512-byte ustar/GNU header with a correct checksum."""
    if len(block) < 512 or not any(block):
        return False
    try:
        stored = int(block[148:156].replace(b"\0", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    calc = sum(block[:148]) + 256 + sum(block[156:512])
    return stored == calc


class _PushbackFile:
    """File object for tarfile over a SequentialReader, with bytes pushed back in front."""

    def __init__(self, reader: SequentialReader, front=b""):
        self.r = reader
        self.front = front

    def read(self, n=-1):
        if n is None or n < 0:
            n = 1 << 30
        if self.front:
            b, self.front = self.front[:n], self.front[n:]
            if len(b) < n:
                b += self.r.read(n - len(b))
            return b
        return self.r.read(n)


def _find_header(r: SequentialReader, limit=1 << 40):
    """Search forward for a valid header; returns (offset, bytes from there) or None."""
    buf = b""
    buf_off = r.pos
    scanned = 0
    while scanned < limit:
        try:
            more = r.read(1 << 20)
        except GapError:
            buf, buf_off = b"", r.pos
            continue
        if not more:
            return None
        if not buf:
            buf_off = r.pos - len(more)
        buf += more
        scanned += len(more)
        i = buf.find(b"ustar", 257)
        while i >= 0:
            start = i - 257
            if start + 512 <= len(buf) and header_ok(buf[start:start + 512]):
                return buf_off + start, buf[start:]
            i = buf.find(b"ustar", i + 1)
        keep = max(0, len(buf) - 1024)
        buf_off += keep
        buf = buf[keep:]
    return None


def index_tar(pieces, progress=None):
    """List members: returns (members, problems); a member is a JSON-able dict."""
    r = SequentialReader(pieces)
    members = []
    problems = []
    base = 0
    front = b""
    while True:
        tf = None
        last = None
        try:
            tf = tarfile.open(fileobj=_PushbackFile(r, front), mode="r|", ignore_zeros=False)
            for m in tf:
                last = _member(m, base)
                members.append(last)
                if len(members) >= MAX_MEMBERS:
                    problems.append(("error", "too-many-members", None, f"more than {MAX_MEMBERS} members"))
                    return members, problems
                if progress is not None:
                    progress(r.pos)
            r.drain()
            return members, problems
        except GapError as e:
            gap = e.gap
            if last is not None and last["type"] == "file" and last["data"] + last["stored"] > gap.offset:
                last["lost_from"] = gap.offset - last["data"]
            problems.append(("error", "stream-gap", gap, f"{e}; member list resumes at the next header"))
        except (tarfile.TarError, EOFError) as e:
            problems.append(("error", "bad-header", None,
                             f"tar listing stopped near decoded offset {r.pos:#x}: {e}; searching for the next header"))
        found = _find_header(r)
        if found is None:
            return members, problems
        base, front = found


def _member(m, base):
    kind = TYPES.get(m.type, "other")
    if m.issparse():
        kind = "file"
    xattrs = {k[len("SCHILY.xattr."):]: base64.b64encode(v.encode("utf-8", "surrogateescape")).decode()
              for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
    for rec, name in (("SCHILY.acl.access", "system.posix_acl_access"),
                      ("SCHILY.acl.default", "system.posix_acl_default")):
        if rec in m.pax_headers:
            value = acl_text_to_xattr(m.pax_headers[rec])
            if value is not None:
                xattrs[name] = base64.b64encode(value).decode()
    stored = m.size if not m.issparse() else sum(n for _, n in m.sparse)
    return {
        "path": m.name, "type": kind, "mode": m.mode, "uid": m.uid, "gid": m.gid,
        "mtime": m.mtime, "size": m.size, "data": base + m.offset_data, "stored": stored,
        "link": m.linkname, "major": m.devmajor, "minor": m.devminor,
        "sparse": [list(x) for x in m.sparse] if m.sparse else None, "xattrs": xattrs,
    }


ACL_TAGS = {"user": (1, 2), "u": (1, 2), "group": (4, 8), "g": (4, 8), "mask": (0x10, 0x10),
            "m": (0x10, 0x10), "other": (0x20, 0x20), "o": (0x20, 0x20)}


def acl_text_to_xattr(text):
    """A GNU tar/star ACL text (``user::rw-,user:1000:r--,group::r-x,mask::r-x,other::---``,
    comma or newline separated, ``#`` comments) as a ``system.posix_acl_*`` value; None if
    it has no usable entry."""
    from backends.pbs.pxar import ACL_UNDEFINED_ID, posix_acl_xattr

    entries = []
    for item in text.replace("\n", ",").split(","):
        item = item.split("#", 1)[0].split("\t", 1)[0].strip()
        parts = item.split(":")
        if len(parts) < 3 or parts[0] not in ACL_TAGS:
            continue
        tag_obj, tag_named = ACL_TAGS[parts[0]]
        perm = sum(bit for ch, bit in zip(parts[2][:3].ljust(3, "-"), (4, 2, 1)) if ch != "-")
        if parts[1]:
            ident = parts[3] if len(parts) > 3 and parts[3].isdigit() else parts[1]
            if not ident.isdigit():
                continue  # a user name without a numeric id: cannot be mapped offline
            entries.append((tag_named, int(ident), perm))
        else:
            entries.append((tag_obj, ACL_UNDEFINED_ID, perm))
    return posix_acl_xattr(entries) if entries else None


def _parts(path):
    return [p for p in path.split("/") if p not in ("", ".")]


def build_tree(members, stream, bad, report=None):
    """Nodes for the members; returns the root Dir.  ``report(path, message, ranges)``."""
    root = Dir(mode=0o755)
    by_path = {(): root}

    def parent_dir(parts):
        d = root
        for i in range(len(parts)):
            key = tuple(parts[:i + 1])
            nd = by_path.get(key)
            if not isinstance(nd, Dir):
                nd = Dir(mode=0o755)
                d.add(parts[i], nd)
                by_path[key] = nd
            d = nd
        return d

    for m in members:
        parts = _parts(m["path"])
        kw = dict(mtime=m["mtime"], uid=m["uid"], gid=m["gid"])
        kind = m["type"]
        if kind == "dir":
            d = parent_dir(parts)
            d.mode = stat.S_IFDIR | (m["mode"] & 0o7777)
            d.mtime = d.atime = d.ctime = m["mtime"]
            d.uid, d.gid = m["uid"], m["gid"]
            node = d
        elif not parts:
            continue
        elif kind == "hardlink":
            node = by_path.get(tuple(_parts(m["link"])))
            if node is None or isinstance(node, Dir):
                if report:
                    report("/" + "/".join(parts), f"hardlink to {m['link']!r}, which is not in the archive", ())
                continue
            node.nlink += 1
            parent_dir(parts[:-1]).add(parts[-1], node)
            continue
        elif kind == "file":
            node = File(_file_source(m, stream, bad), mode=m["mode"], **kw)
            if "lost_from" in m and report:
                report("/" + "/".join(parts), "data lies in a lost part of the stream",
                       [(m["lost_from"], m["size"] - m["lost_from"])])
        elif kind == "symlink":
            node = Symlink(m["link"].encode("utf-8", "surrogateescape"), **kw)
        elif kind in IFMT:
            import os

            rdev = os.makedev(m["major"], m["minor"]) if kind != "fifo" else 0
            node = Special(IFMT[kind] | (m["mode"] & 0o7777), rdev=rdev, **kw)
        else:
            continue
        for k, v in m["xattrs"].items():
            node.xattrs[k.encode("utf-8", "surrogateescape")] = base64.b64decode(v)
        if kind != "dir":
            parent_dir(parts[:-1]).add(parts[-1], node)
            by_path[tuple(parts)] = node
    return root


def _file_source(m, stream, bad):
    label = m["path"]
    if m["sparse"]:
        ext, pos = [], m["data"]
        for off, n in m["sparse"]:
            if n:
                ext.append((off, n, stream, pos))
                pos += n
        src = ExtentSource(m["size"], ext, label=label)
    else:
        src = SliceSource(stream, m["data"], m["size"], label=label, bad=bad)
    lost = m.get("lost_from")
    if lost is not None and not m["sparse"]:
        good = SliceSource(stream, m["data"], max(0, lost), label=label, bad=bad)
        src = concat([good, MissingSource(m["size"] - max(0, lost), "lost in the compressed stream",
                                          bad=bad, label=label)], label=label)
    return src

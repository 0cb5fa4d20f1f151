"""The ``pvfs`` command: ``scan``, ``mount``, ``index``, ``copy`` and ``umount``.

Exit status (``scan`` and ``mount``): 0 nothing lost; 3 something lost (the report has
entries with outcome ``lost``, which are exactly its errors -- repaired, degraded and note
entries never change the status; ``mount`` still mounted the tree); 1 nothing recognised in the inputs, or a fatal
error (one line on stderr); 2 usage: a bad option value, a missing input, a mountpoint
that cannot be used.  ``umount``: 0 unmounted, 1 error, 2 busy (still mounted after the
retries), 3 not mounted -- guestunmount's codes.  ``copy``: 0 copied whole, 3 unreadable bytes
(the copy removed, or with ``--keep-going`` zeros listed in DEST.map), 1 and 2 as above.

Every option value that can be checked without reading the inputs is checked before any
work (:func:`check_values`); the values only discovery can judge (a txg or seqno that does
not exist, a key for a dataset that is not there) are checked right after it, before
anything is printed or mounted (:func:`check_after_discovery`).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, NoReturn

from . import __version__
from .backend import load_backends
from .errors import PvfsError, UsageError
from .nbd import is_nbd_uri, parse_uri

if TYPE_CHECKING:
    from .discover import Context, Options
    from .progress import Progress

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DAMAGE = 0, 1, 2, 3
EXIT_NOTHING = 1  # nothing recognised in the inputs
UMOUNT_OK, UMOUNT_ERROR, UMOUNT_BUSY, UMOUNT_NOT_MOUNTED = 0, 1, 2, 3

EXAMPLES = {
    "scan": """\
examples:
  pvfs scan sda.img sdb.img sdc.img        ZFS raidz members: layers and damage report
  pvfs scan --json /srv/images/ > report.json
  pvfs scan --html report.html /srv/images/  also write the status table and damage maps
  pvfs scan --bad zero vm-100-disk-0.qcow2  report lost bytes as zeros (same report)

exit status: 0 nothing lost, 3 something lost, 1 nothing recognised, 2 usage error""",
    "mount": """\
examples:
  pvfs mount sda.img sdb.img /mnt/pvfs      ZFS pool: vms/, cts/, storage/zfs/
  pvfs mount /mnt/backup/datastore /mnt/pvfs   a PBS datastore
  pvfs mount -f --debug pve-disk.img /mnt/pvfs  foreground, debug log on stderr
  pvfs mount -o allow_other osd0.img osd1.img osd2.img /mnt/pvfs
  pvfs mount nbd://holder1/osd0 nbd://holder2:10810/osd1.img /mnt/pvfs
                                            images left on other machines (qemu-nbd -r, nbdkit -r)

MOUNTPOINT must be an empty directory (-o nonempty mounts over files, hiding them).
A whole disk copied out reads faster O_DIRECT in 1 MiB reads (dd iflag=direct bs=1M,
qemu-img convert -T none): the kernel then keeps no second page cache of it.
exit status: 0 mounted, nothing lost; 3 mounted, something lost (see MOUNTPOINT/report.json);
1 nothing recognised (not mounted) or the mount failed; 2 usage error""",
    "index": """\
examples:
  pvfs index osd0.img osd1.img osd2.img    build the OSDs' object indexes (2 at a time on
                                           2 cores), so that the mount starts at once
  pvfs index --index-dir /srv/pvfs-index /srv/images/
  pvfs index --jobs 1 pve-disk.img          in this process only

exit status: 0 indexed, 3 indexed but something is lost (see 'pvfs scan'), 1 nothing
recognised, 2 usage error""",
    "copy": """\
examples:
  pvfs copy pve-disk.img --path vms/100/disk-0.raw --to /big/vm-100-disk-0.raw
  pvfs copy sd?.img --path vms/100/disk-0.raw --path vms/100/disk-1.raw --to /big/vm-100/
                                            several files into a directory, by base name
  pvfs copy --keep-going bad.img --path vms/102/disk-0.raw --to /big/vm-102.raw
                                            unreadable bytes become zeros, listed in
                                            /big/vm-102.raw.map (a GNU ddrescue mapfile)

TREE_PATH is a file of the tree 'pvfs mount' shows (see 'pvfs scan'). The copy does not go
through FUSE: plain ranges of the inputs are copied in the kernel (copy_file_range, as cp
does), holes stay holes. Unreadable bytes stop the copy and remove what was written.
exit status: 0 copied whole; 3 unreadable bytes (without --keep-going: not copied); 1 nothing
recognised, or an error; 2 usage error (also: DEST exists, TREE_PATH not in the tree)""",
    "umount": """\
examples:
  pvfs umount /mnt/pvfs
  pvfs umount --lazy /mnt/pvfs              detach now, finish when no longer busy

exit status: 0 unmounted, 1 error, 2 busy (still mounted after the retries), 3 not mounted""",
}

#: FUSE mount options passed on to libfuse with -o (fuse_session_new's list, fuse(8)).
FUSE_OPTIONS = {"allow_other", "allow_root", "auto_unmount", "default_permissions", "ro",
                "kernel_cache", "auto_cache", "noatime", "nodiratime", "relatime", "nodev",
                "nosuid", "noexec", "dev", "suid", "exec", "blkdev", "debug", "sync", "async",
                "dirsync", "nonempty"}
FUSE_VALUE_OPTIONS = {"fsname", "subtype", "max_read", "blksize", "context", "rootcontext",
                      "fscontext", "defcontext", "uid", "gid", "umask", "max_background",
                      "congestion_threshold", "max_idle_threads"}


class Formatter(argparse.HelpFormatter):
    """Wraps descriptions, keeps the examples (text with line breaks) as written, and
    shows a default where there is one."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        if "default" in h or action.default in (None, False, [], argparse.SUPPRESS):
            return h
        return h + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """Usage errors are one line naming the bad value, and exit 2."""

    def error(self, message: str) -> NoReturn:
        sub = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        hint = f" (see 'pvfs {sub} --help')" if sub else " (see 'pvfs --help')"
        self.exit(EXIT_USAGE, f"pvfs: usage error: {message}{hint}\n")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 1 or more")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or more")
    return v


def _global_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """``--debug`` and ``--progress`` work before and after the subcommand: the copy in
    each subcommand has no default, so it only overrides when given there."""
    d = {"default": argparse.SUPPRESS} if suppress else {}
    p.add_argument("--debug", action="store_true",
                   help="tracebacks, and debug logs on stderr", **(d or {"default": False}))
    p.add_argument("--progress", dest="progress", action="store_true",
                   help="show progress on stderr even when it is not a terminal "
                        "(then as plain lines); default: only on a terminal",
                   **(d or {"default": None}))
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="never show progress", **(d or {"default": None}))


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR",
                   help="drive images, image files, block devices, directories or NBD "
                        "exports (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bad", choices=("eio", "zero"), default=None,
                   help="bytes that no copy, parity or fallback can produce (bad sectors, "
                        "missing members, chunks or objects, corrupt clusters): 'eio' (the "
                        "default) fails the read, 'zero' reads them as zeros; either way they "
                        "are in the damage report")
    p.add_argument("--mapfile", action="append", default=[], metavar="[IMAGE=]MAPFILE",
                   help="GNU ddrescue mapfile for an image (default: IMAGE.map beside it); "
                        "repeatable")
    p.add_argument("--index-dir", metavar="DIR|none", default=None,
                   help="where the persistent indexes are kept (OSD object lists, thin pool "
                        "mappings, archive indexes), so that the next scan or mount of the "
                        "same inputs is quick; 'none' keeps nothing (default: "
                        "$XDG_CACHE_HOME/pvfs/index, i.e. ~/.cache/pvfs/index)")
    p.add_argument("--jobs", "-j", type=_positive_int, default=None, metavar="N",
                   help="worker processes that index independent inputs (OSDs, PVs, "
                        "archives, datastores) in parallel before discovery (default: the "
                        "number of cores)")
    seen = set()
    group = p.add_argument_group("format options")
    for b in load_backends():
        for flag, kw in getattr(b, "cli_options", []):
            if flag in seen:
                continue
            seen.add(flag)
            group.add_argument(flag, **kw)


def build_parser() -> Parser:
    parser = Parser(
        prog="pvfs", formatter_class=Formatter,
        description="Read-only recovery of Proxmox VE storage (ZFS, LVM-thin, Ceph, qcow2, "
                    "PBS, vzdump, DRBD) from drive images: scan them, or mount what they hold "
                    "as a read-only tree of VMs, containers, snapshots and backups.",
        epilog="Run 'pvfs COMMAND --help' for a command's options and examples.")
    parser.add_argument("-V", "--version", action="version", version=f"pvfs {__version__}")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)

    scan = sub.add_parser(
        "scan", help="discover and report, without mounting", formatter_class=Formatter,
        description="Open every input, stack every layer found (partitions, pools, volume "
                    "groups, images, backups) and print what is there with every damage "
                    "entry. Nothing is written anywhere.",
        epilog=EXAMPLES["scan"])
    _add_inputs(scan)
    scan.add_argument("--json", action="store_true",
                      help="print the report as JSON (the same document as report.json)")
    scan.add_argument("--html", metavar="FILE",
                      help="also write the report as one self-contained HTML page (the same "
                           "as report.html in a mount: status table, a damage map per disk)")
    _add_common(scan)
    _global_options(scan, suppress=True)

    mount = sub.add_parser(
        "mount", help="mount everything found, read-only", formatter_class=Formatter,
        description="Discover like 'pvfs scan', then mount the result read-only at "
                    "MOUNTPOINT: vms/, cts/, storage/, README.txt, report.json and "
                    "report.html. Returns once the tree can be used; a daemon serves it "
                    "until 'pvfs umount MOUNTPOINT'.",
        epilog=EXAMPLES["mount"])
    _add_inputs(mount)
    mount.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty directory")
    mount.add_argument("-f", "--foreground", action="store_true",
                       help="stay in the foreground (Ctrl-C or SIGTERM unmounts)")
    mount.add_argument("-o", dest="fuse_options", action="append", default=[],
                       metavar="OPT[,OPT...]",
                       help="FUSE mount options, e.g. allow_other; nonempty mounts over a "
                            "directory that is not empty")
    mount.add_argument("--log", metavar="FILE", help="daemon log file (default: none)")
    mount.add_argument("--threads", type=_positive_int, default=8, metavar="N",
                       help="worker threads for reads, 1 or more")
    mount.add_argument("--readahead-kb", type=_nonneg_int, default=4096, metavar="KIB",
                       help="kernel read-ahead of the mount in KiB (root only; 0 leaves it)")
    _add_common(mount)
    _global_options(mount, suppress=True)

    index = sub.add_parser(
        "index", help="build the persistent indexes of inputs ahead of a mount",
        formatter_class=Formatter,
        description="Discover like 'pvfs scan', with independent inputs in parallel worker "
                    "processes, and keep what costs time to work out (the object index of "
                    "each Ceph OSD, the mappings of thin pools, vzdump archive indexes) in the "
                    "index store, then list what is stored. A later 'pvfs scan' or 'pvfs "
                    "mount' of the same inputs loads them instead; an index whose input or "
                    "metadata changed is rebuilt, never trusted. Run it on the machine that "
                    "holds the images, beside them.",
        epilog=EXAMPLES["index"])
    _add_inputs(index)
    _add_common(index)
    _global_options(index, suppress=True)

    copy = sub.add_parser(
        "copy", help="copy files of the tree out, without FUSE", formatter_class=Formatter,
        description="Discover like 'pvfs scan', then copy each TREE_PATH (a file of the tree "
                    "'pvfs mount' shows: a VM disk, a backup's disk, a container's file) to "
                    "DEST without the FUSE round trip: bytes that are plain ranges "
                    "of an input are copied in the kernel (copy_file_range), holes of the "
                    "source stay holes. A copied file is either right or the copy fails.",
        epilog=EXAMPLES["copy"])
    _add_inputs(copy)
    copy.add_argument("--path", dest="paths", action="append", required=True,
                      metavar="TREE_PATH",
                      help="a regular file of the tree, e.g. vms/100/disk-0.raw; repeatable "
                           "(then --to is a directory)")
    copy.add_argument("--to", dest="dest", required=True, metavar="DEST",
                      help="the new file; an existing directory keeps each file's base name")
    copy.add_argument("--force", action="store_true",
                      help="replace an existing DEST (and DEST.map)")
    copy.add_argument("--keep-going", action="store_true",
                      help="copy unreadable bytes as zeros instead of failing, list them in "
                           "DEST.map (a GNU ddrescue mapfile) and exit 3; '--bad zero' "
                           "does the same")
    _add_common(copy)
    _global_options(copy, suppress=True)

    umount = sub.add_parser(
        "umount", help="unmount a pvfs mount", formatter_class=Formatter,
        description="Unmount a pvfs mount (fusermount3 -u), retrying a few times while it is "
                    "busy.", epilog=EXAMPLES["umount"])
    umount.add_argument("mountpoint", metavar="MOUNTPOINT")
    umount.add_argument("-l", "--lazy", action="store_true",
                        help="detach now; the kernel finishes once nothing uses it")
    umount.add_argument("--retry", type=_nonneg_int, default=3, metavar="N",
                        help="retries while busy (0.5 s, 1 s, 2 s ... apart)")
    _global_options(umount, suppress=True)
    return parser


# -- option values ------------------------------------------------------------------
_PREFER_RE = re.compile(r"^(?:[^=]+=)?(?:node-)?[ab]$", re.I)


def _split_res(text: str) -> list[str] | tuple[None, str]:
    return text.split("=", 1) if "=" in text else (None, text)


def check_values(args: argparse.Namespace) -> None:
    """Every value that can be judged without reading the inputs; UsageError names it."""
    def need_file(flag: str, path: str, what: str = "file") -> None:
        if not os.path.isfile(path):
            raise UsageError(f"{flag} {path}: no such {what}")
        if not os.access(path, os.R_OK):
            raise UsageError(f"{flag} {path}: not readable")

    for p in args.inputs:
        if is_nbd_uri(p):
            parse_uri(p)  # a bad URI is a usage error before anything is read
            continue
        if not os.path.lexists(p):  # (a dangling link exists: it becomes a report entry)
            raise UsageError(f"{p}: no such file or directory")
    from .index import check_dir, resolve_dir

    why = check_dir(getattr(args, "index_dir", None))
    if why:
        raise UsageError(why)
    if getattr(args, "command", None) == "index" and resolve_dir(args.index_dir) is None:
        raise UsageError("--index-dir none: 'pvfs index' needs an index store to write to")
    for v in getattr(args, "drbd_prefer", None) or []:
        if not _PREFER_RE.match(v):
            raise UsageError(f"--drbd-prefer {v}: expected [RESOURCE=]A or B")
    for v in getattr(args, "drbd_ranges", None) or []:
        need_file("--drbd-ranges", _split_res(v)[1])
    for flag, key in (("--drbd-md", "drbd_md"), ("--drbd-pair", "drbd_pair")):
        for v in getattr(args, key, None) or []:
            dev, eq, other = v.partition("=")
            if not eq or not dev or not other:
                raise UsageError(f"{flag} {v}: expected DEVICE=" +
                                 ("MD_IMAGE[@INDEX]" if key == "drbd_md" else "DEVICE"))
            if key == "drbd_md":  # (a path that exists may contain '@')
                img, at, idx = (other.rpartition("@") if "@" in other
                                and not os.path.exists(other) else (other, "", ""))
                if at and not idx.isdigit():
                    raise UsageError(f"--drbd-md {v}: @INDEX must be a number")
                need_file("--drbd-md", img, "meta data image")
    for v in getattr(args, "zfs_key", None) or []:
        name, eq, key = v.partition("=")
        if not eq or not name.strip("/") or not key:
            raise UsageError(f"--zfs-key {v}: expected DATASET=KEY")
        if key.startswith("file:"):
            need_file("--zfs-key", key[5:], "key file")
    for flag, key, lo in (("--zfs-txg", "zfs_txg", 1), ("--lvm-seqno", "lvm_seqno", 1)):
        v = getattr(args, key, None)
        if v is not None and v < lo:
            raise UsageError(f"{flag} {v}: must be {lo} or more")
    bits = getattr(args, "qcow2_cluster_bits", None)
    if bits is not None and not 9 <= bits <= 21:
        raise UsageError(f"--qcow2-cluster-bits {bits}: qcow2 clusters are 2^9 to 2^21 bytes")
    if getattr(args, "pbs_keyfile", None):
        need_file("--pbs-keyfile", args.pbs_keyfile, "key file")
    for d in getattr(args, "ceph_mon", None) or []:
        if not os.path.isdir(d):
            raise UsageError(f"--ceph-mon {d}: no such directory")
    for m in args.mapfile:
        mf = m.split("=", 1)[1] if "=" in m else m
        if not os.path.isfile(mf):
            raise UsageError(f"mapfile {mf} does not exist")
    for o in getattr(args, "fuse_options", None) or []:
        for part in filter(None, (x.strip() for x in o.split(","))):
            name = part.split("=", 1)[0]
            if part == "rw":
                raise UsageError("-o rw: pvfs mounts are always read-only")
            if name in FUSE_VALUE_OPTIONS and "=" in part:
                continue
            if part not in FUSE_OPTIONS:
                raise UsageError(f"-o {part}: not a FUSE mount option pvfs knows (e.g. "
                                 "allow_other, allow_root, auto_unmount, nonempty, fsname=NAME; "
                                 "see fuse(8))")
    out = getattr(args, "html", None)
    if out is not None:
        parent = os.path.dirname(os.path.abspath(out))
        if os.path.isdir(out) or not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise UsageError(f"--html {out}: cannot write a file there")
        if any(os.path.exists(p) and os.path.samefile(out, p) for p in args.inputs
               if not is_nbd_uri(p) and os.path.exists(out)):
            raise UsageError(f"--html {out}: that is an input (inputs are only ever read)")


def check_after_discovery(args: argparse.Namespace, ctx: Context) -> None:
    """Values only discovery can judge: a txg, seqno, dataset or resource that is not there.

    Backends report such a value as a damage entry (the ZFS backend's open-failed message
    "no valid uberblock with txg N", LVM's ``seqno-not-found``, DRBD's ``bad-merge-rule``,
    PBS's ``bad-keyfile``) or raise UsageError (a ``bad-option`` entry, see
    discover._run_backend); here each becomes exit 2.  A backend that wants its own check
    raises UsageError: that needs no change here.
    """
    from .nodes import resolve

    entries = list(ctx.report)
    claimed = {v.claimed_by for v in ctx.volumes}
    bad_opt = [e for e in entries if e.code == "bad-option"]
    if bad_opt:
        raise UsageError(bad_opt[0].message)
    txg = getattr(args, "zfs_txg", None)
    if txg is not None:
        if "zfs" not in claimed:
            raise UsageError(f"--zfs-txg {txg}: no ZFS pool found in the inputs")
        for e in entries:
            if e.layer == "zfs" and f"no valid uberblock with txg {txg}" in e.message:
                raise UsageError(f"--zfs-txg {txg}: {e.message.split(': ', 1)[-1]}")
    seqno = getattr(args, "lvm_seqno", None)
    if seqno is not None:
        if "lvm" not in claimed:
            raise UsageError(f"--lvm-seqno {seqno}: no LVM volume group found in the inputs")
        for e in entries:
            if e.code == "seqno-not-found":
                raise UsageError(f"--lvm-seqno {seqno}: {e.message.split('; using')[0]}")
    for v in getattr(args, "zfs_key", None) or []:
        name = v.partition("=")[0].strip("/")
        try:
            found = resolve(ctx.root, f"storage/zfs/{name}") is not None
        except Exception:
            found = False
        if not found:
            raise UsageError(f"--zfs-key {name}=...: no ZFS dataset {name} found in the inputs")
        # The key given for NAME did not unwrap NAME itself (the backend's bad-key entry,
        # "NAME: key for NAME: wrong key or passphrase ..."): a usage error, not damage.
        # Entries of other datasets that merely inherited the key are not looked at.
        for e in entries:
            tag = f"key for {name}: "
            if e.code == "bad-key" and e.message.startswith(f"{name}: ") and tag in e.message:
                why = e.message.split(tag, 1)[1].split("; key for ", 1)[0]
                raise UsageError(f"--zfs-key {name}=...: dataset {name}: {why}")
    for e in entries:
        if e.code == "bad-merge-rule":
            raise UsageError(e.message)
        if e.code == "bad-keyfile":
            raise UsageError(f"--pbs-keyfile: {e.message}")
    if getattr(args, "pbs_keyfile", None) and "pbs" not in ctx.storage_root.children():
        raise UsageError(f"--pbs-keyfile {args.pbs_keyfile}: no PBS datastore found in the inputs")
    if getattr(args, "drbd_prefer", None) and "drbd" not in claimed:
        raise UsageError(f"--drbd-prefer {args.drbd_prefer[0]}: no DRBD resource found")


def recognised(ctx: Context) -> bool:
    """Whether discovery found anything at all: a format (a raw disk only counts when
    something is on it or it is named as a Proxmox disk), a filesystem, a storage."""
    if any((v.claimed_by and v.claimed_by != "raw") or v.filesystem for v in ctx.volumes):
        return True
    if ctx.vms_root.children() or ctx.cts_root.children():
        return True
    return any(name != "files" for name in ctx.storage_root.children())


def _options(args: argparse.Namespace) -> Options:
    from .discover import Options

    mapfiles = {}
    for m in args.mapfile:
        if "=" in m:
            img, mf = m.split("=", 1)
        else:
            files = [i for i in args.inputs if os.path.isfile(i)]
            if len(files) != 1:
                raise UsageError("--mapfile without IMAGE= needs exactly one input file")
            img, mf = files[0], m
        mapfiles[os.path.abspath(img)] = mf
    backend_options = {}
    for b in load_backends():
        for flag, _ in getattr(b, "cli_options", []):
            dest = flag.lstrip("-").replace("-", "_")
            value = getattr(args, dest, None)
            if value is not None:
                backend_options[dest] = value
    from .index import resolve_dir
    from .parallel import default_jobs

    return Options(bad=args.bad, mapfiles=mapfiles, backend_options=backend_options,
                   progress=args.progress, index_dir=resolve_dir(args.index_dir),
                   jobs=args.jobs or default_jobs())


def _discover(args: argparse.Namespace) -> Context:
    from .discover import discover
    from .progress import Progress
    from .startup import discovery_begins

    discovery_begins()  # the collector, off during start-up (run): pvfs/startup.py
    check_values(args)
    opts = _options(args)
    with Progress(enabled=opts.progress) as progress:
        ctx = discover(args.inputs, opts, progress=progress)
    check_after_discovery(args, ctx)
    return ctx


def damage_summary(ctx: Context) -> str:
    """The report counted by outcome, the words a user acts on: ``2 lost, 1 degraded,
    3 repaired`` (a pool healed from parity said "3 errors" in severity words)."""
    return ctx.report.outcome_summary() or "none"


def _status(ctx: Context) -> int:
    if not recognised(ctx):
        return EXIT_NOTHING
    lost = any(e.outcome == "lost" for e in ctx.report)  # == severity error (damage.OUTCOMES)
    return EXIT_DAMAGE if lost else EXIT_OK


def cmd_scan(args: argparse.Namespace) -> int:
    from .report import report_text, write_report_json

    ctx = _discover(args)
    if args.json:
        write_report_json(ctx, sys.stdout.write)  # piece by piece, never whole in memory
    else:
        sys.stdout.write(report_text(ctx))
    if args.html is not None:
        from .htmlreport import report_html

        with open(args.html, "w", encoding="utf-8") as f:
            f.write(report_html(ctx))
    code = _status(ctx)
    if code == EXIT_NOTHING:
        print("pvfs: nothing recognised in the inputs", file=sys.stderr)
    return code


def cmd_index(args: argparse.Namespace) -> int:
    """Discover with the index store and workers, then say what the store holds."""
    ctx = _discover(args)
    store = ctx.indexes
    rows = [(e.state, f"{e.backend} {e.name}", e.label + (f" ({e.why})" if e.why else ""),
             e.nbytes, e.seconds) for e in store.log]
    by_worker = [(state, f"{b} {n}", label, nb, 0.0)
                 for res in ctx.workers_log for b, n, label, state, nb in res["entries"]
                 if state != "reused"]
    out = [f"Index store: {store.root}"]
    if by_worker:
        secs = max(r["seconds"] for r in ctx.workers_log)
        out.append(f"  {len(ctx.workers_log)} inputs indexed in {ctx.options.jobs} worker "
                   f"processes (longest {secs:.1f} s):")
        out += [f"    {st:9} {what:40} {label}  ({_size(nb)})"
                for st, what, label, nb, _s in by_worker]
    if rows:
        out.append("  used by the discovery of all inputs:")
        out += [f"    {st:9} {what:40} {label}  ({_size(nb)}, {sec:.2f} s)"
                for st, what, label, nb, sec in rows]
    if not rows and not by_worker:
        out.append("  nothing to index in these inputs (their discovery is quick without)")
    files = store.files()
    total = sum(f.stat().st_size for f in files)
    out.append(f"  the store holds {len(files)} indexes, {_size(total)} of its "
               f"{_size(store.max_bytes)} budget")
    for e in ctx.report:
        if e.code.startswith("index-"):
            out.append(f"  {e.line()}")
    sys.stdout.write("\n".join(out) + "\n")
    code = _status(ctx)
    if code == EXIT_NOTHING:
        print("pvfs: nothing recognised in the inputs", file=sys.stderr)
    return code


def _mountinfo() -> Iterator[tuple[str, str]]:
    """(mount point, file system type) of each line of /proc/self/mountinfo (proc(5): the
    mount point is field 5, octal-escaped; the type follows the " - " separator).  Raises
    OSError when the file cannot be read."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            yield (re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), left.split()[4]),
                   right.split(" ", 1)[0])


def _pvfs_mounts() -> list[str]:
    """Mount points of pvfs mounts (fstype fuse.pvfs in /proc/self/mountinfo)."""
    try:
        return [mp for mp, fstype in _mountinfo() if fstype == "fuse.pvfs"]
    except OSError:
        return []


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def copy_targets(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(TREE_PATH, DEST)`` pairs, every DEST checked before anything is read: a new
    file (or an existing one with --force) in an existing directory, not an input, not
    inside an input directory or a pvfs mount."""
    paths = [p.strip("/") for p in args.paths]
    for p in paths:
        if not p:
            raise UsageError("--path: empty tree path")
    to = args.dest
    if len(paths) > 1 or os.path.isdir(to):
        if not os.path.isdir(to):
            raise UsageError(f"--to {to}: not a directory (several --path need one)")
        names = [p.rsplit("/", 1)[-1] for p in paths]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise UsageError(f"--path: two files named {dup} would go to the same "
                             f"{os.path.join(to, dup)}")
        pairs = [(p, os.path.join(to, n)) for p, n in zip(paths, names, strict=True)]
    else:
        pairs = [(paths[0], to)]
    keep_going = args.keep_going or args.bad == "zero"
    inputs = [os.path.realpath(i) for i in args.inputs if not is_nbd_uri(i)]
    mounts = [os.path.realpath(m) for m in _pvfs_mounts()]
    for _, dest in pairs:
        parent = os.path.dirname(os.path.abspath(dest))
        if not os.path.isdir(parent):
            raise UsageError(f"--to {dest}: directory {parent} does not exist")
        real = os.path.join(os.path.realpath(parent), os.path.basename(dest))
        for what in [dest] + ([dest + ".map"] if keep_going else []):
            if os.path.lexists(what):
                if not args.force:
                    raise UsageError(f"{what} exists (--force replaces it)")
                if not os.path.isfile(what) or os.path.islink(what):
                    raise UsageError(f"{what} exists and is not a regular file")
        for i in inputs:
            if i in (real, real + ".map") or (os.path.isdir(i) and _inside(real, i)):
                raise UsageError(f"--to {dest}: is an input or inside an input directory "
                                 f"({i}); inputs are never written")
        for m in mounts:
            if _inside(real, m):
                raise UsageError(f"--to {dest}: inside the pvfs mount {m}")
    return pairs


def _copy_ticker(progress: Progress, path: str, size: int) -> Callable[[int], None]:
    """The progress line of a copy: MiB done of the total, and the rate so far."""
    t0, total = time.monotonic(), max(1, size >> 20)

    def tick(done: int) -> None:
        rate = done / max(time.monotonic() - t0, 1e-6) / 1e6
        progress.update(f"{path}: {rate:.0f} MB/s", completed=done >> 20, total=total)

    return tick


def cmd_copy(args: argparse.Namespace) -> int:
    from .copyout import CopyDamage, Copier, CopyWriteError, mapfile_text
    from .nodes import File, GeneratedFile, resolve
    from .progress import Progress
    from .source import BytesSource

    check_values(args)
    pairs = copy_targets(args)
    keep_going = args.keep_going or args.bad == "zero"
    args.bad = "eio"  # every unreadable byte is met as one, then kept going or not here
    ctx = _discover(args)
    sources = []
    for path, dest in pairs:
        node = resolve(ctx.root, path)
        if node is None and not recognised(ctx):
            raise NothingRecognised("nothing recognised in the inputs; nothing copied")
        if node is None:
            raise UsageError(f"--path {path}: not in the tree (run 'pvfs scan' to see it)")
        if isinstance(node, File):
            sources.append((path, dest, node.source))
        elif isinstance(node, GeneratedFile):
            sources.append((path, dest, BytesSource(node.content(), label=path)))
        else:
            raise UsageError(f"--path {path}: not a regular file")
    code = EXIT_OK
    for path, dest, src in sources:
        for what in (dest, dest + ".map") if args.force else ():
            if keep_going or what == dest:
                try:
                    os.unlink(what)
                except FileNotFoundError:
                    pass
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise PvfsError(f"cannot create {dest}: {e.strerror}") from None
        try:
            with Progress(enabled=args.progress, delay=0.5, what=f"copy of {path}") as progress:
                res = Copier(src, fd, path, keep_going=keep_going,
                             tick=_copy_ticker(progress, path, src.size)).run()
        except CopyDamage as e:
            os.close(fd)
            os.unlink(dest)
            print(f"pvfs: error: {e}; {dest} removed (--keep-going copies the rest, "
                  "with zeros for these bytes and a mapfile)", file=sys.stderr)
            code = EXIT_DAMAGE
            continue
        except CopyWriteError as e:
            os.close(fd)
            os.unlink(dest)
            raise PvfsError(f"{dest}: {e}; removed") from None
        except BaseException:
            os.close(fd)
            os.unlink(dest)
            raise
        os.close(fd)
        line = (f"{path} -> {dest}: {_size(res.size)} in {res.seconds:.1f} s "
                f"({res.size / max(res.seconds, 1e-6) / 1e6:.0f} MB/s; "
                f"{_size(res.kernel_bytes)} copied in the kernel, "
                f"{_size(res.read_bytes)} read, {_size(res.hole_bytes)} of holes)")
        if res.bad:
            with open(dest + ".map", "x", encoding="ascii") as f:
                f.write(mapfile_text(res.size, res.bad, "pvfs copy --keep-going ... "
                                     f"--path {path} --to {dest}"))
            line += (f"\n  damage: {len(res.bad)} unreadable ranges, {res.bad_bytes} bytes, "
                     f"copied as zeros; listed in {dest}.map: " + ", ".join(
                         f"{o:#x}+{n:#x}" for o, n in res.bad[:10])
                     + (" ..." if len(res.bad) > 10 else ""))
            code = EXIT_DAMAGE
        print(line)
    return code


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def _check_mountpoint(mountpoint: str, fuse_options: Sequence[str]) -> None:
    if not os.path.isdir(mountpoint):
        raise UsageError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise UsageError(f"{mountpoint} is already a mount point")
    nonempty = any("nonempty" in o.split(",") for o in fuse_options)
    try:
        busy = next(iter(os.scandir(mountpoint)), None) is not None
    except OSError as e:
        raise UsageError(f"mountpoint {mountpoint}: {e.strerror}") from None
    if busy and not nonempty:
        raise UsageError(f"mountpoint {mountpoint} is not empty (its files would be hidden; "
                         "-o nonempty mounts anyway)")


def cmd_mount(args: argparse.Namespace) -> int:
    mountpoint = args.mountpoint
    _check_mountpoint(mountpoint, args.fuse_options)
    check_values(args)
    if not os.path.exists("/dev/fuse"):
        raise PvfsError("/dev/fuse is missing: load the fuse module or run with --device /dev/fuse")
    t0 = time.perf_counter()
    # pyfuse3 and trio (imported only to mount), before discovery: with the rest of
    # start-up's imports they are frozen out of the collector's work (pvfs/startup.py)
    from .startup import light_metadata

    with light_metadata():  # pyfuse3 reads its version at import (pvfs/startup.py)
        from mountd.daemon import serve

    args.mountd_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    ctx = _discover(args)
    args.discovered_in = time.perf_counter() - t0
    code = _status(ctx)
    if code == EXIT_NOTHING:
        raise NothingRecognised("nothing recognised in the inputs; not mounted "
                                "(run 'pvfs scan' to see what was looked at)")
    # libfuse 3 has no 'nonempty' (it always allows it): our check above is the guard.
    args.fuse_options = [",".join(p for p in o.split(",") if p.strip() != "nonempty")
                         for o in args.fuse_options]
    args.fuse_options = [o for o in args.fuse_options if o]
    from .proxmox.view import guest_ids

    summary = (f"pvfs: {len(ctx.volumes)} volumes, {len(guest_ids(ctx.vms_root))} VMs, "
               f"{len(guest_ids(ctx.cts_root))} containers; damage: {damage_summary(ctx)} "
               f"(see {mountpoint}/report.json)")
    if args.foreground:
        print(summary, file=sys.stderr)
        serve(ctx.root, mountpoint, ctx.report, args.fuse_options, threads=args.threads,
              readahead_kb=args.readahead_kb)
        return code
    _daemonize(ctx, mountpoint, args, summary)
    return code


class NothingRecognised(PvfsError):
    pass


def _daemonize(ctx: Context, mountpoint: str, args: argparse.Namespace, summary: str) -> None:
    """Fork; the child mounts and serves, the parent returns once the mount is live."""
    from mountd.daemon import serve

    rfd, wfd = os.pipe()
    t_fork = time.perf_counter()
    pid = os.fork()
    if pid:
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            msg = r.read().decode(errors="replace")
        if msg.startswith("OK"):
            logging.getLogger("pvfs.cli").debug(
                "start-up: discovery %.3f s, mount daemon imports (pyfuse3, trio) %.3f s, "
                "fork to FUSE mount %.3f s (%s)", getattr(args, "discovered_in", 0.0),
                getattr(args, "mountd_import", 0.0), time.perf_counter() - t_fork,
                msg[2:].strip() or "-")
            print(summary, file=sys.stderr)
            return
        os.waitpid(pid, 0)
        raise PvfsError(msg.strip() or "the mount daemon died before mounting")
    # child
    os.close(rfd)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    log_fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if args.log else null
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    if args.log:
        logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, force=True,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def ready() -> None:
        os.write(wfd, f"OK daemon: fork to mounted {time.perf_counter() - t_fork:.3f} s\n"
                 .encode())
        os.close(wfd)

    code = 0
    try:
        serve(ctx.root, mountpoint, ctx.report, args.fuse_options, ready=ready,
              threads=args.threads, readahead_kb=args.readahead_kb)
    except BaseException as e:  # noqa: BLE001
        try:  # the parent prints it after "pvfs: error: "
            os.write(wfd, f"cannot mount {mountpoint}: {e}\n".encode())
            os.close(wfd)
        except OSError:
            pass
        code = 1
    os._exit(code)


def _mounted(path: str) -> bool:
    """Whether ``path`` is a mount point (also when its FUSE daemon is gone: ENOTCONN)."""
    real = os.path.realpath(path)
    try:
        return any(mp == real for mp, _fstype in _mountinfo())
    except OSError:
        return os.path.ismount(path)


def cmd_umount(args: argparse.Namespace) -> int:
    """guestunmount's exit codes: 0 done, 1 error, 2 still busy after the retries, 3 not mounted."""
    mp = args.mountpoint
    if not os.path.lexists(mp):
        print(f"pvfs: {mp}: no such directory", file=sys.stderr)
        return UMOUNT_ERROR
    if not _mounted(mp):
        print(f"pvfs: {mp} is not mounted", file=sys.stderr)
        return UMOUNT_NOT_MOUNTED
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool:
        cmd = [tool, "-uz" if args.lazy else "-u", mp]
    else:
        cmd = ["umount", "-l", mp] if args.lazy else ["umount", mp]
    delay, last = 0.5, ""
    for attempt in range(args.retry + 1):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            print(f"pvfs: cannot run {cmd[0]}: {e.strerror}", file=sys.stderr)
            return UMOUNT_ERROR
        if r.returncode == 0 or not _mounted(mp):
            return UMOUNT_OK
        last = (r.stderr or r.stdout).strip().splitlines()[-1:] or [f"exit {r.returncode}"]
        last = last[0]
        if "busy" not in last.lower():
            print(f"pvfs: cannot unmount {mp}: {last}", file=sys.stderr)
            return UMOUNT_ERROR
        if attempt < args.retry:
            time.sleep(delay)
            delay *= 2
    print(f"pvfs: {mp} is busy (still in use after {args.retry} retries; close what uses it, "
          f"or 'pvfs umount --lazy {mp}'): {last}", file=sys.stderr)
    return UMOUNT_BUSY


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="pvfs: %(levelname)s: %(message)s")
    try:
        return {"scan": cmd_scan, "mount": cmd_mount, "index": cmd_index,
                "copy": cmd_copy, "umount": cmd_umount}[args.command](args)
    except UsageError as e:
        if args.debug:
            raise
        print(f"pvfs: usage error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except NothingRecognised as e:
        print(f"pvfs: {e}", file=sys.stderr)
        return EXIT_NOTHING
    except PvfsError as e:
        if args.debug:
            raise
        print(f"pvfs: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("pvfs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:  # a bug: still one line, unless --debug
        if args.debug:
            raise
        print(f"pvfs: internal error: {type(e).__name__}: {e} (run with --debug for details)",
              file=sys.stderr)
        return EXIT_ERROR


def run() -> NoReturn:
    """The ``pvfs`` command's entry point (the console script, ``python -m pvfs``):
    :func:`main`, then out without the interpreter's teardown.

    With numpy, trio and a backend's modules loaded, tearing the interpreter down took
    70-90 ms after the work was done (measured: a process importing them exits in 0.25 s
    with ``sys.exit``, 0.18 s with ``os._exit``), on every ``pvfs scan`` and on the way
    back from ``pvfs mount``.  Nothing of pvfs needs it (temporary files are removed
    where they are made, indexes are renamed into place when written, the mount daemon
    is its own process): output is flushed, logging shut down, and the process exits.
    After worker processes (multiprocessing's finalizers) or with another thread still
    running, the normal exit is kept."""
    import threading

    from .startup import begin

    begin()  # the collector waits until start-up's imports are done (pvfs/startup.py)
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):  # the reader went away: nothing left to say
        pass
    if "multiprocessing" in sys.modules or threading.active_count() > 1:
        sys.exit(code)
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    run()

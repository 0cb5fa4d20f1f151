"""The ``pvfs`` command: ``scan``, ``mount`` and ``umount``.

Exit codes: 0 success; 1 fatal error (one line on stderr); 2 usage error;
3 ``scan`` finished but the damage report has errors.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys

from . import __version__
from .backend import load_backends
from .errors import PvfsError, UsageError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DAMAGE = 0, 1, 2, 3


def _add_common(p):
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR",
                   help="drive images, image files, block devices or directories")
    p.add_argument("--bad", choices=("eio", "zero"), default=None,
                   help="bytes that no copy, parity or fallback can produce (bad sectors, "
                        "missing members, chunks or objects, corrupt clusters): 'eio' (the "
                        "default) fails the read, 'zero' reads them as zeros; either way they "
                        "are in the damage report")
    p.add_argument("--mapfile", action="append", default=[], metavar="[IMAGE=]MAPFILE",
                   help="GNU ddrescue mapfile for an image (default: IMAGE.map beside it)")
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="always show progress on stderr")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="never show progress")
    seen = set()
    for b in load_backends():
        for flag, kw in getattr(b, "cli_options", []):
            if flag in seen:
                continue
            seen.add(flag)
            p.add_argument(flag, **kw)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="pvfs",
        description="Read-only recovery of Proxmox VE storage from drive images.")
    parser.add_argument("--version", action="version", version=f"pvfs {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    scan = sub.add_parser("scan", help="discover and report, without mounting")
    _add_common(scan)
    scan.add_argument("--json", action="store_true", help="print the report as JSON")

    mount = sub.add_parser("mount", help="mount everything found, read-only")
    _add_common(mount)
    mount.add_argument("-f", "--foreground", action="store_true",
                       help="stay in the foreground (Ctrl-C unmounts)")
    mount.add_argument("-o", dest="fuse_options", action="append", default=[],
                       metavar="OPT[,OPT...]", help="FUSE mount options, e.g. allow_other")
    mount.add_argument("--log", metavar="FILE", help="daemon log file (default: none)")
    mount.add_argument("--threads", type=int, default=8, help="worker threads for reads")
    mount.add_argument("--readahead-kb", type=int, default=4096,
                       help="kernel read-ahead for the mount in KiB (root only; 0 leaves it)")

    umount = sub.add_parser("umount", help="unmount a pvfs mount")
    umount.add_argument("mountpoint")
    return parser


def _options(args):
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
        if not os.path.isfile(mf):
            raise UsageError(f"mapfile {mf} does not exist")
        mapfiles[os.path.abspath(img)] = mf
    backend_options = {}
    for b in load_backends():
        for flag, _ in getattr(b, "cli_options", []):
            dest = flag.lstrip("-").replace("-", "_")
            value = getattr(args, dest, None)
            if value is not None:
                backend_options[dest] = value
    return Options(bad=args.bad, mapfiles=mapfiles, backend_options=backend_options,
                   progress=args.progress)


def _discover(args):
    from .discover import discover
    from .progress import Progress

    for i in args.inputs:
        if not os.path.exists(i):
            raise UsageError(f"{i}: no such file or directory")
    opts = _options(args)
    with Progress(enabled=opts.progress) as progress:
        return discover(args.inputs, opts, progress=progress)


def cmd_scan(args):
    from .report import report_json, report_text

    ctx = _discover(args)
    sys.stdout.write(report_json(ctx) if args.json else report_text(ctx))
    return EXIT_DAMAGE if ctx.report.count("error") else EXIT_OK


def cmd_mount(args):
    if len(args.inputs) < 2:
        raise UsageError("mount needs at least one input and a mountpoint")
    *inputs, mountpoint = args.inputs
    args.inputs = inputs
    if not os.path.isdir(mountpoint):
        raise UsageError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise UsageError(f"{mountpoint} is already a mount point")
    if not os.path.exists("/dev/fuse"):
        raise PvfsError("/dev/fuse is missing: load the fuse module or run with --device /dev/fuse")
    ctx = _discover(args)
    errors = ctx.report.count("error")
    summary = (f"pvfs: {len(ctx.volumes)} volumes, {len(ctx.vms_root.children())} VMs, "
               f"{len(ctx.cts_root.children())} containers; damage: {errors} errors, "
               f"{ctx.report.count('warning')} warnings (see {mountpoint}/report.json)")
    from mountd.daemon import serve

    if args.foreground:
        print(summary, file=sys.stderr)
        serve(ctx.root, mountpoint, ctx.report, args.fuse_options, threads=args.threads,
              readahead_kb=args.readahead_kb)
        return EXIT_OK
    return _daemonize(ctx, mountpoint, args, summary)


def _daemonize(ctx, mountpoint, args, summary):
    """Fork; the child mounts and serves, the parent returns once the mount is live."""
    from mountd.daemon import serve

    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            msg = r.read().decode(errors="replace")
        if msg.startswith("OK"):
            print(summary, file=sys.stderr)
            return EXIT_OK
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

    def ready():
        os.write(wfd, b"OK\n")
        os.close(wfd)

    code = 0
    try:
        serve(ctx.root, mountpoint, ctx.report, args.fuse_options, ready=ready,
              threads=args.threads, readahead_kb=args.readahead_kb)
    except BaseException as e:  # noqa: BLE001
        try:
            os.write(wfd, f"pvfs: error: cannot mount {mountpoint}: {e}\n".encode())
            os.close(wfd)
        except OSError:
            pass
        code = 1
    os._exit(code)


def cmd_umount(args):
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u", args.mountpoint] if tool else ["umount", args.mountpoint]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise PvfsError(f"cannot unmount {args.mountpoint}: {r.stderr.strip() or r.returncode}")
    return EXIT_OK


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="pvfs: %(levelname)s: %(message)s")
    try:
        return {"scan": cmd_scan, "mount": cmd_mount, "umount": cmd_umount}[args.command](args)
    except UsageError as e:
        if args.debug:
            raise
        print(f"pvfs: usage error: {e}", file=sys.stderr)
        return EXIT_USAGE
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


if __name__ == "__main__":
    sys.exit(main())

"""Start-up cost of the ``pvfs`` command (issue 15): backends are declared light
(``backends/<fmt>/__init__.py``: ``SPECS``) and their code is imported only when a sniff
says "maybe" or a hook is called.  Guarded by what a fresh interpreter has imported, not
by timing (benchmarks/bench_startup.py measures the time); and by the sniffs' contract:
a sniff that says no means the backend's own probe says no and reports nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from mountutil import needs_fuse, pvfs_mounted
from hypothesis import strategies as st

from pvfs.backend import BackendSpec, LazyBackend, load_backends
from pvfs.discover import Context, Options, Volume
from pvfs.source import PatchedSource, ZeroSource

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

#: Modules a start-up must not pay for unless a format needs them.
HEAVY = ("numpy", "construct", "crc32c", "zstandard", "lz4", "trio", "pyfuse3",
         "multiprocessing", "concurrent.futures", "mountd.daemon")


def _modules_after(code: str) -> dict:
    """``sys.modules`` of a fresh interpreter after ``code``: the heavy ones and the
    backend packages whose code (a module below the package) was imported."""
    probe = code + """
import json, sys
print(json.dumps({"heavy": [m for m in HEAVY if m in sys.modules],
                  "code": sorted({m.split(".")[1] for m in sys.modules
                                  if m.startswith("backends.") and m.count(".") >= 2})}))
"""
    r = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n" + probe], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_parsing_the_command_line_imports_no_backend_code():
    got = _modules_after("import pvfs.cli\npvfs.cli.build_parser().parse_args(['scan', 'x'])")
    assert got == {"heavy": [], "code": []}


def test_scan_of_a_qcow2_imports_only_the_formats_it_meets(tmp_path):
    """examples/vm-100-disk-0.qcow2: a GPT disk with an ext4 root (SHA256SUMS)."""
    got = _modules_after(f"""
import contextlib, io, pvfs.cli
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = pvfs.cli.main(["scan", "--index-dir", "none", {str(EXAMPLES / "vm-100-disk-0.qcow2")!r}])
assert code == 0, code
assert "VM 100: 2 guest filesystems, all intact (ext4)" in out.getvalue(), out.getvalue()
""")
    # the qcow2 reader, the GPT, ext4 (and the FAT probe: a protective MBR ends in 55AA)
    assert set(got["code"]) <= {"qcow2", "parttable", "ext4", "fat"}, got
    assert {"qcow2", "parttable", "ext4"} <= set(got["code"]), got
    for absent in ("trio", "pyfuse3", "multiprocessing", "mountd.daemon"):
        assert absent not in got["heavy"], got


def test_every_declaration_agrees_with_its_code():
    """LazyBackend.load checks name, roles, grouping, options and optional hooks."""
    backends = load_backends()
    assert all(isinstance(b, LazyBackend) and isinstance(b.spec, BackendSpec)
               for b in backends)
    for b in backends:
        impl = b.load()
        assert impl.name == b.name and b.loaded


def test_light_constants_agree_with_the_structures():
    """The light declarations repeat a few constants of modules they must not import."""
    import backends.btrfs as btrfs
    import backends.ceph as ceph
    import backends.drbd as drbd
    import backends.ext4 as ext4
    import backends.fat as fat
    import backends.lvm as lvm
    import backends.ntfs as ntfs
    import backends.parttable as pt
    import backends.pbs as pbs
    import backends.qcow2 as qcow2
    import backends.vmdk as vmdk
    import backends.vzdump as vzdump
    import backends.zfs as zfs
    from backends.btrfs import structs as BS
    from backends.ceph import label as CL
    from backends.drbd import meta as DM
    from backends.drbd import structs as DS
    from backends.ext4 import recovery as ER
    from backends.ext4 import structs as ES
    from backends.fat import fat as FF
    from backends.fat import structs as FS
    from backends.lvm import label as LL
    from backends.lvm import structs as LS
    from backends.ntfs import ondisk as NO
    from backends.parttable import tables as PT
    from backends.pbs import structs as PS
    from backends.qcow2 import structs as QS
    from backends.vmdk import descriptor as VD
    from backends.vmdk import structs as VS
    from backends.vzdump import structs as ZS
    from backends.zfs import structs as S

    assert (zfs.VDEV_LABEL_SIZE, zfs.VDEV_LABELS, zfs.VDEV_PHYS_OFFSET, zfs.VDEV_PHYS_SIZE,
            zfs.ZIO_ECK_SIZE, zfs.ZEC_MAGIC) == (S.VDEV_LABEL_SIZE, S.VDEV_LABELS,
                                                 S.VDEV_PHYS_OFFSET, S.VDEV_PHYS_SIZE,
                                                 S.ZIO_ECK_SIZE, S.ZEC_MAGIC)
    assert btrfs.BTRFS_MAGIC == BS.BTRFS_MAGIC and BS.sb_offset(0) == btrfs.PRIMARY
    assert BS.sb_offset(1) == btrfs.MIRROR_1 and BS.SUPER_INFO_SIZE == 4096
    assert ceph.LABEL_MAGIC == CL.LABEL_MAGIC
    assert drbd.MAGICS == (DS.DRBD_MD_MAGIC_08, DS.DRBD_MD_MAGIC_84_UNCLEAN, DS.DRBD_MD_MAGIC_09)
    assert (drbd.MAGIC_OFFSET, drbd.MIN_DEVICE) == (DS.MAGIC_OFFSET, DM.MIN_DEVICE)
    assert (ext4.SUPERBLOCK_OFFSET, ext4.SUPERBLOCK_SIZE) == (ES.SUPERBLOCK_OFFSET,
                                                              ES.SUPERBLOCK_SIZE)
    assert ext4.PROBE_BLOCK_SIZES == ER.PROBE_BLOCK_SIZES
    assert list(ext4.group1_backups(1 << 40)) == [
        off for g, _bs, off in ER.backup_candidates(1 << 40, max_group=1,
                                                    block_sizes=ER.PROBE_BLOCK_SIZES)]
    assert fat.SECTOR_SIGNATURE == FS.SECTOR_SIGNATURE and fat.EXFAT_NAME == FS.EXFAT_NAME
    assert fat.BACKUP_BOOT_SECTOR == FF.BACKUP_BOOT_SECTOR
    assert (lvm.SECTOR_SIZE, lvm.LABEL_SCAN_SECTORS, lvm.LABEL_ID, lvm.FMTT_MAGIC) == (
        LS.SECTOR_SIZE, LS.LABEL_SCAN_SECTORS, LS.LABEL_ID, LS.FMTT_MAGIC)
    assert LL.DEFAULT_MDA_OFFSET == lvm.DEFAULT_MDA_OFFSET
    assert NO.BootSector.oem_id.subcon.value == ntfs.OEM_ID
    assert pt.GPT_PROBE_SECTOR_SIZES == PT.GPT_PROBE_SECTOR_SIZES
    assert pbs.PROXMOX_CATALOG_FILE_MAGIC_1_0 == PS.PROXMOX_CATALOG_FILE_MAGIC_1_0
    assert set(pbs.STREAM_START_TYPES) == {PS.PXAR_ENTRY, PS.PXAR_ENTRY_V1,
                                           PS.PXAR_FORMAT_VERSION, PS.PXAR_PAYLOAD_START_MARKER}
    assert qcow2.QCOW_MAGIC == QS.QCOW_MAGIC
    assert (vmdk.SPARSE_MAGIC, vmdk.OTHER_MAGICS) == (VS.SPARSE_MAGIC,
                                                      (VS.COWD_MAGIC, VS.SESPARSE_MAGIC))
    assert vmdk.MAX_DESCRIPTOR == VD.MAX_DESCRIPTOR
    assert vzdump.VMA_MAGIC == ZS.VMA_MAGIC
    assert vzdump.CODEC_MAGICS == (ZS.ZSTD_MAGIC, ZS.LZOP_MAGIC, ZS.GZIP_MAGIC)


# -- the sniffs' contract ---------------------------------------------------------------
def _tar_header() -> bytes:
    import tarfile

    info = tarfile.TarInfo("./etc/hostname")
    info.size = 4
    return info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict")[:512]


def _lvm_label() -> bytes:
    return b"LABELONE" + bytes(8) + bytes(4) + (32).to_bytes(4, "little") + b"LVM2 001"


ZEC = (0x0210DA7AB10C7A11).to_bytes(8, "little")
#: Where the sniffs (and the probes) look, and what they look for: ``(offset of a volume
#: of size n, bytes)``.  Planted in zeroed volumes of several sizes, with random bytes
#: after them; a sniff must never say no where the probe says yes or reports something.
LANDMARKS = [
    (lambda n: 0, b"XFSB"), (lambda n: 0, b"QFI\xfb"), (lambda n: 0, b"KDMV"),
    (lambda n: 0, b"COWD"), (lambda n: 0, b"# Disk DescriptorFile\ncreateType=\"flat\"\n"),
    (lambda n: 0, b"VMA\0"), (lambda n: 0, b"\x28\xb5\x2f\xfd"), (lambda n: 0, b"\x1f\x8b"),
    (lambda n: 0, b"\x89LZO\x00\r\n\x1a\n"), (lambda n: 0, _tar_header()),
    (lambda n: 0, b"bluestore block device\n"),
    (lambda n: 0, bytes([145, 253, 96, 249, 196, 103, 88, 213])),
    (lambda n: 0, (0xD5956474E588ACEF).to_bytes(8, "little") + (56).to_bytes(8, "little")),
    (lambda n: 0, b'contents = "Text Format Volume Group"\n'),
    (lambda n: 512, _lvm_label()), (lambda n: 1536, _lvm_label()),
    (lambda n: 4096 + 4, b"\x20\x4c\x56\x4d\x32\x20\x78\x5b\x35\x41\x25\x72\x30\x4e\x2a\x3e"),
    (lambda n: 3, b"NTFS    "), (lambda n: n - 512 + 3, b"NTFS    "),
    (lambda n: 3, b"EXFAT   "), (lambda n: 12 * 512 + 3, b"EXFAT   "),
    (lambda n: 510, b"\x55\xaa"), (lambda n: 6 * 512 + 510, b"\x55\xaa"),
    (lambda n: 512, b"EFI PART"), (lambda n: n - 512, b"EFI PART"),
    (lambda n: 1024 + 0x38, b"\x53\xef"), (lambda n: 8193 * 1024 + 0x38, b"\x53\xef"),
    (lambda n: 0x10040, b"_BHRfS_M"), (lambda n: (64 << 20) + 0x40, b"_BHRfS_M"),
    (lambda n: ((n - 4096) & ~4095) + 60, b"\x83\x74\x02\x6b"),
    (lambda n: 60, b"\x83\x74\x02\x6d"),
    (lambda n: 128 * 1024 - 40, ZEC),
    (lambda n: n - n % (256 * 1024) - 128 * 1024 - 40, ZEC),
]
SIZES = [600, 4096, 70 * 1024, 1 << 20, (1 << 20) + 512, 9 << 20, 65 << 20]


def _sniffing(role: str) -> list[LazyBackend]:
    return [b for b in load_backends() if b.spec.sniff is not None and b.accepts(role)]


NAMES = ["a.img", "d.qcow2", "x.vmdk", "vzdump-qemu-100-2024_01_02-03_04_05.vma.zst"]


def _check_sniffs(size: int, role: str, name: str, patches: dict[int, bytes]) -> int:
    """Every sniffing backend on one volume; returns how many sniffs said no."""
    src = PatchedSource(ZeroSource(size), {o: b[:size - o] for o, b in patches.items()
                                           if 0 <= o < size})
    said_no = 0
    for b in _sniffing(role):
        vol = Volume(src, f"storage/files/{name}", name, role)
        vol.file_name = name
        ctx = Context(Options())
        if b.spec.sniff(vol, ctx):
            continue
        said_no += 1
        try:
            score = b.load().probe(vol, ctx)
        except Exception as e:  # a probe that raises is reported: the sniff hid that
            raise AssertionError(f"{b.name}: sniff said no, probe raised {e!r}") from None
        assert not score, f"{b.name}: sniff said no, probe says {score} ({size}, {patches})"
        assert not ctx.report.entries, f"{b.name}: sniff said no, probe reported"
    return said_no


def test_a_sniff_that_says_no_means_the_probe_says_no():
    """Every landmark alone, in every size of volume and role (an input under several
    names): what the sniffs rule out, the probes rule out too."""
    said_no = 0
    for where, magic in LANDMARKS:
        for size in SIZES:
            for role, name in [("disk", "a.img"), ("partition", "a.img"), ("lv", "a.img"),
                               *(("input", n) for n in NAMES)]:
                said_no += _check_sniffs(size, role, name, {where(size): magic + bytes(64)})
    assert said_no > 1000  # the sniffs do rule volumes out


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(size=st.sampled_from(SIZES), role=st.sampled_from(["input", "disk", "lv"]),
       name=st.sampled_from(NAMES),
       planted=st.lists(st.tuples(st.sampled_from(LANDMARKS), st.binary(max_size=48)),
                        min_size=1, max_size=4))
def test_sniffs_with_several_landmarks_and_random_bytes(size, role, name, planted):
    _check_sniffs(size, role, name, {where(size): magic + tail for (where, magic), tail in planted})


def test_sniffs_say_yes_on_the_example_images():
    """The volumes of a real discovery (examples/: qcow2 disks with GPT and ext4): every
    backend whose probe claims a volume has a sniff that lets it through."""
    from pvfs.discover import discover

    ctx = discover([str(EXAMPLES / "vm-100-disk-0.qcow2"), str(EXAMPLES / "pve-dir")],
                   Options())
    claimed = 0
    for vol in ctx.volumes:
        for b in _sniffing(vol.role):
            score = b.load().probe(vol, Context(Options()))
            if score:
                claimed += 1
                assert b.spec.sniff(vol, Context(Options())), (b.name, vol.path)
    assert claimed >= 4  # qcow2 x2, gpt, ext4 ...


def test_a_package_on_the_old_contract_is_still_loaded(monkeypatch):
    """A backend package that exports ``BACKENDS`` instances (the contract before
    ``SPECS``) is not lost: it is loaded eagerly, with the declaration its class implies."""
    import types

    import pvfs.backend as pb
    from pvfs.backend import Backend

    class Old(Backend):
        name = "oldstyle"
        roles = ("input",)
        cli_options = [("--oldstyle-x", {"help": "x"})]

        def probe(self, volume, ctx):
            return 7.0

        def finish(self, ctx):
            pass

    mod = types.ModuleType("backends.zz_oldstyle")
    mod.BACKENDS = [Old()]
    monkeypatch.setitem(sys.modules, "backends.zz_oldstyle", mod)
    real = pb.pkgutil.iter_modules
    monkeypatch.setattr(pb.pkgutil, "iter_modules", lambda path: [
        *real(path), types.SimpleNamespace(name="zz_oldstyle", ispkg=True)])
    monkeypatch.setattr(pb, "_loaded", None)
    found = {b.name: b for b in load_backends()}
    assert {"zfs", "oldstyle"} <= set(found)
    old = found["oldstyle"]
    assert old.loaded and old.implements("finish") and not old.implements("probe_dir")
    assert old.cli_options == [("--oldstyle-x", {"help": "x"})] and old.accepts("input")
    vol = Volume(PatchedSource(ZeroSource(4096), {}), "storage/files/a", "a", "input")
    assert old.probe(vol, Context(Options())) == 7.0


# -- re-mounts: a long VG text is parsed once --------------------------------------------
def _vg_text(n_lvs: int) -> bytes:
    lvs = "".join(
        f'vm-{100 + i}-disk-0 {{\nid = "lv{i:06d}-xxxx-xxxx-xxxx-xxxx-xxxx-xxxxxx"\n'
        f'status = ["READ", "WRITE", "VISIBLE"]\nflags = []\ncreation_time = {1700000000 + i}\n'
        f'segment_count = 1\nsegment1 {{\nstart_extent = 0\nextent_count = 256\n'
        f'type = "thin"\nthin_pool = "data"\ntransaction_id = {i}\ndevice_id = {i + 1}\n}}\n}}\n'
        for i in range(n_lvs))
    return (f'pve {{\nid = "vgid-0000"\nseqno = 7\nformat = "lvm2"\nstatus = ["RESIZEABLE"]\n'
            f'extent_size = 8192\nmax_lv = 0\nmax_pv = 0\n# a comment \\u00e9\n'
            f'logical_volumes {{\n{lvs}}}\n}}\ncontents = "Text Format Volume Group"\n'
            f'version = 1\ncreation_time = 1.5e9\n').encode()


def test_a_long_vg_text_is_parsed_once_and_then_loaded_from_the_index_store(tmp_path):
    from backends.lvm.backend import CACHED_TEXT_MIN, config_parser
    from backends.lvm.config import parse_config

    text = _vg_text(400)
    assert len(text) >= CACHED_TEXT_MIN
    want = parse_config(text)
    assert len(want["pve"]["logical_volumes"]) == 400
    lvm = next(b for b in load_backends() if b.name == "lvm")
    states = []
    for _ in range(2):
        ctx = Context(Options(index_dir=str(tmp_path)))
        got = config_parser(lvm, ctx, "storage/lvm/pve")(text)
        assert got == want and list(got["pve"]["logical_volumes"]) == \
            list(want["pve"]["logical_volumes"])  # the same sections, in the same order
        states.append([e.state for e in ctx.indexes.log])
    assert states == [["built"], ["reused"]]
    # another text (one byte differs): its own entry, never the first one's
    other = text.replace(b"seqno = 7", b"seqno = 8")
    ctx = Context(Options(index_dir=str(tmp_path)))
    assert config_parser(lvm, ctx, "x")(other)["pve"]["seqno"] == 8
    assert [e.state for e in ctx.indexes.log] == ["built"]
    # short texts, or no store: parsed, nothing kept
    assert config_parser(lvm, Context(Options()), "x") is parse_config
    ctx = Context(Options(index_dir=str(tmp_path)))
    assert config_parser(lvm, ctx, "x")(_vg_text(3)) == parse_config(_vg_text(3))
    assert ctx.indexes.log == []


def test_numpy_starts_one_blas_thread_unless_told_otherwise():
    """OpenBLAS's thread pool cost 50-60 ms of every start-up that imports numpy."""
    code = "import pvfs, os; print(os.environ['OPENBLAS_NUM_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    for value, want in ((None, "1"), ("3", "3")):
        if value is not None:
            env["OPENBLAS_NUM_THREADS"] = value
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.stdout.strip() == want, r.stderr


@needs_fuse
def test_listing_the_root_of_a_new_mount_leaves_the_reports_for_later(tmp_path):
    """``ls`` of a new mount does not render README.txt, report.json and report.html
    (inode and type only, expired at once); a stat then gives each its true size, the
    size of the bytes a read returns."""
    with pvfs_mounted([EXAMPLES / "vm-100-disk-0.qcow2"], tmp_path / "m", "--index-dir",
                      "none") as mnt:
        assert {"README.txt", "report.json", "report.html", "vms"} <= set(os.listdir(mnt))
        with os.scandir(mnt) as it:  # type from the listing, the rest from getattr
            entries = {e.name: e for e in it}
        for name in ("README.txt", "report.json", "report.html"):
            assert entries[name].is_file(follow_symlinks=False)
            data = (Path(mnt) / name).read_bytes()
            assert len(data) > 100 and entries[name].stat().st_size == len(data)
            assert os.stat(Path(mnt) / name).st_size == len(data)
        assert json.loads((Path(mnt) / "report.json").read_bytes())["inputs"]


def test_the_command_exits_without_teardown_and_loses_no_output(capsys):
    """``python -m pvfs`` leaves through os._exit after flushing (pvfs.cli.run): its
    whole output arrives, the exit status is main's, and a reader that stops early
    (``| head``) gets no traceback."""
    from pvfs import cli

    img = str(EXAMPLES / "vm-100-disk-0.qcow2")
    assert cli.main(["scan", "--index-dir", "none", "--json", img]) == 0
    want = capsys.readouterr().out
    r = subprocess.run([sys.executable, "-m", "pvfs", "scan", "--index-dir", "none", "--json",
                        img], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == ""
    assert json.loads(r.stdout) == json.loads(want)  # (no times in it: the same document)
    r = subprocess.run([sys.executable, "-m", "pvfs", "scan", "--index-dir", "none", "x"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no such file or directory" in r.stderr
    p = subprocess.Popen([sys.executable, "-m", "pvfs", "scan", "--index-dir", "none", img],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()
    assert p.wait(timeout=120) == 0
    err = p.stderr.read()
    assert b"Traceback" not in err and b"Exception ignored" not in err, err


def test_discovery_of_a_zfs_pool_lists_no_dataset_directory(monkeypatch):
    """Looking for Proxmox storages, PBS datastores and Ceph OSDs in each dataset's root
    asks for a few names (``images``, ``dump``, ``.chunks``, ``type``); listing the root
    instead built a node for every entry (a dataset holding 10,000 files at its top: a
    dnode read each, on every mount).  zfs/fxmirror (zfs-fuse) holds no storage: its
    discovery must list no directory of the pool, and still find every dataset."""
    from conftest import require_fixture, unpack

    from pvfs.discover import discover
    from pvfs.nodes import Dir

    root = unpack(require_fixture("zfs", "images", "fxmirror.tar.xz"))
    images = sorted(str(p) for p in root.glob("*/*.img"))
    listed = []
    children = Dir.children

    def spy(self):
        if self.space is not None:
            listed.append(self)
        return children(self)

    monkeypatch.setattr(Dir, "children", spy)
    ctx = discover(images, Options(index_dir=None))
    assert listed == []
    zfs = ctx.storage_root.get("zfs")
    assert isinstance(zfs, Dir) and "fxmirror" in zfs.kept()
    monkeypatch.setattr(Dir, "children", children)
    assert len(zfs.kept()["fxmirror"].children()) > 3  # the dataset has entries to list


def _run_python(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


def test_the_command_freezes_what_start_up_imported():
    """pvfs/startup.py: the command (run) starts with the collector off; discovery
    begins with the start-up's imports frozen and the collector on; the qcow2 backend's
    code, imported early in discovery, is frozen too.  Used as a library (main()
    without run()), the collector is left alone."""
    scan = f"['scan', '--index-dir', 'none', {str(EXAMPLES / 'vm-100-disk-0.qcow2')!r}]"
    got = json.loads(_run_python(f"""
import contextlib, gc, io, json
import pvfs.cli, pvfs.startup
lib_before = gc.get_freeze_count()
with contextlib.redirect_stdout(io.StringIO()):
    assert pvfs.cli.main({scan}) == 0
lib = [gc.get_freeze_count() - lib_before, gc.isenabled()]
pvfs.startup.begin()
off = gc.isenabled()
with contextlib.redirect_stdout(io.StringIO()):
    assert pvfs.cli.main({scan} + ['--bad', 'eio']) == 0
print(json.dumps({{"lib": lib, "off": off, "on": gc.isenabled(),
                  "frozen": gc.get_freeze_count()}}))
"""))
    assert got["lib"] == [0, True]  # a library call changed nothing
    assert got["off"] is False and got["on"] is True
    assert got["frozen"] > 20_000  # argparse, pvfs, the backends' code: tens of thousands


def test_a_backend_loaded_late_in_discovery_is_not_frozen_with_its_garbage():
    """A freeze keeps the garbage that lies in the generations at that moment: after
    discovery allocated a lot (here 50,000 lists in cycles, then dropped), a backend's
    import is not frozen, and the collector still finds that garbage (frozen, it would
    be kept for the life of the mount)."""
    got = json.loads(_run_python("""
import gc, json
import pvfs.startup as s
s.begin()
s.discovery_begins()
with s.importing():
    import json.decoder  # early: frozen
early = gc.get_freeze_count()
junk = []
for i in range(50_000):
    a = []
    a.append(a)  # a cycle: only the collector frees it
    junk.append(a)
del junk, a
late_before = gc.get_freeze_count()
with s.importing():
    import colorsys  # late: not frozen
print(json.dumps({"early": early, "late": gc.get_freeze_count() - late_before,
                  "found": gc.collect()}))
"""))
    assert got["early"] > 0
    assert got["late"] == 0
    assert got["found"] >= 50_000  # the cycles were not frozen with the late import


def test_pyfuse3_and_crc32c_report_their_versions_without_importlib_metadata():
    """pvfs/startup.py light_metadata: the mount's import of pyfuse3 and pvfs.checksum's
    of crc32c leave importlib.metadata unimported (~10 ms of every mount), and the
    versions they read are the ones importlib.metadata gives."""
    from importlib import metadata

    got = json.loads(_run_python("""
import json, sys
from pvfs.startup import light_metadata
import pvfs.checksum
with light_metadata():
    import mountd.daemon
import crc32c, pyfuse3
print(json.dumps({"loaded": "importlib.metadata" in sys.modules,
                  "versions": [pyfuse3.__version__, crc32c.__version__]}))
"""))
    assert got == {"loaded": False,
                   "versions": [metadata.version("pyfuse3"), metadata.version("crc32c")]}


def test_the_version_stand_in_answers_as_importlib_metadata_does():
    """Any distribution: the same version string; an unknown one: the same exception
    type; any other name of the module: the real module's (imported then)."""
    from importlib import metadata

    got = json.loads(_run_python("""
import json, sys
from pvfs.startup import light_metadata
out = {}
with light_metadata():
    from importlib.metadata import PackageNotFoundError, version
    out["light"] = "distribution" not in vars(sys.modules["importlib.metadata"])
    out["versions"] = [version(n) for n in ("numpy", "trio", "construct", "hypothesis")]
    try:
        version("no-such-distribution-pvfs")
    except PackageNotFoundError as e:
        out["missing"] = isinstance(e, ModuleNotFoundError)
    from importlib.metadata import distribution  # another name: the real module
    out["dist"] = distribution("trio").metadata["Name"]
import importlib.metadata
out["real_after"] = hasattr(importlib.metadata, "entry_points")
print(json.dumps(out))
"""))
    assert got == {"light": True, "missing": True, "dist": "trio", "real_after": True,
                   "versions": [metadata.version(n)
                                for n in ("numpy", "trio", "construct", "hypothesis")]}


def test_scan_of_a_zfs_pool_imports_no_draid_or_replay_code():
    """zfs/fxmirror (a mirror, no intent log records): the dRAID layout and the log
    replay are imported only for a pool that has them (~2.5 ms of every start-up)."""
    from conftest import require_fixture, unpack

    root = unpack(require_fixture("zfs", "images", "fxmirror.tar.xz"))
    images = sorted(str(p) for p in root.glob("*/*.img"))
    r = subprocess.run([sys.executable, "-c", f"""
import contextlib, io, json, sys, pvfs.cli
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = pvfs.cli.main(["scan", "--index-dir", "none", *{images!r}])
print(json.dumps({{"code": code, "out": out.getvalue(),
                  "zfs": sorted(m for m in sys.modules if m.startswith("backends.zfs."))}}))
"""], cwd=ROOT, capture_output=True, text=True, timeout=120)
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["code"] == 0 and "fxmirror" in got["out"], got
    assert "backends.zfs.dsl" in got["zfs"], got  # the pool was read
    assert "backends.zfs.draid" not in got["zfs"] and "backends.zfs.zilreplay" not in got["zfs"]

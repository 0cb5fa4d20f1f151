"""The compiled loops of the ZFS read path: fletcher4 and lzjb.

Both are byte/word loops that numpy cannot express (fletcher4's four running sums, the
lzjb copy map).  They are written once, here, as Python over numpy arrays, and compiled
by numba in one of two ways:

* ahead of time (``numba.pycc``) into a small extension module, ``_zfs_kernels``, when
  pvfs is set up: ``scripts/setup.sh`` runs ``python -m backends.zfs.kernels``.  Loading
  it costs well under a millisecond and no numba import, so neither the first read after
  installation nor a fresh mount pays for numba (a mount that met lzjb used to spend
  ~0.5 s importing numba and loading its cache, holding the GIL while the first listing
  and the first reads were served);
* else just in time (``numba.njit(cache=True)``), as a fallback: at the first lzjb block
  of file data, after 16 MiB of lzjb metadata, or in the background of a forked mount
  daemon (see :func:`jit`); meanwhile fletcher4 runs on numpy and lzjb in Python.

The module records a hash of the kernels' source: one built from other code is ignored
(a stale build never decodes anything).  Measured (README.md): fletcher4 ~7 GB/s compiled
against ~1-2.4 GB/s with numpy.

References: OpenZFS module/zcommon/zfs_fletcher.c (fletcher_4_native: four 64-bit running
sums over 32-bit words), module/zfs/lzjb.c (lzjb_decompress: a copy map byte before every
8 items; a match is 6 bits of length - 3 and 10 bits of offset).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import inspect
import linecache
import os
import sys
import threading
import types

import numpy as np

from .edonr import _q512 as _edonr_q512

MODULE = "_zfs_kernels"
HERE = os.path.dirname(os.path.abspath(__file__))


def fletcher4_kernel(w):  # pragma: no cover - compiled; tests compare it with checksum.py
    """fletcher_4_native over native uint32 words: (a, b, c, d) modulo 2**64."""
    a = np.uint64(0)
    b = np.uint64(0)
    c = np.uint64(0)
    d = np.uint64(0)
    for i in range(w.shape[0]):
        a += np.uint64(w[i])
        b += a
        c += b
        d += c
    return a, b, c, d


def lzjb_kernel(src, dst):  # pragma: no cover - compiled; tests compare it with compress.py
    """lzjb_decompress into ``dst``: the bytes written, -1 when the input ends early,
    -2 for a match before the start of the block."""
    d_len = dst.shape[0]
    slen = src.shape[0]
    s = 0
    d = 0
    while d < d_len:
        if s >= slen:
            return -1
        copymap = np.int64(src[s])
        s += 1
        if copymap == 0 and d + 8 <= d_len and s + 8 <= slen:  # eight literals
            for k in range(8):
                dst[d + k] = src[s + k]
            d += 8
            s += 8
            continue
        for bit in range(8):
            if d >= d_len:
                break
            if (copymap >> bit) & 1:
                if s + 1 >= slen:
                    return -1
                b0 = np.int64(src[s])
                b1 = np.int64(src[s + 1])
                s += 2
                mlen = (b0 >> 2) + 3
                off = ((b0 << 8) | b1) & 0x3FF
                cpy = d - off
                if cpy < 0 or off == 0:
                    return -2
                if mlen > d_len - d:
                    mlen = d_len - d
                for k in range(mlen):  # may overlap (off < mlen): byte by byte
                    dst[d + k] = dst[cpy + k]
                d += mlen
            else:
                if s >= slen:
                    return -1
                dst[d] = src[s]
                d += 1
                s += 1
    return d


#: name -> (function, numba signature of the ahead-of-time export).  Edon-R's block loop
#: (edonr.py) is built here too: its just-in-time fallback loads numba into the mount
#: daemon, about 100 MB of resident memory (a mount of modern-rpool, whose cksum-edonr
#: dataset needs it, peaked at 313 MB; issue 13 item 6).
KERNELS = {
    "fletcher4": (fletcher4_kernel, "UniTuple(u8, 4)(u4[::1])"),
    "lzjb": (lzjb_kernel, "i8(u1[::1], u1[::1])"),
    "edonr_q512": (_edonr_q512, "void(u8[::1], u8[::1])"),
}


#: How the ahead-of-time build is compiled, part of :func:`source_hash`: a build made
#: otherwise (before the GIL was released) is ignored and set-up builds it again.
BUILD_FLAGS = "release_gil"


def _last_line(code) -> int:
    """The last source line of ``code`` and the code nested in it."""
    end = max((p[1] for p in code.co_positions() if p[1] is not None),
              default=code.co_firstlineno)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            end = max(end, _last_line(c))
    return end


def _source(fn) -> str:
    """``inspect.getsource(fn)`` of an undecorated function, from the lines its code
    covers instead of tokenizing its module: every ZFS start-up checks the build's hash,
    and tokenizing kernels.py and edonr.py took 5-8 ms of it (a test checks both agree;
    were they ever to differ, the build would only look stale: never a wrong kernel)."""
    code = fn.__code__
    lines = linecache.getlines(code.co_filename)
    text = "".join(lines[code.co_firstlineno - 1:_last_line(code)])
    return text if text.startswith(("def ", "    def ")) else inspect.getsource(fn)


def source_hash() -> int:
    """A 63-bit hash of the kernels' source, signatures and :data:`BUILD_FLAGS` (what a
    build must match)."""
    h = hashlib.sha256(BUILD_FLAGS.encode())
    for name, (fn, sig) in sorted(KERNELS.items()):
        h.update(f"{name}:{sig}:".encode() + _source(fn).encode())
    return int.from_bytes(h.digest()[:8], "little") >> 1


def cache_dir() -> str:
    """Where a build goes when the package directory is not writable."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pvfs", "kernels")


def _candidates():
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    for d in (HERE, cache_dir()):
        for suf in suffixes:
            yield os.path.join(d, MODULE + suf)


class _State:
    aot = None  # the module once loaded (or False: looked, none usable)
    jit = None  # namespace of jitted kernels (False: numba unavailable)
    py_lzjb_bytes = 0  # lzjb bytes decoded in Python so far (see jit())
    lock = threading.Lock()


def _load_from(path):
    spec = importlib.util.spec_from_file_location(MODULE, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def aot():
    """The ahead-of-time build, or None (not built, or built from other source)."""
    if _State.aot is None:
        found = False
        if not os.environ.get("PVFS_NO_AOT"):
            want = source_hash()
            for path in _candidates():
                if not os.path.exists(path):
                    continue
                try:
                    mod = _load_from(path)
                    if int(mod.source_hash()) == want:
                        found = mod
                        break
                except Exception:  # unloadable (other Python, broken file): ignored
                    continue
        _State.aot = found
    return _State.aot or None


class _Jit:
    def __init__(self, numba):
        opts = dict(cache=True, nogil=True, boundscheck=False)
        self.fletcher4 = numba.njit(**opts)(fletcher4_kernel)
        self.lzjb = numba.njit(**opts)(lzjb_kernel)
        # compile (or load from numba's cache) now, not in the first read
        self.fletcher4(np.zeros(4, dtype=np.uint32))
        self.lzjb(np.frombuffer(b"\x00" + b"x" * 8 + b"\x00" + b"y" * 8, dtype=np.uint8),
                  np.empty(16, dtype=np.uint8))


def _compile_jit():
    try:
        import numba

        _State.jit = _Jit(numba)
    except Exception:
        _State.jit = False


#: without the ahead-of-time build, compile once this much lzjb metadata went through
#: Python (numba costs ~1-2 s; Python decodes metadata at ~8 MB/s)
LZJB_COMPILE_AFTER = 16 * 1024 * 1024


def jit(bulk=False, wait=False):
    """The just-in-time kernels, compiled now when it pays (``bulk``: file or zvol data
    is being read, or ``LZJB_COMPILE_AFTER`` bytes of lzjb went through Python), else
    None.  Compiled in the calling thread, never in a background thread of a process that
    may still fork (a fork in the middle of ``import numba`` leaves the child a half
    imported module); ``pvfs mount``'s forked daemon compiles in the background at once
    (:func:`_after_fork_in_child`).  ``wait``: when another thread is compiling, wait for
    it instead of returning None."""
    if _State.jit is None and (bulk or _State.py_lzjb_bytes >= LZJB_COMPILE_AFTER):
        if os.environ.get("PVFS_NO_NUMBA"):
            return None
        if _State.lock.acquire(blocking=wait):
            try:
                if _State.jit is None:
                    _compile_jit()
            finally:
                _State.lock.release()
    return _State.jit or None


def get(bulk=False, wait=False):
    """The kernels to use now: the ahead-of-time build, else the JIT ones (see
    :func:`jit`), else None (numpy / Python)."""
    return aot() or jit(bulk, wait)


def _compile_locked():
    with _State.lock:
        if _State.jit is None:
            _compile_jit()


def _after_fork_in_child():
    """``pvfs mount`` forks its daemon after discovery and nothing forks after that: without
    the ahead-of-time build, the daemon compiles in a background thread at once when
    discovery met lzjb, so the JIT kernels are ready by the first reads."""
    _State.lock = threading.Lock()
    if (_State.jit is None and not _State.aot and _State.py_lzjb_bytes
            and not os.environ.get("PVFS_NO_NUMBA")):
        threading.Thread(target=_compile_locked, name="zfs-kernels-jit", daemon=True).start()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_BUILD_HASH = 0


def _built_hash():  # pragma: no cover - compiled: returns the hash the build was made of
    return _BUILD_HASH


def build(outdir: str | None = None, quiet: bool = True) -> str:
    """Compile the kernels ahead of time with ``numba.pycc`` (needs numba and a C
    compiler); returns the path of the module.  ``outdir``: default the package
    directory, or :func:`cache_dir` when that is not writable."""
    import warnings

    if outdir is None:
        outdir = HERE if os.access(HERE, os.W_OK) else cache_dir()
    os.makedirs(outdir, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba.pycc's pending deprecation
        import numba.pycc.compiler as pycc_compiler
        from numba.core.compiler import Flags
        from numba.pycc import CC

        class NoGilFlags(Flags):
            """numba.pycc has no ``nogil`` option: the exported wrappers are compiled with
            ``release_gil`` like ``njit(nogil=True)``, so a kernel call (arrays unboxed,
            no Python objects inside) lets the FUSE loop and other reads run beside it."""

            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                self.release_gil = True

        cc = CC(MODULE)
        cc.output_dir = outdir
        cc.verbose = not quiet
        for name, (fn, sig) in KERNELS.items():
            cc.export(name, sig)(fn)
        global _BUILD_HASH
        _BUILD_HASH = source_hash()  # numba freezes the global's value into the build
        cc.export("source_hash", "i8()")(_built_hash)
        saved = pycc_compiler.Flags
        pycc_compiler.Flags = NoGilFlags  # read by _ModuleCompiler._cull_exports
        try:
            cc.compile()
        finally:
            pycc_compiler.Flags = saved
    _State.aot = None  # look again
    for suf in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(outdir, MODULE + suf)
        if os.path.exists(path):
            return path
    raise RuntimeError(f"numba.pycc wrote no {MODULE} module in {outdir}")


def main(argv=None) -> int:
    """``python -m backends.zfs.kernels [OUTDIR]``: the set-up step."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        path = build(argv[0] if argv else None)
    except Exception as e:  # numba or the compiler missing: the JIT fallback remains
        print(f"pvfs: ZFS kernels not compiled ahead of time ({type(e).__name__}: {e}); "
              f"numba compiles them at first use instead", file=sys.stderr)
        return 1
    if not aot():
        print(f"pvfs: {path} was built but does not load", file=sys.stderr)
        return 1
    print(f"pvfs: ZFS kernels compiled to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

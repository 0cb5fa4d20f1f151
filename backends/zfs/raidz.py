"""RAIDZ column layout and parity reconstruction (P, Q, R over GF(2^8)).

References: OpenZFS module/zfs/vdev_raidz.c (vdev_raidz_map_alloc: column count,
first column, the "skip start" swap of columns 0 and 1 for single parity when bit
20 of the offset is set; vdev_raidz_generate_parity_p/pq/pqr: Q = 2*Q ^ D and
R = 4*R ^ D in data-column order with the polynomial 0x11d), vdev_raidz_math.c.
RAIDZ expansion (OpenZFS 2.3, vdev_raidz.c of zfs-2.3.9): vdev_raidz_init (the
``raidz_expand_txgs`` config array: the i-th newest expansion txg starts logical width
``physical - i``, one less while ``raidz_expanding`` is set), vdev_raidz_get_logical_width
(the width of the newest expansion at or before the block's BP_GET_BIRTH, else the
original width), vdev_raidz_map_alloc_expanded (rows of ``logical`` sectors; sector
``b`` of the vdev lies on child ``b % width`` at ``b / width`` with the physical width,
or the old one for rows not yet reflowed past the synced reflow offset, or in the
scratch copy in the boot area while the uberblock says RRSS_SCRATCH_VALID),
include/sys/uberblock_impl.h (ub_raidz_reflow_info: offset bits 0-54 in 512-byte
units, state bits 55-63).

Reconstruction is the general one: the erased data columns are the unknowns of
``k`` parity equations, solved by Gauss-Jordan elimination on a k x k matrix over
GF(2^8); every byte position is done at once with numpy lookup tables.
"""

from __future__ import annotations

import itertools

import numpy as np

from .errors import ZfsError

# -- GF(2^8), x^8 + x^4 + x^3 + x^2 + 1 ---------------------------------------------
_EXP = [0] * 512
_LOG = [0] * 256
_x = 1
for _i in range(255):
    _EXP[_i] = _x
    _LOG[_x] = _i
    _x <<= 1
    if _x & 0x100:
        _x ^= 0x11D
for _i in range(255, 512):
    _EXP[_i] = _EXP[_i - 255]


def gf_mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def gf_inv(a: int) -> int:
    if a == 0:
        raise ZeroDivisionError
    return _EXP[255 - _LOG[a]]


def gf_pow(g: int, n: int) -> int:
    if n == 0:
        return 1
    return _EXP[(_LOG[g] * n) % 255]


#: _MUL[a, b] = a * b in GF(2^8): exp[log a + log b], 0 when a or b is 0 (built with
#: numpy: the 65,025 Python steps it replaces took ~15 ms of every pvfs start)
_MUL = np.array(_EXP, dtype=np.uint8)[np.add.outer(_LOG, _LOG)]
_MUL[0, :] = 0
_MUL[:, 0] = 0

GENERATORS = (1, 2, 4)  # P, Q, R


def map_columns(offset: int, size: int, dcols: int, nparity: int, ashift: int):
    """vdev_raidz_map_alloc: ``[(devidx, child_offset, col_size)]``, parity columns first.

    ``offset`` is the DVA offset, ``size`` the block's psize.
    """
    if dcols <= nparity or nparity < 1 or nparity > 3:
        raise ZfsError(f"raidz: {dcols} children with {nparity} parity")
    unit = 1 << ashift
    b = offset >> ashift
    s = (size + unit - 1) >> ashift
    f = b % dcols
    o = (b // dcols) << ashift
    ndata = dcols - nparity
    q = s // ndata
    r = s - q * ndata
    bc = 0 if r == 0 else r + nparity
    if q == 0:
        acols = bc
        scols = min(dcols, -(-bc // (nparity + 1)) * (nparity + 1))
    else:
        acols = dcols
        scols = dcols
    cols = []
    for c in range(scols):
        col = f + c
        coff = o
        if col >= dcols:
            col -= dcols
            coff += unit
        if c >= acols:
            csize = 0
        elif c < bc:
            csize = (q + 1) << ashift
        else:
            csize = q << ashift
        cols.append([col, coff, csize])
    cols = cols[:acols]
    if nparity == 1 and (offset & (1 << 20)) and len(cols) >= 2:
        cols[0][0], cols[1][0] = cols[1][0], cols[0][0]
        cols[0][1], cols[1][1] = cols[1][1], cols[0][1]
    return [tuple(c) for c in cols]


def _as_array(b: bytes, n: int) -> np.ndarray:
    a = np.zeros(n, dtype=np.uint8)
    a[:len(b)] = np.frombuffer(b, dtype=np.uint8)
    return a


def reconstruct(parity: list, data: list, sizes: list, erased: list):
    """Fill ``data[j]`` for every ``j`` in ``erased`` from the parity columns.

    ``parity[i]`` is the bytes of P/Q/R or None; ``data[j]`` the bytes of data column
    ``j`` (None when erased); ``sizes[j]`` its size.  Returns the new data list or None
    when there are not enough parity columns.
    """
    k = len(erased)
    avail = [i for i, p in enumerate(parity) if p is not None]
    if k == 0:
        return data
    if k > len(avail):
        return None
    rows = avail[:k]
    nd = len(data)
    n = max(len(parity[i]) for i in rows)
    eset = set(erased)
    syn = []
    for r in rows:
        s = _as_array(parity[r], n)
        g = GENERATORS[r]
        for j in range(nd):
            if j in eset:
                continue
            coef = gf_pow(g, nd - 1 - j)
            d = _as_array(data[j], n)
            s ^= d if coef == 1 else _MUL[coef][d]
        syn.append(s)
    # A[r][m] = g_r ^ (nd - 1 - erased[m]); invert by Gauss-Jordan.
    a = [[gf_pow(GENERATORS[r], nd - 1 - e) for e in erased] for r in rows]
    inv = [[1 if i == j else 0 for j in range(k)] for i in range(k)]
    for col in range(k):
        piv = next((i for i in range(col, k) if a[i][col]), None)
        if piv is None:
            return None
        a[col], a[piv] = a[piv], a[col]
        inv[col], inv[piv] = inv[piv], inv[col]
        pinv = gf_inv(a[col][col])
        a[col] = [gf_mul(pinv, x) for x in a[col]]
        inv[col] = [gf_mul(pinv, x) for x in inv[col]]
        for i in range(k):
            if i != col and a[i][col]:
                fct = a[i][col]
                a[i] = [x ^ gf_mul(fct, y) for x, y in zip(a[i], a[col], strict=False)]
                inv[i] = [x ^ gf_mul(fct, y) for x, y in zip(inv[i], inv[col], strict=False)]
    out = list(data)
    for m, e in enumerate(erased):
        acc = np.zeros(n, dtype=np.uint8)
        for i in range(k):
            coef = inv[m][i]
            if coef:
                acc ^= syn[i] if coef == 1 else _MUL[coef][syn[i]]
        out[e] = acc[:sizes[e]].tobytes()
    return out


def parity_of(data: list, nparity: int, n: int):
    """Generate P (and Q, R) for tests: data columns padded to ``n`` bytes."""
    out = []
    nd = len(data)
    for r in range(nparity):
        acc = np.zeros(n, dtype=np.uint8)
        for j in range(nd):
            coef = gf_pow(GENERATORS[r], nd - 1 - j)
            d = _as_array(data[j], n)
            acc ^= d if coef == 1 else _MUL[coef][d]
        out.append(acc.tobytes())
    return out


def erasure_sets(ndata: int, missing: list, nparity_avail: int, limit: int = 4096):
    """Sets of data columns to treat as erased: the known-missing ones plus silently
    corrupt suspects, smallest first (combinatorial reconstruction)."""
    present = [j for j in range(ndata) if j not in missing]
    count = 0
    for extra in range(0, nparity_avail - len(missing) + 1):
        for combo in itertools.combinations(present, extra):
            if not missing and not combo:
                continue
            yield sorted(list(missing) + list(combo))
            count += 1
            if count >= limit:
                return


# -- RAIDZ expansion (OpenZFS 2.3) ----------------------------------------------------
VDEV_BOOT_SIZE = 7 << 19  # vdev_impl.h: the 3.5 MiB boot area, the reflow scratch space
RRSS_SCRATCH_VALID = 1  # uberblock_impl.h raidz_reflow_scratch_state_t


def reflow_info(word: int):
    """ub_raidz_reflow_info -> (state, synced offset in bytes)."""
    return (word >> 55) & 0x1FF, (word & ((1 << 55) - 1)) << 9


def logical_width(physical: int, expand_txgs, expanding: bool, birth: int) -> int:
    """vdev_raidz_init + vdev_raidz_get_logical_width: the data+parity width a block born
    (BP_GET_BIRTH: physical birth) at ``birth`` was written with."""
    txgs = list(expand_txgs or ())
    n = len(txgs)
    width = physical - n - (1 if expanding else 0)  # vd_original_width
    best = -1
    for i, txg in enumerate(txgs):
        # txgs[n - 1 - i] has width physical - i (newest expansion = widest)
        w = physical - (n - 1 - i) - (1 if expanding else 0)
        if txg <= birth and txg > best:
            best, width = txg, w
    return width


def map_expanded(offset: int, size: int, physical: int, logical: int, nparity: int,
                 ashift: int, synced: int | None = None, scratch: bool = False):
    """vdev_raidz_map_alloc_expanded as numpy arrays.

    Returns ``(dev, off, valid)``, each of shape (rows, cols): the child and byte offset
    on the child of every sector of the block's map (parity columns first, after the
    single-parity swap), and whether the sector exists (the last row is short when the
    data does not fill it).  Data sectors are column-major: data column ``dc`` holds the
    block's sectors ``dc * rows + row`` (fewer rows for columns past the big columns).
    ``synced``: the reflow offset of an expansion in progress (None: none/finished).
    With ``logical == physical`` and no reflow this is the classic map_columns layout.
    """
    if not 1 <= nparity <= 3 or logical <= nparity or logical > physical:
        raise ZfsError(f"raidz: logical width {logical} of {physical} children, "
                       f"{nparity} parity")
    s = (size + (1 << ashift) - 1) >> ashift
    ndata = logical - nparity
    q, r = divmod(s, ndata)
    bc = 0 if r == 0 else r + nparity
    tot = s + nparity * (q + (1 if r else 0))
    rows = -(-tot // logical)
    cols = min(tot, logical)
    b = (offset >> ashift) + np.arange(rows, dtype=np.int64) * logical  # row starts
    width = np.full(rows, physical, dtype=np.int64)
    use_scratch = np.zeros(rows, dtype=bool)
    if synced is not None:
        old = b + cols > (synced >> ashift)
        width[old] = physical - 1
        if scratch:
            use_scratch = ~old
    sec = b[:, None] + np.arange(cols, dtype=np.int64)[None, :]
    dev = sec % width[:, None]
    off = (sec // width[:, None]) << ashift
    if use_scratch.any():
        off[use_scratch] -= VDEV_BOOT_SIZE
    if nparity == 1 and cols > 1 and (offset & (1 << 20)):
        dev[:, [0, 1]] = dev[:, [1, 0]]
        off[:, [0, 1]] = off[:, [1, 0]]
    valid = np.ones((rows, cols), dtype=bool)
    if bc:
        valid[rows - 1, bc:] = False
    return dev, off, valid

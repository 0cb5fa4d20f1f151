#!/usr/bin/env bash
# Installs what pvfs needs on Debian 12 (run as root): system packages, then a
# virtual environment in .venv with pvfs and its test extras. Safe to re-run.
# --bench also installs what the benchmarks compare against (backends/*/deps-bench-apt.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
LISTS="backends/*/deps-apt.txt"
[ "${1:-}" = "--bench" ] && LISTS="$LISTS backends/*/deps-bench-apt.txt"

# python3-libnbd: the NBD client for nbd:// inputs (pvfs/nbd.py); nbdkit: its tests' server.
APT_PACKAGES=(python3 python3-venv python3-dev gcc pkg-config fuse3 libfuse3-dev
              qemu-utils fdisk e2fsprogs xz-utils zstd tar python3-libnbd nbdkit
              chromium chromium-driver)  # report.html is tested in a headless browser
# Packages that backends' tests and benchmarks need (backends/<fmt>/deps-apt.txt).
for f in $LISTS; do
    [ -f "$f" ] || continue
    while read -r pkg; do
        pkg=${pkg%%#*}; pkg=$(echo "$pkg" | xargs)
        [ -n "$pkg" ] && APT_PACKAGES+=("$pkg")
    done < "$f"
done

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

# libnbd's Python bindings exist only as Debian's python3-libnbd (PyPI has no maintained
# build of them). Link just its two files into the venv: --system-site-packages would
# bring every Debian Python package into the venv (and the venv's python may not be
# Debian's, whose site packages it would not see anyway).
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for f in $(dpkg -L python3-libnbd | grep -E '/dist-packages/(nbd\.py|libnbdmod\.[^/]*\.so)$'); do
    ln -sfn "$f" "$SITE/$(basename "$f")"
done
.venv/bin/python -c 'import nbd' 2>/dev/null ||
    echo "setup: warning: the venv's python cannot load python3-libnbd (another Python" \
         "version?); nbd:// inputs will not work" >&2

# Byte-compile the project now: an editable install writes no .pyc, and where
# PYTHONDONTWRITEBYTECODE is set every run compiled ~100 modules again (0.2-0.3 s of each
# 'pvfs mount' start).
.venv/bin/python -m compileall -q pvfs backends mountd >/dev/null || true

# ZFS's fletcher4 and lzjb loops, compiled ahead of time (backends/zfs/kernels.py) so no
# mount and no first read pays numba; without it they are compiled at first use instead.
.venv/bin/python -m backends.zfs.kernels || true

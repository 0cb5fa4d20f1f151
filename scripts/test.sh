#!/usr/bin/env bash
# Installs everything (scripts/setup.sh), lints (ruff) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "lint: ruff check (configured in pyproject.toml)"
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"

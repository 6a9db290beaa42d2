#!/usr/bin/env bash
# A user's first minutes: a fresh venv, `pip install .` with no extras, then `cloudmask demo` from
# another directory (the demo chips ship inside the wheel). Exits non-zero if any step fails.
# Usage: bash scripts/check-fresh-install.sh [WORKDIR]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
keep="${1:-}"
work="${1:-$(mktemp -d)}"
trap '[ -z "$keep" ] && rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet "$repo"
cd "$work"
"$work/venv/bin/cloudmask" demo --out "$work/out" --no-progress
n=$(ls "$work/out"/*_cloudmask.tif | wc -l)
echo "fresh install: $n masks in $work/out"
[ "$n" -eq 5 ]
if "$work/venv/bin/python" -c "import matplotlib" 2>/dev/null; then
  echo "matplotlib should not be installed without the viz extra" >&2; exit 1
fi

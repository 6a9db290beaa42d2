#!/usr/bin/env bash
# A user's first minutes: a fresh venv, `pip install .` with no extras, then, from another directory,
# the README's commands (`models`, `demo`, `run`, `evaluate`, `job run`, on the demo chips that ship
# inside the wheel) and the README's Python snippet (`python -c`). Exits non-zero if any step fails
# or prints a traceback.
# Usage: bash scripts/check-fresh-install.sh [WORKDIR]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
keep="${1:-}"
work="${1:-$(mktemp -d)}"
trap '[ -z "$keep" ] && rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet "$repo"
bin="$work/venv/bin"
cd "$work"

# step NAME COMMAND...: run it, show its output, fail on a non-zero exit or a traceback
step() {
  local name="$1"; shift
  echo "== $name"
  local log="$work/$name.log" rc=0
  "$@" >"$log" 2>&1 || rc=$?
  cat "$log"
  if [ "$rc" -ne 0 ]; then echo "fresh install: '$name' exited $rc" >&2; exit 1; fi
  if grep -q "Traceback (most recent call last)" "$log"; then
    echo "fresh install: '$name' printed a traceback" >&2; exit 1
  fi
}

demo_catalog="$("$bin/python" -c 'from cloudmask.sample import demo_catalog; print(demo_catalog())')"
step models "$bin/cloudmask" models
step demo "$bin/cloudmask" demo --out "$work/out" --no-progress
n=$(ls "$work/out"/*_cloudmask.tif | wc -l)
echo "fresh install: $n masks in $work/out"
[ "$n" -eq 5 ]
step run "$bin/cloudmask" run --stac "$demo_catalog" --limit 2 --out "$work/run" --no-progress
step evaluate "$bin/cloudmask" evaluate "$work/out" "$(dirname "$demo_catalog")" --boundary 2
cat >"$work/job.toml" <<EOF
stac = "$demo_catalog"
output = "job"
limit = 2
EOF
step job "$bin/cloudmask" job run "$work/job.toml"
[ "$(ls "$work/job"/*_cloudmask.tif | wc -l)" -eq 2 ]
# the README's Python snippet: the first ```python block after "In Python / Jupyter"
"$bin/python" - "$repo/README.md" >"$work/snippet.py" <<'EOF'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
print(re.search(r"In Python / Jupyter.*?```python\n(.*?)```", text, re.S).group(1))
EOF
step snippet "$bin/python" -c "$(cat "$work/snippet.py")"
if "$bin/python" -c "import matplotlib" 2>/dev/null; then
  echo "matplotlib should not be installed without the viz extra" >&2; exit 1
fi
echo "fresh install: every step ran without a traceback"

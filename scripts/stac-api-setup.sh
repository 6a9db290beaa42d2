#!/usr/bin/env bash
# Install what the test STAC API (stac-fastapi-pgstac over PostgreSQL + pgstac) needs.
#
#   . .venv/bin/activate && scripts/stac-api-setup.sh
#
# Idempotent: a second run only checks (and stops STAC API test servers that a killed test run left). Needs Debian/Ubuntu apt (as root, or via sudo) for
#   postgresql + postgresql-<ver>-postgis-3, and pip into the *active* Python environment for
#   stac-fastapi-pgstac, pypgstac[psycopg] and uvicorn.
# Environment:
#   CLOUDMASK_SKIP_APT=1   do not touch apt (only Python packages)
#   PYTHON=...             interpreter whose environment receives the packages (default: python)
#   PG_MAJOR=15            PostgreSQL major version (default: newest installed, else 15)
set -euo pipefail

PYTHON="${PYTHON:-python}"
# PostgreSQL major version: $PG_MAJOR, else the newest installed, else Debian 12's 15.
if [ -z "${PG_MAJOR:-}" ]; then
    PG_MAJOR="$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -n 1)"
    PG_MAJOR="${PG_MAJOR:-15}"
fi

# Kept in step with each other: stac-fastapi-pgstac 6/7 speaks pgstac >= 0.9 schemas.
PY_PACKAGES=(
    "stac-fastapi-pgstac>=6.0,<8"
    "pypgstac[psycopg]>=0.9,<0.11"
    "uvicorn>=0.30"
)

log() { printf '[stac-api-setup] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        log "need root (or sudo) to run: $*"
        return 1
    fi
}

have_postgres() {
    local bindir="/usr/lib/postgresql/${PG_MAJOR}/bin"
    [ -x "${bindir}/initdb" ] && [ -x "${bindir}/postgres" ] && [ -x "${bindir}/pg_ctl" ]
}

have_postgis() {
    ls /usr/share/postgresql/"${PG_MAJOR}"/extension/postgis.control >/dev/null 2>&1
}

if [ "${CLOUDMASK_SKIP_APT:-0}" != "1" ]; then
    if have_postgres && have_postgis; then
        log "PostgreSQL ${PG_MAJOR} + PostGIS 3 already installed"
    else
        if ! command -v apt-get >/dev/null 2>&1; then
            log "apt-get not found: install PostgreSQL ${PG_MAJOR} and PostGIS 3 by other means"
            exit 1
        fi
        log "installing postgresql postgresql-${PG_MAJOR}-postgis-3 (apt)"
        export DEBIAN_FRONTEND=noninteractive
        as_root apt-get update -qq
        as_root apt-get install -y -qq --no-install-recommends \
            postgresql "postgresql-${PG_MAJOR}" "postgresql-${PG_MAJOR}-postgis-3" >/dev/null
        have_postgres && have_postgis || { log "PostgreSQL/PostGIS install failed"; exit 1; }
    fi
fi

if "$PYTHON" - <<'EOF' 2>/dev/null
import importlib.util, sys
mods = ("stac_fastapi.pgstac.app", "pypgstac", "psycopg", "uvicorn")
sys.exit(0 if all(importlib.util.find_spec(m.split(".")[0]) for m in mods) and
         importlib.util.find_spec("stac_fastapi.pgstac") else 1)
EOF
then
    log "Python packages already installed in $("$PYTHON" -c 'import sys; print(sys.prefix)')"
else
    log "pip install ${PY_PACKAGES[*]}"
    "$PYTHON" -m pip install -q "${PY_PACKAGES[@]}"
fi

"$PYTHON" -c "import stac_fastapi.pgstac.app, pypgstac, psycopg, uvicorn" || {
    log "Python packages do not import"; exit 1; }

# Servers a killed test run left behind (the fixture sweeps them too, at its next start).
"$PYTHON" "$(dirname "$0")/../tests/stac_api.py" sweep >&2 || log "could not sweep stale test servers"
log "ok: $(/usr/lib/postgresql/${PG_MAJOR}/bin/postgres --version 2>/dev/null || echo 'postgres ?'), pypgstac $("$PYTHON" -c 'import pypgstac; print(pypgstac.__version__)')"

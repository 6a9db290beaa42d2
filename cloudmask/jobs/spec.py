"""Job specs: what a catalogue job searches, how it masks, where the results go.

A spec is a TOML file (read with :mod:`tomllib`) or a YAML file (``.yaml``/``.yml``) of flat keys with
an optional ``[retries]`` table::

    stac = "earth-search"                 # STAC API URL, static catalogue path, or a named endpoint
    collection = "sentinel-2-c1-l2a"
    aoi = "alps.geojson"                  # or: bbox = [5.9, 45.8, 10.5, 47.8]
    datetime = "last 10 days"             # or "2024-06-01/2024-06-30", "P10D", "PT36H"
    cloud_cover = [0, 80]                 # or max_cloud = 80 / min_cloud = 0 (percent)
    model = "auto"
    backend = "onnxruntime"
    resolution = 30
    output = "masks/alps"
    concurrency = 2

    [retries]
    count = 3
    backoff = 10                          # seconds, doubled after each attempt

Relative paths (``aoi``, ``output``, a local ``stac``, a model card) resolve against the spec file's
directory, so a spec means the same thing whatever the working directory of cron or systemd is.
Every mistake raises :class:`~cloudmask.errors.ConfigError` naming the field and the fix.
"""

from __future__ import annotations

import datetime as _dt
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..runtime import BACKENDS

_RELATIVE = re.compile(
    r"^\s*(?:last|past)\s+(\d+(?:\.\d+)?)\s*(minute|hour|day|week)s?\s*$", re.IGNORECASE
)
_DURATION = re.compile(
    r"^P(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts after the first for a transient failure, and the first wait (seconds, doubled each time)."""

    count: int = 2
    backoff: float = 5.0
    backoff_max: float = 300.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        return float(min(self.backoff_max, self.backoff * 2 ** max(0, attempt - 1)))


@dataclass(frozen=True)
class JobSpec:
    """A validated job spec; paths are absolute. Build with :func:`load_spec` or :func:`spec_from_dict`."""

    stac: str
    output: Path
    name: str = "cloudmask-job"
    collection: str | None = None
    aoi: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    datetime: str | None = None
    max_cloud: float | None = None
    min_cloud: float | None = None
    limit: int | None = None
    model: str = "auto"
    backend: str = "onnxruntime"
    resolution: float | None = None
    profile: str | None = None
    concurrency: int = 1
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    probabilities: bool = False
    quicklook: bool = False
    margin: int = 26
    push_to: str | None = None
    public_url: str | None = None
    scheduler: str | None = None
    emulated_latency: float = 0.0
    source: Path | None = None

    def search_datetime(self, now: _dt.datetime | None = None) -> str | None:
        """The time window as an absolute RFC 3339 interval, relative windows resolved against ``now``."""
        return resolve_datetime(self.datetime, now)

    def with_output(self, output: Path) -> JobSpec:
        return replace(self, output=Path(output))


# ------------------------------------------------------------------------------------------- datetime


def parse_duration(text: str) -> timedelta | None:
    """``"last 10 days"``, ``"past 36 hours"``, ``"P10D"``, ``"PT12H"``, ``"P1W"`` as a timedelta; else None."""
    m = _RELATIVE.match(text)
    if m:
        n, unit = float(m.group(1)), m.group(2).lower()
        return timedelta(**{unit + "s": n})
    m = _DURATION.match(text.strip())
    if m and any(m.groupdict().values()):
        return timedelta(**{k: float(v) for k, v in m.groupdict().items() if v})
    return None


def resolve_datetime(value: str | None, now: _dt.datetime | None = None) -> str | None:
    """A spec's ``datetime`` as the interval handed to the search; relative windows end at ``now``."""
    if value is None:
        return None
    duration = parse_duration(value)
    if duration is None:
        return value
    end = (now or _dt.datetime.now(UTC)).astimezone(UTC)
    start = end - duration
    return f"{start:%Y-%m-%dT%H:%M:%SZ}/{end:%Y-%m-%dT%H:%M:%SZ}"


# ------------------------------------------------------------------------------------------- loading


_KEYS = {f.name for f in fields(JobSpec)} - {"source", "retries"} | {"retries", "cloud_cover", "out"}


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate a job spec file (TOML, or YAML for ``.yaml``/``.yml``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"job spec {path} does not exist; give the path of a .toml (or .yaml) job spec")
    text = path.read_text()
    raw: Any
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"job spec {path} is not valid YAML: {err}") from err
    else:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"job spec {path} is not valid TOML: {err}") from err
    if not isinstance(raw, Mapping):
        raise ConfigError(f"job spec {path} must be a table of keys (stac = ..., output = ...)")
    return spec_from_dict(raw, base=path.parent.resolve(), source=path.resolve())


def spec_from_dict(raw: Mapping[str, Any], base: Path | None = None, source: Path | None = None) -> JobSpec:
    """Validate a spec given as a mapping; relative paths resolve against ``base`` (default: cwd)."""
    base = Path(base) if base is not None else Path.cwd()
    where = f"job spec {source}" if source else "job spec"

    def err(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{where}: '{key}' {msg}")

    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; valid keys are "
            f"{', '.join(sorted(_KEYS))}"
        )
    kw: dict[str, Any] = {"source": source}

    def text(key: str, required: bool = False) -> str | None:
        v = raw.get(key)
        if v is None:
            if required:
                raise err(key, "is missing: add it to the spec")
            return None
        if not isinstance(v, str) or not v.strip():
            raise err(key, f"must be a non-empty string, got {v!r}")
        return v.strip()

    def number(key: str, lo: float | None = None, hi: float | None = None, integer: bool = False) -> Any:
        v = raw.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or (integer and not isinstance(v, int)):
            raise err(key, f"must be {'an integer' if integer else 'a number'}, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise err(key, f"must be {rng}, got {v!r}")
        return v

    def flag(key: str) -> bool | None:
        v = raw.get(key)
        if v is None:
            return None
        if not isinstance(v, bool):
            raise err(key, f"must be true or false, got {v!r}")
        return v

    def local_path(value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    # catalogue
    stac = text("stac", required=True)
    assert stac is not None
    from ..catalog import ENDPOINTS

    if stac not in ENDPOINTS and not re.match(r"^https?://", stac):
        p = local_path(stac)
        if not p.exists():
            raise err("stac", f"names no STAC API, endpoint ({', '.join(ENDPOINTS)}) or existing catalogue: "
                              f"{p} does not exist")
        stac = str(p)
    kw["stac"] = stac
    kw["collection"] = text("collection")

    # where
    aoi = text("aoi")
    if aoi is not None:
        if aoi.lstrip().startswith(("{", "POLYGON", "MULTIPOLYGON")):
            kw["aoi"] = aoi
        else:
            p = local_path(aoi)
            if not p.is_file():
                raise err("aoi", f"file {p} does not exist; give a GeoJSON file (relative to the spec) or WKT")
            kw["aoi"] = str(p)
        from ..catalog import parse_aoi

        try:
            parse_aoi(kw["aoi"])
        except ConfigError as exc:
            raise err("aoi", f"is not usable: {exc}") from exc
    if raw.get("bbox") is not None:
        bbox = raw["bbox"]
        if isinstance(bbox, str):
            bbox = [s for s in bbox.replace(" ", "").split(",") if s]
        try:
            w, s, e, n = (float(v) for v in bbox)
        except (TypeError, ValueError) as exc:
            raise err("bbox", f"must be [west, south, east, north] in degrees, got {raw['bbox']!r}") from exc
        if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
            raise err("bbox", f"{[w, s, e, n]} must have west < east within ±180 and south < north within ±90")
        kw["bbox"] = (w, s, e, n)

    # when
    dt = raw.get("datetime")
    if dt is not None:
        if not isinstance(dt, str):
            raise err("datetime", f"must be a string such as '2024-06-01/2024-06-30' or 'last 10 days', got {dt!r}")
        if parse_duration(dt) is None:
            from ..catalog import parse_datetime

            try:
                parse_datetime(dt)
            except ConfigError as exc:
                raise err("datetime", f"{exc}; relative windows look like 'last 10 days' or 'P10D'") from exc
        kw["datetime"] = dt.strip()

    # cloud cover
    kw["max_cloud"] = number("max_cloud", 0, 100)
    kw["min_cloud"] = number("min_cloud", 0, 100)
    cc = raw.get("cloud_cover")
    if cc is not None:
        if kw["max_cloud"] is not None or kw["min_cloud"] is not None:
            raise err("cloud_cover", "and max_cloud/min_cloud both given: use one or the other")
        if (
            not isinstance(cc, list | tuple) or len(cc) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 100 for v in cc)
        ):
            raise err("cloud_cover", f"must be [min, max] in percent (0-100), got {cc!r}")
        kw["min_cloud"], kw["max_cloud"] = float(cc[0]), float(cc[1])
    if kw["min_cloud"] is not None and kw["max_cloud"] is not None and kw["min_cloud"] > kw["max_cloud"]:
        raise err("min_cloud", f"({kw['min_cloud']}) is above max_cloud ({kw['max_cloud']}); swap them")
    kw["limit"] = number("limit", 1, integer=True)

    # how
    model = text("model") or "auto"
    if model != "auto":
        from ..models import BUILTIN

        if model not in BUILTIN:
            p = local_path(model)
            if not p.exists():
                raise err("model", f"{model!r} is neither a built-in model ({', '.join(BUILTIN)}) nor an "
                                   f"existing file ({p})")
            model = str(p)
    kw["model"] = model
    backend = text("backend") or "onnxruntime"
    if backend not in BACKENDS:
        raise err("backend", f"{backend!r} is unknown: use one of {', '.join(BACKENDS)}")
    kw["backend"] = backend
    kw["resolution"] = number("resolution", 1)
    kw["profile"] = text("profile")
    if kw["profile"] is not None:
        from ..profiles import get_profile

        try:
            get_profile(kw["profile"])
        except Exception as exc:  # noqa: BLE001 - re-raised naming the field
            raise err("profile", f"is unknown: {exc}") from exc
    kw["concurrency"] = number("concurrency", 1, 256, integer=True)
    kw["margin"] = number("margin", 0, 120, integer=True)
    kw["emulated_latency"] = number("emulated_latency", 0, 60)
    kw["probabilities"] = flag("probabilities")
    kw["quicklook"] = flag("quicklook")

    retries = raw.get("retries")
    if retries is not None:
        if isinstance(retries, int) and not isinstance(retries, bool):
            retries = {"count": retries}
        if not isinstance(retries, Mapping):
            raise err("retries", f"must be a table {{count = 3, backoff = 10}} or a count, got {retries!r}")
        bad = sorted(set(retries) - {"count", "backoff", "backoff_max"})
        if bad:
            raise err("retries", f"has unknown key(s) {bad}; use count, backoff (seconds), backoff_max")
        count, backoff, bmax = retries.get("count", 2), retries.get("backoff", 5.0), retries.get("backoff_max", 300.0)
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 100:
            raise err("retries.count", f"must be an integer 0-100, got {count!r}")
        for k, v in (("backoff", backoff), ("backoff_max", bmax)):
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise err(f"retries.{k}", f"must be a number of seconds >= 0, got {v!r}")
        kw["retries"] = RetryPolicy(int(count), float(backoff), float(bmax))

    # where to
    out = raw.get("output", raw.get("out"))
    if raw.get("output") is not None and raw.get("out") is not None:
        raise err("out", "and 'output' both given: keep 'output'")
    if out is None:
        raise err("output", "is missing: add output = \"masks\" (a directory, relative to the spec)")
    if not isinstance(out, str) or not out.strip():
        raise err("output", f"must be a directory path, got {out!r}")
    if re.match(r"^[a-z][a-z0-9+.-]*://", out):
        raise err("output", f"must be a local or mounted directory, not a URL ({out})")
    kw["output"] = local_path(out)
    for key in ("push_to", "public_url", "scheduler"):
        v = text(key)
        if v is not None:
            pattern = r"^(tcp|tls|inproc|ucx)://" if key == "scheduler" else r"^https?://"
            if not re.match(pattern, v):
                example = "tcp://host:8786" if key == "scheduler" else "https://host/path"
                raise err(key, f"must be a URL like {example}, got {v!r}")
        kw[key] = v
    name = text("name")
    kw["name"] = name or (source.stem if source else "cloudmask-job")
    return JobSpec(**{k: v for k, v in kw.items() if v is not None})

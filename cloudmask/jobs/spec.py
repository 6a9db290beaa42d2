"""Job specs: what a catalogue job searches, how it masks, where the results go.

A spec is a TOML file (read with :mod:`tomllib`) or a YAML file (``.yaml``/``.yml``) of flat keys with
an optional ``[retries]`` table::

    stac = "earth-search"                 # STAC API URL, static catalogue (path or URL), or a named endpoint
    collection = "sentinel-2-c1-l2a"
    aoi = "alps.geojson"                  # or: bbox = [5.9, 45.8, 10.5, 47.8] (west > east crosses 180°)
    datetime = "last 10 days"             # or "2024-06-01/2024-06-30", "P10D", "PT36H", "P1M", "last 2 months"
    cloud_cover = [0, 80]                 # or max_cloud = 80 / min_cloud = 0 (percent)
    model = "auto"
    backend = "onnxruntime"                # or "openvino", with precision = "auto" (f32, bf16, int8)
    resolution = 30
    output = "masks/alps"
    concurrency = 2
    instances = 2                         # model instances (as run --instances); threads = ONNX Runtime threads each
    http_timeout = 20                     # seconds per STAC API request and remote band read (or "10,20")
    http_retries = 3                      # retries of one STAC API request (and band read)

    [retries]                             # a failed scene, or an unreachable catalogue, tried again
    count = 3
    backoff = 10                          # seconds, doubled after each attempt

Relative paths (``aoi``, ``output``, a local ``stac``, a model card) resolve against the spec file's
directory, so a spec means the same thing whatever the working directory of cron or systemd is.
Validation is a pydantic model: every mistake of a spec is reported at once, in one
:class:`~cloudmask.errors.ConfigError`, each naming its field and the fix. Search filters go through
:class:`cloudmask.stac.SearchQuery`, the same parser the CLI and the API use.
"""

from __future__ import annotations

import datetime as _dt
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from ..card import did_you_mean
from ..errors import CloudmaskError, ConfigError
from ..models import BUILTIN_MODELS
from ..postprocess import PostProcess
from ..profiles import get_profile
from ..retry import RetryPolicy
from ..runtime import BACKENDS, PRECISIONS
from ..stac import ENDPOINTS, HttpPolicy, SearchQuery, is_remote
from ..stac.query import parse_aoi, parse_bbox, parse_datetime, parse_duration, resolve_datetime

__all__ = ["JobSpec", "RetryPolicy", "load_spec", "parse_duration", "resolve_datetime", "spec_from_dict"]


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
    classes: str = "all"  # or "cloud-shadow": fold thin cloud/snow onto the three-class contract
    #: post-processing options (cloudmask.postprocess: threshold, buffer, min_region, scl, ...)
    postprocess: dict[str, Any] | None = None
    margin: int | None = None  # patch halo, pixels each side (None: the engine's 26)
    push_to: str | None = None
    public_url: str | None = None
    scheduler: str | None = None
    emulated_latency: float = 0.0
    instances: int | None = None  # model instances fed round-robin (None: the backend's choice)
    threads: int = 0  # ONNX Runtime threads per instance (0: its choice)
    #: backend openvino: auto, f32, bf16 or int8; int8's calibration set (None: the real demo chips)
    precision: str = "auto"
    calibration: Path | None = None
    http_timeout: str | None = None
    http_retries: int | None = None
    source: Path | None = None

    def search_datetime(self, now: _dt.datetime | None = None) -> str | None:
        """The time window as an absolute RFC 3339 interval, relative windows resolved against ``now``."""
        return resolve_datetime(self.datetime, now)

    def query(self, now: _dt.datetime | None = None) -> SearchQuery:
        """The job's search (relative time windows end at ``now``, default: the current time)."""
        return SearchQuery.build(collection=self.collection, bbox=self.bbox, aoi=self.aoi,
                                 datetime=self.search_datetime(now), max_cloud=self.max_cloud,
                                 min_cloud=self.min_cloud, limit=self.limit)

    def http_policy(self) -> HttpPolicy:
        """Timeouts and retries of each STAC API request: the environment's, then this spec's."""
        return HttpPolicy.from_env().with_overrides(self.http_timeout, self.http_retries,
                                                    names=("http_timeout", "http_retries"))

    def with_output(self, output: Path) -> JobSpec:
        return replace(self, output=Path(output))


# ------------------------------------------------------------------------------------------- loading


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate a job spec file (TOML, or YAML for ``.yaml``/``.yml``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"job spec {path} does not exist; give the path of a .toml (or .yaml) job spec")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"job spec {path} is not text (byte {err.start} is not UTF-8): give the .toml (or .yaml) "
                          "job spec, not a binary file") from err
    raw: Any
    if path.suffix.lower() in (".yaml", ".yml"):
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


class _Retries(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    count: int = 2
    backoff: float = 5.0
    backoff_max: float = 300.0

    @field_validator("count")
    @classmethod
    def _count(cls, v: int) -> int:
        if not 0 <= v <= 100:
            raise ValueError(f"must be an integer 0-100, got {v!r}")
        return v

    @field_validator("backoff", "backoff_max")
    @classmethod
    def _seconds(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"must be a number of seconds >= 0, got {v!r}")
        return float(v)


def _between(v: float | None, lo: float, hi: float | None) -> float | None:
    if v is not None and (v < lo or (hi is not None and v > hi)):
        raise ValueError(f"must be {f'>= {lo}' if hi is None else f'between {lo} and {hi}'}, got {v!r}")
    return v


def _local(value: str, info: ValidationInfo) -> Path:
    p = Path(value).expanduser()
    base = (info.context or {}).get("base", Path.cwd())
    return p if p.is_absolute() else (Path(base) / p).resolve()


class _SpecFile(BaseModel):
    """What a spec file may hold, checked field by field (strict types: ``"5"`` is not a number; numbers
    finite: ``nan``/``inf`` are refused)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    stac: str
    output: str | None = None
    out: str | None = None
    name: str | None = None
    collection: str | None = None
    aoi: str | None = None
    bbox: list[float] | str | None = None
    datetime: str | None = None
    cloud_cover: list[float] | None = None
    max_cloud: float | None = None
    min_cloud: float | None = None
    limit: int | None = None
    model: str | None = None
    backend: str | None = None
    resolution: float | None = None
    profile: str | None = None
    concurrency: int | None = None
    margin: int | None = None
    emulated_latency: float | None = None
    instances: int | None = None
    threads: int | None = None
    precision: str | None = None
    calibration: str | None = None
    probabilities: bool | None = None
    quicklook: bool | None = None
    classes: Literal["all", "cloud-shadow"] | None = None
    postprocess: dict[str, Any] | None = None
    retries: _Retries | None = None
    push_to: str | None = None
    public_url: str | None = None
    scheduler: str | None = None
    http_timeout: float | str | None = None
    http_retries: int | None = None

    @field_validator("stac", "output", "out", "name", "collection", "aoi", "model", "backend", "profile", "push_to",
                     "public_url", "scheduler", "datetime")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must be a non-empty string")
        return v.strip() if v is not None else None

    @field_validator("stac")
    @classmethod
    def _stac(cls, v: str, info: ValidationInfo) -> str:
        if is_remote(v):
            return v
        p = _local(v, info)
        if not p.exists():
            raise ValueError(f"names no STAC API, endpoint ({', '.join(ENDPOINTS)}) or existing catalogue: "
                             f"{p} does not exist")
        return str(p)

    @field_validator("output", "out")
    @classmethod
    def _output(cls, v: str | None) -> str | None:
        if v is not None and re.match(r"^[a-z][a-z0-9+.-]*://", v):
            raise ValueError(f"must be a local or mounted directory, not a URL ({v})")
        return v

    @field_validator("aoi")
    @classmethod
    def _aoi(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return None
        if not v.lstrip().startswith(("{", "POLYGON", "MULTIPOLYGON")):
            p = _local(v, info)
            if not p.is_file():
                raise ValueError(f"file {p} does not exist; give a GeoJSON file (relative to the spec) or WKT")
            v = str(p)
        try:
            parse_aoi(v)
        except ConfigError as exc:
            raise ValueError(f"is not usable: {exc}") from exc
        return v

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, v: list[float] | str | None) -> tuple[float, float, float, float] | None:
        if v is None:
            return None
        try:
            return parse_bbox(v, "")
        except ConfigError as exc:
            raise ValueError(str(exc).strip()) from exc

    @field_validator("datetime")
    @classmethod
    def _datetime(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse_datetime(v)
            except ConfigError as exc:
                raise ValueError(str(exc)) from exc
        return v

    @field_validator("max_cloud", "min_cloud")
    @classmethod
    def _percent(cls, v: float | None) -> float | None:
        return _between(v, 0, 100)

    @field_validator("cloud_cover")
    @classmethod
    def _cloud_cover(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (len(v) != 2 or not all(0 <= x <= 100 for x in v)):
            raise ValueError(f"must be [min, max] in percent (0-100), got {v!r}")
        return v

    @field_validator("limit")
    @classmethod
    def _limit(cls, v: int | None) -> int | None:
        return None if v is None else int(_between(v, 1, None) or 0)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None or v == "auto" or v in BUILTIN_MODELS:
            return v
        p = _local(v, info)
        if not p.exists():
            raise ValueError(f"{v!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}) nor an "
                             f"existing file ({p})")
        return str(p)

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str | None) -> str | None:
        if v is not None and v not in BACKENDS:
            raise ValueError(f"{v!r} is unknown: use one of {', '.join(BACKENDS)}")
        return v

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                get_profile(v)
            except CloudmaskError as exc:  # re-raised naming the field
                raise ValueError(f"is unknown: {exc}") from exc
        return v

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, v: float | None) -> float | None:
        return _between(v, 1, None)

    @field_validator("concurrency")
    @classmethod
    def _concurrency(cls, v: int | None) -> int | None:
        return None if v is None else int(_between(v, 1, 256) or 0)

    @field_validator("margin")
    @classmethod
    def _margin(cls, v: int | None) -> int | None:
        return None if v is None else int(_between(v, 0, 120) or 0)

    @field_validator("precision")
    @classmethod
    def _precision(cls, v: str | None) -> str | None:
        if v is not None and v not in PRECISIONS:
            raise ValueError(f"{v!r} is unknown: use one of {', '.join(PRECISIONS)} (with backend openvino)")
        return v

    @field_validator("calibration")
    @classmethod
    def _calibration(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return None
        p = _local(v, info)
        if not (p / "manifest.json").is_file():
            raise ValueError(f"{p} is not a calibration set (no manifest.json); build one with "
                             "cloudmask metis calibration")
        return str(p)

    @field_validator("emulated_latency")
    @classmethod
    def _latency(cls, v: float | None) -> float | None:
        return _between(v, 0, 60)

    @field_validator("instances")
    @classmethod
    def _instances(cls, v: int | None) -> int | None:
        return None if v is None else int(_between(v, 1, 64) or 0)

    @field_validator("threads")
    @classmethod
    def _threads(cls, v: int | None) -> int | None:
        return None if v is None else int(_between(v, 0, 256) or 0)

    @field_validator("retries", mode="before")
    @classmethod
    def _retries_count(cls, v: Any) -> Any:
        return {"count": v} if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("push_to", "public_url", "scheduler")
    @classmethod
    def _url(cls, v: str | None, info: ValidationInfo) -> str | None:
        scheduler = info.field_name == "scheduler"
        if v is not None and not re.match(r"^(tcp|tls|inproc|ucx)://" if scheduler else r"^https?://", v):
            raise ValueError(f"must be a URL like {'tcp://host:8786' if scheduler else 'https://host/path'}, got {v!r}")
        return v

    @field_validator("http_timeout", "http_retries")
    @classmethod
    def _http(cls, v: Any, info: ValidationInfo) -> Any:
        name = str(info.field_name)
        if v is not None:
            try:
                if name == "http_timeout":
                    HttpPolicy().with_overrides(timeout=v, names=(name, name))
                else:
                    HttpPolicy().with_overrides(retries=v, names=(name, name))
            except ConfigError as exc:
                raise ValueError(str(exc).removeprefix(name).strip()) from exc
        return v


def _field_errors(err: ValidationError, keys: list[str]) -> list[str]:
    """Each pydantic error as ``'field' problem``."""
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "missing":
            out.append(f"'{loc}' is missing: add it to the spec")
        elif e["type"] == "extra_forbidden":
            parent, key = ".".join(str(p) for p in e["loc"][:-1]), e["loc"][-1]
            if parent:
                out.append(f"'{parent}' has unknown key '{key}'; use count, backoff (seconds), backoff_max")
            else:
                out.append(f"unknown key '{key}'{did_you_mean(str(key), keys)}; valid keys are {', '.join(keys)}")
        else:
            got = "" if e["type"] == "value_error" else f", got {e.get('input')!r}"
            out.append(f"'{loc}' {msg[0].lower() + msg[1:] if msg else 'is invalid'}{got}")
    return out


def spec_from_dict(raw: Mapping[str, Any], base: Path | None = None, source: Path | None = None) -> JobSpec:
    """Validate a spec given as a mapping; relative paths resolve against ``base`` (default: cwd).

    Raises one :class:`ConfigError` listing every problem, each naming its field.
    """
    base = Path(base) if base is not None else Path.cwd()
    where = f"job spec {source}" if source else "job spec"
    keys = sorted(_SpecFile.model_fields)
    problems: list[str] = []
    doc: _SpecFile | None = None
    try:
        doc = _SpecFile.model_validate(dict(raw), context={"base": base})
    except ValidationError as err:
        problems += _field_errors(err, keys)
    if isinstance(raw.get("postprocess"), Mapping) and raw["postprocess"]:
        try:
            PostProcess.from_options(dict(raw["postprocess"]), resolution=10.0)
        except ConfigError as exc:
            problems.append(f"postprocess: {exc}")
    if raw.get("output") is None and raw.get("out") is None:
        problems.append("'output' is missing: add output = \"masks\" (a directory, relative to the spec)")
    out = min_cloud = max_cloud = None
    if doc is not None:
        if doc.output is not None and doc.out is not None:
            problems.append("'out' and 'output' both given: keep 'output'")
        out = doc.output or doc.out
        min_cloud, max_cloud = doc.min_cloud, doc.max_cloud
        if doc.cloud_cover is not None:
            if min_cloud is not None or max_cloud is not None:
                problems.append("'cloud_cover' and max_cloud/min_cloud both given: use one or the other")
            min_cloud, max_cloud = float(doc.cloud_cover[0]), float(doc.cloud_cover[1])
        if min_cloud is not None and max_cloud is not None and min_cloud > max_cloud:
            problems.append(f"'min_cloud' ({min_cloud}) is above max_cloud ({max_cloud}); swap them")
        if (doc.precision not in (None, "auto") or doc.calibration) and (doc.backend or "onnxruntime") != "openvino":
            problems.append("'precision' and 'calibration' apply to backend = \"openvino\": set it, or drop them")
    if problems:
        head = f"{where}: " if len(problems) == 1 else f"{where}: {len(problems)} problems: "
        raise ConfigError(head + "; ".join(problems))
    assert doc is not None
    assert out is not None
    p = Path(out).expanduser()
    kw: dict[str, Any] = {
        "stac": doc.stac, "output": p if p.is_absolute() else (base / p).resolve(),
        "name": doc.name or (source.stem if source else "cloudmask-job"),
        "collection": doc.collection, "aoi": doc.aoi, "bbox": doc.bbox, "datetime": doc.datetime,
        "max_cloud": max_cloud, "min_cloud": min_cloud, "limit": doc.limit, "model": doc.model,
        "backend": doc.backend, "resolution": doc.resolution, "profile": doc.profile,
        "concurrency": doc.concurrency, "margin": doc.margin, "emulated_latency": doc.emulated_latency,
        "instances": doc.instances, "threads": doc.threads,
        "precision": doc.precision, "calibration": None if doc.calibration is None else Path(doc.calibration),
        "probabilities": doc.probabilities, "quicklook": doc.quicklook, "classes": doc.classes,
        "push_to": doc.push_to,
        "public_url": doc.public_url, "scheduler": doc.scheduler,
        "http_timeout": None if doc.http_timeout is None else str(doc.http_timeout),
        "http_retries": doc.http_retries, "source": source,
    }
    if doc.retries is not None:
        kw["retries"] = RetryPolicy(doc.retries.count, doc.retries.backoff, doc.retries.backoff_max)
    if doc.postprocess:
        kw["postprocess"] = dict(doc.postprocess)
    return JobSpec(**{k: v for k, v in kw.items() if v is not None})

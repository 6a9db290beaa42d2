"""s2cloudless as a built-in pixel model.

The LightGBM cloud detector that ships inside the installed ``s2cloudless`` package (Sentinel Hub,
CC BY-SA 4.0) is converted to ONNX once with ``onnxmltools`` (a ``TreeEnsembleClassifier`` graph, which
reproduces LightGBM's probabilities within 1e-6 on real pixels) and cached in the user cache directory,
keyed by the package version. Nothing is downloaded: without the package the model is unavailable and
the error says ``pip install 's2-cloudmask[s2cloudless]'``.

The model takes 10 L1C top-of-atmosphere reflectances (0–1, no normalisation) per pixel, in the order
``coastal, blue, red, rededge1, nir, nir08, nir09, cirrus, swir16, swir22`` (B01 B02 B04 B05 B08 B8A
B09 B10 B11 B12), and gives ``[P(clear), P(cloud)]``. A pixel is cloud when ``P(cloud) > threshold``
(default 0.4); s2cloudless's own spatial post-processing (probability averaged over a disk of
``average_over`` pixels, then the mask dilated by a disk of ``dilation_size`` pixels) is available as
post-processing options (:mod:`cloudmask.postprocess`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from importlib import metadata, resources
from pathlib import Path

from ..card import ModelCard
from ..errors import ModelError, UnknownModelError
from ..normalisation import Normalisation
from ..user_cache import cache_dir

log = logging.getLogger(__name__)

NAME = "s2cloudless"
#: The detector's input bands (STAC common names), in its order.
BANDS: tuple[str, ...] = (
    "coastal", "blue", "red", "rededge1", "nir", "nir08", "nir09", "cirrus", "swir16", "swir22",
)
#: s2cloudless defaults: threshold on P(cloud); disk radii (pixels) of its averaging and dilation.
THRESHOLD = 0.4
AVERAGE_OVER = 4
DILATION_SIZE = 2
LICENSE = "CC-BY-SA-4.0"
MODEL_FILE = "pixel_s2_cloud_detector_lightGBM_v0.1.txt"
INSTALL_HINT = "pip install 's2-cloudmask[s2cloudless]' (the s2cloudless and onnxmltools packages)"


def package_version() -> str | None:
    """Installed ``s2cloudless`` version, ``None`` when it is not installed."""
    try:
        return metadata.version("s2cloudless")
    except metadata.PackageNotFoundError:
        return None


def cached_onnx_path(version: str | None = None) -> Path:
    """Path of the converted graph for an ``s2cloudless`` version (it may not exist yet)."""
    v = version or package_version() or "unknown"
    return cache_dir() / "s2cloudless" / v / "s2cloudless.onnx"


def lightgbm_model_path() -> Path:
    """The LightGBM model text file inside the installed package."""
    try:
        path = Path(str(resources.files("s2cloudless").joinpath("models", MODEL_FILE)))
    except ModuleNotFoundError as err:
        raise UnknownModelError(f"model '{NAME}' needs the s2cloudless package: {INSTALL_HINT}") from err
    if not path.is_file():
        raise UnknownModelError(
            f"model '{NAME}': the installed s2cloudless {package_version()} has no {MODEL_FILE}; "
            f"install a version that ships it ({INSTALL_HINT})"
        )
    return path


def convert(out: Path) -> Path:
    """Convert the package's LightGBM model to an ONNX graph ``[N, 10] -> [N, 2]`` at ``out`` (atomically)."""
    import onnx

    try:
        from lightgbm import Booster
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType
    except ImportError as err:
        raise UnknownModelError(f"model '{NAME}' is converted with onnxmltools and lightgbm: {INSTALL_HINT}") from err
    booster = Booster(model_file=str(lightgbm_model_path()))
    log.info("converting the s2cloudless LightGBM model to ONNX (once, cached in %s)", out.parent)
    try:
        model = convert_lightgbm(
            booster, name=NAME, initial_types=[("reflectance", FloatTensorType([None, len(BANDS)]))],
            target_opset=15, zipmap=False,
        )
    except Exception as err:  # converter errors come in many types
        raise ModelError(f"cannot convert the s2cloudless model to ONNX: {err}") from err
    # keep only the [N, 2] probabilities (the label output is the argmax at 0.5, not ours to use)
    probs = [o for o in model.graph.output if o.name == "probabilities"]
    if len(probs) != 1:
        raise ModelError(f"unexpected s2cloudless ONNX outputs {[o.name for o in model.graph.output]}")
    del model.graph.output[:]
    model.graph.output.extend(probs)
    model = onnx.utils.Extractor(model).extract_model(["reflectance"], ["probabilities"])
    model.doc_string = (
        f"s2cloudless {package_version()} LightGBM cloud detector (Sentinel Hub, {LICENSE}), converted by "
        "cloudmask with onnxmltools; input [N, 10] L1C TOA reflectance, output [N, 2] = P(clear), P(cloud)"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".s2cloudless-", suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def ensure_onnx() -> Path:
    """The cached ONNX graph for the installed package version, converting it on first use."""
    version = package_version()
    if version is None:
        raise UnknownModelError(f"model '{NAME}' needs the s2cloudless package: {INSTALL_HINT}")
    path = cached_onnx_path(version)
    if not path.is_file():
        convert(path)
    return path


def card(convert_now: bool = True) -> ModelCard:
    """The s2cloudless model card (``convert_now=False`` lists it without converting)."""

    onnx_path = ensure_onnx() if convert_now else cached_onnx_path()
    version = package_version() or ""
    return ModelCard(
        name=NAME,
        onnx_path=onnx_path,
        bands=BANDS,
        product_level="l1c",
        resolution=10.0,
        normalisation=Normalisation(()),
        patch_size=256,
        classes=("clear", "cloud"),
        output="probabilities",
        kind="pixel",
        version=version,
        description=(
            "s2cloudless LightGBM pixel cloud detector (Sentinel Hub, CC BY-SA 4.0), 10 L1C bands, "
            f"cloud = P(cloud) > {THRESHOLD}; a tree ensemble: runs on the CPU (not a Metis graph)"
        ),
        extra={"license": LICENSE, "architecture": "LightGBM", "postprocess": {"thresholds": {"cloud": THRESHOLD}}},
    )


__all__ = [
    "AVERAGE_OVER", "BANDS", "DILATION_SIZE", "LICENSE", "NAME", "THRESHOLD", "cache_dir", "cached_onnx_path",
    "card", "convert", "ensure_onnx", "package_version",
]

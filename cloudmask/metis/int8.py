"""INT8 preview: what Metis-style post-training quantization does to a model's masks, on the CPU.

ONNX Runtime static quantization (QDQ) with the schemes Metis uses: int8 weights, symmetric (per
tensor, or per output channel), int8 activations with a zero point, calibrated on a calibration set
(:mod:`cloudmask.metis.calibration`). Then fp32 and int8 run on held-out patches: pixel agreement,
per-class IoU of int8 against fp32, and against labels where there are labels. This approximates, and
does not reproduce, the Voyager compiler's quantizer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.blender import class_scores
from ..errors import ConfigError, ModelError
from ..models import CLASSES, NODATA, ModelCard, load_model
from .calibration import MANIFEST, load_calibration
from .export import export

log = logging.getLogger(__name__)

CALIBRATE_METHODS = ("minmax", "percentile", "entropy")
HeldOut = str | Path | Iterable[np.ndarray | tuple[np.ndarray, np.ndarray | None]] | None


@dataclass
class Int8Report:
    """fp32 vs int8 on held-out patches. IoU values are None where a class is absent from both masks."""

    model: str
    int8_card: Path
    per_channel: bool
    calibrate_method: str
    calibration_samples: int
    held_out: str
    patches: int
    pixel_agreement: float
    iou_vs_fp32: dict[str, float | None]
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    labelled_pixels: int = 0
    iou_vs_labels: dict[str, dict[str, float | None]] = field(default_factory=dict)
    quantize_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["int8_card"] = str(self.int8_card)
        return d

    def format(self) -> str:
        """A few readable lines (what the CLI prints)."""
        def fmt(ious: dict[str, float | None]) -> str:
            return ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in ious.items())

        lines = [
            f"int8 preview of {self.model} ({'per-channel' if self.per_channel else 'per-tensor'} weights, "
            f"{self.calibrate_method}, {self.calibration_samples} calibration patches; held out: {self.held_out})",
            f"pixel agreement int8 vs fp32: {100 * self.pixel_agreement:.2f} % over {self.patches} patches",
            f"IoU int8 vs fp32: {fmt(self.iou_vs_fp32)}",
            f"logits |int8 - fp32|: max {self.max_abs_logit_diff:.3f}, mean {self.mean_abs_logit_diff:.4f}",
        ]
        for which, ious in self.iou_vs_labels.items():
            lines.append(f"IoU {which} vs labels ({self.labelled_pixels} px): {fmt(ious)}")
        lines.append(f"int8 model card: {self.int8_card}")
        return "\n".join(lines)


class _Reader:
    """onnxruntime CalibrationDataReader over calibration arrays."""

    def __init__(self, name: str, arrays: list[np.ndarray]) -> None:
        self._it: Iterator[np.ndarray] = iter(arrays)
        self._name = name

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self._name: x}


def _fp32_card(card: ModelCard, out: Path) -> ModelCard:
    if "metis" in card.extra:
        return card

    log.info("model '%s' is not a Metis export: exporting it to %s first", card.name, out / "fp32")
    return export(card, out / "fp32").card


def quantize(
    card: ModelCard,
    calibration: list[np.ndarray],
    out_path: Path,
    *,
    per_channel: bool = False,
    calibrate_method: str = "minmax",
) -> Path:
    """Static QDQ quantization of ``card``'s (static) graph into ``out_path``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if calibrate_method not in CALIBRATE_METHODS:
        raise ConfigError(f"calibrate_method must be one of {', '.join(CALIBRATE_METHODS)}")
    import onnx

    name = onnx.load(str(card.onnx_path), load_external_data=False).graph.input[0].name
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[calibrate_method]
    try:
        quantize_static(
            str(card.onnx_path),
            str(out_path),
            _Reader(name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    except Exception as err:
        raise ModelError(f"ONNX Runtime could not quantize '{card.name}': {err}") from err
    return out_path


def _held_out(held_out: HeldOut, calibration_dir: Path) -> tuple[str, list[tuple[np.ndarray, np.ndarray | None]]]:
    if held_out is None:
        log.warning("no held-out patches given: evaluating on the calibration set itself (not independent)")
        return "calibration set (not independent)", [(x, None) for _, x in load_calibration(calibration_dir)]
    if isinstance(held_out, str | Path):
        d = Path(held_out)
        items = []
        for item, x in load_calibration(d):
            labels = np.load(d / item["labels"]) if item.get("labels") else None
            items.append((x, labels))
        return str(d), items
    out: list[tuple[np.ndarray, np.ndarray | None]] = []
    for h in held_out:
        if isinstance(h, tuple):
            out.append((np.asarray(h[0]), None if h[1] is None else np.asarray(h[1])))
        else:
            out.append((np.asarray(h), None))
    return "given patches", out


def _iou(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float | None]:
    res: dict[str, float | None] = {}
    for value, name in CLASSES.items():
        pa, pb = a == value, b == value
        if valid is not None:
            pa, pb = pa & valid, pb & valid
        union = int((pa | pb).sum())
        res[name] = float((pa & pb).sum()) / union if union else None
    return res


def int8_preview(
    model: str | Path | ModelCard,
    calibration_dir: str | Path,
    *,
    held_out: HeldOut = None,
    per_channel: bool = False,
    out_dir: str | Path | None = None,
    calibrate_method: str = "minmax",
    limit: int | None = None,
) -> Int8Report:
    """Quantize ``model`` on the calibration set and compare int8 with fp32 on ``held_out``.

    ``held_out``: a directory in calibration-set layout (items may name a ``labels`` .npy of cloudmask
    classes, 255 = ignore), or an iterable of ``(1|-, C, H, W)`` patches or ``(patch, labels)`` pairs;
    None evaluates on the calibration set. The int8 graph and its card go to ``out_dir`` (default:
    ``<calibration_dir>/int8``), so ``load_model(out_dir / "card.yaml")`` runs it like any model.
    """
    import onnxruntime as ort

    calibration_dir = Path(calibration_dir)
    if not (calibration_dir / MANIFEST).is_file():
        raise ConfigError(f"{calibration_dir} has no {MANIFEST}: build a calibration set first")
    out = Path(out_dir) if out_dir is not None else calibration_dir / "int8"
    out.mkdir(parents=True, exist_ok=True)
    card = _fp32_card(load_model(model), out)
    calib = [x for _, x in load_calibration(calibration_dir, limit)]
    t0 = time.perf_counter()
    int8_path = quantize(card, calib, out / "model_int8.onnx", per_channel=per_channel,
                         calibrate_method=calibrate_method)
    seconds = time.perf_counter() - t0
    qinfo = {"format": "QDQ", "weights": "int8 symmetric " + ("per-channel" if per_channel else "per-tensor"),
             "activations": "int8 asymmetric per-tensor", "calibrate_method": calibrate_method,
             "calibration_dir": str(calibration_dir), "calibration_samples": len(calib),
             "tool": f"onnxruntime {ort.__version__} quantize_static (CPU preview of Metis INT8)"}
    int8_card = card.with_onnx(int8_path, name=f"{card.name}-int8", extra={**card.extra, "quantization": qinfo})
    card_path = int8_card.save(out / "card.yaml")

    source, items = _held_out(held_out, calibration_dir)
    if not items:
        raise ConfigError("no held-out patches to evaluate")
    so = ort.SessionOptions()
    sessions = [ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
                for p in (card.onnx_path, int8_path)]
    name = sessions[0].get_inputs()[0].name
    agree = total = labelled = 0
    max_diff, sum_diff, n_diff = 0.0, 0.0, 0
    fp_all, q_all, lab_all = [], [], []
    for x, labels in items:
        x4 = np.asarray(x, np.float32).reshape((1, *np.asarray(x).shape[-3:]))
        y32, y8 = (np.asarray(s.run(None, {name: x4})[0], np.float32)[0] for s in sessions)
        diff = np.abs(y32 - y8)
        max_diff, sum_diff, n_diff = max(max_diff, float(diff.max())), sum_diff + float(diff.sum()), n_diff + diff.size
        c32, c8 = class_scores(card, y32, 0)[0], class_scores(card, y8, 0)[0]
        agree += int((c32 == c8).sum())
        total += c32.size
        fp_all.append(c32)
        q_all.append(c8)
        lab_all.append(np.full(c32.shape, NODATA, np.uint8) if labels is None else np.asarray(labels).reshape(c32.shape))
    fp, q, lab = np.stack(fp_all), np.stack(q_all), np.stack(lab_all)
    valid = lab != NODATA
    labelled = int(valid.sum())
    report = Int8Report(
        model=card.name,
        int8_card=card_path,
        per_channel=per_channel,
        calibrate_method=calibrate_method,
        calibration_samples=len(calib),
        held_out=source,
        patches=len(items),
        pixel_agreement=agree / total,
        iou_vs_fp32=_iou(q, fp),
        max_abs_logit_diff=max_diff,
        mean_abs_logit_diff=sum_diff / max(n_diff, 1),
        labelled_pixels=labelled,
        iou_vs_labels={"fp32": _iou(fp, lab, valid), "int8": _iou(q, lab, valid)} if labelled else {},
        quantize_seconds=round(seconds, 2),
    )
    (out / "int8_report.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    log.info("int8 preview of %s: agreement %.4f", card.name, report.pixel_agreement)
    return report

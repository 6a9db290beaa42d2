"""Counts and per-stage seconds of one streamed scene; each engine thread keeps its own, merged at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STAGES = ("read", "normalise", "device", "device_idle", "blend", "write", "total")


@dataclass
class StreamStats:
    """Counts and per-stage seconds of one streamed scene.

    ``device`` is time inside ``Runner.run`` summed over device threads; ``device_idle`` is the time
    device threads waited for input after their first call (the pipeline's gaps). The device-call
    budget: ``calls`` device calls of up to ``per_call`` samples each (``unit``: patches, or pixels for
    pixel models); ``pixels`` counts the valid pixels a pixel model classified.
    """

    patches: int = 0
    skipped: int = 0
    calls: int = 0
    pixels: int = 0
    per_call: int = 0
    unit: str = "patches"
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def merge(self, other: StreamStats) -> None:
        """Add another thread's counts and seconds to these."""
        self.patches += other.patches
        self.skipped += other.skipped
        self.calls += other.calls
        self.pixels += other.pixels
        for k, v in other.seconds.items():
            self.add(k, v)

    @property
    def samples(self) -> int:
        """Samples sent to the device: pixels for pixel models, patches otherwise."""
        return self.pixels if self.unit == "pixels" else self.patches

    @property
    def patches_per_second(self) -> float:
        total = self.seconds["total"]
        return self.patches / total if total > 0 else float("nan")

    @property
    def samples_per_call(self) -> float:
        """Mean samples per device call (at most ``per_call``; padding and pipeline drains lower it)."""
        return self.samples / self.calls if self.calls else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "patches": self.patches,
            "skipped": self.skipped,
            "calls": self.calls,
            "pixels": self.pixels,
            "unit": self.unit,
            "per_call": self.per_call,
            "samples_per_call": round(self.samples_per_call, 2) if self.calls else None,
            "patches_per_second": round(self.patches_per_second, 2),
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
        }

    def table(self) -> str:
        """A small plain-text table of the device-call budget and the stages."""
        if self.unit == "pixels":
            head = f"pixels {self.pixels}"
        else:
            head = f"patches {self.patches} (skipped {self.skipped} empty)"
        lines = [f"{head}, device calls {self.calls} of up to {self.per_call} {self.unit} per call"]
        total = self.seconds["total"] or float("nan")
        for k, v in self.seconds.items():
            lines.append(f"  {k:<12} {v:9.3f} s  {100 * v / total:5.1f} %")
        return "\n".join(lines)

"""Device idle between scenes of a batch: scenes one after the other vs :class:`cloudmask.overlap.ScenePipeline`.

Three items (copies of the benchmark tile under other ids, same COGs) are masked with an emulated
device (``--latency-ms`` per batch-1 call, one instance) exactly as ``cloudmask run`` does (COG,
quicklook, item), in a child process per mode:

* ``sequential``: each scene whole (open, stream, COG, quicklook, item), then the next;
* ``overlap``:    the CLI's pipeline: the next scene opens and reads ahead while one streams, and a
  finished scene's outputs are written while the next streams.

The device gap before scene ``k`` is the time from scene ``k - 1``'s last device call to scene ``k``'s
first (:class:`cloudmask.overlap.DeviceClock`). Usage::

    python benchmarks/batch.py --latency-ms 5 --repeat 3 [--res 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from childproc import call, serve

HERE = Path(__file__).resolve().parent
DEFAULT_TILE = HERE / "work" / "full-10980" / "tile" / "tile.json"


def _items(tile: Path, n: int, where: Path) -> list[Path]:
    """``n`` copies of the tile's item under other ids, asset hrefs made absolute."""
    doc = json.loads(tile.read_text())
    out = []
    for k in range(n):
        d = json.loads(json.dumps(doc))
        d["id"] = f"{doc['id']}-copy{k}"
        d["links"] = []
        for a in d["assets"].values():
            href = a["href"]
            if "://" not in href and not href.startswith("/"):
                a["href"] = str((tile.parent / href).resolve())
        p = where / f"{d['id']}.json"
        p.write_text(json.dumps(d))
        out.append(p)
    return out


def child(mode: str, items: list[str], out: str, latency_ms: float, res: float | None) -> dict[str, Any]:
    from cloudmask.api import mask_scene, scene_of
    from cloudmask.models import load_model
    from cloudmask.overlap import DeviceClock, DeviceTurns, ScenePipeline
    from cloudmask.runtime import make_runners

    specs = [scene_of(p) for p in items]
    card = load_model("ukis-6b-l2a")
    clock = DeviceClock()
    runners = clock.wrap(make_runners(card, "emulated", instances=1, latency_s=latency_ms / 1000.0))
    t0 = time.perf_counter()
    if mode == "sequential":
        turns = DeviceTurns(clock)
        for spec in specs:
            with turns.ticket():  # the whole scene holds the device: nothing overlaps
                mask_scene(spec, out, card, runners=runners, resolution=res, catalog=False)
    else:
        def run(spec: Any, turn: Any) -> Any:
            return mask_scene(spec, out, card, runners=runners, resolution=res, catalog=False, device=turn)

        with ScenePipeline(specs, run, clock=clock) as pipe:
            for spec in specs:
                pipe(spec)
    wall = time.perf_counter() - t0
    gaps = clock.gaps()
    device = sum(span[1] - span[0] for span in clock.calls.values())
    return {"mode": mode, "wall_s": wall, "gaps_s": [gaps[k] for k in sorted(gaps)], "device_span_s": device}


def main() -> None:
    if serve(child):
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tile", type=Path, default=DEFAULT_TILE)
    ap.add_argument("--scenes", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=5.0)
    ap.add_argument("--res", type=float, default=None, help="metres (default: the model's, 30)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"sequential": [], "overlap": []}
    with tempfile.TemporaryDirectory(prefix="cloudmask-batch-") as tmp:
        items = [str(p) for p in _items(args.tile, args.scenes, Path(tmp))]
        for _ in range(max(1, args.repeat)):
            for mode in runs:
                out = Path(tmp) / f"out-{mode}"
                runs[mode].append(call(__file__, [mode, items, str(out), args.latency_ms, args.res]))
    summary: dict[str, Any] = {"scenes": args.scenes, "latency_ms": args.latency_ms, "res": args.res}
    for mode, rs in runs.items():
        gaps = [g for r in rs for g in r["gaps_s"]]
        summary[mode] = {
            "wall_s": [round(r["wall_s"], 2) for r in rs],
            "gaps_s": [[round(g, 3) for g in r["gaps_s"]] for r in rs],
            "median_gap_s": round(statistics.median(gaps), 3),
            "max_gap_s": round(max(gaps), 3),
        }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

"""How much slower a model call runs after the CPU idled: a profile's idle curve.

The latency rows time each run cold after a fixed 1 ms idle gap (profiles.runner).  A deployed tier idles
longer between its calls: the end device waits for the reply of every request it sent, the server for the
next request.  How much that costs is a property of the machine (measured with `bench/idle_gap.py`: 2.3x
after 20 ms idle on one 2-vCPU Intel Xeon VM, 7.75x on another, under 10% on an AMD EPYC VM), so it is
measured per profile, like the rows:

    meta["idle"] = {"gap_ms": [1, 2, 5, ...], "median_ms": [...], "factor": [...], "part": ..., "method": ...}

factor = the median call after that gap (8 MiB touched first, as a cold row) / the median after the rows'
1 ms gap, for one reference part: the whole unpruned model (the largest part of either role).  The latency
model multiplies a cold part by `Profile.idle_factor(gap)`, assuming the slowdown is proportional to the part's time
(one reference, not every part: an approximation, said in the README).  An emulated profile keeps its
source's curve unscaled: its runtime spins (F - 1) x the measured compute, so a slow call stays slow by the
same ratio.
"""
from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

from profiles.profile import Profile, emulated_source_path, profile_path, read_json, save_json
from profiles.runner import COLD_GAP_S, session as ort_session, time_session

DEFAULT_GAPS_MS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
DEFAULT_CALLS = 40


def measure(model: str, input_size: int, threads: int, num_classes: int = 10, gaps_ms=DEFAULT_GAPS_MS,
            calls: int = DEFAULT_CALLS, seed: int = 0) -> dict[str, Any]:
    """The idle curve of this machine for `model` at `input_size` on `threads` ONNX Runtime threads."""
    import torch

    from compress import onnx_io, zoo

    torch.manual_seed(seed)
    net = zoo.build(model, num_classes, input_size).eval()
    x = torch.randn(1, 3, input_size, input_size)
    with tempfile.TemporaryDirectory(prefix="idle-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx_io.export(net.tail(0), x, path)
        sess = ort_session(path, threads)
        medians = [time_session(sess, x.numpy(), repeats=calls, warmup=10, min_ms=0, cold=True,
                                gap_s=gap / 1e3)["median_ms"] for gap in (COLD_GAP_S * 1e3, *gaps_ms)]
    base, rest = medians[0], medians[1:]
    return {"gap_ms": [float(g) for g in gaps_ms], "median_ms": [round(m, 4) for m in rest],
            "factor": [round(m / base, 4) for m in rest], "reference_ms": round(base, 4),
            "part": f"{model} {input_size}px, the whole unpruned model (random weights)", "threads": int(threads),
            "calls": int(calls), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "method": (f"median of {calls} session.run calls (profiles.runner.time_session, cold: 8 MiB touched, "
                       f"then an idle sleep of each gap), "
                       f"divided by the median after the latency rows' own {COLD_GAP_S * 1e3:g} ms gap")}


def add_to_file(device: str, model: str, input_size: int, root: str | Path | None = None,
                path: str | Path | None = None, **kwargs) -> Path:
    """Measure and write the idle curve of an existing profile in place (an emulated profile copies its
    source's, measure that one first)."""
    path = Path(path or profile_path(device, model, input_size, root))
    doc = read_json(path)
    profile = Profile(doc, str(path))
    source = profile.meta.get("emulates")
    if source:
        src_path = emulated_source_path(source, model, input_size, root)
        curve = read_json(src_path)["meta"].get("idle")
        if not curve:
            raise ValueError(f"{src_path} has no idle curve: measure it first (python -m profiles idle --device {source} ...)")
        curve = {**curve, "copied_from": str(source)}
    else:
        curve = measure(model, input_size, int(profile.meta.get("threads", 1)), profile.num_classes, **kwargs)
    doc["meta"]["idle"] = curve
    save_json(doc, path)
    return path

"""What surrounds the end device's model call changes how long the call takes: an exported head.onnx timed
the way the profiler times its warm row (the same input back to back) and the way runtime.edge runs it
(a new test image each time, then the emulated slowdown's reruns and spin, then the steal-time read).

    python bench/head_calls.py --model-dir runs/<run>/deploy/end [--n 300] [--factor 50] [--repeats 2]

Prints the median and mean ms of the call itself for each pattern, measured in this run, interleaved over
`--repeats` rounds so drift hits every pattern alike.  The emulation multiplies the call's own time by the
factor, so a pattern's excess over the first row is what a deployed emulated device pays F times over.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from compress.onnx_io import session, warm_up  # noqa: E402
from runtime import manifest as mf  # noqa: E402
from runtime.edge import _slow, _test_split, stolen_ms  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True, help="an exported end directory (manifest.json, head.onnx)")
    ap.add_argument("--n", type=int, default=300, help="calls per pattern and round")
    ap.add_argument("--factor", type=float, default=50.0, help="the emulated slowdown of the patterns that use one")
    ap.add_argument("--repeats", type=int, default=2, help="rounds over all patterns")
    args = ap.parse_args(argv)
    manifest = mf.load(args.model_dir)
    if not manifest["head"]:
        raise SystemExit(f"{args.model_dir}: this split has no head on the end device (k = 0)")
    head = session(mf.part_path(args.model_dir, manifest, "head"), threads=1)
    name = head.get_inputs()[0].name
    warm_up(head, (1, *manifest["input"]["shape"]))
    images, _ = _test_split(manifest, None, None)
    inputs = [mf.normalize(images[i:i + 1], manifest) for i in range(min(len(images), 1000))]

    def call(x: np.ndarray) -> float:
        start = time.perf_counter()
        head.run(None, {name: x})
        return time.perf_counter() - start

    def emulated(i: int, rerun: bool, steal: bool) -> float:
        feed = {name: inputs[i % len(inputs)]}
        c = call(feed[name])
        _slow(c, args.factor, rerun=(lambda: head.run(None, feed)) if rerun else None)
        if steal:
            stolen_ms()
        return c

    patterns = {
        "same input back to back (the profile's warm row)": lambda i: call(inputs[0]),
        "a new image each call": lambda i: call(inputs[i % len(inputs)]),
        f"new image, then {args.factor:g}x emulation (reruns + spin)": lambda i: emulated(i, True, False),
        f"new image, then {args.factor:g}x spin only": lambda i: emulated(i, False, False),
        f"new image, {args.factor:g}x emulation, /proc/stat read": lambda i: emulated(i, True, True),
    }
    times: dict[str, list[float]] = {p: [] for p in patterns}
    for _ in range(args.repeats):
        for label, run in patterns.items():
            times[label].extend(run(i) * 1e3 for i in range(args.n))
    base = float(np.median(times[next(iter(patterns))]))
    print(f"{args.model_dir}: head.onnx call ms, {args.n} x {args.repeats} calls per pattern")
    for label, ts in times.items():
        ts = np.asarray(ts)
        print(f"  {label:<58} median {np.median(ts):.4f}  mean {ts.mean():.4f}  x{np.median(ts) / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

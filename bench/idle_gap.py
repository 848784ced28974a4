"""How long a model call takes after the CPU has idled for a while: one split's tail in ONNX Runtime,
timed after an idle gap of each length (the profiles time every run after a fixed 1 ms gap; a deployed
tier waits for the other tiers between requests).

    python bench/idle_gap.py --model resnet18 --input-size 32 --k 2 --gaps 0,1,2,5,20 --threads 1,2

Prints the median and p90 ms per call for each (threads, gap), measured in this run, and the load average.
Run it on a quiet machine, and once more with a busy neighbour (`--busy`: a process spinning on one core)
to see whether the idle CPU or the model is slow.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from compress import onnx_io, zoo  # noqa: E402


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--k", type=int, default=2, help="the split whose tail (blocks k..K-1) is timed")
    ap.add_argument("--gaps", default="0,1,2,5,20", help="idle gaps before each call, ms")
    ap.add_argument("--threads", default="1,2", help="ONNX Runtime intra-op threads")
    ap.add_argument("--calls", type=int, default=100, help="timed calls per (threads, gap)")
    ap.add_argument("--busy", action="store_true", help="keep one core busy in another process meanwhile")
    args = ap.parse_args()
    model = zoo.build(args.model, 10, args.input_size).eval()
    with torch.no_grad():
        x = torch.randn(1, 3, args.input_size, args.input_size)
        feats = model.head(args.k)(x)
    path = Path(tempfile.mkdtemp()) / "tail.onnx"
    onnx_io.export(model.tail(args.k), feats, path)
    stop = mp.Event()
    neighbour = mp.Process(target=_spin, args=(stop,), daemon=True) if args.busy else None
    if neighbour is not None:
        neighbour.start()
    try:
        print(f"{args.model} {args.input_size}px tail from k={args.k}; load average {os.getloadavg()}; "
              f"busy neighbour: {'yes' if args.busy else 'no'}")
        for threads in map(int, args.threads.split(",")):
            sess = onnx_io.session(path, threads)
            name = sess.get_inputs()[0].name
            inp = feats.numpy()
            for _ in range(20):
                sess.run(None, {name: inp})
            for gap in map(float, args.gaps.split(",")):
                times = []
                for _ in range(args.calls):
                    if gap:
                        time.sleep(gap / 1e3)
                    start = time.perf_counter()
                    sess.run(None, {name: inp})
                    times.append((time.perf_counter() - start) * 1e3)
                print(f"threads {threads}  gap {gap:5.1f} ms: median {np.median(times):7.3f} ms, "
                      f"p90 {np.percentile(times, 90):7.3f} ms")
    finally:
        stop.set()
        if neighbour is not None:
            neighbour.join()


if __name__ == "__main__":
    main()

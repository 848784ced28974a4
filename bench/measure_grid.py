"""Measure a full candidate grid once (every split, every ratio of the profile) and write it as a
measurements file, so any search can be replayed on it (`auto.py --measurements`, bench/search_efficiency.py).

    python bench/measure_grid.py --model resnet18 --out runs/landscapes/resnet18-fashion

Writes measurements.csv (accuracies with n, held-out test accuracies) and arrays/*.npz (the per-sample
arrays, exits and codecs included) beside it; candidates already in the cache cost nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm  # noqa: E402

from compress import measurements  # noqa: E402
from search.run import RunSpec, context  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--finetune-epochs", type=int, default=None)
    ap.add_argument("--ratios", default=None, help="a comma-separated subset of the profile's ratio grid (default: all)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or f"runs/landscapes/{args.model}-{args.dataset}")
    spec = RunSpec(model=args.model, dataset=args.dataset, finetune_epochs=args.finetune_epochs,
                   ratios=[float(r) for r in args.ratios.split(",")] if args.ratios else None,
                   run_dir=str(out / "run")).resolved()
    ctx = context(spec)
    rows, started = {}, time.perf_counter()
    for k, r in tqdm(ctx.problem.space.candidates(), desc="grid"):
        rows[(k, r)] = ctx.pool.evaluations(k, r)
    path = measurements.write(rows, out / "measurements.csv", arrays_dir="arrays")
    print(f"{len(rows)} candidates ({ctx.pool.fine_tunes} fine-tuned now, {ctx.pool.exit_trainings} exit "
          f"trainings) in {time.perf_counter() - started:.0f} s -> {path}")


if __name__ == "__main__":
    main()

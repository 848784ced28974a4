"""Issue 4's table: for each (k, r), accuracy after fine-tuning, exit statistics at t = 0.9, bytes, time.

    python bench/compress_table.py --model resnet18 --splits 1,2,3,4,5 --out runs/bench/compress-resnet18.csv
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from compress import data as datasets  # noqa: E402
from compress import zoo  # noqa: E402
from compress.base import base_model  # noqa: E402
from compress.candidate import build_candidate  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--splits", default="1,2,3,4")
    p.add_argument("--ratios", default="0,0.3,0.5,0.7,0.9")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    data = datasets.load("digits", input_size=a.input_size)
    base = base_model(a.model, data)
    rows = []
    for k in map(int, a.splits.split(",")):
        for r in map(float, a.ratios.split(",")):
            start = time.perf_counter()
            c = build_candidate(base, data, k, r)
            val = c.evaluations["val"]
            rows.append({"model": a.model, "k": k, "block": base.model.block_names[k - 1], "r": r,
                         "val_acc": val.accuracy([None])[0], "test_acc": c.evaluations["test"].accuracy([None])[0],
                         "val_acc_int8": val.accuracy([None], "int8")[0],
                         "exit_acc_all": float((val.exit_pred == val.label).mean()) if val.exit_pred is not None else None,
                         "acc_t0.9": val.accuracy([0.9])[0], "exit_rate_t0.9": val.exit_rate([0.9])[0],
                         "bytes_fp32": zoo.split_table(c.model, a.input_size)[k].bytes("fp32"),
                         "epochs": len(c.meta["history"]),
                         "epoch_val_acc": [round(h["val_acc"], 3) for h in c.meta["history"]],
                         "seconds": c.meta["total_seconds"], "cached": c.meta.get("cached"),
                         "wall_s": round(time.perf_counter() - start, 2)})
            print(rows[-1], flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(a.out, index=False)
    print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"base val acc {base.meta['val_acc']:.4f}, test acc {base.meta['test_acc']:.4f}")


if __name__ == "__main__":
    main()

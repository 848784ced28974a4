"""Measured accuracies as input: candidates fine-tuned elsewhere (a GPU cluster, a paper's table).

    k,r,top1,n[,top5][,test_top1,n_test][,test_top5][,codec][,arrays]

One row per (k, r) and codec (default fp32; "raw" at k = 0): the accuracy of the candidate without an
exit on the samples the search chooses on, and how many samples that was (`n`, needed for the
confidence bound; with --confidence 0 it may be left out).  `test_*` columns give held-out accuracies
(what the answer delivers); without them the output says the promise was not checked on held-out data.
`arrays` names an .npz (relative to the CSV) with the per-sample arrays of this project's candidate
cache (`compress.candidate.pack_evaluations`): exits, thresholds and variable codecs then work as for a
candidate fine-tuned here.  An accuracy alone is kept as the count it stands for: n samples of which
round(accuracy x n) are right, so its bound is the one the same count measured here would get.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from compress.candidate import Evaluation, unpack_evaluations

POINT_N = 100_000  # an accuracy given without n (only with --confidence 0) is held to 1e-5
METRICS = ("top1", "top5")
COLUMNS = ("k", "r", "codec", "n", "n_test", "arrays", *METRICS, *(f"test_{m}" for m in METRICS))

Measured = dict[tuple[int, float], dict[str, Evaluation]]


def _counted(acc: dict[str, float], n: int, codec: str) -> Evaluation:
    """An Evaluation that holds exactly `acc[metric]` x n right answers (labels 0, wrong answers 1)."""
    right = {m: np.arange(n) < round(a * n) for m, a in acc.items()}
    top1 = right.get("top1", right.get("top5"))
    top5 = right.get("top5", top1)
    return Evaluation(label=np.zeros(n, dtype=np.int64), exit_conf=None, exit_pred=None, exit_top5=None,
                      final={codec: np.where(top1, 0, 1).astype(np.int64)}, final_top5={codec: top5})


def _merge(a: Evaluation, b: Evaluation, where: str) -> Evaluation:
    if len(a.label) != len(b.label):
        raise ValueError(f"{where}: rows of one (k, r) must share n across codecs")
    return Evaluation(a.label, None, None, None, {**a.final, **b.final}, {**a.final_top5, **b.final_top5})


def load(path: str | Path, K: int, ratios, metric: str = "top1", need_n: bool = True) -> Measured:
    """Read a measurements CSV for a model with split points 0..K and the profile's ratio grid."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"measurements file {str(path)!r} does not exist")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a CSV ({str(e).splitlines()[0]})") from None
    unknown = [c for c in df.columns if c not in COLUMNS]
    if unknown:
        raise ValueError(f"{path}: unknown column(s) {', '.join(map(str, unknown))}; allowed: {', '.join(COLUMNS)}")
    for c in ("k", "r"):
        if c not in df.columns:
            raise ValueError(f"{path}: column {c!r} is missing (needed: k, r and an accuracy per metric)")
    has_arrays = "arrays" in df.columns
    if metric not in df.columns and not has_arrays:
        raise ValueError(f"{path}: no {metric!r} column: the search's metric needs an accuracy per row")
    if need_n and "n" not in df.columns and not has_arrays:
        raise ValueError(f"{path}: column 'n' (samples each accuracy was measured on) is needed for the "
                         f"confidence bound; or pass --confidence 0 to use the accuracies as point estimates")
    grid = {round(float(r), 4) for r in ratios}
    out: Measured = {}
    for i, row in df.iterrows():
        where = f"{path} row {i + 2}"
        k, r = _kr(row, K, grid, where)
        if has_arrays and isinstance(row.get("arrays"), str) and row["arrays"]:
            evals = _arrays(path.parent / row["arrays"], where)
        else:
            evals = _from_accuracies(row, k, K, metric, where)
        if (k, r) in out:
            evals = {s: _merge(out[(k, r)][s], e, where) for s, e in evals.items()}
        out[(k, r)] = evals
    return out


def _kr(row, K: int, grid: set[float], where: str) -> tuple[int, float]:
    try:
        kf, r = float(row["k"]), round(float(row["r"]), 4)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: k and r must be numbers") from None
    if not kf.is_integer() or not 0 <= kf <= K:
        raise ValueError(f"{where}: split point k={row['k']} is outside 0..{K} (the profile's split points)")
    k = int(kf)
    if k == 0:
        r = 0.0  # nothing is pruned when the image is sent
    if r not in grid:
        raise ValueError(f"{where}: ratio r={r:g} is not in the profile's grid {sorted(grid)}")
    return k, r


def _accuracy(row, column: str, where: str) -> float | None:
    value = row.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        a = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {column} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"{where}: {column} must be in [0, 1], got {a:g}")
    return a


def _count(row, column: str, default: int, where: str) -> int:
    value = row.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    if not float(value).is_integer() or int(value) < 1:
        raise ValueError(f"{where}: {column} must be a positive whole number of samples, got {value!r}")
    return int(value)


def _from_accuracies(row, k: int, K: int, metric: str, where: str) -> dict[str, Evaluation]:
    codec = row.get("codec") if isinstance(row.get("codec"), str) else ("raw" if k == 0 else "fp32")
    if k == K:
        codec = "fp32"
    sel = {m: a for m in METRICS if (a := _accuracy(row, m, where)) is not None}
    if metric not in sel:
        raise ValueError(f"{where}: no {metric} accuracy")
    n = _count(row, "n", POINT_N, where)
    out = {"selection": _counted(sel, n, codec)}
    test = {m: a for m in METRICS if (a := _accuracy(row, f"test_{m}", where)) is not None}
    if test:
        out["test"] = _counted(test, _count(row, "n_test", n, where), codec)
    else:  # no held-out samples: delivery shows as not measured (NaN), never as the selection's
        out["test"] = _counted({metric: 0.0}, 0, codec)
    return out


def _arrays(path: Path, where: str) -> dict[str, Evaluation]:
    if not path.is_file():
        raise ValueError(f"{where}: arrays file {str(path)!r} does not exist")
    try:
        evals = unpack_evaluations(path.read_bytes())
    except (ValueError, OSError, KeyError) as e:
        raise ValueError(f"{where}: {path} is not an evaluation .npz ({e})") from None
    if "selection" not in evals:
        raise ValueError(f"{where}: {path} has no selection arrays")
    return evals


def has_test(evaluations: dict[str, Evaluation]) -> bool:
    """True when the candidate carries held-out (test) samples."""
    return "test" in evaluations and len(evaluations["test"].label) > 0


def write(rows: Measured, path: str | Path, arrays_dir: str | Path | None = None) -> Path:
    """Write evaluated candidates as a measurements CSV (with per-sample .npz files under `arrays_dir`)."""
    from compress.candidate import pack_evaluations

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for (k, r), evals in sorted(rows.items()):
        sel = evals["selection"]
        row = {"k": k, "r": r, "top1": float(sel.accuracy([None])[0]), "n": len(sel.label)}
        if has_test(evals):
            row.update(test_top1=float(evals["test"].accuracy([None])[0]), n_test=len(evals["test"].label))
        if arrays_dir is not None:
            name = Path(arrays_dir) / f"k{k}-r{r:g}.npz"
            (path.parent / name).parent.mkdir(parents=True, exist_ok=True)
            (path.parent / name).write_bytes(pack_evaluations(evals))
            row["arrays"] = str(name)
        out.append(row)
    pd.DataFrame(out).to_csv(path, index=False)
    return path

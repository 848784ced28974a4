"""docs/benchmarks.md from the CSVs of bench/promises.py (nothing here is measured: it only summarises).

    python bench/promises_report.py --run runs/bench/promises --out docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.tables import markdown  # noqa: E402

BASELINES = ("device only", "cloud only", "split (Neurosurgeon)", "split + exit (Edgent-like)",
             "split + pruning (CNNPC-like)")


def _bound_kind(run: Path) -> str:
    first = pd.read_csv(run / "methods.csv", nrows=1)
    return "family-wise" if int(first.get("candidates_bounded", pd.Series([1]))[0]) > 1 else "per candidate"


def trust_summary(head: pd.DataFrame, dep: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for conf, g in head.groupby("confidence", sort=False):
        ok = g[g.choice != "infeasible"]
        d = dep[dep.confidence == conf] if len(dep) else dep
        gap = ok.delivered_ms - ok.promised_ms
        rows.append({
            "confidence": conf, "answers": len(ok), "infeasible": int((g.choice == "infeasible").sum()),
            "test acc >= A0": f"{int(ok.meets_A0.sum())}/{len(ok)} ({100 * ok.meets_A0.mean():.0f}%)",
            "worst test acc - A0": float((ok.test_acc - ok.A0).min()),
            "delivered - promised ms (median)": float(gap.median()),
            "delivered - promised ms (worst)": float(gap.max()),
            "deployed vs promise % (median)": float(d.vs_promise_pct.median()) if len(d) else np.nan,
            "deployed vs promise % (worst)": float(d.vs_promise_pct.max()) if len(d) else np.nan,
            "deployed vs prediction % (median abs error)": float(d.vs_prediction_pct.abs().median()) if len(d) else np.nan,
            "within 10% of the prediction":
                f"{int((d.vs_prediction_pct.abs() <= 10).sum())}/{len(d)}" if len(d) else "-",
            **({"deployed vs re-timed prediction % (median abs error)": float(d.vs_retimed_pct.abs().median()),
                "within 10% of the re-timed prediction": f"{int((d.vs_retimed_pct.abs() <= 10).sum())}/{len(d)}"}
               if "vs_retimed_pct" in d else {}),
            "split and send": int(ok.splits_and_sends.sum()), "exit answers all": int(ok.exit_answers_all.sum())})
    return pd.DataFrame(rows)


def write(run: Path, out: Path, familywise: Path | None = None) -> None:
    head = pd.read_csv(run / "headline.csv")
    dep = pd.read_csv(run / "deployed.csv") if (run / "deployed.csv").stat().st_size > 1 else pd.DataFrame()
    meta = json.loads((run / "meta.json").read_text())
    csv_dir = out.parent / "benchmarks" / "csv"
    csv_dir.mkdir(parents=True, exist_ok=True)
    for name in ("headline.csv", "methods.csv", "deployed.csv"):
        shutil.copy(run / name, csv_dir / f"promises-{name}")
    which = ("those timed on this machine in the run (--profiles-now: host and server measured, the emulations "
             "made from them)" if meta["args"].get("profiles_now") else "the shipped")
    parts = [f"# Benchmarks\n\nWritten by `bench/promises_report.py` on {datetime.now(timezone.utc):%Y-%m-%d} from "
             f"`{meta['command']}` ({meta['seconds'] / 60:.1f} min on this 2-core machine, base models and fine-tunes "
             f"included unless they were cached: train_seconds below is what a base cost when it was trained). "
             f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}. CSVs in "
             f"`docs/benchmarks/csv/promises-*.csv`.\n",
             "Data: Fashion-MNIST at 32 px (Debian's dataset-fashion-mnist), roles train / val / selection / test "
             f"as printed below; profiles: {which} 32 px `host`, `emulated-10x`, `emulated-50x` (end devices) "
             "and `server`, rtt 5 ms. A0 = the base model's selection accuracy minus 1 or 3 points. The answer of "
             "each scenario is the exhaustive optimum of the search space (every candidate of the grid fine-tuned "
             "and evaluated; the search's own efficiency is not measured here); each baseline is its family's "
             "exact best. Promises come from the selection split; delivery is measured on the test split.\n",
             "## Base models\n"]
    bases = pd.DataFrame([{"model": m, **{k: v for k, v in b.items() if k != "data"},
                           **{f"n {r}": n for r, n in b["data"].items()}} for m, b in meta["bases"].items()])
    parts.append(markdown(bases) + "\n")
    parts.append("## Promise against delivery, both confidence settings\n")
    parts.append("`confidence 0` is the old behaviour (point estimates on the split the choice was made on).\n")
    summary = trust_summary(head, dep)
    summary.insert(1, "bound", [_bound_kind(run) if c else "-" for c in summary.confidence])
    if familywise is not None:
        fw = trust_summary(pd.read_csv(familywise / "headline.csv"), pd.DataFrame())
        fw.insert(1, "bound", "family-wise")
        summary = pd.concat([fw, summary], ignore_index=True)
        parts.append(f"The family-wise rows come from `bench/promises.py --deploy-limit 0 --confidences 0.95 --out "
                     f"{familywise}` (the same grid, no deployment): each candidate bounded at 1 - 0.05 / M, M = the "
                     f"(k, r, codec) candidates of the space, so the chosen one's bound holds at 0.95.\n")
    parts.append(markdown(summary) + "\n")
    ok = head[(head.choice != "infeasible")]
    best = ok[ok.confidence == ok.confidence.max()]
    counts = best["best baseline"].value_counts()
    where_col = ["best baseline runs"] if "best baseline runs" in best else []  # runs before session 12 lack it
    parts.append(f"## Regimes (confidence {ok.confidence.max():g}, bounds {_bound_kind(run)})\n")
    parts.append("Which baseline is fastest per scenario: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".\n")
    if where_col:
        where = best["best baseline runs"].value_counts()
        parts.append("Where the fastest baseline runs (on device: the whole network on the end device, pruned or not; "
                     "cloud only: the input sent; split: a cut in between): "
                     + ", ".join(f"{k} {v}" for k, v in where.items()) + ".\n")
    cols = ["scenario", "choice", "A0", "acc_bound", "test_acc", "meets_A0", "promised_ms", "delivered_ms",
            "test_exit_rate", "sent_bytes", "best baseline", *where_col] + [f"x {m}" for m in BASELINES]
    parts.append(markdown(best[cols]) + "\n")
    parts.append("`x method` = that baseline's promised latency over ours (feasible baselines only; 1 = no gain).\n")
    no_gain = best[[r[[f"x {m}" for m in BASELINES]].dropna().min() <= 1.0001 for _, r in best.iterrows()]]
    parts.append(f"Scenarios where we do not beat the best baseline (a tie within 0.01%): {len(no_gain)} of {len(best)}"
                 + (": " + "; ".join(f"{r.scenario} ({r['best baseline']})" for _, r in no_gain.iterrows()) if len(no_gain)
                    else "") + ".\n")
    if len(dep):
        parts.append("## Deployed over the shaped loopback link\n")
        runs = int(dep["runs"].max()) if "runs" in dep else 1
        parts.append(f"Each distinct answer deployed {runs} time(s) per (device, bandwidth) over the first test "
                     "samples; the median run is shown (`meas_min_ms`/`meas_max_ms`: the spread of the runs' means); "
                     "`predicted` = the latency model for exactly these samples' exit decisions, `promised` = what "
                     "the search promised from the selection split (mean, at the bounded exit rate).\n")
        spread = ["meas_min_ms", "meas_max_ms"] if "meas_min_ms" in dep else []
        retimed = (["device_drift", "server_drift", "pred_retimed_ms", "vs_retimed_pct"] if "vs_retimed_pct" in dep
                   else [])
        if retimed:
            parts.append("`device_drift`/`server_drift`: the answer's parts timed right before its deployment, as the "
                         "profile rows were, over those rows (1 = the machine runs as profiled; `profiles.profiler."
                         "drift`, printed by `auto.py --deploy`); `pred_retimed_ms`: the prediction with each side's "
                         "compute scaled by its drift, the transfer unchanged.\n")
        dcols = ["scenario", "confidence", "choice", "n", "promised_ms", "pred_mean_ms", "meas_mean_ms", *spread,
                 "vs_prediction_pct", "vs_promise_pct", *retimed, "pred_device_ms", "meas_device_ms", "pred_transfer_ms",
                 "meas_transfer_ms", "pred_server_ms", "meas_server_ms", "meas_exit_rate", "agreement"]
        parts.append(markdown(dep[dcols]) + "\n")
    out.write_text("\n".join(parts))
    print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/bench/promises")
    p.add_argument("--out", default="docs/benchmarks.md")
    p.add_argument("--familywise", default=None, help="a second run's directory, made with family-wise bounds")
    a = p.parse_args()
    write(Path(a.run), Path(a.out), Path(a.familywise) if a.familywise else None)


if __name__ == "__main__":
    main()

"""Assemble docs/benchmarks.md (tables and plots) from the CSV files the bench scripts wrote in this run.

    python bench/report.py --command "make bench" --started <unix time>
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scenarios import BUDGETS, COLLABORATIVE, SINGLE, SPLITS  # noqa: E402
from bench.search_efficiency import summary  # noqa: E402

CNNPC = {"vs single end": 6.1, "vs collaborative": 4.1, "less communication": 45.6}  # reported by CNNPC


def md(df: pd.DataFrame, digits: int = 3) -> str:
    """A markdown table (pandas' to_markdown needs tabulate, which we do not ship)."""
    def cell(v):
        if isinstance(v, (float, np.floating)):
            if np.isnan(v) or np.isinf(v):
                return "" if np.isnan(v) else str(v)
            return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.{digits}g}" if 0 < abs(v) < 0.01 else f"{v:.{digits}f}"
        return str(v)
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def versions() -> dict:
    from search.run import versions as v

    return v()


def headline_section(head: pd.DataFrame, out: Path) -> list[str]:
    parts = []
    ratio_cols = [f"x {m}" for m in (*SINGLE, *COLLABORATIVE)]
    short = {f"x {m}": "x " + m.split(" (")[-1].rstrip(")") for m in (*SINGLE, *COLLABORATIVE)}
    for size, g in head.groupby("size"):
        t = g[["model", "device", "bandwidth_mbps", "A0", "choice", "ms", "sent_bytes", "val_acc", "test_acc",
               "gap_to_exhaustive_pct", *ratio_cols]].rename(columns={**short, "bandwidth_mbps": "Mbps",
                                                                        "gap_to_exhaustive_pct": "gap %"})
        parts.append(f"### {size} px\n\n" + md(t))
    parts += size_section(head)
    big = head[head["size"] == head["size"].max()]
    single = big[[f"x {m}" for m in SINGLE]].min(axis=1)  # against the better single end
    collab = big[[f"x {m}" for m in COLLABORATIVE]].min(axis=1)  # against the best collaborative method
    comm = big["bytes x cloud only"].replace(np.inf, np.nan)
    zero = int((big["sent_bytes"] == 0).sum())
    cmp = pd.DataFrame([
        {"figure": "speedup against the better single end", "CNNPC (up to)": CNNPC["vs single end"],
         "ours max": single.max(), "ours median": single.median()},
        {"figure": "speedup against the best collaborative method", "CNNPC (up to)": CNNPC["vs collaborative"],
         "ours max": collab.max(), "ours median": collab.median()},
        {"figure": "less communication than cloud only (scenarios that send)", "CNNPC (up to)": CNNPC["less communication"],
         "ours max": comm.max(), "ours median": comm.median()},
    ])
    parts.append(f"### Beside CNNPC ({int(big['size'].max())} px, {len(big)} scenarios)\n\n" + md(cmp, 3)
                 + f"\n{zero} of {len(big)} scenarios send nothing per request on average (device only, or an exit "
                   "answers every validation sample), so their communication ratio is unbounded and left out.\n")
    behind = []
    for _, r in head.iterrows():
        for m in (*SINGLE, *COLLABORATIVE):
            v = r[f"x {m}"]
            if not np.isnan(v) and v < 1.005:
                behind.append(f"{r['scenario']}: {m} {v:.3f}x")
    parts.append("### Where we do not beat a baseline\n\nA ratio below 1.005 means the baseline is as fast as "
                 "the joint search's answer (or faster, where the TPE search missed the exhaustive optimum):\n\n"
                 + ("\n".join(f"- {b}" for b in behind) if behind else "- none") + "\n")
    plot_speedups(big, out / "speedups.png")
    parts.append("![speedups](benchmarks/speedups.png)\n")
    return parts


def size_section(head: pd.DataFrame) -> list[str]:
    """The same scenario at every input size side by side: how the answer changes with the size."""
    if head["size"].nunique() < 2:
        return []
    keys = ["model", "device", "bandwidth_mbps", "A0_drop"]
    values = ["choice", "ms", "sent_bytes", "x cloud only"]
    wide = head.pivot_table(index=keys, columns="size", values=values, aggfunc="first")
    wide.columns = [f"{value} {size}px" for value, size in wide.columns]
    order = [f"{v} {s}px" for s in sorted(head["size"].unique()) for v in values]
    t = wide[order].reset_index().rename(columns={"bandwidth_mbps": "Mbps", "A0_drop": "A0 drop (points)"})
    return ["### How the answer changes with the input size\n\nThe same scenario at each size (A0 is relative to "
            "that size's base model; `x cloud only` = cloud only's latency over ours):\n\n" + md(t)]


def plot_speedups(big: pd.DataFrame, path: Path) -> None:
    methods = (*SINGLE, *COLLABORATIVE)
    fig, ax = plt.subplots(figsize=(12, 4.5))
    x = np.arange(len(big))
    w = 0.8 / len(methods)
    for i, m in enumerate(methods):
        ax.bar(x + i * w, big[f"x {m}"].fillna(0), w, label=m)
    ax.axhline(1, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(x + 0.4 - w / 2)
    ax.set_xticklabels([s.replace(" ", "\n", 2) for s in big["scenario"]], fontsize=6, rotation=90)
    ax.set_ylabel("baseline latency / ours (log)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_xy(df: pd.DataFrame, x: str, y: str, path: Path, title: str, diagonal: bool = True, logx=False) -> None:
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(df[x], df[y], s=14)
    if diagonal:
        lim = [0, max(df[x].max(), df[y].max()) * 1.05]
        ax.plot(lim, lim, "k--", lw=0.8)
    if logx:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bench", default=str(ROOT / "runs" / "bench"))
    p.add_argument("--command", default="make bench")
    p.add_argument("--started", type=float, default=None, help="unix time the suite started (for its wall time)")
    a = p.parse_args()
    bench, docs = Path(a.bench), ROOT / "docs"
    figs = docs / "benchmarks"
    figs.mkdir(parents=True, exist_ok=True)
    sc, rt = bench / "scenarios", bench / "runtime"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    wall = f"; the suite took {(time.time() - a.started) / 60:.1f} min" if a.started else ""
    if (sc / "grid.csv").exists():  # a warm run's wall time is not a cold run's: say which this was
        built = pd.read_csv(sc / "grid.csv")["built_here"].astype(bool)
        wall += (f" ({int(built.sum())} of {len(built)} scenario candidates built in this run"
                 + (", the rest read from the cache)" if built.sum() < len(built) else ")"))
    parts = [f"# Benchmarks\n\nGenerated {datetime.now():%Y-%m-%d %H:%M} by `{a.command}` on {cpu} "
             f"({os.cpu_count()} cores){wall}. Versions: `{json.dumps(versions())}`.\n\n"
             "Every figure below was measured in that run, except the build time of candidates that an earlier run "
             "had already built (the grid table's `built_here` column): those are the times recorded when they were "
             "built. Latencies of the search are predictions from the measured profiles (device, exit, transfer, "
             "server); the deployment section measures them for real.\n\n"
             f"Budgets per input size: `{json.dumps({str(k): v for k, v in BUDGETS.items()})}`; split points "
             f"searched where restricted: `{json.dumps({f'{m} {s}px': v for (m, s), v in SPLITS.items()})}`.\n"]
    if (sc / "headline.csv").exists():
        head = pd.read_csv(sc / "headline.csv")
        parts.append("## 1. Joint search against the baselines\n\nExpected latency (ms) and bytes sent per request "
                     "(split tensor bytes x share not answered by the exit) of the joint search's answer, and each "
                     "baseline's exact best as a multiple of ours (`x method` = its latency / ours; empty = no "
                     "configuration of that method reaches A0). `gap %` = ours against the exhaustive optimum.\n")
        parts += headline_section(head, figs)
    if (sc / "efficiency.csv").exists():
        eff = pd.read_csv(sc / "efficiency.csv")
        parts.append("## 2. Search efficiency\n\nUntil the best feasible latency is within 1% of the exhaustive "
                     "optimum: median over seeds of trials, fine-tunes and wall time (search time measured on cached "
                     "candidates plus the measured build time of each candidate the run evaluated first, r = 0 exit "
                     "trainings included; the exhaustive grid needs every candidate). The last column is what each "
                     "method fine-tunes over all 60 trials of a run, i.e. what a user pays for the full default "
                     "budget.\n")
        for name, g in eff.groupby("scenario", sort=False):
            parts.append(f"### {name} (optimum {g['optimum_ms'].iloc[0]:.3f} ms)\n\n" + md(summary(g).reset_index()))
    if (sc / "deployed.csv").exists():
        dep = pd.read_csv(sc / "deployed.csv")
        parts.append("## 3. Prediction against measurement\n\nEach scenario's chosen split exported to ONNX, served "
                     "on loopback and run by the edge client over the shaped link (rtt 5 ms, the scenario's bandwidth, "
                     "the emulated device's slowdown), over the first `n` test samples. The prediction is made for "
                     "exactly those samples: each costs the exit path (head + exit) where the evaluation says the exit "
                     "answers it, else the full path (head + exit + transfer + server); the predicted mean and p95 are "
                     "over those per-sample costs. `agreement` = share of samples whose exit decision and answer the "
                     "ONNX deployment reproduced exactly (1.0 = the deployment is the evaluated model).\n\n"
                     + md(dep[["scenario", "choice", "n", "pred_mean_ms", "meas_mean_ms", "mean_error_pct",
                               "pred_p95_ms", "meas_p95_ms", "p95_error_pct", "pred_exit_rate", "meas_exit_rate",
                               "pred_accuracy", "meas_accuracy", "agreement", "bytes_per_request"]]))
        parts.append("\nWhere the time goes (ms per request, mean over the samples; predicted / measured):\n\n"
                     + md(dep[["scenario", "pred_device_ms", "meas_device_ms", "pred_transfer_ms", "meas_transfer_ms",
                               "pred_server_ms", "meas_server_ms"]].drop_duplicates("scenario")))
        parts.append(f"\nMedian absolute error of the mean: {dep['mean_error_pct'].abs().median():.1f}%; of the p95: "
                     f"{dep['p95_error_pct'].abs().median():.1f}%; lowest agreement {dep['agreement'].min():.3f}."
                     "\n\n![pred vs meas](benchmarks/deployed.png)\n")
        plot_xy(dep, "pred_mean_ms", "meas_mean_ms", figs / "deployed.png", "deployed splits: mean ms", logx=True)
    if (rt / "ort_vs_eager.csv").exists():
        parts.append("## 4. Runtime\n\n### ONNX Runtime against PyTorch eager (batch 1, one thread, median, "
                     "interleaved)\n\n" + md(pd.read_csv(rt / "ort_vs_eager.csv")))
    if (rt / "goodput.csv").exists():
        gp = pd.read_csv(rt / "goodput.csv")
        parts.append("### Goodput of the paced uplink against its set rate (SINK frames, rtt 0, median of 3)\n\n"
                     + md(gp))
    if (rt / "throughput.csv").exists():
        parts.append("### Cloud server throughput (resnet18 32 px k=4 r=0.5 int8, 2 server threads, unshaped "
                     "loopback)\n\n" + md(pd.read_csv(rt / "throughput.csv")))
    if (sc / "grid.csv").exists():
        parts.append("## Candidate grid (every (k, r) the scenarios used)\n\n" + md(pd.read_csv(sc / "grid.csv")))
    data_dir = figs / "csv"
    data_dir.mkdir(exist_ok=True)
    for f in [*sc.glob("*.csv"), *rt.glob("*.csv")]:
        shutil.copy(f, data_dir / f"{f.parent.name}-{f.name}")
    parts.append("\nThe CSV files behind these tables are in `docs/benchmarks/csv/`.\n")
    (docs / "benchmarks.md").write_text("\n".join(parts))
    print(f"wrote {docs / 'benchmarks.md'}")


if __name__ == "__main__":
    main()

"""Run outputs: best.json, trials.csv, baselines.csv, plots and the printed summary."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from search.latency import predict  # noqa: E402
from search.space import Config, score  # noqa: E402

PARTS = ("device_ms", "exit_ms", "transfer_ms", "server_ms")


def trials_frame(study) -> pd.DataFrame:
    df = study.trials_dataframe(attrs=("number", "state", "values", "params", "user_attrs", "duration"))
    return df.rename(columns=lambda c: c.replace("user_attrs_", ""))


def _completed(study) -> list:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "expected_ms" in t.user_attrs]


def choose(study, problem) -> tuple[dict | None, dict | None]:
    """(best feasible trial's attributes, most accurate trial's attributes)."""
    done = [t.user_attrs for t in _completed(study)]
    if not done:
        return None, None
    feasible = [a for a in done if a.get("feasible", True)]
    if problem.T0 is not None:
        best = max(feasible, key=lambda a: (a["val_acc"], -a["expected_ms"]), default=None)
    else:
        best = min(feasible, key=lambda a: (a["expected_ms"], -a["val_acc"]), default=None)
    return best, max(done, key=lambda a: (a["val_acc"], -a["expected_ms"]))


def _config(attrs: dict) -> Config:
    t = attrs.get("t")
    t = None if t is None or (isinstance(t, float) and np.isnan(t)) else float(t)
    return Config(int(attrs["k"]), float(attrs["r"]), t, attrs["codec"])


def pareto_plot(study, path: Path, best: dict | None) -> None:
    done = _completed(study)
    lat = np.array([t.user_attrs["expected_ms"] for t in done])
    acc = np.array([t.user_attrs["val_acc"] for t in done])
    order = np.argsort(lat)
    front, top = [], -1.0
    for i in order:
        if acc[i] > top:
            front.append(i)
            top = acc[i]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(lat, acc, s=12, alpha=0.5, label="trials")
    ax.plot(lat[front], acc[front], "r.-", label="Pareto front")
    if best:
        ax.scatter([best["expected_ms"]], [best["val_acc"]], marker="*", s=150, c="k", label="chosen", zorder=3)
    ax.set_xlabel("expected latency (ms)")
    ax.set_ylabel("validation accuracy")
    ax.set_xscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def threshold_plot(problem, evaluations, config: Config, path: Path) -> None:
    """Accuracy and expected latency of the chosen split against the exit threshold."""
    ts = np.linspace(0.1, 1.0, 91)
    ev = evaluations["val"]
    acc = ev.accuracy(list(ts), config.codec, problem.metric)
    rate = ev.exit_rate(list(ts))
    lat = predict(problem.device, problem.server, problem.network, config.k, config.r, config.codec,
                  exit_rate=0.0).expected_at(rate)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ts, lat, "b-", label="expected latency")
    ax.set_xlabel("exit threshold t")
    ax.set_ylabel("expected latency (ms)", color="b")
    ax2 = ax.twinx()
    ax2.plot(ts, acc, "g-", label="val accuracy")
    ax2.plot(ts, rate, "g:", label="exit rate")
    if problem.A0 is not None:
        ax2.axhline(problem.A0, color="r", lw=0.8, ls="--", label="A0")
    if config.t is not None:
        ax.axvline(config.t, color="k", lw=0.8)
    ax2.set_ylabel("accuracy / exit rate", color="g")
    ax2.legend(loc="lower left")
    ax.set_title(config.label())
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(ctx, study, reference: pd.DataFrame | None, spent: dict, versions: dict, args: dict) -> dict:
    """Write every output of the run and print the summary; returns what best.json holds."""
    problem, out = ctx.problem, Path(ctx.spec.run_dir)
    trials_frame(study).to_csv(out / "trials.csv", index=False)
    best, most_accurate = choose(study, problem)
    result = {"study": ctx.spec.study, "args": args, "versions": versions, "spent": spent,
              "device_profile": problem.device.meta, "server_profile": problem.server.meta,
              "network": {"bandwidth_mbps": problem.network.bandwidth_mbps, "rtt_ms": problem.network.rtt_ms},
              "base": {k: ctx.pool.base.meta.get(k) for k in ("val_acc", "test_acc", "epochs", "train_seconds")}}
    if ctx.spec.multi:
        front = sorted((t.user_attrs for t in study.best_trials), key=lambda a: a["expected_ms"])
        result["pareto_front"] = front
    if best is not None:
        s = score(problem, _config(best), ctx.pool.evaluations(int(best["k"]), float(best["r"])))
        result.update(feasible=True, best=s.as_dict(), predicted={**{p: s.breakdown.as_dict()[p] for p in PARTS},
                                                                  "expected_ms": s.latency_ms})
        threshold_plot(problem, ctx.pool.evaluations(s.config.k, s.config.r), s.config, out / "threshold.png")
    else:
        result.update(feasible=False, most_accurate=most_accurate)
    if _completed(study):
        pareto_plot(study, out / "pareto.png", best)
    if reference is not None:
        ours = result["best"]["expected_ms"] if best else float("nan")
        reference = reference.assign(speedup_of_ours=reference.get("expected_ms", np.nan) / ours)
        reference.to_csv(out / "baselines.csv", index=False)
        result["baselines"] = reference.replace({np.nan: None}).to_dict(orient="records")
    (out / "best.json").write_text(json.dumps(result, indent=2, default=str))
    print_summary(result, problem, out)
    return result


def print_summary(result: dict, problem, out: Path) -> None:
    target = f"T0 = {problem.T0} ms" if problem.T0 is not None else f"A0 = {problem.A0}"
    print(f"\n== {result['study']}  ({target}, {problem.network})")
    if result.get("feasible"):
        b = result["best"]
        t = "no exit" if b["t"] is None else f"{b['t']:.3f}"
        print(f"best: k={b['k']} r={b['r']:g} t={t} "
              f"codec={b['codec']}  expected {b['expected_ms']:.3f} ms  "
              f"(device {b['device_ms']:.3f} + exit {b['exit_ms']:.3f} + "
              f"{1 - b['exit_rate']:.3f} x (transfer {b['transfer_ms']:.3f} + server {b['server_ms']:.3f}))")
        print(f"      val acc {b['val_acc']:.4f}, test acc {b['test_acc']:.4f}, exit rate {b['exit_rate']:.3f}, "
              f"{b['bytes']} bytes when sent")
    else:
        m = result.get("most_accurate")
        print("no configuration reaches the target." + (
            f" Best reachable val accuracy {m['val_acc']:.4f} at {m['config']} ({m['expected_ms']:.3f} ms)"
            if m else ""))
    s = result["spent"]
    print(f"spent: {s['fine_tunes']} fine-tunes and {s['exit_trainings']} exit trainings here "
          f"(grid: {s['grid_fine_tunes']} fine-tunes, {s['grid_candidates']} candidates), "
          f"search {s['search_seconds']} s")
    if result.get("baselines"):
        df = pd.DataFrame(result["baselines"])
        cols = [c for c in ("method", "k", "r", "t", "codec", "expected_ms", "val_acc", "bytes", "feasible",
                            "complete", "speedup_of_ours") if c in df]
        print(df[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"outputs: {out}")

"""The joint search against every baseline over the scenario grid (models x input sizes x end devices x
bandwidths x accuracy targets), the search's efficiency against the exhaustive grid, and each scenario's
chosen split deployed over the shaped loopback link (predicted against measured).

Per (model, input size) the candidate grid is built once (its build times are measured here, or read from
the project table when a previous run built it); every scenario is then exact arithmetic over the same
candidates: the joint search (TPE + exact thresholds, as `auto.py` runs it) and each baseline's exact best.

    python bench/scenarios.py --models resnet18,mobilenet_v2 --sizes 32,224 --out runs/bench/scenarios
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from bench.promises import problems  # noqa: E402
from bench.search_efficiency import efficiency  # noqa: E402
from profiles import Network, load_profile  # noqa: E402
from search.pool import Abandoned  # noqa: E402
from search.reference import reference_table  # noqa: E402
from search.run import RunSpec, context  # noqa: E402
from search.space import Config, Problem, score  # noqa: E402
from search.study import Objective, open_study, polish, seed  # noqa: E402

# What makes the full suite fit in an hour on 2 CPU cores: at 224 px the base model continues from the
# 32 px one (progressive resizing) for 4 epochs, candidates fine-tune 2 epochs and train exits 5 epochs,
# all in bf16 autocast, over fewer split points; at 32 px the main job's own budgets are used.
BUDGETS = {
    32: dict(),
    224: dict(base_epochs=4, finetune_epochs=2, exit_epochs=5, precision="bf16", from_size=32),
}
SPLITS = {  # intermediate split points searched at 224 px (all at 32 px)
    ("mobilenet_v2", 224): [2, 3, 4, 6],
}
COLLABORATIVE = ("split (Neurosurgeon)", "split + exit (Edgent-like)", "split + pruning (CNNPC-like)")
SINGLE = ("device only", "cloud only")
JOINT = "joint search (TPE)"
# the scenario grid (r in {0, 0.5}) is small; search efficiency is also measured where the space is wider
WIDE_GRID = "resnet18:32:0,0.3,0.5,0.7"


def spec_for(model: str, size: int, ratios: list[float], out: Path, quick: bool) -> RunSpec:
    budget = dict(BUDGETS.get(size, BUDGETS[224]))
    from_size = budget.pop("from_size", None)
    weights = None
    if from_size is not None:  # progressive resizing: start from the smaller size's base model
        weights = str(context(spec_for(model, from_size, ratios, out, quick), log=lambda *_: None).pool.base.path)
    if quick:
        budget.update(finetune_epochs=1, exit_epochs=5)
    return RunSpec(model=model, end_device="host", input_size=size, dataset="digits", ratios=ratios, weights=weights,
                   splits=SPLITS.get((model, size)), progress=False, run_dir=str(out / f"{model}-{size}px"),
                   **budget).resolved()


def build_grid(ctx) -> pd.DataFrame:
    """Evaluate every (k, r) once; one row per candidate with its accuracy, bytes and build time."""
    rows = []
    for k, r in tqdm(ctx.problem.space.candidates(), desc=f"grid {ctx.spec.model} {ctx.spec.input_size}px"):
        start, spent = time.perf_counter(), ctx.pool.fine_tunes + ctx.pool.exit_trainings
        try:
            evals = ctx.pool.evaluations(k, r)
        except Abandoned:
            continue
        wall, built = time.perf_counter() - start, ctx.pool.fine_tunes + ctx.pool.exit_trainings > spent
        row = ctx.db.candidate(ctx.pool.base.digest, k, r, ctx.pool._recipe_id(k, r)) or {}
        val = evals["selection"]
        rows.append({"model": ctx.spec.model, "size": ctx.spec.input_size, "k": k, "r": r,
                     "val_acc": float(val.accuracy([None])[0]),
                     "val_acc_int8": float(val.accuracy([None], "int8")[0]) if "int8" in val.final else np.nan,
                     "exit_rate_t0.9": float(val.exit_rate([0.9])[0]) if val.exit_conf is not None else np.nan,
                     "acc_t0.9": float(val.accuracy([0.9])[0]) if val.exit_conf is not None else np.nan,
                     "build_s": float(row.get("seconds") or wall), "built_here": built})
    return pd.DataFrame(rows)


def joint_search(problem: Problem, pool, trials: int, seed_: int = 0) -> pd.Series:
    """The main job's search on cached candidates: seeded study, TPE, the exact polish; its best."""
    study = open_study("bench", optuna.storages.InMemoryStorage(), problem, False, seed_)
    seed(study, problem)
    study.optimize(Objective(problem, pool), n_trials=trials)
    polish(study, problem, pool)
    done = [t for t in study.trials if t.user_attrs.get("feasible")]
    if not done:
        return pd.Series({"method": JOINT, "feasible": False})
    a = min(done, key=lambda t: t.user_attrs["latency_ms"]).user_attrs
    s = score(problem, Config(a["k"], a["r"], a["t"], a["codec"]), pool.evaluations(a["k"], a["r"]))
    return pd.Series({"method": JOINT, "complete": True, **s.as_dict(), "feasible": s.feasible(problem)})


def scenario_rows(ctx, devices, bandwidths, drops, rtt: float, trials: int) -> pd.DataFrame:
    base_acc = ctx.pool.base.meta["val_acc"]
    frames = []
    for device, bw, drop, problem in problems(ctx, devices, bandwidths, drops, rtt, base_acc, families=1):
        table = reference_table(problem, ctx.pool, build=False, progress=False)
        table = pd.concat([table, joint_search(problem, ctx.pool, trials).to_frame().T], ignore_index=True)
        table.insert(0, "scenario", f"{ctx.spec.model} {ctx.spec.input_size}px {device} {bw:g}Mbps "
                                    f"A0-{drop:g}")
        for col, value in (("model", ctx.spec.model), ("size", ctx.spec.input_size), ("device", device),
                           ("bandwidth_mbps", bw), ("A0", problem.A0), ("A0_drop", drop),
                           ("base_val_acc", base_acc)):
            table[col] = value
        frames.append(table)
    df = pd.concat(frames, ignore_index=True)
    df["sent_bytes"] = df["bytes"] * (1 - df["exit_rate"].astype(float))  # expected bytes per request
    return df


def ratios_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per scenario: the joint search's answer and each baseline's latency and bytes over ours."""
    rows = []
    for name, g in df.groupby("scenario", sort=False):
        by = g.set_index("method")
        ours = by.loc[JOINT]
        row = {"scenario": name, "model": ours["model"], "size": ours["size"], "device": ours["device"],
               "bandwidth_mbps": ours["bandwidth_mbps"], "A0": ours["A0"], "A0_drop": ours["A0_drop"],
               "choice": f"k={int(ours['k'])} r={ours['r']:g} "
                         f"{'no-exit' if pd.isna(ours['t']) else 't=%.2f' % ours['t']} {ours['codec']}",
               "ms": ours["latency_ms"], "sent_bytes": ours["sent_bytes"], "val_acc": ours["acc_bound"],
               "test_acc": ours["test_acc"],
               "gap_to_exhaustive_pct": 100 * (ours["latency_ms"] / by.loc["joint optimum (exhaustive)", "latency_ms"] - 1)}
        for method in (*SINGLE, *COLLABORATIVE):
            m = by.loc[method]
            ok = bool(m.get("feasible", False))
            row[f"x {method}"] = m["latency_ms"] / ours["latency_ms"] if ok else np.nan
            row[f"bytes x {method}"] = (m["sent_bytes"] / ours["sent_bytes"] if ok and ours["sent_bytes"] > 0
                                        else np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def deploy_choices(ctx, df: pd.DataFrame, out: Path, limit: int) -> pd.DataFrame:
    """Export and run each distinct chosen split of this (model, size) over the shaped loopback link.

    The prediction covers exactly the test samples sent (their exit decisions from the evaluation), so
    the error is the latency model's and the runtime's, not the luck of a small sample's exit rate."""
    from runtime.deploy import deploy_candidate

    rows, done = [], {}
    ours = df[(df.method == JOINT) & (df.feasible == True)]  # noqa: E712
    server = load_profile(ctx.spec.server, ctx.spec.model, ctx.spec.input_size)
    for _, s in ours.iterrows():
        key = (s.device, s.bandwidth_mbps, int(s.k), float(s.r), None if pd.isna(s.t) else float(s.t), s.codec)
        if key not in done:
            dev = load_profile(s.device, ctx.spec.model, ctx.spec.input_size)
            cand = ctx.pool.candidate(int(s.k), float(s.r))
            where = out / "deploy" / f"{ctx.spec.model}-{ctx.spec.input_size}px" / "-".join(map(str, key))
            _, m = deploy_candidate(cand, ctx.data, where, key[4], s.codec, s, bandwidth=s.bandwidth_mbps,
                                    rtt=ctx.problem.network.rtt_ms, slowdown=float(dev.meta.get("slowdown", 1.0)),
                                    server_threads=int(server.meta.get("threads", 1)), limit=limit, seed=ctx.spec.seed)
            pred = m["predicted"]
            t = "no-exit" if key[4] is None else f"t={key[4]:.3f}"
            done[key] = {"choice": f"k={key[2]} r={key[3]:g} {t} {key[5]}", "n": m["n"],
                         "pred_mean_ms": pred["total_ms"], "meas_mean_ms": m["mean_ms"],
                         "pred_p95_ms": pred["p95_ms"], "meas_p95_ms": m["p95_ms"],
                         "pred_device_ms": pred["mean_device_exit_ms"],
                         "meas_device_ms": m["device_ms"] + m["exit_ms"],
                         "pred_transfer_ms": pred["mean_transfer_ms"], "meas_transfer_ms": m["transfer_ms"],
                         "pred_server_ms": pred["mean_server_ms"], "meas_server_ms": m["server_ms"],
                         "pred_exit_rate": pred["exit_rate"], "meas_exit_rate": m["exit_rate"],
                         "pred_accuracy": pred["accuracy"], "meas_accuracy": m["accuracy"],
                         "agreement": m["agreement"], "bytes_per_request": m["bytes_per_request"]}
        rows.append({"scenario": s.scenario, **done[key]})
    res = pd.DataFrame(rows)
    if len(res):
        res["mean_error_pct"] = 100 * (res.meas_mean_ms / res.pred_mean_ms - 1)
        res["p95_error_pct"] = 100 * (res.meas_p95_ms / res.pred_p95_ms - 1)
    return res


def efficiency_rows(ctx, grid: pd.DataFrame, drops: list[float], seeds: int, rtt: float,
                    grid_note: str = "") -> pd.DataFrame:
    """Search efficiency of this (model, size)'s grid on the emulated device at 10 Mbit/s, per A0."""
    base_acc = ctx.pool.base.meta["val_acc"]
    frames = []
    for drop in drops:
        problem = Problem(load_profile("emulated-10x", ctx.spec.model, ctx.spec.input_size), ctx.problem.server,
                          Network(10.0, rtt), A0=round(base_acc - drop / 100, 4))
        problem.space = ctx.problem.space
        e = efficiency(ctx, problem, seeds, trials=60, build_s=grid)
        e.insert(0, "scenario", f"{ctx.spec.model} {ctx.spec.input_size}px{grid_note} emulated-10x 10Mbps "
                                f"A0-{drop:g}")
        frames.append(e)
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18,mobilenet_v2")
    p.add_argument("--sizes", default="32,224", help="input sizes; the last one is deployed and timed for efficiency")
    p.add_argument("--devices", default="host,emulated-10x")
    p.add_argument("--bandwidths", default="1,10,100")
    p.add_argument("--drops", default="1,3", help="A0 = base validation accuracy minus these points")
    p.add_argument("--ratios", default="0,0.5", help="pruning ratios of the candidate grid")
    p.add_argument("--rtt", type=float, default=5.0)
    p.add_argument("--trials", type=int, default=40, help="trials of each scenario's joint search")
    p.add_argument("--seeds", type=int, default=5, help="seeds of the search-efficiency comparison")
    p.add_argument("--deploy-limit", type=int, default=100, help="test samples per deployed split (0: no deployment)")
    p.add_argument("--wide-grid", action="append", default=None, metavar="MODEL:SIZE:RATIOS",
                   help=f"search efficiency over a wider ratio grid as well (repeatable; default {WIDE_GRID}, "
                        "none with --quick)")
    p.add_argument("--quick", action="store_true", help="1 fine-tune epoch and 5 exit epochs everywhere")
    p.add_argument("--out", default="runs/bench/scenarios")
    a = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(x) for x in a.sizes.split(",")]
    drops = [float(x) for x in a.drops.split(",")]
    ratios = [float(x) for x in a.ratios.split(",")]
    grids, scen, eff, dep = [], [], [], []
    for model in a.models.split(","):
        for size in sizes:
            started = time.perf_counter()
            ctx = context(spec_for(model, size, ratios, out, a.quick), log=print)
            grids.append(build_grid(ctx))
            df = scenario_rows(ctx, a.devices.split(","), [float(x) for x in a.bandwidths.split(",")],
                               drops, a.rtt, a.trials)
            scen.append(df)
            if size == sizes[-1]:
                eff.append(efficiency_rows(ctx, grids[-1], drops, a.seeds, a.rtt))
                if a.deploy_limit:
                    dep.append(deploy_choices(ctx, df, out, a.deploy_limit))
            print(f"{model} {size}px done in {time.perf_counter() - started:.0f} s", flush=True)
            ctx.db.dispose()
    for wide in a.wide_grid if a.wide_grid is not None else ([] if a.quick else [WIDE_GRID]):
        model, size, wide_ratios = wide.split(":")
        ctx = context(spec_for(model, int(size), [float(x) for x in wide_ratios.split(",")], out, a.quick), log=print)
        eff.append(efficiency_rows(ctx, build_grid(ctx), drops, a.seeds, a.rtt, grid_note=f" r in {{{wide_ratios}}}"))
        ctx.db.dispose()
    pd.concat(grids).to_csv(out / "grid.csv", index=False)
    all_rows = pd.concat(scen, ignore_index=True)
    all_rows.to_csv(out / "methods.csv", index=False)
    ratios_table(all_rows).to_csv(out / "headline.csv", index=False)
    if eff:
        pd.concat(eff).to_csv(out / "efficiency.csv", index=False)
    if dep:
        pd.concat(dep).to_csv(out / "deployed.csv", index=False)
    print(ratios_table(all_rows).to_string(index=False, float_format=lambda x: f"{x:.3g}"))


if __name__ == "__main__":
    main()

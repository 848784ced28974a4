"""Search efficiency: fine-tunes and wall time until the best feasible latency is within 1% of the exhaustive
optimum, for the joint search (seeded with the unpruned splits, bound skipping, TPE), plain random search
and the exhaustive grid, per seed.

Candidates come from the cache (the grid is built first), so each run's wall time is its measured search
time plus the measured build time of every candidate it evaluated first (fine-tunes and exit trainings).

    python bench/search_efficiency.py --model resnet18 --ratios 0,0.3,0.5,0.7 --A0 0.95 --seeds 5
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from search.pool import CandidatePool  # noqa: E402
from search.reference import METHODS, best_of  # noqa: E402
from search.run import RunSpec, context  # noqa: E402
from search.space import Problem  # noqa: E402
from search.study import Objective, open_study, seed  # noqa: E402


@dataclass
class ColdPool(CandidatePool):
    """Reads candidates from the project table, but the search only counts as known what this run evaluated,
    so its decisions (which fine-tunes to skip) are those of a run on a cold cache."""

    def known(self, k: int, r: float) -> bool:
        return (k, round(float(r), 4)) in self._memo


def one_run(ctx, problem: Problem, method: str, seed_: int, target: float, trials: int,
            build_s: dict[tuple[int, float], float]) -> dict:
    p = ctx.pool
    pool = ColdPool(p.base, p.data, p.db, p.recipe, p.importance, p.exit_epochs, p.seed, progress=False)
    storage = optuna.storages.InMemoryStorage()
    if method == "joint":
        study = open_study(f"joint-{seed_}", storage, problem, False, seed_)
        seed(study, problem)
        objective = Objective(problem, pool)
    else:
        study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=seed_))
        objective = Objective(problem, pool, skip_hopeless=False)
    reached: dict = {}
    started = time.perf_counter()

    def cost(keys) -> tuple[int, float]:
        return sum(1 for k, r in keys if k > 0 and r > 0), sum(build_s.get(key, 0.0) for key in keys)

    def watch(study, trial):
        a = trial.user_attrs
        if not reached and a.get("feasible") and a["latency_ms"] <= target:
            fine_tunes, builds = cost(list(pool._memo))
            reached.update(trials=trial.number + 1, fine_tunes=fine_tunes,
                           wall_s=time.perf_counter() - started + builds)

    study.optimize(objective, n_trials=trials, callbacks=[watch])
    return {"method": method, "seed": seed_, "reached": bool(reached), **reached,
            "fine_tunes_total": cost(list(pool._memo))[0]}


def efficiency(ctx, problem: Problem, seeds: int, trials: int, build_s: pd.DataFrame) -> pd.DataFrame:
    """Rows per (method, seed): joint and random search, and the exhaustive grid (seed-independent)."""
    seconds = {(int(k), float(r)): float(s) for k, r, s in build_s[["k", "r", "build_s"]].itertuples(index=False)}
    optimum, _ = best_of(problem, ctx.pool, METHODS[-1], build=True)
    target = optimum.latency_ms * 1.01
    rows = [one_run(ctx, problem, m, s, target, trials, seconds) for m in ("joint", "random") for s in range(seeds)]
    grid = problem.space.candidates()
    fine_tunes = sum(1 for k, r in grid if k > 0 and r > 0)
    rows.append({"method": "exhaustive", "seed": None, "reached": True, "trials": len(grid),
                 "fine_tunes": fine_tunes, "fine_tunes_total": fine_tunes,
                 "wall_s": sum(seconds.get(key, 0.0) for key in grid)})
    df = pd.DataFrame(rows)
    df["optimum_ms"] = optimum.latency_ms
    return df


def main() -> None:
    from bench.scenarios import build_grid

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--ratios", default="0,0.3,0.5,0.7")
    p.add_argument("--A0", type=float, default=0.95)
    p.add_argument("--bandwidth", type=float, default=10.0)
    p.add_argument("--end_device", default="emulated-10x")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--out", default="runs/bench/search_efficiency.csv")
    a = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spec = RunSpec(model=a.model, end_device=a.end_device, bandwidth=a.bandwidth, A0=a.A0,
                   ratios=[float(x) for x in a.ratios.split(",")], progress=False,
                   run_dir="runs/bench/search_efficiency").resolved()
    ctx = context(spec, log=print)
    df = efficiency(ctx, ctx.problem, a.seeds, a.trials, build_grid(ctx))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.out, index=False)
    print(df.to_string(index=False))
    print(summary(df).to_string())


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Median over seeds per method (runs that never reached the target count as not reached)."""
    return df.groupby("method", sort=False).agg(runs=("reached", "size"), reached=("reached", "sum"),
                                                median_trials=("trials", "median"),
                                                median_fine_tunes=("fine_tunes", "median"),
                                                median_wall_s=("wall_s", "median"),
                                                median_fine_tunes_in_all_trials=("fine_tunes_total", "median"))


if __name__ == "__main__":
    main()

"""Search efficiency: fine-tunes and trials until the best feasible latency is within 1% of the exhaustive
optimum, for the joint search (seeded with the unpruned splits, bound skipping, TPE) and plain random search,
median over seeds.  Candidates come from the cache (build them once with `auto.py --exhaustive`), so a
"fine-tune" here is the first evaluation of a pruned (k, r) in a run.

    python bench/search_efficiency.py --model resnet18 --ratios 0,0.3,0.5,0.7 --A0 0.95 --seeds 5
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from search.pool import CandidatePool  # noqa: E402
from search.reference import METHODS, best_of  # noqa: E402
from search.run import RunSpec, context  # noqa: E402
from search.study import Objective, open_study, seed  # noqa: E402


def one_run(ctx, method: str, seed_: int, target: float, trials: int) -> dict:
    pool = CandidatePool(ctx.pool.base, ctx.data, None, recipe=ctx.pool.recipe, progress=False)
    storage = optuna.storages.InMemoryStorage()
    if method == "joint":
        study = open_study(f"joint-{seed_}", storage, ctx.problem, False, seed_)
        seed(study, ctx.problem)
        objective = Objective(ctx.problem, pool)
    else:
        study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=seed_))
        objective = Objective(ctx.problem, pool, skip_hopeless=False)
    reached = {}

    def watch(study, trial):
        a = trial.user_attrs
        if not reached and a.get("feasible") and a["expected_ms"] <= target:
            reached.update(trials=trial.number + 1, fine_tunes=sum(1 for k, r in pool._memo if k > 0 and r > 0))

    study.optimize(objective, n_trials=trials, callbacks=[watch])
    return {"method": method, "seed": seed_, "reached": bool(reached), **reached,
            "fine_tunes_total": sum(1 for k, r in pool._memo if k > 0 and r > 0)}


def main() -> None:
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
    ctx = context(spec, log=lambda *_: None)
    optimum, complete = best_of(ctx.problem, ctx.pool, METHODS[-1], build=True)
    target = optimum.latency_ms * 1.01
    grid = sum(1 for k, r in ctx.problem.space.candidates() if k > 0 and r > 0)
    rows = [one_run(ctx, m, s, target, a.trials) for m in ("joint", "random") for s in range(a.seeds)]
    df = pd.DataFrame(rows)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.out, index=False)
    print(f"exhaustive optimum {optimum.latency_ms:.3f} ms at {optimum.config.label()}; grid {grid} fine-tunes")
    print(df.to_string(index=False))
    summary = df.groupby("method").agg(reached=("reached", "sum"), median_trials=("trials", "median"),
                                       median_fine_tunes=("fine_tunes", "median"))
    print(summary.to_string())


if __name__ == "__main__":
    main()

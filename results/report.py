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

from compress.codec import split_via  # noqa: E402
from search.latency import predicted_parts  # noqa: E402
from search.space import Config, breakdowns, score  # noqa: E402


def trials_frame(study) -> pd.DataFrame:
    """The trials that ran (or run): not the WAITING ones the search queued after its last trial and never
    started (every SQLite trials.csv ended with one); `trial_counts` counts those apart."""
    df = study.trials_dataframe(attrs=("number", "state", "values", "params", "user_attrs", "duration"))
    if len(df):
        df = df[df.state != TrialState.WAITING.name].reset_index(drop=True)
    return df.rename(columns=lambda c: c.replace("user_attrs_", ""))


def trial_counts(study) -> dict[str, int]:
    """Trials by state; `queued_never_run` are the WAITING ones, which are not trials of this run."""
    counts = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                          TrialState.RUNNING)}
    counts["queued_never_run"] = 0
    for t in study.get_trials(deepcopy=False):
        key = "queued_never_run" if t.state == TrialState.WAITING else t.state.name.lower()
        counts[key] = counts.get(key, 0) + 1
    return counts


def resume_message(storage, name: str, target: int) -> str | None:
    """What a run says when its study already holds trials (None for a new or empty study): a rerun with
    the same scenario resumes it silently otherwise, and stops at once when `target` finished trials are
    already there."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    trials = storage.get_all_trials(study_id, deepcopy=False)
    if not trials:
        return None
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    text = f"resuming study {name!r}: {done} finished trials already"
    if waiting:
        text += f", {waiting} queued"
    if done >= target:
        text += f"; --trials {target} is reached, so no new trial runs (raise --trials to search further)"
    return text


def run_summary(result: dict | None, seconds: float) -> dict:
    """What splitopt_runs.summary keeps of a run: the answer, its promise, and the time it took."""
    out: dict = {"seconds": round(seconds, 1)}
    if not result:
        return out  # the run failed before it had a result
    out["feasible"] = bool(result.get("feasible"))
    best = result.get("best")
    if best:
        out.update(best={x: best.get(x) for x in ("k", "r", "t", "codec")},
                   latency_ms=best.get("latency_ms"), expected_ms=best.get("expected_ms"),
                   acc_bound=best.get("acc_bound"), test_acc=best.get("test_acc"))
    elif result.get("closest"):
        out["closest"] = {x: result["closest"].get(x) for x in ("config", "latency_ms", "acc_bound")}
    if result.get("pareto_front") is not None:
        out["pareto_front_size"] = len(result["pareto_front"])
    if "trials" in result:
        out["trials"] = result["trials"]
    return out


def _completed(study) -> list:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "latency_ms" in t.user_attrs]


def choose(study, problem) -> tuple[dict | None, dict | None]:
    """(best feasible trial's attributes, the closest to the target: most accurate for A0, fastest for T0)."""
    done = [t.user_attrs for t in _completed(study)]
    if not done:
        return None, None
    feasible = [a for a in done if a.get("feasible", True)]
    if problem.T0 is not None:
        best = max(feasible, key=lambda a: (a["acc_bound"], -a["latency_ms"]), default=None)
        fallback = min(done, key=lambda a: (a["latency_ms"], -a["acc_bound"]))  # nothing fits T0: the fastest
    else:
        best = min(feasible, key=lambda a: (a["latency_ms"], -a["acc_bound"]), default=None)
        fallback = max(done, key=lambda a: (a["acc_bound"], -a["latency_ms"]))
    return best, fallback


def _config(attrs: dict) -> Config:
    t = attrs.get("t")
    t = None if t is None or (isinstance(t, float) and np.isnan(t)) else float(t)
    return Config(int(attrs["k"]), float(attrs["r"]), t, attrs["codec"])


def pareto_plot(study, path: Path, best: dict | None) -> None:
    done = _completed(study)
    lat = np.array([t.user_attrs["latency_ms"] for t in done])
    acc = np.array([t.user_attrs["acc_bound"] for t in done])
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
        ax.scatter([best["latency_ms"]], [best["acc_bound"]], marker="*", s=150, c="k", label="chosen", zorder=3)
    ax.set_xlabel("promised latency (ms)")
    ax.set_ylabel("accuracy bound (selection split)")
    ax.set_xscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def threshold_plot(problem, evaluations, config: Config, path: Path) -> None:
    """Selection accuracy and expected latency of the chosen split against the exit threshold."""
    ts = np.linspace(0.1, 1.0, 91)
    ev = evaluations["selection"]
    acc = ev.accuracy(list(ts), config.codec, problem.metric)
    rate = ev.exit_rate(list(ts))
    lat = np.min([b.expected_at(rate) for b, _ in breakdowns(problem, config, ev)], axis=0)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ts, lat, "b-", label="expected latency")
    ax.set_xlabel("exit threshold t")
    ax.set_ylabel("expected latency (ms)", color="b")
    ax2 = ax.twinx()
    ax2.plot(ts, acc, "g-", label="selection accuracy")
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
    counts = trial_counts(study)
    best, closest = choose(study, problem)
    result = {"study": ctx.spec.study, "args": args, "versions": versions, "spent": spent,
              "device_profile": problem.device.meta, "server_profile": problem.server.meta,
              "network": {"bandwidth_mbps": problem.network.bandwidth_mbps, "rtt_ms": problem.network.rtt_ms},
              **({"edge_profile": problem.edge.profile.meta,
                  "edge_cloud_network": {"bandwidth_mbps": problem.edge.network.bandwidth_mbps,
                                         "rtt_ms": problem.edge.network.rtt_ms}} if problem.edge else {}),
              "base": {k: ctx.pool.base.meta.get(k) for k in ("val_acc", "test_acc", "epochs", "train_seconds")}
              if ctx.pool.has_base else {},
              "data": ctx.pool.sizes(), "confidence": problem.confidence, "objective": problem.objective,
              "trials": counts}
    if ctx.spec.multi:
        front = sorted((t.user_attrs for t in study.best_trials), key=lambda a: a["expected_ms"])
        result["pareto_front"] = front
    if best is not None:
        s = score(problem, _config(best), ctx.pool.evaluations(int(best["k"]), float(best["r"])))
        result.update(feasible=True, best=s.as_dict(),
                      predicted={**predicted_parts(s.breakdown), "promised_ms": s.latency_ms},
                      promise=promise(s, problem, ctx.pool.sizes()))
        threshold_plot(problem, ctx.pool.evaluations(s.config.k, s.config.r), s.config, out / "threshold.png")
    else:
        result.update(feasible=False, closest=closest)
    if _completed(study):
        pareto_plot(study, out / "pareto.png", best)
    if reference is not None:
        ours = result["best"]["latency_ms"] if best else float("nan")
        reference = reference.assign(speedup_of_ours=reference.get("latency_ms", np.nan) / ours)
        if problem.A0 is not None and "test_acc" in reference:
            reference = reference.assign(test_meets_A0=reference.test_acc >= problem.A0)
        reference.to_csv(out / "baselines.csv", index=False)
        result["baselines"] = reference.replace({np.nan: None}).to_dict(orient="records")
    (out / "best.json").write_text(json.dumps(result, indent=2, default=str))
    print_summary(result, problem, out)
    return result


def promise(s, problem, sizes: dict[str, int]) -> dict:
    """What the answer promises (selection split, bounded) against what it delivers on the test split."""
    out = {"confidence": problem.confidence, "candidates_bounded": problem.families,
           "bound_confidence_each": problem.bound_confidence, "objective": problem.objective,
           "n_selection": sizes["selection"],
           "n_test": sizes["test"], "promised_ms": s.latency_ms, "delivered_ms": s.test_latency_ms,
           "delivered_minus_promised_ms": s.test_latency_ms - s.latency_ms,
           "acc_bound": s.acc_bound, "sel_acc": s.sel_acc, "test_acc": s.test_acc,
           "promised_exit_rate": s.breakdown.exit_rate, "sel_exit_rate": s.sel_exit_rate,
           "test_exit_rate": s.test_exit_rate, "exit_answers_all": s.sel_exit_rate >= 1.0}
    if problem.A0 is not None:
        out.update(A0=problem.A0, test_meets_A0=None if s.test_acc != s.test_acc else s.test_acc >= problem.A0)
    if problem.T0 is not None:
        out.update(T0=problem.T0, test_meets_T0=s.test_latency_ms <= problem.T0)
    return out


def print_summary(result: dict, problem, out: Path) -> None:
    target = f"T0 = {problem.T0} ms" if problem.T0 is not None else f"A0 = {problem.A0}"
    conf = (f"confidence {problem.confidence:g} over {problem.families} candidates" if problem.confidence
            else "point estimates (--confidence 0)")
    net = (f"end-edge {problem.network}, edge {problem.edge.profile.device}, edge-cloud {problem.edge.network}"
           if problem.edge else str(problem.network))
    print(f"\n== {result['study']}  ({target}, {net}, {problem.objective} latency, {conf})")
    d = result.get("data", {})
    if d:
        print("data: " + ", ".join(f"{k} {v}" for k, v in d.items()))
    if result.get("feasible"):
        b, pr = result["best"], result["promise"]
        t = "no exit" if b["t"] is None else f"{b['t']:.3f}"
        print(f"best: k={b['k']} r={b['r']:g} t={t} codec={b['codec']}, {b['bytes']:.0f} bytes per request sent")
        sent = 1 - b["exit_rate"]
        edge = ""
        if b.get("k1") is not None:  # the exit runs on the edge
            K = problem.space.K
            end = (f"end device blocks 0..{b['k1'] - 1}" if b["k1"] > 0 else
                   f"end device sends the image ({b.get('up_codec') or 'raw'}, {b['bytes']:.0f} bytes)")
            print(f"  tiers: {end}, the edge runs blocks {b['k1']}..{b['k'] - 1} and the exit (answers "
                  f"{b['exit_rate']:.3f}), sends the rest on as {b['codec']} ({b['edge_bytes']:.0f} bytes), the cloud "
                  f"runs blocks {b['k']}..{K - 1}")
        elif b.get("k2") is not None:
            K = problem.space.K
            where = ("the edge relays it" if b["k2"] == b["k"] else
                     f"the edge runs blocks {b['k']}..{b['k2'] - 1}" + (" and answers" if b["k2"] == K else
                                                                       f", sends {b['edge_bytes']:.0f} bytes on as "
                                                                       f"{split_via(b['codec'])[2]}"))
            print(f"  tiers: end device blocks 0..{b['k'] - 1}, {where}" +
                  ("" if b["k2"] == K else f", the cloud runs blocks {b['k2']}..{K - 1}"))
            edge = (f" + edge {b['edge_ms']:.3f} + edge runtime {b['edge_overhead_ms']:.3f} + edge-cloud transfer "
                    f"{b['edge_transfer_ms']:.3f}")
        idle = [f"{side} x{b[key]:.2f} after idling" for side, key in (("device and exit", "device_idle_factor"),
                                                                     ("server", "server_idle_factor"),
                                                                     ("edge", "edge_idle_factor"))
                if b.get(key, 1.0) > 1.0]
        if idle:
            print(f"  cold parts priced after the idle gap each side waits (the profiles' idle curves): {', '.join(idle)}")
        saving = b.get("warm_saving_ms", 0.0)
        warm = f" - {b['exit_rate']:.3f} after an on-device answer x warm {saving:.3f}" if saving else ""
        if b.get("k1") is not None:
            print(f"  promised latency {b['latency_ms']:.3f} ms ({problem.objective}); mean = device {b['device_ms']:.3f}"
                  f" + runtime {b['device_overhead_ms']:.3f} + encode {b['encode_ms']:.3f} + transfer "
                  f"{b['transfer_ms']:.3f} + link {b['link_overhead_ms']:.3f} + edge {b['edge_ms']:.3f} + edge exit "
                  f"{b['edge_exit_ms']:.3f} + edge runtime {b['edge_overhead_ms']:.3f} + {sent:.3f} sent on x "
                  f"(edge-cloud transfer {b['edge_transfer_ms']:.3f} + link {b['cloud_link_overhead_ms']:.3f} + server "
                  f"{b['server_ms']:.3f} + server runtime {b['server_overhead_ms']:.3f}) = {b['expected_ms']:.3f} ms")
        else:
            print(f"  promised latency {b['latency_ms']:.3f} ms ({problem.objective}); mean = device {b['device_ms']:.3f}"
                  f" + exit {b['exit_ms']:.3f} + runtime {b['device_overhead_ms']:.3f}{warm} + {sent:.3f} sent x (encode "
                  f"{b['encode_ms']:.3f} + transfer {b['transfer_ms']:.3f} + link {b['link_overhead_ms']:.3f}{edge} + "
                  f"server {b['server_ms']:.3f} + server runtime {b['server_overhead_ms']:.3f}) = {b['expected_ms']:.3f} ms")
        acc_claim = (f"accuracy >= {pr['acc_bound']:.4f} with confidence {problem.confidence:g}" if problem.confidence
                     else f"accuracy {pr['acc_bound']:.4f} (point estimate)")
        print(f"  promised {acc_claim} (selection {pr['sel_acc']:.4f}, n = {pr['n_selection']}); exit rate "
              f"{pr['sel_exit_rate']:.3f} (priced as {pr['promised_exit_rate']:.3f})")
        verdict = ""
        if "test_meets_A0" in pr:
            verdict = f" ({'meets' if pr['test_meets_A0'] else 'BELOW'} A0 = {problem.A0})"
        elif "test_meets_T0" in pr:
            verdict = f" ({'meets' if pr['test_meets_T0'] else 'ABOVE'} T0 = {problem.T0} ms)"
        if pr["test_acc"] != pr["test_acc"]:  # NaN: a candidate measured elsewhere without held-out rows
            print("  delivered: NOT CHECKED, the measurements give no held-out (test_*) accuracy for this candidate; "
                  "the promise holds on the selection samples it was chosen on only")
        else:
            print(f"  delivered on test (n = {pr['n_test']}, never chosen on): accuracy {pr['test_acc']:.4f}{verdict}, "
                  f"exit rate {pr['test_exit_rate']:.3f}, latency {pr['delivered_ms']:.3f} ms "
                  f"({pr['delivered_minus_promised_ms']:+.3f} ms against the promise)")
        if pr["exit_answers_all"]:
            print("  note: the exit answers 100% of the selection split: the tail never runs, the answer is an "
                  "on-device model (the split and the bandwidth change nothing)")
    else:
        m = result.get("closest")
        what = "fastest" if problem.T0 is not None else "best accuracy bound"
        print("no configuration reaches the target." + (
            f" Closest ({what}): accuracy bound {m['acc_bound']:.4f} at {m['config']} ({m['latency_ms']:.3f} ms)"
            if m else ""))
    s = result["spent"]
    print(f"spent: {s['fine_tunes']} fine-tunes and {s['exit_trainings']} exit trainings here "
          f"(grid: {s['grid_fine_tunes']} fine-tunes, {s['grid_candidates']} candidates), "
          f"search {s['search_seconds']} s" + (f"; {s['measured_rows']} candidates from the measurements file"
                                               if s.get("measured_rows") else ""))
    if "proven_optimal" in s:
        if s["proven_optimal"] and not result.get("feasible"):
            print("optimality: every candidate of the grid was evaluated: none reaches the target")
        elif s["proven_optimal"]:
            print("optimality: PROVEN over the grid: no untried candidate's latency lower bound is below the answer")
        else:
            print(f"optimality: not proven: {s['can_still_beat']} untried candidates could still beat it by their "
                  f"latency bounds ({s['set_aside']} of them probably below A0: at their split a smaller ratio "
                  f"already is); more trials, or --exhaustive, settle it")
        note = noise_note(problem.A0, s.get("unpruned_bound"), s.get("unreachable", False))
        if note:
            print(note)
    if result.get("baselines"):
        df = pd.DataFrame(result["baselines"])
        cols = [c for c in ("method", "k", "r", "t", "codec", "k2", "k1", "latency_ms", "delivered_ms", "acc_bound", "test_acc",
                            "bytes", "feasible", "complete", "speedup_of_ours") if c in df]
        print(df[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"outputs: {out}")


def noise_note(A0: float | None, unpruned_bound: float | None, unreachable: bool = False) -> str | None:
    """A line when A0 lies above the unpruned network's own accuracy bound, for a run's report and --suggest
    alike: "unreachable" where A0 is above even its upper bound (`Plan.unreachable`, the planner stops), else
    that pruning rarely adds accuracy, so the candidates that reach A0 are those whose selection accuracy
    came out high by chance.  On replayed landscapes every scene the search missed within its budget was of
    the second kind (2026-12-07, synthetic resnet18 and mobilenet_v2, seeds 0-29: docs/search_efficiency*.md)."""
    if unreachable:
        return ("A0 looks unreachable: it is above even the upper confidence bound of the unpruned network's "
                "accuracy (a pruned one would have to be significantly more accurate)")
    if A0 is None or unpruned_bound is None or unpruned_bound >= A0:
        return None
    return (f"note: A0 = {A0:g} is above the unpruned network's own accuracy bound ({unpruned_bound:.4f}): a "
            "candidate reaches it only where its selection accuracy came out high by chance, so few do and the "
            "fastest of them may take many trials to find; each promise keeps its confidence (the bound is "
            "shared among the candidates)")


def suggestions(problem, pl, n: int, outside: int = 0) -> dict:
    """The planner's next `n` fine-tunes as text and rows (for `auto.py --suggest`)."""
    p = problem
    lines = []
    inc = pl.incumbent
    if inc is None:
        lines.append(f"best so far: none of the measured candidates reaches A0 = {p.A0}")
    else:
        c = inc.config
        lines.append(f"best so far: {c.label()}: {inc.latency_ms:.3f} ms ({p.objective}), accuracy >= "
                     f"{inc.acc_bound:.4f}" + (f" (confidence {p.confidence:g})" if p.confidence else ""))
    if outside:
        lines.append(f"{outside} measured rows lie outside this search's space (--ratios/--splits) and were ignored")
    rows = []
    for k, r in pl.order[:n]:
        why = pl.reasons.get((k, r), "can beat the best so far")
        rows.append({"k": k, "r": r, "lower_bound_ms": round(pl.bounds[(k, r)], 4), "why": why,
                     "cost": "fine-tune" if 0 < k and r > 0 else "exit training" if p.space.exit_at(k) else "evaluation"})
    if pl.proven:
        lines.append("proven optimal over the grid: no unmeasured candidate's latency lower bound is below it")
    elif note := noise_note(p.A0, pl.unpruned_bound, pl.unreachable):
        lines.append(note + ("; the candidates below would test that" if pl.unreachable else ""))
    left = len(pl.order)
    if rows:
        lines.append(f"next {len(rows)} of {left} candidates that can still beat it "
                     f"({len(pl.set_aside)} of them set aside as probably below A0; {pl.ruled_out} ruled out by bounds):")
        lines += [f"  k={x['k']} r={x['r']:g}  ({x['cost']}; latency >= {x['lower_bound_ms']:.3f} ms; {x['why']})"
                  for x in rows]
        lines.append("fine-tune them, add their rows to the measurements file and run again")
    return {"text": "\n".join(lines), "next": rows, "proven": pl.proven, "remaining": left,
            "best": None if inc is None else {**inc.as_dict(), "config": inc.config.label()}}

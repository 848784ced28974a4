"""The search on recorded landscapes: planner, --measurements, --suggest, and the independent oracle."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import optuna
import pandas as pd
import pytest

import auto
from bench import oracle
from bench.landscapes import Landscape, counted, load_doc, regrid, synthetic, to_csv
from bench.search_efficiency import families, per_candidate, problem_for, reached_after, run_ours, unpruned_bound
from compress import measurements
from profiles import Network
from profiles.profile import Profile
from search import bounds
from search.plan import known, plan
from search.pool import MeasuredPool
from search.reference import METHODS, best_of
from search.latency import predict
from search.space import Problem, SearchSpace


def _doc(role: str, K: int = 2, ratios=(0.0, 0.5)) -> dict:
    """A hand-made profile: head 2 ms per block at r = 0 and half that at r = 0.5, tail 0.1 ms per block."""
    meta = {"device": f"hand-{role}", "role": role, "cpu": "hand", "host": "hand", "threads": 1, "slowdown": 1.0,
            "emulates": None, "versions": {}, "date": "2026-11-26", "method": "written by hand for a test",
            "model": "resnet18", "input_size": 32, "num_classes": 10, "K": K, "ratios": list(ratios), "repeats": 1,
            "warmup": 0, "seconds": 0}
    lat, byt = [], []
    for k in range(K + 1):
        for r in ratios:
            scale = 1 - r
            if role == "device":
                lat.append({"part": "head", "k": k, "r": r, "mean_ms": 2.0 * k * scale, "median_ms": 2.0 * k * scale,
                            "p10_ms": 0, "p90_ms": 0, "n": 1})
            else:
                lat.append({"part": "tail", "k": k, "r": r, "mean_ms": 0.1 * (K - k), "median_ms": 0.1 * (K - k),
                            "p10_ms": 0, "p90_ms": 0, "n": 1})
            c = 3 if k == 0 else int(round(64 * scale))
            for codec, width in (("fp32", 4), ("fp16", 2), ("int8", 1)):
                byt.append({"k": k, "r": r, "codec": codec, "bytes": 1024 * c if k == 0 else c * 16 * width,
                            "shape": [c, 32, 32] if k == 0 else [c, 4, 4]})
    return {"meta": meta, "latency": lat, "bytes": byt}


def _arrays(acc: float, n: int = 1000) -> dict:
    right = np.arange(n) < round(acc * n)
    s = {"label": np.zeros(n, dtype=np.int64), "final": {"fp32": np.where(right, 0, 1)}}
    return {"selection": s, "test": s}


def test_oracle_finds_the_hand_computed_optimum():
    """K = 2 at 1 Mbit/s, rtt 5 ms, confidence 0 (point accuracies).  By hand (mean ms):
    k=0: 5 + 8*3072/1000 + 0.2 = 29.776; k=1 r=0: 2 + 5 + 8*4096/1000 + 0.1 = 39.868; k=1 r=0.5: 1 + 5 +
    8*2048/1000 + 0.1 = 22.484; k=2 r=0: 4; k=2 r=0.5: 2.  With A0 = 0.9 and only k=1 r=0.5 and k=2 r=0 reaching it, the
    optimum is k=2 r=0 at 4 ms; with A0 = 0.8 it is k=2 r=0.5 at 2 ms."""
    dev, srv = _doc("device"), _doc("server")
    cands = {(0, 0.0): _arrays(0.95), (1, 0.0): _arrays(0.95), (1, 0.5): _arrays(0.92), (2, 0.0): _arrays(0.95),
             (2, 0.5): _arrays(0.85)}
    best = oracle.optimum(dev, srv, cands, 0.9, 1.0, 5.0, confidence=0)
    assert (best["k"], best["r"]) == (2, 0.0) and best["latency_ms"] == pytest.approx(4.0)
    best = oracle.optimum(dev, srv, cands, 0.8, 1.0, 5.0, confidence=0)
    assert (best["k"], best["r"]) == (2, 0.5) and best["latency_ms"] == pytest.approx(2.0)
    cands[(2, 0.0)] = _arrays(0.89)  # the device-only network now misses A0: k=1 r=0.5 wins at 22.484 ms
    best = oracle.optimum(dev, srv, cands, 0.9, 1.0, 5.0, confidence=0)
    assert (best["k"], best["r"]) == (1, 0.5) and best["latency_ms"] == pytest.approx(22.484)
    assert oracle.optimum(dev, srv, cands, 0.99, 1.0, 5.0, confidence=0) is None


def test_oracle_wilson_matches_the_formula_from_the_literature():
    from scipy.stats import binomtest

    for x, n, c in ((900, 1000, 0.95), (4, 10, 0.99), (0, 50, 0.9)):
        lo = binomtest(x, n).proportion_ci(confidence_level=2 * c - 1, method="wilson").low
        assert oracle.wilson(x / n, n, c) == pytest.approx(lo, abs=1e-9)


STEEP_IDLE = {"device": {"gap_ms": [1.0, 5.0, 20.0, 50.0], "factor": [1.0, 1.2, 2.5, 3.0]},
              "server": {"gap_ms": [1.0, 2.0, 10.0], "factor": [1.1, 0.9, 1.8]}}  # a dip and a factor < 1 too


@pytest.mark.parametrize("seed_, bandwidth, drop, idle", [(0, 1.0, 0.05, False), (1, 10.0, 0.15, False),
                                                          (2, 100.0, 0.02, False), (2, 100.0, 0.02, True)])
def test_product_exhaustive_answer_agrees_with_the_oracle(seed_, bandwidth, drop, idle):
    """The product's own exhaustive optimum (latency model, bounds, best setting) against the oracle's, on a
    re-gridded real profile pair (with its measured runtime overheads and warm rows; `idle`: with steep
    idle curves on both sides instead of the measured ones) and a drawn landscape."""
    land = synthetic("resnet18", seed_, n_ratios=6)
    if idle:
        land.device["meta"]["idle"], land.server["meta"]["idle"] = STEEP_IDLE["device"], STEEP_IDLE["server"]
    base = float(np.mean(land.arrays[(0, 0.0)]["selection"]["final"]["fp32"] == 0))
    A0 = round(base - drop, 4)
    problem = problem_for(land, A0, bandwidth)
    pool = MeasuredPool(_rows(land), None)
    joint = next(m for m in METHODS if m.name == "joint optimum (exhaustive)")
    ours, complete = best_of(problem, pool, joint)
    ref = oracle.optimum(land.device, land.server, land.arrays, A0, bandwidth, 5.0, families=families(land),
                         codecs={k: ["fp32"] for k in range(land.K + 1)})
    assert complete and ref is not None and ours.feasible(problem)
    assert ours.latency_ms == pytest.approx(ref["latency_ms"], rel=1e-6)
    assert ours.acc_bound == pytest.approx(ref["acc_bound"], rel=1e-9)


def test_every_candidate_is_priced_as_the_oracle_prices_it_with_warm_rows_and_idle_curves():
    """Per (k, r, codec, exit rate) on the shipped resnet18 profiles (exits, warm rows, overheads) with steep
    idle curves on both sides: the product's latency model against the oracle's own formula."""
    docs = {role: copy.deepcopy(load_doc(role, "resnet18", 32)) for role in ("host", "server")}
    docs["host"]["meta"]["idle"], docs["server"]["meta"]["idle"] = STEEP_IDLE["device"], STEEP_IDLE["server"]
    docs["server"]["meta"]["overhead"]["frame_bytes"] = 1000  # a header that costs 8 ms at 1 Mbit/s
    dev, srv = Profile(docs["host"], "host"), Profile(docs["server"], "server")
    tables = oracle.Tables(docs["host"], docs["server"])
    slowed = 0
    for bandwidth in (1.0, 10.0, 100.0):
        net = Network(bandwidth, 5.0)
        for k in range(dev.K + 1):
            for r in (0.0, 0.3, 0.7):
                for codec in (("raw",) if k == 0 else ("fp32", "int8")):
                    for p in ([None] if not 0 < k < dev.K else [None, 0.0, 0.6, 1.0]):
                        b = predict(dev, srv, net, k, r, codec, exit_rate=p)
                        ref = oracle.latency(tables, k, r, codec, p is not None, 1.0 - (p or 0.0), bandwidth, 5.0, None)
                        assert b.expected_ms == pytest.approx(ref, rel=1e-9, abs=1e-9), (bandwidth, k, r, codec, p)
                        slowed += b.device_idle_factor > 1.0 and b.server_idle_factor > 1.0
    assert slowed > 50  # the curves were in play, on both sides


def _rows(land: Landscape) -> dict:
    return {kr: {s: measurements._counted({"top1": float(np.mean(a[s]["final"]["fp32"] == 0))},
                                          len(a[s]["label"]), "raw" if kr[0] == 0 else "fp32")
                 for s in ("selection", "test")} for kr, a in land.arrays.items()}


@pytest.mark.parametrize("seed_", [0, 3])
def test_search_reaches_the_oracle_optimum_with_few_fine_tunes_and_proves_it(seed_, tmp_path):
    land = synthetic("resnet18", seed_, n_ratios=20)
    base = float(np.mean(land.arrays[(0, 0.0)]["selection"]["final"]["fp32"] == 0))
    A0, bandwidth = round(base - 0.1, 4), 1.0
    problem = problem_for(land, A0, bandwidth)
    values = per_candidate(land, A0, bandwidth)
    optimum = min(values.values())
    rows = measurements.load(to_csv(land, tmp_path / "l.csv"), land.K, land.ratios)
    order, answer = run_ours(problem, rows, trials=400, seed_=seed_)
    assert answer == pytest.approx(optimum, rel=1e-6)
    pruned = [kr for kr in dict.fromkeys(order) if kr[0] > 0 and kr[1] > 0]
    grid = sum(1 for k, r in land.arrays if k > 0 and r > 0)
    assert len(pruned) < grid / 2  # the bounds ruled the rest out: it stopped, proven, long before the grid
    measured = {kr: known(problem, *kr, _rows(land)[kr]) for kr in set(order)}
    assert plan(problem, measured).proven  # and the planner agrees nothing untried can beat it


def test_a_non_monotone_optimum_is_set_aside_not_lost():
    """Splits 1 and 2 only, 100 Mbit/s, rtt 0.1 ms.  At k = 1, r = 0.25 misses A0 but r = 0.5 reaches it
    (accuracy not monotone in r): the monotone assumption sets r = 0.5 aside, yet it stays in the plan, and
    a search with budget enough finds it (k=1 r=0.5: 1 + 0.1 + 8*2048/100000 + 0.1 = 1.36384 ms)."""
    ratios = (0.0, 0.25, 0.5)
    dev, srv = _doc("device", 2, ratios), _doc("server", 2, ratios)
    acc = {(1, 0.0): 0.95, (1, 0.25): 0.85, (1, 0.5): 0.93, (2, 0.0): 0.95, (2, 0.25): 0.5, (2, 0.5): 0.5}
    land = Landscape("trap", dev, srv, {kr: _arrays(a, 2000) for kr, a in acc.items()}, "hand-made")
    problem = Problem(Profile(dev, "d"), Profile(srv, "s"), Network(100.0, 0.1), A0=0.9, confidence=0)
    problem.space = SearchSpace(2, ratios, ("fp32",), (1, 2), ("raw",), exits=False)
    rows = _rows(land)
    measured = {kr: known(problem, *kr, rows[kr]) for kr in [(1, 0.0), (2, 0.0), (1, 0.25), (2, 0.25)]}
    pl = plan(problem, measured)
    assert pl.set_aside == [(1, 0.5), (2, 0.5)] and not pl.proven and pl.order == pl.set_aside
    assert "already below A0" in pl.reasons[(1, 0.5)]
    ref = oracle.optimum(dev, srv, land.arrays, 0.9, 100.0, 0.1, confidence=0)
    assert (ref["k"], ref["r"]) == (1, 0.5) and ref["latency_ms"] == pytest.approx(1.36384)
    pool = MeasuredPool(rows, None, replay=True)
    from search.study import Objective, seed

    study = optuna.create_study()
    seed(study, problem)
    study.optimize(Objective(problem, pool), n_trials=30)
    done = [t for t in study.trials if t.user_attrs.get("feasible")]
    assert min(t.user_attrs["latency_ms"] for t in done) == pytest.approx(ref["latency_ms"])
    assert study.user_attrs.get("stopped") == "proven"


def test_unreachable_A0_stops_after_the_unpruned_splits_without_a_fine_tune():
    land = synthetic("resnet18", 0, n_ratios=5)
    problem = problem_for(land, 0.999, 10.0)
    pool = MeasuredPool(_rows(land), None, replay=True)
    from search.study import Objective, seed

    study = optuna.create_study()
    seed(study, problem)
    study.optimize(Objective(problem, pool), n_trials=40)
    assert study.user_attrs.get("stopped") == "unreachable"
    # the first trial (an end: no exit to train) already shows the unpruned network below A0
    assert pool.fine_tunes == 0 and pool.exit_trainings == 1 and len(study.trials) == land.K + 1
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 1


def test_measurements_file_errors_name_what_is_wrong(tmp_path):
    f = tmp_path / "m.csv"
    cases = [("k,r,top1\n1,0.5,0.9\n", "column 'n'"),
             ("k,r,top1,n\n9,0.5,0.9,100\n", "outside 0..6"),
             ("k,r,top1,n\n1,0.55,0.9,100\n", "not in the profile's grid"),
             ("k,r,top1,n\n1,0.5,1.2,100\n", "must be in [0, 1]"),
             ("k,r,top1,n\n1,0.5,0.9,-3\n", "positive whole number"),
             ("k,r,acc,n\n1,0.5,0.9,100\n", "unknown column(s) acc"),
             ("k,r,top5,n\n1,0.5,0.9,100\n", "no 'top1' column")]
    for text, message in cases:
        f.write_text(text)
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                           .replace("]", r"\]").replace(".", r"\.")):
            measurements.load(f, 6, [0.0, 0.5])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        measurements.load(tmp_path / "none.csv", 6, [0.0, 0.5])
    f.write_text("k,r,top1\n1,0.5,0.9\n")
    assert measurements.load(f, 6, [0.0, 0.5], need_n=False)  # point estimates need no n


@pytest.mark.parametrize("acc, n", [(0.1, 4000), (0.3, 449), (0.7, 1000), (0.9123, 3999)])
def test_a_measured_accuracy_keeps_its_count_and_bound(tmp_path, acc, n):
    f = tmp_path / "m.csv"
    f.write_text(f"k,r,top1,n,test_top1,n_test\n1,0.3,{acc},{n},0.5,10\n0,0,0.95,{n},,\n")
    rows = measurements.load(f, 6, [0.0, 0.3])
    sel, test = rows[(1, 0.3)]["selection"], rows[(1, 0.3)]["test"]
    assert sel.accuracy([None])[0] == round(acc * n) / n and len(sel.label) == n
    assert test.accuracy([None])[0] == 0.5 and len(test.label) == 10
    assert math.isnan(rows[(0, 0.0)]["test"].accuracy([None])[0])  # no held-out accuracy: not measured, not copied
    assert bounds.lower(sel.accuracy([None])[0], n, 0.95) < acc


def _small_landscape_csv(tmp_path, acc_k0=0.92):
    """resnet18 32 px on the shipped profiles' 10 ratios: accuracy falls with r, faster at deep splits."""
    d = Profile(load_doc("emulated-10x", "resnet18", 32), "d")
    rows = [{"k": k, "r": r, "top1": round(acc_k0 - 0.4 * r ** 2 * (0.3 + k / d.K), 4), "n": 4000}
            for k in range(d.K + 1) for r in (d.ratios if k else [0.0])]
    f = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(f, index=False)
    return f, rows


def test_suggest_asks_for_fine_tunes_and_a_full_file_proves_the_answer(tmp_path, capsys):
    f, rows = _small_landscape_csv(tmp_path)
    unpruned = tmp_path / "r0.csv"
    pd.DataFrame([r for r in rows if r["r"] == 0]).to_csv(unpruned, index=False)
    args = ["--model", "resnet18", "--A0", "0.86", "--bandwidth", "1", "--codecs", "fp32", "--input-codecs", "raw"]
    assert auto.main(args + ["--measurements", str(unpruned), "--suggest", "3"]) == 0
    out = capsys.readouterr().out
    asked = [line for line in out.splitlines() if line.startswith("  k=")]
    assert len(asked) == 3 and all("fine-tune" in line for line in asked)
    assert "next 3 of" in out and "proven" not in out
    assert auto.main(args + ["--measurements", str(f), "--suggest", "3"]) == 0
    out = capsys.readouterr().out
    assert "proven optimal over the grid" in out and not [x for x in out.splitlines() if x.startswith("  k=")]
    assert "unpruned network's own accuracy bound" not in out
    assert auto.main(args[:2] + ["--A0", "0.99", "--measurements", str(unpruned), "--suggest", "2"]) == 0
    assert "A0 looks unreachable" in capsys.readouterr().out
    # between the unpruned network's bound (about 0.907 here) and its upper bound: only noise can reach A0
    assert auto.main(args[:2] + ["--A0", "0.915", "--measurements", str(unpruned), "--suggest", "2"]) == 0
    out = capsys.readouterr().out
    assert "A0 = 0.915 is above the unpruned network's own accuracy bound (0.9" in out and "unreachable" not in out
    assert auto.main(args + ["--measurements", str(tmp_path / "missing.csv"), "--suggest", "2"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_profile_without_exits_loads_and_the_space_has_none():
    doc = load_doc("emulated-10x", "resnet18", 32)
    no_exit = copy.deepcopy(doc)
    no_exit["latency"] = [row for row in doc["latency"] if row["part"] != "exit"]
    p = Profile(no_exit, "no-exit")
    assert not p.has_exits and Profile(doc, "d").has_exits
    with pytest.raises(ValueError, match="no exit rows"):
        p.ms("exit", 2, 0.0)
    half = copy.deepcopy(doc)
    half["latency"] = [row for row in doc["latency"] if not (row["part"] == "exit" and row["k"] == 2)]
    with pytest.raises(ValueError, match="missing rows: exit k=2"):
        Profile(half, "half")


def test_a_profile_cut_differently_from_the_model_is_refused(tmp_path, capsys):
    doc = regrid(load_doc("emulated-10x", "resnet18", 32), [0.0, 0.5])
    doc["meta"]["K"] = 5
    doc["latency"] = [row for row in doc["latency"] if row["k"] <= 5]
    doc["bytes"] = [row for row in doc["bytes"] if row["k"] <= 5]
    doc["overhead"] = [row for row in doc["overhead"] if row["k"] <= 5]
    for row in doc["overhead"]:
        if row["k"] == 5:
            row["codec"] = None
    doc["overhead"] = [row for row in doc["overhead"] if row["k"] < 5 or row["codec"] is None]
    path = tmp_path / "cut.json"
    import json

    path.write_text(json.dumps(doc))
    f = tmp_path / "m.csv"
    f.write_text("k,r,top1,n\n0,0,0.9,100\n")
    assert auto.main(["--model", "resnet18", "--end_device", str(path), "--measurements", str(f), "--suggest", "1"]) == 2
    assert "K = 5" in capsys.readouterr().err


def test_the_rate_is_an_ordered_parameter():
    sp = SearchSpace(6, (0.0, 0.1, 0.2, 0.3))
    d = sp.ratio_distribution()
    assert isinstance(d, optuna.distributions.FloatDistribution) and d.step == pytest.approx(0.1)
    uneven = SearchSpace(6, (0.0, 0.3, 0.5))
    assert isinstance(uneven.ratio_distribution(), optuna.distributions.IntDistribution)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        c = uneven.suggest(trial)
        seen.add(c.r)
        assert trial.params.get("r") in (None, 0, 1, 2)
        study.tell(trial, 0.0)
    assert seen <= {0.0, 0.3, 0.5} and {0.3, 0.5} <= seen


def test_the_planner_waits_for_the_queue_then_queues_its_first_choice():
    from search.study import Objective

    land = synthetic("resnet18", 1, n_ratios=5)
    problem = problem_for(land, 0.85, 1.0)
    pool = MeasuredPool(_rows(land), None, replay=True)
    objective = Objective(problem, pool)
    study = optuna.create_study()
    study.enqueue_trial({"k": 0, "input_codec": "raw"})
    objective._queue_next(study)
    assert len(study.trials) == 1  # something is already waiting: decide later, with more known
    study.optimize(objective, n_trials=1)
    assert pool.used == {(0, 0.0)}  # the queued trial ran, and nothing was trained to rank the rest
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    expected = plan(problem, {(0, 0.0): known(problem, 0, 0.0, _rows(land)[(0, 0.0)])}).order[0]
    params = waiting[0].system_attrs["fixed_params"]
    assert len(waiting) == 1 and (params["k"], params.get("r", 0.0)) == pytest.approx(expected)


def _per_split_grid_docs():
    """The shipped resnet18 pair with split 3 measured at r = 0 and 0.5 only (a per-split rate grid)."""
    docs = []
    for device in ("emulated-10x", "server"):
        doc = copy.deepcopy(load_doc(device, "resnet18", 32))
        for table in ("latency", "bytes", "overhead"):
            doc[table] = [row for row in doc[table] if row["k"] != 3 or row["r"] in (0.0, 0.5)]
        docs.append(doc)
    return docs


def test_a_per_split_rate_grid_loads_and_bounds_the_space():
    dev, srv = (Profile(d, n) for d, n in zip(_per_split_grid_docs(), ("d", "s")))
    assert dev.ratios_at(3) == [0.0, 0.5] and dev.ratios_at(2) == dev.ratios
    with pytest.raises(ValueError, match="at split k=3"):
        dev.ms("head", 3, 0.3)
    problem = Problem(dev, srv, Network(10, 5), A0=0.8)
    cands = problem.space.candidates()
    assert [r for k, r in cands if k == 3] == [0.0, 0.5] and (2, 0.3) in cands
    broken = _per_split_grid_docs()[0]
    broken["bytes"] = [row for row in broken["bytes"] if not (row["k"] == 2 and row["r"] == 0.3)]
    with pytest.raises(ValueError, match="bytes k=2 r=0.3"):
        Profile(broken, "broken")


def test_measured_only_searches_the_rows_and_trains_nothing(tmp_path):
    from search.run import RunSpec, run

    f, rows = _small_landscape_csv(tmp_path)
    pd.DataFrame([r for r in rows if r["r"] in (0.0, 0.3, 0.6)]).to_csv(f, index=False)
    spec = RunSpec(model="resnet18", A0=0.86, bandwidth=1.0, codecs=["fp32"], input_codecs=["raw"],
                   measurements=str(f), measured_only=True, trials=60, progress=False,
                   run_dir=str(tmp_path / "run")).resolved()
    result = run(spec, log=lambda *_: None)
    assert result["feasible"] and result["spent"]["fine_tunes"] == 0
    assert result["best"]["r"] in (0.0, 0.3, 0.6)
    assert 0.9 < result["spent"]["unpruned_bound"] < 0.92  # 0.92 measured on 4000: its bound, not above A0
    assert result["base"] == {}  # no base model was built or trained
    trials = pd.read_csv(tmp_path / "run" / "trials.csv")
    assert set(trials.dropna(subset=["r"]).r.round(4)) <= {0.0, 0.3, 0.6}
    assert result["promise"]["test_acc"] != result["promise"]["test_acc"]  # NaN: no held-out rows given


def _oracle_arrays(evals: dict) -> dict:
    """The product's Evaluation objects as the oracle's plain arrays (fields read, no method called)."""
    return {s: {"label": e.label, "final": dict(e.final), "exit_conf": e.exit_conf, "exit_pred": e.exit_pred,
                "nbytes": dict(e.nbytes)} for s, e in evals.items()}


@pytest.mark.parametrize("bandwidth, A0", [(1.0, 0.8), (10.0, 0.9), (100.0, 0.85)])
def test_oracle_agrees_on_real_candidates_with_exits_and_every_codec(resnet_base, digits32, bandwidth, A0):
    """Fine-tuned digits candidates (exits, fp16/int8/int8-zlib features, PNG/JPEG/WebP images) on the
    shipped emulated-10x profiles with their measured overheads: the product's exhaustive optimum and the
    oracle's, over the same candidates, agree."""
    from search.pool import CandidatePool

    device, server = (Profile(load_doc(d, "resnet18", 32), d) for d in ("emulated-10x", "server"))
    problem = Problem(device, server, Network(bandwidth, 5.0), A0=A0)
    problem.space = SearchSpace.of(device, server, (0.0, 0.5), splits=(0, 2, 4, 6))
    from search.run import families as product_families

    problem.families = product_families(problem.space)
    from compress.candidate import FINETUNE
    from compress.train import Recipe

    # the one-epoch recipe of test_search's runs, so the candidates they cache serve here too
    pool = CandidatePool(resnet_base, digits32, recipe=Recipe(**{**FINETUNE.key(), "epochs": 1}), progress=False)
    joint = next(m for m in METHODS if m.name == "joint optimum (exhaustive)")
    ours, complete = best_of(problem, pool, joint)
    cands = {kr: _oracle_arrays(pool.evaluations(*kr)) for kr in problem.space.candidates()}
    codecs = {k: list(problem.space.codecs_at(k)) for k in range(device.K + 1)}
    M = sum(len(codecs[k]) for k, _ in cands)
    ref = oracle.optimum(load_doc("emulated-10x", "resnet18", 32), load_doc("server", "resnet18", 32), cands, A0,
                         bandwidth, 5.0, families=M, codecs=codecs)
    assert complete and M == problem.families
    if ref is None:
        assert not ours.feasible(problem)
        return
    assert ours.feasible(problem) and ours.latency_ms == pytest.approx(ref["latency_ms"], rel=1e-6)
    assert (ours.config.k, ours.config.r, ours.config.codec) == (ref["k"], ref["r"], ref["codec"])


@pytest.mark.parametrize("model, seed_, bandwidth", [("resnet18", 3, 100.0), ("resnet18", 4, 100.0)])
def test_an_optimum_lifted_by_noise_is_reached_within_the_budget(model, seed_, bandwidth, tmp_path):
    """A0 one point below the unpruned network: the unpruned cut misses it (its bound is lower) and only a
    few lightly pruned candidates reach it, by noise.  Before the set-aside rounds held across replans and
    the frontier ignored an infeasible ratio below the feasible one, these took 79 and 111 fine-tunes."""
    land = synthetic(model, seed_, 40)
    base = float(np.mean(land.arrays[(0, 0.0)]["selection"]["final"]["fp32"] == 0))
    A0 = round(base - 0.01, 4)
    problem = problem_for(land, A0, bandwidth)
    values = per_candidate(land, A0, bandwidth)
    optimum = min(values.values())
    assert min(values, key=values.get)[1] > 0  # the optimum needs a fine-tune
    rows = measurements.load(to_csv(land, tmp_path / "l.csv"), land.K, land.ratios)
    order, answer = run_ours(problem, rows, trials=40, seed_=seed_)  # auto.py's default budget
    assert answer == pytest.approx(optimum, rel=1e-6)
    assert reached_after(order, values, optimum) <= 20


def test_the_frontier_ignores_an_infeasible_ratio_below_a_feasible_one():
    """k = 1: r = 0 misses A0, r = 0.1 reaches it (noise), r = 0.9 misses it.  The next probe at k = 1 is
    inside (0.1, 0.9), kept off its outer quarters, not the next ratio down from the top."""
    ratios = tuple(round(0.1 * i, 1) for i in range(10))
    dev, srv = _doc("device", 1, ratios), _doc("server", 1, ratios)
    acc = {(1, r): 0.95 - 0.5 * r for r in ratios}
    acc[(1, 0.0)], acc[(1, 0.1)] = 0.89, 0.91
    land = Landscape("frontier", dev, srv, {kr: _arrays(a, 2000) for kr, a in acc.items()}, "hand-made")
    problem = Problem(Profile(dev, "d"), Profile(srv, "s"), Network(100.0, 0.1), A0=0.9, confidence=0)
    problem.space = SearchSpace(1, ratios, ("fp32",), (1,), ("raw",), exits=False)
    rows = _rows(land)
    measured = {kr: known(problem, *kr, rows[kr]) for kr in [(1, 0.0), (1, 0.1), (1, 0.9)]}
    k, r = plan(problem, measured).order[0]
    assert k == 1 and 0.2 < r < 0.8


def test_set_aside_candidates_go_by_their_chance_of_being_the_optimum():
    """Every unpruned cut misses A0 (so everything is set aside).  At k = 2 (the faster split) r = 0.25 was
    measured far below A0: its r = 0.5 and 0.75 now hold almost no chance, while k = 1's least pruned ratio,
    next to an unpruned network just below A0, still may reach it by noise: it goes first."""
    ratios = (0.0, 0.25, 0.5, 0.75)
    dev, srv = _doc("device", 2, ratios), _doc("server", 2, ratios)
    acc = {(k, r): 0.895 - 0.1 * r for k in (1, 2) for r in ratios}
    acc[(2, 0.25)] = 0.7
    land = Landscape("aside", dev, srv, {kr: _arrays(a, 2000) for kr, a in acc.items()}, "hand-made")
    problem = Problem(Profile(dev, "d"), Profile(srv, "s"), Network(100.0, 0.1), A0=0.9, confidence=0)
    problem.space = SearchSpace(2, ratios, ("fp32",), (1, 2), ("raw",), exits=False)
    rows = _rows(land)
    measured = {kr: known(problem, *kr, rows[kr]) for kr in [(1, 0.0), (2, 0.0), (2, 0.25)]}
    pl = plan(problem, measured)
    assert pl.order == pl.set_aside and pl.order[0] == (1, 0.25)
    assert pl.order.index((1, 0.5)) < pl.order.index((2, 0.5))


def test_a0_above_the_unpruned_bound_is_named_and_a_full_grid_without_an_answer_says_so(tmp_path, capsys):
    """A0 between the unpruned network's bound and its upper bound: the run says that only noise can reach
    it; having evaluated every candidate without an answer, it says so (not "PROVEN" about no answer)."""
    f, _ = _small_landscape_csv(tmp_path)
    args = ["--model", "resnet18", "--bandwidth", "1", "--codecs", "fp32", "--input-codecs", "raw",
            "--measurements", str(f), "--measured-only", "--trials", "80", "--no-progress"]
    assert auto.main(args + ["--A0", "0.915", "--run-dir", str(tmp_path / "a")]) == 1
    out = capsys.readouterr().out
    assert "A0 = 0.915 is above the unpruned network's own accuracy bound" in out
    assert "every candidate of the grid was evaluated: none reaches the target" in out and "PROVEN" not in out
    assert auto.main(args + ["--A0", "0.86", "--run-dir", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "own accuracy bound" not in out and "none reaches the target" not in out
    # above even the unpruned network's upper bound: the run says so, as --suggest does
    assert auto.main(args + ["--A0", "0.99", "--run-dir", str(tmp_path / "c")]) == 1
    out = capsys.readouterr().out
    assert "A0 looks unreachable" in out and "own accuracy bound" not in out
    assert json.loads((tmp_path / "c" / "best.json").read_text())["spent"]["unreachable"]


@pytest.mark.parametrize("model,seed_", [("mobilenet_v2", 2), ("resnet18", 4)])
def test_the_benchmarks_lottery_flag_agrees_with_the_product_s_unpruned_bound(model, seed_):
    """The efficiency benchmark flags a lottery scene (A0 above the unpruned network's own bound) from the raw
    arrays with the oracle's Wilson bound; the product's planner computes the same bound through its own code
    (search.bounds, Known.cap): they agree."""
    land = synthetic(model, seed_, 40, device="emulated-10x")
    base = float(np.mean(land.arrays[(0, 0.0)]["selection"]["final"]["fp32"] == 0))
    problem = problem_for(land, round(base - 0.01, 4), 1.0)
    rows = _rows(land)
    pl = plan(problem, {(k, 0.0): known(problem, k, 0.0, rows[(k, 0.0)]) for k in range(land.K + 1)})
    assert unpruned_bound(land) == pytest.approx(pl.unpruned_bound, abs=1e-12)
    assert base - 0.03 < unpruned_bound(land) < base  # a bound, below the measured accuracy

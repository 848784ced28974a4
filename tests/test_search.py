"""The joint search end to end: it reaches the exhaustive optimum; workers share a study on MySQL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from compress.candidate import unpack_evaluations
from profiles import Network, load_profile
from results.db import ProjectDB
from search.latency import lower_bound_ms
from search.run import RunSpec, run
from search.space import Problem
from search.study import Objective, seed, seed_order
from tests.conftest import ROOT

SMALL = dict(model="resnet18", end_device="emulated-10x", bandwidth=10.0, base_epochs=2, finetune_epochs=1,
             ratios=[0.0, 0.5], codecs=["fp32", "int8"], input_codecs=["raw", "png"], dataset="digits",
             progress=False)


def _args(spec: dict) -> list[str]:
    return ["--dataset", spec["dataset"], "--input-codecs", ",".join(spec["input_codecs"]),
            "--model", spec["model"], "--end_device", spec["end_device"], "--bandwidth", str(spec["bandwidth"]),
            "--A0", str(spec["A0"]), "--base-epochs", str(spec["base_epochs"]),
            "--finetune-epochs", str(spec["finetune_epochs"]), "--ratios", ",".join(map(str, spec["ratios"])),
            "--codecs", ",".join(spec["codecs"]), "--trials", str(spec["trials"]), "--no-progress"] + (
                ["--multi"] if spec.get("multi") else [])


def test_search_reaches_exhaustive_optimum(tmp_path, resnet_base):
    spec = RunSpec(**SMALL, A0=0.5, trials=30, exhaustive=True, run_dir=str(tmp_path)).resolved()
    result = run(spec, log=lambda *_: None)
    ref = {row["method"]: row for row in result["baselines"]}
    exhaustive = ref["joint optimum (exhaustive)"]
    assert exhaustive["complete"] and exhaustive["feasible"]
    assert result["best"]["latency_ms"] == pytest.approx(exhaustive["latency_ms"], rel=1e-9)
    assert result["best"]["acc_bound"] >= 0.5 and result["best"]["sel_acc"] > result["best"]["acc_bound"]
    # no baseline beats the optimum of the space that contains them all
    for row in result["baselines"]:
        if row.get("feasible"):
            assert row["latency_ms"] >= exhaustive["latency_ms"] - 1e-9
    # every output a user is promised is there and consistent: promise against delivery on test
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["best"]["k"] == result["best"]["k"]
    assert {"device_ms", "exit_ms", "transfer_ms", "server_ms", "device_overhead_ms", "encode_ms",
            "expected_ms", "promised_ms"} <= set(best["predicted"])
    promise = best["promise"]
    assert promise["test_meets_A0"] == (promise["test_acc"] >= 0.5)
    assert promise["n_selection"] == 449 and promise["n_test"] == 270
    trials = __import__("pandas").read_csv(tmp_path / "trials.csv")
    assert {"acc_bound", "test_acc", "delivered_ms", "latency_ms"} <= set(trials.columns)
    baselines = __import__("pandas").read_csv(tmp_path / "baselines.csv")
    assert {"acc_bound", "test_acc", "delivered_ms", "test_meets_A0"} <= set(baselines.columns)
    for name in ("trials.csv", "baselines.csv", "pareto.png", "threshold.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert result["spent"]["fine_tunes"] <= result["spent"]["grid_fine_tunes"]


def test_time_budget_stops_the_search_and_the_answer_is_the_best_known(tmp_path, resnet_base):
    """A budget that ends the search after its first trial: the baselines' pass then evaluates every unpruned
    split, and the best of those becomes the answer (recorded as a trial), not the first trial's."""
    spec = RunSpec(**SMALL, A0=0.5, trials=30, time_budget=0.001, run_dir=str(tmp_path)).resolved()
    result = run(spec, log=lambda *_: None)
    joint = {row["method"]: row for row in result["baselines"]}["joint optimum (exhaustive)"]
    assert result["best"]["latency_ms"] == pytest.approx(joint["latency_ms"], rel=1e-12)
    trials = optuna.load_study(study_name=spec.study, storage=spec.storage).trials
    assert len(trials) < 30
    adopted = [t for t in trials if t.user_attrs.get("found_by") == "baselines' pass"]
    assert len(adopted) <= 1 and all(t.user_attrs["latency_ms"] == result["best"]["latency_ms"] for t in adopted)


@pytest.mark.parametrize("bandwidth", [1.0, 100.0])
def test_unpruned_splits_are_tried_ends_first_then_by_lowest_bound(bandwidth):
    problem = Problem(load_profile("emulated-10x", "resnet18", 32), load_profile("server", "resnet18", 32),
                      Network(bandwidth, 5), A0=0.9)
    K = problem.space.K
    order = seed_order(problem)
    assert set(order[:2]) == {0, K} and sorted(order) == list(range(K + 1))
    bounds = [min(lower_bound_ms(problem.device, problem.server, problem.network, k, 0.0, c)
                  for c in problem.space.codecs_at(k)) for k in order[2:]]
    assert bounds == sorted(bounds)
    study = optuna.create_study()
    seed(study, problem)
    tried = []
    study.optimize(lambda trial: tried.append((problem.space.suggest(trial).k, trial.params.get("r", 0.0))) or 0.0,
                   n_trials=K + 1)
    assert tried == [(k, 0.0) for k in order]  # the queue runs in that order, all unpruned


def test_restricted_splits_bound_the_search_and_every_baseline(tmp_path, resnet_base):
    spec = RunSpec(**SMALL, A0=0.6, splits=[2, 4], trials=12, exhaustive=True, run_dir=str(tmp_path)).resolved()
    result = run(spec, log=lambda *_: None)
    allowed = {0, 2, 4, 6}
    assert result["spent"]["grid_candidates"] == 1 + 3 * len(SMALL["ratios"])
    trials = optuna.load_study(study_name=spec.study, storage=spec.storage).trials
    assert not [t for t in trials if t.state == TrialState.WAITING]  # nothing left queued when it stopped
    assert {t.params["k"] for t in trials} <= allowed
    assert result["best"]["k"] in allowed
    assert {row["k"] for row in result["baselines"] if row.get("feasible")} <= allowed


def test_unreachable_A0_exits_nonzero_with_best_reachable(tmp_path, resnet_base):
    out = subprocess.run([sys.executable, str(ROOT / "auto.py"), *_args({**SMALL, "A0": 1.0, "trials": 6}),
                          "--run-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "no configuration reaches the target. Closest (best accuracy bound): accuracy bound" in out.stdout


@pytest.mark.parametrize("argv,message", [
    (["--model", "lenet"], "unknown model 'lenet'; choose one of: mobilenet_v2, resnet18"),
    (["--bandwidth", "0"], "--bandwidth must be > 0 Mbit/s"),
    (["--A0", "1.5"], "--A0 must be in (0, 1]"),
    (["--end_device", "toaster", "--model", "resnet18"], "toaster"),
    (["--model", "resnet18", "--base-epochs", "2", "--splits", "2,7"],
     "splits [7] are not intermediate split points of resnet18 (1..5)"),
    (["--exit-epochs", "0"], "--exit-epochs must be at least 1"),
    (["--confidence", "0.3"], "--confidence must be 0 (point estimates) or in [0.5, 1)"),
    (["--input-codecs", "gif"], "unknown codec 'gif' in --input-codecs; choose from: raw, png"),
    (["--storage", "mysql+pymysql://bob:s3cret@127.0.0.1:1/x", "--model", "resnet18", "--base-epochs", "2"],
     "cannot use storage mysql+pymysql://bob:***@127.0.0.1:1/x"),
])
def test_bad_input_gets_one_line(argv, message, tmp_path, resnet_base):
    out = subprocess.run([sys.executable, str(ROOT / "auto.py"), *argv, "--run-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], out.stderr[-1500:]
    assert "s3cret" not in out.stderr + out.stdout


# --- shared studies on a real MySQL server -------------------------------------------------------

def _worker(spec: dict, study: str, storage: str, run_dir, env_extra=None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, str(ROOT / "auto.py"), *_args(spec), "--join", "--study", study,
                             "--storage", storage, "--run-dir", str(run_dir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.mysql
def test_two_workers_share_a_study_on_mysql(mysql_url, tmp_path, resnet_base):
    study_name = f"test-share-{uuid.uuid4().hex[:8]}"
    # multi-objective: a latency search would stop once its answer is proven (two trials here), before
    # both workers had shared much; the Pareto search runs its 12 trials
    spec = {**SMALL, "A0": 0.6, "trials": 12, "multi": True}
    workers = [_worker(spec, study_name, mysql_url, tmp_path) for _ in range(2)]
    for w in workers:
        out, _ = w.communicate(timeout=900)
        assert w.returncode == 0, out[-3000:]
    study = optuna.load_study(study_name=study_name, storage=mysql_url)
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # each trial stored once
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert 12 <= len(finished) <= 13  # a worker may start one more as the other finishes
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert {t.user_attrs.get("worker_pid") for t in trials} >= {w.pid for w in workers}
    engine = sa.create_engine(mysql_url)
    with engine.connect() as c:
        dup = c.execute(sa.text("SELECT base, k, r_e4, recipe, COUNT(*) n FROM splitopt_candidates_v3 "
                                "GROUP BY base, k, r_e4, recipe HAVING n > 1")).fetchall()
    engine.dispose()
    assert dup == []
    optuna.delete_study(study_name=study_name, storage=mysql_url)


@pytest.mark.mysql
def test_killed_worker_loses_no_completed_trial(mysql_url, tmp_path, resnet_base):
    study_name = f"test-kill-{uuid.uuid4().hex[:8]}"
    cache = tmp_path / "cache"  # candidates not cached yet: trials spend seconds fine-tuning
    (cache / "base").mkdir(parents=True)
    (cache / "base" / resnet_base.path.name).write_bytes(resnet_base.path.read_bytes())
    db = ProjectDB(mysql_url)  # and none in the shared project table either
    with db.engine.begin() as c:
        c.execute(sa.text("DELETE FROM splitopt_candidates_v3 WHERE base = :b"), {"b": resnet_base.digest})
    db.dispose()
    env = {"SPLITOPT_CACHE": str(cache), "SPLITOPT_HEARTBEAT_S": "1", "SPLITOPT_GRACE_S": "3"}
    # multi-objective: no candidate is skipped by a bound, so every pruned (k, r) is fine-tuned (2 epochs)
    spec = {**SMALL, "A0": 0.5, "trials": 20, "finetune_epochs": 2, "multi": True}
    victim = _worker(spec, study_name, mysql_url, tmp_path, env)
    storage = optuna.storages.RDBStorage(mysql_url)
    deadline = time.time() + 600
    study = None
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            continue
        trials = study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        # a trial that is fine-tuning (r > 0, not yet cached): it will run for seconds, so the kill lands in it
        busy = [t for t in running if t.params.get("r", 0) > 0 and "skipped" not in t.user_attrs
                and t.datetime_start and time.time() - t.datetime_start.timestamp() > 0.5]
        if complete and busy:
            break
        assert victim.poll() is None, victim.communicate()[0][-3000:]
    else:
        pytest.fail("the first worker never had a trial running after a completed one")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    before = {t.number: t.values for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    killed = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    assert killed, "the worker was killed between trials"
    # wait until the storage itself calls the dead worker's trial stale (its heartbeat older than the grace
    # period), rather than sleeping a guessed time: a loaded machine delays both sides alike
    stale_storage = optuna.storages.RDBStorage(mysql_url, heartbeat_interval=1, grace_period=3)
    deadline = time.time() + 120
    killed_ids = {t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    while not killed_ids <= set(stale_storage._get_stale_trial_ids(study._study_id)):
        assert time.time() < deadline, "the killed worker's trial never became stale"
        time.sleep(0.5)
    rescuer = _worker(spec, study_name, mysql_url, tmp_path, env)
    out, _ = rescuer.communicate(timeout=900)
    assert rescuer.returncode == 0, out[-3000:]
    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    for number, values in before.items():  # nothing completed was lost or changed
        assert by_number[number].state == TrialState.COMPLETE and by_number[number].values == values
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(by_number[n].state == TrialState.FAIL for n in killed)
    retried = [t for t in trials if t.system_attrs.get("failed_trial") in killed]
    assert retried and all(t.state != TrialState.WAITING for t in retried)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) >= 20
    optuna.delete_study(study_name=study_name, storage=storage)


@pytest.mark.mysql
def test_candidates_are_found_on_mysql_for_every_ratio(mysql_url, resnet_base, digits32):
    """FLOAT is single precision on MySQL: r = 0.3 stored as FLOAT was not found by r == 0.3. Ratios are
    stored exactly now, so a worker on another machine finds every candidate of the grid."""
    from compress.candidate import build_candidate

    evals = build_candidate(resnet_base, digits32, 2, 0.0, progress=False).evaluations
    db = ProjectDB(mysql_url)
    base = f"test-{uuid.uuid4().hex[:12]}"
    try:
        ratios = (0.1, 0.3, 0.7, 0.9, 0.05, 0.3333)
        for r in ratios:
            assert db.put_candidate(base, 2, r, "recipe", "done", evaluations=evals)
        for r in ratios:
            row = db.candidate(base, 2, r, "recipe")
            assert row is not None and row["r"] == pytest.approx(r) and row["status"] == "done", r
            assert np.array_equal(unpack_evaluations(row["evaluation"])["selection"].label, evals["selection"].label)
        assert db.candidate(base, 2, 0.31, "recipe") is None
        assert not db.put_candidate(base, 2, 0.3, "recipe", "done", evaluations=evals)  # stored once
        assert sorted(db.candidate_rows(base).r) == sorted(ratios)
    finally:
        with db.engine.begin() as c:
            c.execute(sa.text("DELETE FROM splitopt_candidates_v3 WHERE base = :b"), {"b": base})
        db.dispose()


def test_rerun_says_it_resumes_and_every_run_keeps_its_summary(tmp_path, resnet_base):
    """A real run, twice on one SQLite study: splitopt_runs.summary holds each run's answer (it was always
    {}), the rerun says it resumes (and that --trials is already reached), and trials.csv lists no trial
    that was queued but never ran (every SQLite trials.csv ended with one)."""
    spec = RunSpec(**SMALL, A0=0.5, trials=3, run_dir=str(tmp_path)).resolved()
    first = run(spec, log=lambda *_: None)
    logs = []
    again = run(spec, log=logs.append)
    assert any(line.startswith(f"resuming study {spec.study!r}: ") and "--trials 3 is reached" in line
               for line in logs), logs
    engine = sa.create_engine(spec.storage)
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT status, summary FROM splitopt_runs ORDER BY id")).fetchall()
    engine.dispose()
    assert [status for status, _ in rows] == ["done", "done"]
    for (_, summary), result in zip(rows, (first, again)):
        summary = json.loads(summary)
        assert summary["best"] == {x: result["best"][x] for x in ("k", "r", "t", "codec")}
        assert summary["latency_ms"] == result["best"]["latency_ms"] and summary["feasible"] is True
        assert summary["acc_bound"] == result["best"]["acc_bound"] and summary["seconds"] > 0
    trials = __import__("pandas").read_csv(tmp_path / "trials.csv")
    study = optuna.load_study(study_name=spec.study, storage=spec.storage)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert "WAITING" not in set(trials.state) and len(trials) == len(study.trials) - len(waiting)
    assert again["trials"]["queued_never_run"] == len(waiting)

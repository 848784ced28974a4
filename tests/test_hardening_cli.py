"""Hardening of the command line and of shared studies: argument errors before torch loads, the storage URL
(redaction, --storage-file), abandoned candidates across studies with different A0, run summaries, resume
messages and trials that were queued but never ran."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import sqlalchemy as sa

import auto
from compress.candidate import Evaluation
from results import report
from results.db import ProjectDB, candidates, redact
from search.pool import Abandoned, CandidatePool
from tests.conftest import ROOT

AT_PASSWORD = "mysql+pymysql://u:p@ss@w0rd@{host}/db"  # a password with two unencoded '@'
PIECES = ("p@ss@w0rd", "p@ss", "ss@w0rd", "w0rd")  # none of it may be shown


# --- 10: argument errors answer before torch loads ------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["--A0", "2"], "--A0 must be in (0, 1], got 2.0"),
    (["--model", "lenet"], "unknown model 'lenet'; choose one of: mobilenet_v2, resnet18, vgg11_bn, alexnet"),
    (["--codecs", "fp32,zip"], "unknown codec 'zip' in --codecs; choose from: fp32, fp16, int8, int8-zlib"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'; choose one of: fashion-mnist, digits, cifar10"),
    (["--trials", "0"], "--trials must be at least 1, got 0"),
    (["--train-images", "50"], "--train-images must be in [100, 59000], got 50"),
    (["--dataset", "digits", "--train-images", "500"], "--train-images sets Fashion-MNIST's training role; digits"),
    (["--objective", "p50"], "invalid choice: 'p50'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--storage-file", "/nonexistent/splitopt-url"], "--storage-file /nonexistent/splitopt-url: cannot read it"),
    (["--storage", AT_PASSWORD.format(host="127.0.0.1:1")], "its password holds '@'"),
])
def test_argument_errors_answer_before_torch_loads(argv, message):
    code = ("import sys, auto\n"
            "try:\n    rc = auto.main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
            "print('torch' in sys.modules, rc)")
    out = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != auto.STORAGE_ENV})
    assert out.stdout.split() == ["False", "2"], out.stdout + out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], out.stderr
    assert not any(p in out.stderr for p in PIECES)


def test_light_names_match_the_modules_that_use_them():
    from compress import data, names, train, zoo

    assert tuple(zoo.ZOO) == names.MODELS
    assert data.DATASETS == names.DATASETS and train.PRECISIONS == names.PRECISIONS
    assert names.FASHION_TRAIN_MAX == 60000 - data.FASHION_SIZES["val"]  # the upstream training file less validation


# --- 9a: a password with an unencoded '@' never shows -----------------------------------------------

def test_redact_hides_a_password_holding_at_signs():
    url = AT_PASSWORD.format(host="db-host:3306")
    assert redact(url) == "mysql+pymysql://u:***@db-host:3306/db"
    assert redact("mysql+pymysql://bob:s3cret@127.0.0.1:1/x") == "mysql+pymysql://bob:***@127.0.0.1:1/x"
    assert redact("mysql+pymysql://root@127.0.0.1:3306/test") == "mysql+pymysql://root@127.0.0.1:3306/test"
    assert redact("mysql+pymysql://u@h/db?password=zz&x=1") == "mysql+pymysql://u@h/db?password=***&x=1"
    assert redact("sqlite:////tmp/a@b/study.db") == "sqlite:////tmp/a@b/study.db"  # a path, not credentials


@pytest.mark.parametrize("host", ["127.0.0.1:1", "nohost.invalid:3306", "127.0.0.1:notaport"])
def test_storage_errors_never_show_the_password(host):
    from search.study import storage

    url = AT_PASSWORD.format(host=host)
    for open_it in (storage, ProjectDB):
        with pytest.raises(ValueError) as e:
            open_it(url)
        line = str(e.value)
        assert len(line.splitlines()) == 1 and "mysql+pymysql://u:***@" in line, line
        assert not any(p in line for p in PIECES), line


# --- 9b: the storage URL from a file ----------------------------------------------------------------

def test_storage_file_gives_the_url_and_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(auto.STORAGE_ENV, raising=False)
    url = "mysql+pymysql://bob:s3cret@db-host:3306/splitopt"
    path = tmp_path / "db-url"
    path.write_text(f"  {url}  \nsecond line is ignored\n")
    args = auto.parser().parse_args(["--storage-file", str(path)])
    assert auto.storage_from(args) == url
    with pytest.raises(ValueError, match="--storage or --storage-file, not both"):
        auto.storage_from(auto.parser().parse_args(["--storage-file", str(path), "--storage", url]))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="its first line is empty"):
        auto.storage_from(auto.parser().parse_args(["--storage-file", str(tmp_path / "empty")]))
    with pytest.raises(ValueError, match="cannot read it"):
        auto.storage_from(auto.parser().parse_args(["--storage-file", str(tmp_path)]))  # a directory
    monkeypatch.setenv(auto.STORAGE_ENV, url)
    assert auto.storage_from(auto.parser().parse_args([])) == url
    # workers get the URL from the environment, never a path or URL on their command line
    spec = SimpleNamespace(study="s", run_dir="d")
    assert auto.worker_argv(["--storage-file", str(path), "--A0", "0.8"], spec) == [
        "--A0", "0.8", "--study", "s", "--run-dir", "d"]


# --- 8: an abandoned candidate is abandoned for the cut-off that stopped it -------------------------

def test_still_abandoned_follows_the_cut_off():
    from search.pool import still_abandoned

    row = {"status": "abandoned", "val_acc": 0.72, "prune_below": 0.8}
    assert still_abandoned(row, 0.8) and still_abandoned(row, 0.9)  # as high or higher: stopped again
    assert still_abandoned(row, 0.75)  # lower, but 0.72 is below it too
    assert not still_abandoned(row, 0.7) and not still_abandoned(row, 0.72)  # would not have stopped it
    assert not still_abandoned(row, None)  # no pruner in force (multi-objective, T0)
    assert still_abandoned({"val_acc": 0.7, "prune_below": 0.7}, 0.7)  # same study; rounding cannot flip it
    assert still_abandoned({"val_acc": None, "prune_below": None}, 0.5)  # an old row without anything: trusted


def _evals() -> dict[str, Evaluation]:
    ev = Evaluation(label=np.array([0, 1, 1, 0]), exit_conf=None, exit_pred=None, exit_top5=None,
                    final={"fp32": np.array([0, 1, 0, 0])}, final_top5={"fp32": np.ones(4, dtype=bool)})
    return {"selection": ev, "test": ev}


@pytest.fixture(params=["sqlite", "mysql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("mysql_url")


def test_a_lower_A0_fine_tunes_what_a_higher_one_abandoned(db_url, monkeypatch):
    """Study 1 (cut-off 0.8) stops (3, 0.5) at val acc 0.72; study 2 on the same database with the same
    cut-off, or 0.75, skips it; study 3 with cut-off 0.7 would not have stopped it: it fine-tunes it, and
    its finished candidate replaces the abandoned row for everyone."""
    import search.pool

    trained = []

    def fake_build(base, data, k, r, importance, recipe, exit_epochs, seed=0, on_epoch=None, progress=True):
        trained.append((k, r))
        on_epoch(2, 0.72)  # the pruner decides here, as Objective's on_epoch does
        return SimpleNamespace(evaluations=_evals(), meta={"cached": False, "total_seconds": 1.0, "path": None})

    monkeypatch.setattr(search.pool, "build_candidate", fake_build)
    db = ProjectDB(db_url)
    base = SimpleNamespace(digest=f"test-{uuid.uuid4().hex[:12]}")  # nothing in the file cache under it

    def pool(cut: float | None) -> CandidatePool:
        return CandidatePool(base, None, db, progress=False, prune_below=cut)

    def pruner(cut: float):
        def on_epoch(epoch: int, acc: float) -> None:
            if acc < cut:
                raise optuna.TrialPruned(f"val acc {acc} after epoch {epoch}")
        return on_epoch

    try:
        with pytest.raises(optuna.TrialPruned):
            pool(0.8).evaluations(3, 0.5, pruner(0.8))
        row = db.candidate(base.digest, 3, 0.5, pool(0.8)._recipe_id(3, 0.5))
        assert row["status"] == "abandoned" and row["val_acc"] == pytest.approx(0.72)
        assert row["prune_below"] == 0.8  # exactly: a double, not MySQL's single-precision FLOAT
        for cut in (0.8, 0.75):
            p = pool(cut)
            assert p.known(3, 0.5)
            with pytest.raises(Abandoned, match="below the cut-off 0.8"):
                p.evaluations(3, 0.5, pruner(cut))
        assert trained == [(3, 0.5)]
        lower = pool(0.7)
        assert not lower.known(3, 0.5)  # it costs a fine-tune again
        evals = lower.evaluations(3, 0.5, pruner(0.7))
        assert trained == [(3, 0.5)] * 2 and lower.fine_tunes == 1
        assert np.array_equal(evals["selection"].label, _evals()["selection"].label)
        row = db.candidate(base.digest, 3, 0.5, lower._recipe_id(3, 0.5))
        assert row["status"] == "done" and row["evaluation"] is not None
        later = pool(0.8)  # a study with the high cut-off now gets the finished candidate
        assert later.known(3, 0.5) and later.evaluations(3, 0.5)["test"].label.tolist() == [0, 1, 1, 0]
        assert trained == [(3, 0.5)] * 2
        # abandoned over abandoned: only a lower stopping point replaces it; nothing replaces a finished one
        rid = lower._recipe_id(2, 0.5)
        assert db.put_candidate(base.digest, 2, 0.5, rid, "abandoned", val_acc=0.72, prune_below=0.8)
        assert not db.put_candidate(base.digest, 2, 0.5, rid, "abandoned", val_acc=0.75, prune_below=0.8)
        assert db.put_candidate(base.digest, 2, 0.5, rid, "abandoned", val_acc=0.65, prune_below=0.7)
        assert db.candidate(base.digest, 2, 0.5, rid)["val_acc"] == pytest.approx(0.65)
        assert db.put_candidate(base.digest, 2, 0.5, rid, "done", evaluations=_evals())
        assert not db.put_candidate(base.digest, 2, 0.5, rid, "abandoned", val_acc=0.1, prune_below=0.9)
        assert not db.put_candidate(base.digest, 2, 0.5, rid, "done", evaluations=_evals())
        assert db.candidate(base.digest, 2, 0.5, rid)["status"] == "done"
    finally:
        with db.engine.begin() as c:
            c.execute(candidates.delete().where(candidates.c.base == base.digest))
        db.dispose()


@pytest.fixture
def scratch_url(db_url):
    """An empty database of the backend: SQLite's file, or a MySQL database made for the test."""
    if db_url.startswith("sqlite"):
        yield db_url
        return
    name = f"test_hardening_{uuid.uuid4().hex[:8]}"
    server = sa.create_engine(db_url)
    with server.begin() as c:
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield db_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with server.begin() as c:
            c.execute(sa.text(f"DROP DATABASE {name}"))
        server.dispose()


def test_an_older_candidates_table_gains_the_cut_off_column(scratch_url):
    url = scratch_url
    before = [sa.Column(c.name, c.type, primary_key=c.primary_key) for c in candidates.c if c.name != "prune_below"]
    old = sa.Table(candidates.name, sa.MetaData(), *before)  # as versions before the cut-off created it
    engine = sa.create_engine(url)
    old.create(engine)
    with engine.begin() as c:
        c.execute(old.insert().values(base="b", k=2, r_e4=5000, recipe="x", status="abandoned", val_acc=0.5,
                                      created_at=sa.func.current_timestamp()))
    engine.dispose()
    db = ProjectDB(url)
    try:
        row = db.candidate("b", 2, 0.5, "x")
        assert row["status"] == "abandoned" and row["prune_below"] is None
        assert db.put_candidate("b", 3, 0.5, "x", "abandoned", val_acc=0.6, prune_below=0.7)
        assert db.candidate("b", 3, 0.5, "x")["prune_below"] == 0.7
        ProjectDB(url).dispose()  # a second start finds the column there
    finally:
        db.dispose()


# --- 9c-9e: run summary, resume message, queued trials ----------------------------------------------

def test_finish_run_keeps_the_summary(tmp_path):
    db = ProjectDB(f"sqlite:///{tmp_path / 'study.db'}")
    result = {"feasible": True, "best": {"k": 2, "r": 0.5, "t": 0.8, "codec": "int8", "latency_ms": 3.25,
                                          "expected_ms": 3.0, "acc_bound": 0.91, "test_acc": 0.93},
              "trials": {"complete": 5, "queued_never_run": 1}}
    run_id = db.start_run("s", {}, {})
    db.finish_run(run_id, "done", report.run_summary(result, 12.34))
    failed = db.start_run("s", {}, {})
    db.finish_run(failed, "failed", report.run_summary(None, 1.0))
    with db.engine.connect() as c:
        rows = dict(c.execute(sa.text("SELECT id, summary FROM splitopt_runs")).fetchall())
    db.dispose()
    summary = json.loads(rows[run_id])
    assert summary["best"] == {"k": 2, "r": 0.5, "t": 0.8, "codec": "int8"} and summary["feasible"] is True
    assert summary["latency_ms"] == 3.25 and summary["acc_bound"] == 0.91 and summary["seconds"] == 12.3
    assert summary["trials"]["queued_never_run"] == 1
    assert json.loads(rows[failed]) == {"seconds": 1.0}


def _study_with_a_queued_trial() -> optuna.Study:
    """What the search leaves: its last trial queued another one, then the study stopped."""
    study = optuna.create_study(study_name="hardening", storage=optuna.storages.InMemoryStorage())

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        trial.study.enqueue_trial({"x": 0.05 + trial.number / 10}, skip_if_exists=True)
        return x

    study.optimize(objective, n_trials=2)
    return study


def test_trials_csv_leaves_out_queued_trials_that_never_ran(tmp_path):
    study = _study_with_a_queued_trial()
    assert [t.state.name for t in study.trials][-1] == "WAITING"
    df = report.trials_frame(study)
    df.to_csv(tmp_path / "trials.csv", index=False)
    assert len(df) == 2 and set(df.state) == {"COMPLETE"}
    assert report.trial_counts(study) == {"complete": 2, "pruned": 0, "fail": 0, "running": 0,
                                          "queued_never_run": 1}


def test_resume_message_says_what_the_study_holds():
    storage = optuna.storages.InMemoryStorage()
    assert report.resume_message(storage, "hardening", 40) is None  # no such study
    optuna.create_study(study_name="hardening", storage=storage)
    assert report.resume_message(storage, "hardening", 40) is None  # nothing to resume
    study = optuna.load_study(study_name="hardening", storage=storage)
    study.enqueue_trial({"x": 0.5})
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    study.enqueue_trial({"x": 0.25})
    assert report.resume_message(storage, "hardening", 40) == "resuming study 'hardening': 2 finished trials " \
                                                             "already, 1 queued"
    assert "--trials 2 is reached" in report.resume_message(storage, "hardening", 2)

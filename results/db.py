"""Project tables beside Optuna's, in the same database: runs and candidates (SQLAlchemy Core).

Every statement is built by SQLAlchemy with bound parameters.  Candidates carry their per-sample
evaluation as an .npz blob (loaded with allow_pickle=False), so a worker on another machine reuses a
fine-tune it never ran; the weights stay where `weights_path` says.
"""
from __future__ import annotations

import json
import socket
import time
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from compress.candidate import Evaluation, pack_evaluations

metadata = sa.MetaData()

runs = sa.Table(
    "splitopt_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study", sa.String(255), nullable=False, index=True),
    sa.Column("host", sa.String(255)),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("args", sa.Text),
    sa.Column("versions", sa.Text),
    sa.Column("summary", sa.Text),
)

# v3: per-sample evaluations of format 3 (selection and test roles, bytes per sample); the ratio is an
# exact integer in 1/10000 (FLOAT is single precision on MySQL: r = 0.3 stored was not found by r == 0.3).
candidates = sa.Table(
    "splitopt_candidates_v3", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("base", sa.String(64), nullable=False),
    sa.Column("k", sa.Integer, nullable=False),
    sa.Column("r_e4", sa.Integer, nullable=False),  # round(r * 10000)
    sa.Column("recipe", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # done | abandoned
    sa.Column("val_acc", sa.Float),  # of an abandoned fine-tune: its last validation accuracy
    sa.Column("sel_acc", sa.Float),
    sa.Column("test_acc", sa.Float),
    sa.Column("exit_rate_09", sa.Float),
    sa.Column("exit_acc_09", sa.Float),
    sa.Column("seconds", sa.Float),
    sa.Column("weights_path", sa.Text),
    sa.Column("host", sa.String(255)),
    sa.Column("evaluation", sa.LargeBinary(length=2 ** 24)),  # MEDIUMBLOB on MySQL
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("base", "k", "r_e4", "recipe", name="uq_candidate_v3"),
)


def first_start(create, attempts: int = 8):
    """Run `create()`, retrying while concurrent first starts on an empty database collide
    (duplicate version rows, tables created twice): the loser retries and finds them there."""
    for attempt in range(attempts):
        try:
            return create()
        except (sa.exc.IntegrityError, sa.exc.OperationalError, sa.exc.ProgrammingError) as e:
            if attempt == attempts - 1 or "Can't connect" in str(e) or "Access denied" in str(e):
                raise
            time.sleep(0.2 * (attempt + 1))


def redact(url: str) -> str:
    """The URL as it may appear in logs: the password is never shown."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown by its scheme only
        return url.split(":", 1)[0] + "://..."


def ratio_e4(r: float) -> int:
    """A pruning ratio as the exact integer the candidates table stores."""
    return int(round(float(r) * 10000))


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class ProjectDB:
    """Runs and candidates of a study, in the database its storage URL names."""

    def __init__(self, url: str, **engine_kwargs):
        self.url = url
        kwargs = {"pool_pre_ping": True, **engine_kwargs}
        if url.startswith("sqlite"):
            kwargs.setdefault("connect_args", {"timeout": 60})
        self.engine = sa.create_engine(url, **kwargs)
        first_start(lambda: metadata.create_all(self.engine, checkfirst=True))

    def start_run(self, study: str, args: dict, versions: dict) -> int:
        with self.engine.begin() as c:
            res = c.execute(runs.insert().values(study=study, host=socket.gethostname(), started_at=_now(),
                                                 status="running", args=json.dumps(args, default=str),
                                                 versions=json.dumps(versions)))
            return int(res.inserted_primary_key[0])

    def finish_run(self, run_id: int, status: str, summary: dict | None = None) -> None:
        with self.engine.begin() as c:
            c.execute(runs.update().where(runs.c.id == run_id).values(
                finished_at=_now(), status=status, summary=json.dumps(summary or {}, default=str)))

    def candidate(self, base: str, k: int, r: float, recipe: str) -> dict | None:
        q = sa.select(candidates).where(candidates.c.base == base, candidates.c.k == k,
                                        candidates.c.r_e4 == ratio_e4(r), candidates.c.recipe == recipe)
        with self.engine.connect() as c:
            row = c.execute(q).mappings().first()
        return {**row, "r": row["r_e4"] / 10000} if row else None

    def put_candidate(self, base: str, k: int, r: float, recipe: str, status: str, *,
                      evaluations: dict[str, Evaluation] | None = None, seconds: float | None = None,
                      weights_path: str | None = None, val_acc: float | None = None) -> bool:
        """Insert once; False when another worker stored it first (theirs is kept)."""
        values = {"base": base, "k": k, "r_e4": ratio_e4(r), "recipe": recipe, "status": status, "seconds": seconds,
                  "val_acc": val_acc,
                  "weights_path": weights_path, "host": socket.gethostname(), "created_at": _now()}
        if evaluations:
            sel, test = evaluations["selection"], evaluations["test"]
            values.update(sel_acc=float(sel.accuracy([None])[0]), test_acc=float(test.accuracy([None])[0]),
                          evaluation=pack_evaluations(evaluations))
            if sel.exit_conf is not None:
                values.update(exit_rate_09=float(sel.exit_rate([0.9])[0]),
                              exit_acc_09=float(sel.accuracy([0.9])[0]))
        try:
            with self.engine.begin() as c:
                c.execute(candidates.insert().values(**values))
            return True
        except sa.exc.IntegrityError:
            return False

    def candidate_rows(self, base: str | None = None):
        import pandas as pd

        q = sa.select(*[col for col in candidates.c if col.name != "evaluation"])
        if base is not None:
            q = q.where(candidates.c.base == base)
        with self.engine.connect() as c:
            df = pd.DataFrame(c.execute(q).mappings().all())
        return df.assign(r=df.r_e4 / 10000) if len(df) else df

    def dispose(self) -> None:
        self.engine.dispose()

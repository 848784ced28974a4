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

from compress.candidate import Evaluation, pack_evaluations
from results.storage_url import check_url, redact  # noqa: F401 - redact re-exported

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
    # of an abandoned fine-tune: the pruner's cut-off that stopped it (A0 - margin of that study); a study
    # with a lower cut-off would not have stopped it (see search.pool.still_abandoned).  Added after v3 was
    # in use: ProjectDB adds the column to an older table (MIGRATIONS); DOUBLE, not MySQL's single FLOAT.
    sa.Column("prune_below", sa.Float(precision=53)),
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


MIGRATIONS = {candidates: ("prune_below",)}  # nullable columns added to a table after it was in use


def add_columns(engine: sa.engine.Engine) -> None:
    """Add the MIGRATIONS columns a table created by an older version lacks.  Two workers adding one at once:
    the loser's ALTER fails, `first_start` retries, and the column is there."""
    inspector = sa.inspect(engine)
    for table, names in MIGRATIONS.items():
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for name in names:
            if name not in have:
                col = table.c[name]
                quote = engine.dialect.identifier_preparer.quote
                with engine.begin() as c:
                    c.execute(sa.text(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(name)} "
                                      f"{col.type.compile(dialect=engine.dialect)}"))


def ratio_e4(r: float) -> int:
    """A pruning ratio as the exact integer the candidates table stores."""
    return int(round(float(r) * 10000))


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class ProjectDB:
    """Runs and candidates of a study, in the database its storage URL names."""

    def __init__(self, url: str, **engine_kwargs):
        self.url = check_url(url)
        kwargs = {"pool_pre_ping": True, **engine_kwargs}
        if url.startswith("sqlite"):
            kwargs.setdefault("connect_args", {"timeout": 60})
        self.engine = sa.create_engine(url, **kwargs)
        first_start(lambda: metadata.create_all(self.engine, checkfirst=True))
        first_start(lambda: add_columns(self.engine))

    def start_run(self, study: str, args: dict, versions: dict) -> int:
        with self.engine.begin() as c:
            res = c.execute(runs.insert().values(study=study, host=socket.gethostname(), started_at=_now(),
                                                 status="running", args=json.dumps(args, default=str),
                                                 versions=json.dumps(versions)))
            return int(res.inserted_primary_key[0])

    def finish_run(self, run_id: int, status: str, summary: dict | None = None) -> None:
        """Close the run with its outcome; `summary` (results.report.run_summary) says what it found."""
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
                      weights_path: str | None = None, val_acc: float | None = None,
                      prune_below: float | None = None) -> bool:
        """Insert once; False when another worker stored it first (theirs is kept).  A finished candidate
        replaces an abandoned one (a study with a lower cut-off fine-tuned it to the end), and an abandoned
        one replaces an abandoned one that stopped at a higher accuracy (the lowest point known decides)."""
        values = {"base": base, "k": k, "r_e4": ratio_e4(r), "recipe": recipe, "status": status, "seconds": seconds,
                  "val_acc": val_acc, "prune_below": prune_below,
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
            pass
        t = candidates.c
        replaceable = t.status == "abandoned"
        if status == "abandoned":
            if val_acc is None:
                return False
            replaceable = replaceable & (t.val_acc.is_(None) | (t.val_acc > val_acc))
        elif status != "done":
            return False
        key = (t.base == base) & (t.k == k) & (t.r_e4 == ratio_e4(r)) & (t.recipe == recipe)
        with self.engine.begin() as c:  # one conditional UPDATE: of two workers racing, one wins
            return c.execute(candidates.update().where(key & replaceable).values(**values)).rowcount > 0

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

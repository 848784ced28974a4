"""Candidates for the search: each (k, r) fine-tuned once, shared through the project tables.

Lookup order: the project database (any worker, any machine), then the local file cache, and only
then a fine-tune.  The pool counts what it spent.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import optuna

from compress import store
from compress.base import BaseModel
from compress.candidate import (EXIT_EPOCHS, FINETUNE, Evaluation, add_codecs, build_candidate, candidate_key,
                               candidate_path, unpack_evaluations)
from compress.data import DataSplits
from compress.train import Recipe
from profiles.profile import rkey
from results.db import ProjectDB


class Abandoned(Exception):
    """A candidate whose fine-tune was stopped as hopeless (by any worker)."""


# MySQL keeps val_acc as a single-precision FLOAT: an accuracy this close to a cut-off is not known to be below it
_FLOAT_SLACK = 1e-6


def still_abandoned(row: dict, prune_below: float | None) -> bool:
    """Whether an abandoned candidate would be stopped again under the cut-off `prune_below`.

    The pruner stops a fine-tune at the first epoch (after warm-up) whose validation accuracy is below the
    cut-off; the row keeps that accuracy and the cut-off then in force.  A cut-off at least as high stops it
    again, no later; a lower one stops it only if the recorded accuracy is below it too.  Otherwise, or with
    no pruner in force (None: multi-objective, T0), the fine-tune runs again: a study with a lower A0 on the
    same database skipped such candidates for good.
    """
    if prune_below is None:
        return False
    stopped_by = row.get("prune_below")
    if stopped_by is not None and prune_below >= stopped_by:
        return True
    val_acc = row.get("val_acc")
    if val_acc is None:  # a row from before the cut-off was recorded, without an accuracy: trust it
        return stopped_by is None
    return val_acc < prune_below - _FLOAT_SLACK


@dataclass
class CandidatePool:
    base: BaseModel
    data: DataSplits
    db: ProjectDB | None = None
    recipe: Recipe = FINETUNE
    importance: str = "magnitude"
    exit_epochs: int = EXIT_EPOCHS
    seed: int = 0
    progress: bool = True
    # the pruner's cut-off in force (A0 - search.study.PRUNE_MARGIN), recorded with what it abandons; None:
    # no pruner, so no abandoned candidate is skipped
    prune_below: float | None = None
    # codecs evaluated beyond a candidate's own at split k (the search space's two-link codecs), on first need
    codecs_for: Callable[[int], tuple[str, ...]] | None = None
    fine_tunes: int = 0  # pruned networks trained by this process
    exit_trainings: int = 0  # unpruned candidates (r = 0) whose only cost was training the exit
    _memo: dict = field(default_factory=dict)
    has_base = True  # (a class constant: a MeasuredPool may have none)

    def _key(self, k: int, r: float) -> dict:
        return candidate_key(self.base, k, r, self.importance, self.recipe, self.exit_epochs, self.seed)

    def _recipe_id(self, k: int, r: float) -> str:
        key = self._key(k, r)
        return store.digest({x: key[x] for x in key if x not in ("base", "k", "r")})

    def sizes(self) -> dict[str, int]:
        return self.data.sizes()

    def _row(self, k: int, r: float) -> dict | None:
        """The project table's row of (k, r), unless it is an abandonment this pool's cut-off would not repeat."""
        row = self.db.candidate(self.base.digest, k, r, self._recipe_id(k, r)) if self.db is not None else None
        if row is not None and row["status"] == "abandoned" and not still_abandoned(row, self.prune_below):
            return None
        return row

    def known(self, k: int, r: float) -> bool:
        """True when (k, r) costs no training: evaluated here, by another worker, or cached on disk."""
        if (k, r) in self._memo or candidate_path(self._key(k, r)).exists():
            return True
        return self._row(k, r) is not None

    def evaluations(self, k: int, r: float,
                    on_epoch: Callable[[int, float], None] | None = None) -> dict[str, Evaluation]:
        """Validation and test arrays of (k, r); raises Abandoned for a candidate given up on."""
        r = round(float(r), 4)
        if (k, r) in self._memo:
            return self._memo[(k, r)]
        recipe_id = self._recipe_id(k, r)
        row = self._row(k, r)
        cand = None
        if row is not None:
            if row["status"] == "abandoned":
                raise Abandoned(f"k={k} r={r} was abandoned (val acc {row['val_acc']} below the cut-off "
                                f"{row['prune_below'] if row['prune_below'] is not None else 'of its study'})")
            evals = unpack_evaluations(row["evaluation"])
        else:
            last = {}

            def watch(epoch: int, acc: float) -> None:
                last["acc"] = acc
                if on_epoch is not None:
                    on_epoch(epoch, acc)

            try:
                cand = build_candidate(self.base, self.data, k, r, self.importance, self.recipe, self.exit_epochs,
                                       seed=self.seed, on_epoch=watch, progress=self.progress)
            except optuna.TrialPruned:
                if self.db is not None:  # so no worker spends this fine-tune again
                    self.db.put_candidate(self.base.digest, k, r, recipe_id, "abandoned", val_acc=last.get("acc"),
                                          prune_below=self.prune_below)
                raise
            if not cand.meta.get("cached"):
                if r > 0 and k > 0:
                    self.fine_tunes += 1
                else:
                    self.exit_trainings += 1
            evals = cand.evaluations
            if self.db is not None:
                self.db.put_candidate(self.base.digest, k, r, recipe_id, "done", evaluations=evals,
                                      seconds=cand.meta.get("total_seconds"), weights_path=cand.meta.get("path"))
        extra = self.codecs_for(k) if self.codecs_for is not None else ()
        if any(c not in evals["selection"].final for c in extra):  # needs the weights (the file cache has them)
            evals = add_codecs(cand or self.candidate(k, r), self.data, extra).evaluations
        self._memo[(k, r)] = evals
        return evals

    def candidate(self, k: int, r: float):
        """The full candidate (weights included) for export; trains it here if only another machine has it."""
        return build_candidate(self.base, self.data, k, r, self.importance, self.recipe, self.exit_epochs,
                               seed=self.seed, progress=self.progress)


class MeasuredPool:
    """Candidates from a measurements file first (`compress.measurements`), the rest from a CandidatePool
    made on first need (so a fully measured grid never loads data nor trains a base model).

    `replay=True` is for benchmarks: a row stays unknown until it is asked for, and then counts as the
    fine-tune it stands for, so a search over a recorded landscape spends what it would have spent live.
    """

    def __init__(self, rows: dict, make_pool: Callable[[], CandidatePool] | None = None, replay: bool = False):
        self.rows, self._make, self.replay = rows, make_pool, replay
        self._pool: CandidatePool | None = None
        self.used: set[tuple[int, float]] = set()  # rows asked for (in replay: the fine-tunes spent)

    @property
    def pool(self) -> CandidatePool:
        if self._pool is None:
            if self._make is None:
                raise Unmeasured("this run has no model to fine-tune candidates the measurements lack")
            self._pool = self._make()
        return self._pool

    base = property(lambda self: self.pool.base)
    has_base = property(lambda self: self._pool is not None)
    fine_tunes = property(lambda self: (self._pool.fine_tunes if self._pool else 0) + (
        sum(1 for k, r in self.used if k > 0 and r > 0) if self.replay else 0))
    exit_trainings = property(lambda self: (self._pool.exit_trainings if self._pool else 0) + (
        sum(1 for k, r in self.used if k == 0 or r == 0) if self.replay else 0))

    def known(self, k: int, r: float) -> bool:
        key = (k, rkey(r))
        if key in self.rows:
            return not self.replay or key in self.used
        return self._pool is not None and self._pool.known(k, r)

    def evaluations(self, k: int, r: float, on_epoch: Callable[[int, float], None] | None = None) -> dict:
        key = (k, rkey(r))
        if key in self.rows:
            self.used.add(key)
            return self.rows[key]
        if self._make is None:
            raise Unmeasured(f"k={k} r={key[1]:g} is not in the measurements and this run cannot fine-tune it")
        return self.pool.evaluations(k, r, on_epoch)

    def candidate(self, k: int, r: float):
        return self.pool.candidate(k, r)

    data = property(lambda self: self.pool.data)

    def sizes(self) -> dict[str, int]:
        """Samples per data role: the data set's once it is loaded, else the measurements' largest n."""
        if self._pool is not None:
            return self._pool.sizes()
        return {s: max((len(e[s].label) for e in self.rows.values() if s in e), default=0)
                for s in ("selection", "test")}


class Unmeasured(LookupError):
    """A candidate neither measured nor trainable in this run."""

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
from compress.candidate import (EXIT_EPOCHS, FINETUNE, Evaluation, build_candidate, candidate_key,
                               candidate_path, unpack_evaluations)
from compress.data import DataSplits
from compress.train import Recipe
from results.db import ProjectDB


class Abandoned(Exception):
    """A candidate whose fine-tune was stopped as hopeless (by any worker)."""


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
    fine_tunes: int = 0  # pruned networks trained by this process
    exit_trainings: int = 0  # unpruned candidates (r = 0) whose only cost was training the exit
    _memo: dict = field(default_factory=dict)

    def _key(self, k: int, r: float) -> dict:
        return candidate_key(self.base, k, r, self.importance, self.recipe, self.exit_epochs, self.seed)

    def _recipe_id(self, k: int, r: float) -> str:
        key = self._key(k, r)
        return store.digest({x: key[x] for x in key if x not in ("base", "k", "r")})

    def known(self, k: int, r: float) -> bool:
        """True when (k, r) costs no training: evaluated here, by another worker, or cached on disk."""
        if (k, r) in self._memo or candidate_path(self._key(k, r)).exists():
            return True
        return self.db is not None and self.db.candidate(self.base.digest, k, r, self._recipe_id(k, r)) is not None

    def evaluations(self, k: int, r: float,
                    on_epoch: Callable[[int, float], None] | None = None) -> dict[str, Evaluation]:
        """Validation and test arrays of (k, r); raises Abandoned for a candidate given up on."""
        r = round(float(r), 4)
        if (k, r) in self._memo:
            return self._memo[(k, r)]
        recipe_id = self._recipe_id(k, r)
        row = self.db.candidate(self.base.digest, k, r, recipe_id) if self.db else None
        if row is not None:
            if row["status"] == "abandoned":
                raise Abandoned(f"k={k} r={r} was abandoned (val acc {row['val_acc']})")
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
                    self.db.put_candidate(self.base.digest, k, r, recipe_id, "abandoned", val_acc=last.get("acc"))
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
        self._memo[(k, r)] = evals
        return evals

    def candidate(self, k: int, r: float):
        """The full candidate (weights included) for export; trains it here if only another machine has it."""
        return build_candidate(self.base, self.data, k, r, self.importance, self.recipe, self.exit_epochs,
                               seed=self.seed, progress=self.progress)

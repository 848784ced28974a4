"""Baselines and the exhaustive optimum, on the same profiles, data, target and candidate cache.

Each method is a restriction of the joint space; its best configuration is found exactly (every
(k, r, codec) it allows, every distinct threshold), so the joint search is measured against the true
optimum of each family.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import pandas as pd
from tqdm.auto import tqdm

from search.pool import Abandoned, CandidatePool
from search.space import Problem, Score, best_setting, objective_key


@dataclass(frozen=True)
class Method:
    name: str
    splits: str = "all"  # all | device (k = K) | cloud (k = 0)
    prune: bool = True
    exit: bool = True
    codecs: tuple[str, ...] | None = None  # None: every codec of the space
    tiers: str = "all"  # with an edge tier: which second cuts (search.latency.TIERS); ignored without one
    edge_only: bool = False  # a row only when the scene has an edge tier


METHODS = (
    Method("device only", splits="device", prune=False, exit=False),
    Method("cloud only", splits="cloud", prune=False, exit=False, tiers="relay"),
    Method("edge only", splits="cloud", prune=False, exit=False, tiers="edge", edge_only=True),
    Method("split (Neurosurgeon)", prune=False, exit=False, codecs=("fp32",), tiers="relay"),
    Method("split + exit (Edgent-like)", prune=False, codecs=("fp32",), tiers="relay"),
    Method("split + pruning (CNNPC-like)", exit=False),  # with an edge: two cuts, pruning, no exits (CNNPC)
    Method("best 2-tier: end + cloud", tiers="relay", edge_only=True),
    Method("best 2-tier: end + edge", tiers="edge", edge_only=True),
    Method("joint optimum (exhaustive)"),
)


def methods(problem: Problem) -> list[Method]:
    """The rows of a reference table for `problem`'s scene (the edge ones only with an edge tier)."""
    return [m for m in METHODS if problem.edge is not None or not m.edge_only]


def _scene(problem: Problem, method: Method) -> Problem:
    """`problem` with the edge tier restricted to the method's second cuts."""
    if problem.edge is None or method.tiers == problem.edge.tiers:
        return problem
    scene = copy.copy(problem)
    scene.edge = problem.edge.only(method.tiers)
    return scene


def _pairs(problem: Problem, method: Method) -> list[tuple[int, float]]:
    K = problem.space.K
    ks = {"device": [K], "cloud": [0]}.get(method.splits, list(problem.space.splits))
    return [(k, r) for k, r in problem.space.candidates() if k in ks and (method.prune or r == 0.0)]


def best_of(problem: Problem, pool: CandidatePool, method: Method, build: bool = True) -> tuple[Score | None, bool]:
    """The best configuration of `method`, and whether every candidate it allows was evaluated.

    Without `build`, pruned candidates nobody fine-tuned yet are left out (and `complete` is False).
    """
    problem = _scene(problem, method)
    key = objective_key(problem)
    best, complete = None, True
    for k, r in _pairs(problem, method):
        if not build and r > 0 and not pool.known(k, r):  # r = 0 costs an exit training only
            complete = False
            continue
        try:
            evals = pool.evaluations(k, r)
        except Abandoned:
            complete = False
            continue
        s = best_setting(problem, k, r, evals, method.codecs, method.exit)
        if best is None or key(s.latency_ms, s.acc_bound) < key(best.latency_ms, best.acc_bound):
            best = s
    return best, complete


def reference_table(problem: Problem, pool: CandidatePool, build: bool = True, progress: bool = True) -> pd.DataFrame:
    """One row per method: its best configuration with the latency breakdown and accuracies."""
    if build:  # evaluate every candidate first, with one progress bar over the whole grid
        for k, r in tqdm(problem.space.candidates(), desc="exhaustive grid", disable=not progress):
            try:
                pool.evaluations(k, r)
            except Abandoned:
                pass
    rows = []
    for method in methods(problem):
        s, complete = best_of(problem, pool, method, build=build)
        row = {"method": method.name, "complete": complete}
        if s is not None:
            row.update(s.as_dict(), feasible=s.feasible(problem))
        rows.append(row)
    return pd.DataFrame(rows)

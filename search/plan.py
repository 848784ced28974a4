"""Which (k, r) to fine-tune next: branch and bound over the ordered rate.

A fine-tune is the only expensive step of the search (thresholds and codecs of an evaluated candidate
are free), so the planner decides which untried candidate is worth one, from what is known so far:

- proven (no assumption): latency and bytes fall as r grows and an exit can at best answer every sample,
  so a candidate whose latency lower bound is not below the best feasible latency found cannot win;
- assumed (ordering only): accuracy usually falls as r grows, so at a split where ratio r' is already
  below A0, every r > r' is set aside.  Set-aside candidates are still offered, last and in order of their
  bound, so the assumption orders the work but never removes the optimum: with budget enough the search
  evaluates every candidate the bounds cannot rule out, and then it has *proven* its answer optimal
  over the grid (`Plan.proven`).

Among the candidates left, the split whose best candidate promises the lowest latency goes first, and at
that split the frontier between feasible and infeasible ratios is searched by interpolation on the measured
accuracy bounds (safeguarded bisection), so a split of 40 ratios costs a handful of fine-tunes, not 40.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
import numpy as np

from compress.candidate import Evaluation
from compress.codec import is_variable
from search import bounds
from search.latency import expected_ms_many
from search.space import Problem, Score, available_codecs, best_setting, objective_key, score

@dataclass(frozen=True)
class Known:
    """What an evaluated candidate tells the planner."""

    k: int
    r: float
    best: Score | None  # its best setting; None when its fine-tune was abandoned
    cap: float  # the highest accuracy bound it reaches without an exit (any codec): feasibility at r
    ceiling: float  # the highest upper bound of that accuracy: what it could plausibly be
    n: int = 0  # selection samples behind both


@dataclass
class Plan:
    """The planner's answer: what to evaluate next, and what is already settled."""

    incumbent: Score | None  # the best feasible configuration known
    order: list[tuple[int, float]]  # untried candidates worth evaluating, most promising first
    set_aside: list[tuple[int, float]] = field(default_factory=list)  # the tail of `order` kept by the assumption
    ruled_out: int = 0  # untried candidates their latency lower bound rules out (proven)
    reasons: dict[tuple[int, float], str] = field(default_factory=dict)
    bounds: dict[tuple[int, float], float] = field(default_factory=dict)  # latency lower bound of each in `order`
    unreachable: bool = False  # A0 is above what the unpruned network can plausibly reach (see `plan`)
    unpruned_bound: float | None = None  # the unpruned network's accuracy bound, once measured (`noise_note`)

    @property
    def proven(self) -> bool:
        """Nothing untried can beat the incumbent: it is the optimum over the grid, by bounds alone."""
        return not self.order


def known(problem: Problem, k: int, r: float, evaluations: dict[str, Evaluation] | None) -> Known:
    if evaluations is None:
        return Known(k, r, None, -math.inf, -math.inf)
    best = best_setting(problem, k, r, evaluations)
    scores = [score(problem, problem.space.canonical(k, r, None, c), evaluations)
              for c in available_codecs(problem, k, evaluations)]
    n = len(evaluations["selection"].label)
    ceiling = max(float(bounds.upper(s.sel_acc, n, problem.bound_confidence)) for s in scores)
    return Known(k, r, best, max(s.acc_bound for s in scores), ceiling, n)


def plan(problem: Problem, measured: dict[tuple[int, float], Known], busy: set[tuple[int, float]] = frozenset()
         ) -> Plan:
    """Order the untried candidates of `problem.space` (those not in `measured` nor `busy`)."""
    if problem.T0 is not None or problem.A0 is None:
        raise ValueError("the planner minimises latency subject to A0 (T0 and --multi use the sampler alone)")
    A0, p = problem.A0, problem
    key = objective_key(p)
    feasible = [m.best for m in measured.values() if m.best is not None and m.best.feasible(p)]
    incumbent = min(feasible, key=lambda s: key(s.latency_ms, s.acc_bound), default=None)
    best_ms = incumbent.latency_ms if incumbent is not None else math.inf
    by_k: dict[int, list[Known]] = {}
    for m in measured.values():
        by_k.setdefault(m.k, []).append(m)

    # the unpruned network, cut anywhere: what a split whose own r = 0 is not known yet starts from
    unpruned = max((m for m in measured.values() if m.r == 0 and m.best is not None), key=lambda m: m.cap,
                   default=None)
    live: dict[int, list[tuple[float, float]]] = {}  # k -> [(estimate, r)]
    aside: dict[int, list[tuple[float, float]]] = {}  # k -> [(r, bound)]
    out = Plan(incumbent, [], unpruned_bound=None if unpruned is None else unpruned.cap)
    for k, r in p.space.candidates():
        if (k, r) in measured or (k, r) in busy:
            continue
        bound = p.lower_bound_ms(k, r)
        if bound >= best_ms:
            out.ruled_out += 1
            continue
        out.bounds[(k, r)] = bound
        nearest = max((m for m in by_k.get(k, ()) if m.r < r), key=lambda m: m.r, default=None)
        if nearest is None and unpruned is not None and (r > 0 or not by_k.get(k)):
            nearest = unpruned  # only an exit could add accuracy to the same network, which exits rarely do
        if nearest is not None and nearest.cap < A0:
            where = f"ratio {nearest.r:g} at k={k}" if nearest.k == k else "the unpruned network"
            out.reasons[(k, r)] = f"{where} is already below A0 (bound {nearest.cap:.4f})"
            aside.setdefault(k, []).append((r, bound))
            continue
        live.setdefault(k, []).append((_estimate(p, k, r, by_k.get(k, ()), bound), r))

    slope, spread = _trend(by_k)
    while live:  # in rounds, one probe per split, best split first: a batch (--suggest N) spreads out
        for k in sorted(live, key=lambda k: min(live[k])):
            r = _probe(sorted(r for _, r in live[k]), by_k.get(k, ()), A0, slope)
            out.order.append((k, r))
            live[k] = [(e, x) for e, x in live[k] if x != r]
            if not live[k]:
                del live[k]
    # set aside, most plausible first: by the chance that each is the optimum under a rough accuracy model
    # learnt from what is measured (`_chance`); ties (no chance at all) go in rounds over the splits, least
    # pruned first, fastest split first in each round.  A split's round counts the ratios it already spent
    # below A0, so the rounds hold across replans (the planner runs after every trial).
    spent = {k: sum(1 for m in by_k.get(k, ()) if m.r > 0 and m.cap < A0) for k in aside}
    chance = _chance(aside, by_k, unpruned, A0, slope, spread)
    out.set_aside = [(k, r) for *_, k, r in sorted(
        (-chance[(k, r)], spent[k] + i, bound, k, r) for k, v in aside.items() for i, (r, bound) in enumerate(sorted(v)))]
    out.order += out.set_aside
    # stop only when A0 is above even the upper bound of the unpruned network's accuracy: a pruned one would
    # have to be significantly more accurate than the network it was cut from
    out.unreachable = (incumbent is None and not live and unpruned is not None and unpruned.ceiling < A0)
    return out


def _estimate(problem: Problem, k: int, r: float, at_k: list[Known], bound: float) -> float:
    """Expected latency of an untried (k, r): its bound, raised by the exit rate the nearest evaluated
    ratio at the same split reached at its best setting (an exit rarely does better after more pruning)."""
    p = problem
    done = [m for m in at_k if m.best is not None]
    if not done:
        return bound
    near = min(done, key=lambda m: abs(m.r - r))
    rate = near.best.breakdown.exit_rate if near.best.config.t is not None else None
    codec = near.best.config.codec
    if is_variable(codec) or rate is None:
        codec = next((c for c in p.codecs_at(k) if not is_variable(c)), None)
        if codec is None:
            return bound
    rates = [rate if rate is not None else 0.0]
    return max(bound, float(expected_ms_many(p.device, p.server, p.network, k, r, codec, rates, edge=p.edge)[0]))


def _probe(ratios: list[float], at_k: list[Known], A0: float, slope: float) -> float:
    """The ratio to evaluate at one split: inside the open frontier (between the highest ratio known
    feasible and the lowest known infeasible) interpolate where the accuracy bound crosses A0 (kept off
    the ends, so a bad guess still halves the interval).  With no infeasible ratio above the feasible one
    yet, aim where the pooled slope says the bound crosses A0, at least twice as far past the feasible one
    as the step before it (galloping, so a slope too steep for this split costs a few probes, not a walk)."""
    ok = [m for m in at_k if m.cap >= A0]
    bad = [m for m in at_k if m.cap < A0]
    lo = max(ok, key=lambda m: m.r, default=None)
    # the lowest infeasible ratio above it: below lo an infeasible one (noise) bounds nothing here
    hi = min((m for m in bad if lo is None or m.r > lo.r), key=lambda m: m.r, default=None)
    inside = [r for r in ratios if (lo is None or r > lo.r) and (hi is None or r < hi.r)]
    if not inside:
        return ratios[-1]  # below the frontier (an exit may still pay): the fastest first
    if lo is None:
        return inside[0]  # nothing feasible known at this split: the unpruned one first
    if hi is None:
        step = (lo.cap - A0) / slope
        before = max((m.r for m in ok if m.r < lo.r), default=None)
        if before is not None:
            step = max(step, 2 * (lo.r - before))
        return next((r for r in inside if r >= lo.r + step - 1e-9), inside[-1])
    frac = (lo.cap - A0) / (lo.cap - hi.cap) if hi.cap > -math.inf and lo.cap > hi.cap else 0.5
    target = lo.r + min(max(frac, 0.0), 1.0) * (hi.r - lo.r)
    i = int(np.argmin([abs(r - target) for r in inside]))
    n = len(inside)
    edge = (n - 1) // 4  # safeguard: never the outer quarters, so each probe removes a quarter at least
    return inside[min(max(i, edge), n - 1 - edge)]


SLOPE_PRIOR = 0.1  # the least accuracy lost per unit of ratio (10 points at r = 1; at r = 1 nothing is left)
NEAR = 0.1  # ratios this close are neighbours whose difference is mostly noise


def _trend(by_k: dict[int, list[Known]]) -> tuple[float, float]:
    """(slope, spread) of a rough accuracy model learnt from what is measured: the bound falls by `slope` per
    unit of ratio (the median over measured neighbours at the same split, never below SLOPE_PRIOR) and
    strays from that line by `spread` (from near neighbours only, never below the binomial spread of the
    estimates themselves)."""
    pairs = [(a, b) for pts in ([(m.r, m.cap) for m in sorted(ms, key=lambda m: m.r) if m.best is not None]
                                for ms in by_k.values()) for a, b in zip(pts, pts[1:])]
    slopes = [(a[1] - b[1]) / (b[0] - a[0]) for a, b in pairs if b[0] > a[0]]
    slope = max(float(np.median(slopes)) if slopes else 0.0, SLOPE_PRIOR)
    # far apart, a straight line misses the curve, not the noise
    residuals = [b[1] - (a[1] - slope * (b[0] - a[0])) for a, b in pairs if b[0] - a[0] <= NEAR]
    floor = max((math.sqrt(max(m.cap * (1 - m.cap), 1e-4) / m.n) for ms in by_k.values() for m in ms
                 if m.n and m.best is not None), default=0.0)
    return slope, max(math.sqrt(float(np.mean(np.square(residuals))) / 2) if residuals else 0.0, floor, 1e-4)


def _chance(aside: dict[int, list[tuple[float, float]]], by_k: dict[int, list[Known]], unpruned: Known | None,
            A0: float, slope: float, spread: float) -> dict[tuple[int, float], float]:
    """For each set-aside (k, r): the chance that it is the optimum, i.e. that its accuracy bound reaches A0
    while no faster set-aside candidate does (a noisy-or over the candidates ordered by latency bound).

    The model (`_trend`) is deliberately rough, and only orders: at each split the bound falls linearly in r
    between the measured ratios and, past the highest, by the pooled slope, with the pooled spread around
    that line."""
    curves: dict[int, list[tuple[float, float]]] = {}
    for k in aside:
        pts = {m.r: m for m in by_k.get(k, ()) if m.best is not None}
        if 0.0 not in pts and unpruned is not None:
            pts[0.0] = unpruned  # the same network as an unpruned cut at k (an exit adds nothing to the cap)
        curves[k] = sorted((r, m.cap) for r, m in pts.items())

    def mean(k: int, r: float) -> float:
        pts = curves[k]
        below = [p for p in pts if p[0] < r]
        above = [p for p in pts if p[0] > r]
        if below and above:
            (r1, c1), (r2, c2) = below[-1], above[0]
            return c1 + (c2 - c1) * (r - r1) / (r2 - r1)
        if below:
            return below[-1][1] - slope * (r - below[-1][0])
        return above[0][1] if above else -math.inf

    feasible = {(k, r): 0.5 * math.erfc((A0 - mean(k, r)) / (spread * math.sqrt(2)))
                for k, v in aside.items() for r, _ in v}
    out, none_faster = {}, 1.0
    for bound, k, r in sorted((b, k, r) for k, v in aside.items() for r, b in v):
        out[(k, r)] = feasible[(k, r)] * none_faster
        none_faster *= 1.0 - feasible[(k, r)]
    return out

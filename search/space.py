"""The search space over (k, r, t, codec) and how a configuration is scored from measured parts."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import optuna

import numpy as np

from compress.candidate import Evaluation, exit_allowed
from compress.codec import FEATURE_CODECS, INPUT_CODECS, is_variable, split_via, via
from profiles import Network, Profile
from search import bounds
from search.latency import (EDGE_PARTS, OVERHEADS, Breakdown, Edge, check_objective, edge_exit_cuts, lower_bound_ms,
                            predict)

T_RANGE = (0.1, 1.0)  # max softmax over >= 2 classes is above 1/classes; 1.0 answers only certain samples


@dataclass(frozen=True)
class Config:
    k: int
    r: float
    t: float | None  # None = no exit
    codec: str = "fp32"

    def label(self) -> str:
        t = "no-exit" if self.t is None else f"t={self.t:.3f}"
        return f"k={self.k} r={self.r:g} {t} {self.codec}"


@dataclass(frozen=True)
class SearchSpace:
    K: int
    ratios: tuple[float, ...]
    codecs: tuple[str, ...] = FEATURE_CODECS
    splits: tuple[int, ...] | None = None  # default: every split 0..K
    input_codecs: tuple[str, ...] = INPUT_CODECS  # what k = 0 may send the image as
    exits: bool = True  # False when the device profile has no exit rows (an exit is optional)
    pairs: frozenset | None = None  # the (k, r) that exist (per-split grids, --measured-only); None: all
    edge_codecs: tuple[str, ...] = ()  # with an edge: codecs of its link to the cloud beside fp32 (codec.via)

    @classmethod
    def of(cls, device, server, ratios=None, **kw) -> "SearchSpace":
        """The space two profiles support: their common ratios at each split, exits if profiled."""
        ratios = tuple(ratios if ratios is not None else device.ratios)
        pairs = frozenset((k, r) for k in range(device.K + 1) for r in ratios
                          if r in device.ratios_at(k) and r in server.ratios_at(k))
        full = len(pairs) == (device.K + 1) * len(ratios)
        return cls(device.K, ratios, exits=device.has_exits, pairs=None if full else pairs, **kw)

    def ratios_at(self, k: int) -> tuple[float, ...]:
        """The ratios split k may take (k = 0 prunes nothing)."""
        if k == 0:
            return (0.0,)
        return tuple(r for r in self.ratios if self.pairs is None or (k, r) in self.pairs)

    def has(self, k: int, r: float) -> bool:
        return r in self.ratios_at(k) and (k > 0 or self.pairs is None or (0, 0.0) in self.pairs)

    def __post_init__(self) -> None:
        if self.splits is None:
            object.__setattr__(self, "splits", tuple(range(self.K + 1)))

    def canonical(self, k: int, r: float, t: float | None, codec: str) -> Config:
        """One name per distinct deployment: k = 0 prunes nothing and sends the image (raw or an input
        codec), only 0 < k < K has an exit and a feature codec, k = K sends nothing ("fp32" by convention)."""
        r = 0.0 if k == 0 else float(r)
        t = t if self.exit_at(k) else None
        first, k2, second = split_via(codec)
        if k == 0:
            first = first if first in INPUT_CODECS else "raw"
        if k == self.K:
            codec = "fp32"
        else:
            codec = first if k2 is None else via(first, k2, second)
        return Config(k, r, t, codec)

    def exit_at(self, k: int) -> bool:
        """Whether split k may have an early exit: only 0 < k < K, and only with exits profiled."""
        return self.exits and exit_allowed(k, self.K)

    def codecs_at(self, k: int) -> tuple[str, ...]:
        """What split k may send: its codecs, and with `edge_codecs` each of them followed, at every second cut
        k2 in (k, K), by each codec of the edge-to-cloud link (codec.via)."""
        own = self.input_codecs if k == 0 else self.codecs if k < self.K else ("fp32",)
        if k == self.K or not self.edge_codecs:
            return own
        return own + tuple(via(c, k2, c2) for c in own for k2 in range(k + 1, self.K) for c2 in self.edge_codecs)

    def vias(self) -> list[str]:
        """The second link's choices as one Optuna parameter ("K2:CODEC"; "-": fp32 at the cut the latency model picks)."""
        return ["-"] + [f"{k2}:{c2}" for k2 in range(1, self.K) for c2 in self.edge_codecs]

    def ratio_distribution(self):
        """The rate as an ordered parameter: a stepped float on an even grid, else an index into the grid
        (Optuna's samplers then learn that neighbouring rates behave alike; a categorical would not)."""
        from optuna.distributions import FloatDistribution, IntDistribution

        rs = sorted(self.ratios)
        step = round(rs[1] - rs[0], 4) if len(rs) > 1 else 0.0
        if step > 0 and all(abs(r - (rs[0] + i * step)) < 1e-6 for i, r in enumerate(rs)):
            return FloatDistribution(rs[0], rs[-1], step=step)
        return IntDistribution(0, len(rs) - 1)

    def _ratio_param(self, r: float):
        if isinstance(self.ratio_distribution(), optuna.distributions.FloatDistribution):
            return r
        return sorted(self.ratios).index(r)

    def ratio_of(self, params: dict) -> float:
        """The ratio a trial's parameters name (the inverse of `params`)."""
        if params["k"] == 0:
            return 0.0
        if "r" not in params:
            return self.ratios[0]
        r = params["r"]
        return round(float(r), 4) if isinstance(r, float) else sorted(self.ratios)[int(r)]

    def _suggest_ratio(self, trial: optuna.Trial) -> float:
        d = self.ratio_distribution()
        if isinstance(d, optuna.distributions.FloatDistribution):
            return round(trial.suggest_float("r", d.low, d.high, step=d.step), 4)
        return sorted(self.ratios)[trial.suggest_int("r", d.low, d.high)]

    def suggest(self, trial: optuna.Trial) -> Config:
        """Conditional parameters: r only where something is pruned, t and codec only where they act."""
        k = trial.suggest_categorical("k", list(self.splits))
        r = self._suggest_ratio(trial) if k > 0 and len(self.ratios) > 1 else (self.ratios[0] if k > 0 else 0.0)
        t, codec = None, "fp32"
        if self.exit_at(k) and trial.suggest_categorical("exit", [True, False]):
            t = trial.suggest_float("t", *T_RANGE)
        if 0 < k < self.K:
            codec = trial.suggest_categorical("codec", list(self.codecs))
        elif k == 0:  # its own parameter: Optuna needs one set of choices per name
            codec = trial.suggest_categorical("input_codec", list(self.input_codecs))
        if self.edge_codecs and k < self.K:  # a second cut not after k is outside the space (the objective says so)
            second = trial.suggest_categorical("via", self.vias())
            if second != "-":
                k2, c2 = second.split(":")
                codec = via(codec, int(k2), c2)
        return Config(k, float(r), t, codec)

    def params(self, config: Config) -> dict:
        """Optuna parameters that reproduce `config` (for enqueue_trial)."""
        p: dict = {"k": config.k}
        if config.k > 0 and len(self.ratios) > 1:
            p["r"] = self._ratio_param(config.r)
        if self.exit_at(config.k):
            p["exit"] = config.t is not None
            if config.t is not None:
                p["t"] = config.t
        first, k2, second = split_via(config.codec)
        if 0 < config.k < self.K:
            p["codec"] = first
        elif config.k == 0:
            p["input_codec"] = first
        if self.edge_codecs and config.k < self.K:
            p["via"] = "-" if k2 is None else f"{k2}:{second}"
        return p

    def distributions(self, config: Config) -> dict:
        """Optuna distributions of `config`'s parameters, as `suggest` defines them (for a recorded trial)."""
        from optuna.distributions import CategoricalDistribution as Cat
        from optuna.distributions import FloatDistribution

        d: dict = {"k": Cat(list(self.splits))}
        if config.k > 0 and len(self.ratios) > 1:
            d["r"] = self.ratio_distribution()
        if self.exit_at(config.k):
            d["exit"] = Cat([True, False])
            if config.t is not None:
                d["t"] = FloatDistribution(*T_RANGE)
        if 0 < config.k < self.K:
            d["codec"] = Cat(list(self.codecs))
        elif config.k == 0:
            d["input_codec"] = Cat(list(self.input_codecs))
        if self.edge_codecs and config.k < self.K:
            d["via"] = Cat(self.vias())
        return d

    def candidates(self) -> list[tuple[int, float]]:
        """Every (k, r) that needs its own network (k = 0 needs one, unpruned)."""
        return [(k, r) for k in self.splits for r in self.ratios_at(k) if self.has(k, r)]


@dataclass
class Problem:
    """What a run optimises: profiles, network, the accuracy or latency target and how promises are made."""

    device: Profile
    server: Profile
    network: Network
    A0: float | None = None  # minimise latency subject to accuracy >= A0
    T0: float | None = None  # or maximise accuracy subject to latency <= T0
    metric: str = "top1"
    confidence: float = 0.95  # one-sided bound on the selection accuracy and share sent; 0 = point estimates
    objective: str = "mean"  # mean, p95 or p99 of per-request latency
    families: int = 1  # candidates (k, r, codec) the answer is chosen among: the bound is shared out (Bonferroni)
    edge: Edge | None = None  # a middle tier between the end device and the server (the cloud)
    # per split role ("selection", "test"): per-sample bytes of the input images under lossless image codecs
    # ({"png": sizes}), what an end device sending the image to an exit on the edge pays (search.latency)
    image_bytes: dict = field(default_factory=dict)
    space: SearchSpace = field(init=False)

    def __post_init__(self) -> None:
        bounds.check_confidence(self.confidence)
        check_objective(self.objective)
        if self.families < 1:
            raise ValueError(f"families must be at least 1, got {self.families}")
        self.space = SearchSpace.of(self.device, self.server)

    def codecs_at(self, k: int) -> tuple[str, ...]:
        """The space's codecs at split k that this problem's tiers can carry (a two-link codec needs an edge
        whose second cuts include its k2)."""
        cuts = self.edge.second_cuts(k, self.space.K) if self.edge is not None else ()
        return tuple(c for c in self.space.codecs_at(k) if (k2 := split_via(c)[1]) is None or k2 in cuts)

    def lower_bound_ms(self, k: int, r: float) -> float:
        """The lowest latency (k, r) can reach under any of its codecs and thresholds: one fine-tune answers
        for all of them, so this decides whether it is worth one."""
        return min(lower_bound_ms(self.device, self.server, self.network, k, r, c, self.edge, self.up_codecs())
                   for c in self.codecs_at(k))

    def up_codecs(self) -> tuple[str, ...]:
        """What an end device may send the image to an exit on the edge as: raw, and png where its bytes are
        measured and the input codecs allow it (the mean objective only: the quantiles price the variable
        bytes of the link the exit's share skips, not of one every request crosses)."""
        png = ("png" in self.space.input_codecs and "png" in self.image_bytes.get("selection", {})
               and self.objective == "mean")
        return ("raw", "png") if png else ("raw",)

    @property
    def bound_confidence(self) -> float:
        """The confidence of each candidate's bound, so that the chosen one's holds with `confidence`: the
        answer is picked among `families` candidates, each tested as a fixed sequence over its thresholds."""
        return 0.0 if not self.confidence else 1.0 - (1.0 - self.confidence) / self.families


@dataclass
class Score:
    """A configuration's promise (from the selection split, bounded) and its delivery on the test split."""

    config: Config
    breakdown: Breakdown  # exit_rate = the promised one: 1 - upper bound of the share sent
    objective: str
    latency_ms: float  # promised latency under the objective
    sel_acc: float  # selection accuracy (point)
    acc_bound: float  # its one-sided lower confidence bound: what the A0 check uses
    sel_exit_rate: float  # selection exit rate (point)
    test_acc: float
    test_exit_rate: float
    test_latency_ms: float  # the same objective from the test split's own exit decisions and bytes

    def feasible(self, problem: Problem) -> bool:
        return violation(problem, self.latency_ms, self.acc_bound) <= 0

    def as_dict(self) -> dict:
        b = self.breakdown.as_dict()
        return {**asdict(self.config), "objective": self.objective, "latency_ms": self.latency_ms,
                "expected_ms": b["expected_ms"], "acc_bound": self.acc_bound, "sel_acc": self.sel_acc,
                "exit_rate": self.breakdown.exit_rate, "sel_exit_rate": self.sel_exit_rate,
                "test_acc": self.test_acc, "test_exit_rate": self.test_exit_rate,
                "delivered_ms": self.test_latency_ms, "exit_answers_all": self.sel_exit_rate >= 1.0,
                **{key: b[key] for key in ("device_ms", "exit_ms", "transfer_ms", "server_ms", "bytes", *OVERHEADS,
                                            "warm_saving_ms", "device_idle_factor", "server_idle_factor",
                                            "server_gap_ms", "exit_gap_ms")},
                **({key: b[key] for key in EDGE_PARTS + ("edge_idle_factor", "edge_gap_ms")}
                   if b["k2"] is not None else {})}


def violation(problem: Problem, latency_ms: float, accuracy: float) -> float:
    """Optuna's constraint value: <= 0 is feasible (`accuracy` is the bounded one)."""
    if problem.T0 is not None:
        return latency_ms - problem.T0
    return (problem.A0 or 0.0) - accuracy


def _bytes(problem: Problem, config: Config, ev: Evaluation) -> tuple[float | None, np.ndarray | None]:
    """(mean payload, per-sample transfer deviations in ms for a quantile objective) of a variable-size
    codec on a split; (None, None) for a fixed-size one (the profile's bytes table)."""
    if not is_variable(config.codec) or config.k == problem.space.K:
        return None, None
    sizes = ev.sample_bytes(config.codec)
    mean = float(sizes.mean())
    if problem.objective == "mean":
        return mean, None
    net = problem.network
    return mean, net.transfer_ms_many(sizes) - net.transfer_ms(mean)


def placements(problem: Problem, config: Config) -> list[tuple[int | None, int | None, str | None]]:
    """The ways (k2, k1, up codec) `config` may be served: each second cut it may use (None: the latency
    model's choice, as without an edge), then each first cut from which its exit may run on the edge (k2 = k),
    the image sent as each of `Problem.up_codecs` at k1 = 0.  None of them changes an answer, so the
    objective picks among them (search.latency)."""
    if problem.edge is None or config.k == problem.space.K or split_via(config.codec)[1] is not None:
        ways: list[tuple[int | None, int | None, str | None]] = [(None, None, None)]
    else:
        ways = [(k2, None, None) for k2 in problem.edge.second_cuts(config.k, problem.space.K)]
    return ways + [(config.k, k1, up) for k1 in edge_exit_cuts(problem.device, problem.edge, config.k, config.r,
                                                               config.codec, config.t is not None)
                   for up in (problem.up_codecs() if k1 == 0 else ("fp32",))]


def breakdown_for(problem: Problem, config: Config, ev: Evaluation, k2: int | None = None,
                  k1: int | None = None, up: str | None = None,
                  role: str = "selection") -> tuple[Breakdown, np.ndarray | None]:
    """`config`'s latency breakdown (exit rate 0; second cut `k2`, else the model's choice; its exit on the
    edge from `k1`, sent up as `up`) with the bytes measured on `ev` (the `role` split), and the per-sample
    transfer deviations a quantile objective needs."""
    n_bytes, extra = _bytes(problem, config, ev)
    up_bytes = None
    if up is not None and is_variable(up):
        sizes = problem.image_bytes.get(role) or problem.image_bytes["selection"]
        up_bytes = float(np.mean(sizes[up]))
    b = predict(problem.device, problem.server, problem.network, config.k, config.r, config.codec,
                exit_rate=0.0 if config.t is not None else None, n_bytes=n_bytes, edge=problem.edge, k2=k2, k1=k1,
                up_codec=up, up_bytes=up_bytes)
    if extra is not None and b.k2 == config.k:  # relayed: the variable-size payload crosses both links
        sizes = ev.sample_bytes(config.codec)
        net = problem.edge.network
        second = net.transfer_ms_many(sizes) - net.transfer_ms(float(sizes.mean()))
        extra = second if b.k1 is not None else extra + second  # an exit on the edge: the second link only
    return b, extra


def breakdowns(problem: Problem, config: Config, ev: Evaluation) -> list[tuple[Breakdown, np.ndarray | None]]:
    """`breakdown_for` in each way `config` may be served (one without an edge), on the selection split."""
    return [breakdown_for(problem, config, ev, k2, k1, up) for k2, k1, up in placements(problem, config)]


def promised_rates(problem: Problem, point_rates, n: int) -> np.ndarray:
    """Exit rates the latency promise uses: 1 - the upper bound of the share sent."""
    return 1.0 - bounds.upper(1.0 - np.asarray(point_rates, dtype=float), n, problem.bound_confidence)


def accuracy_bounds(problem: Problem, ev: Evaluation, codec: str) -> tuple[np.ndarray, ...]:
    """(thresholds, accuracy, exit rate, accuracy bound) at every distinct exit confidence, decreasing.

    The bound of a threshold is the lowest one-sided bound from the top threshold down to it: a fixed-
    sequence test (from the fewest exits to the most), so choosing the lowest threshold that still passes
    keeps the confidence of one test instead of paying for every threshold scanned (measured: the pointwise
    bound missed A0 on held-out data in 4 of 20 constructed cases, tests/test_promise.py).  With
    confidence 0 it is the point estimate.
    """
    ts, acc, rate = ev.curve(codec, problem.metric)
    lb = bounds.lower(acc, len(ev.label), problem.bound_confidence)
    if problem.confidence and len(lb):
        lb = np.minimum.accumulate(lb)
    return ts, acc, rate, lb


def score(problem: Problem, config: Config, evaluations: dict[str, Evaluation]) -> Score:
    """Promised latency (bounded share sent) and accuracy bound on the selection split; delivery on test."""
    sel, test = evaluations["selection"], evaluations["test"]
    n = len(sel.label)
    rate = float(sel.exit_rate([config.t])[0])
    promised = float(promised_rates(problem, [rate], n)[0]) if config.t is not None else 0.0
    # with an edge, the second cut whose promise is lowest at this exit rate (the objective's, not the mean's)
    ways = [(b.with_exit_rate(promised), extra) for b, extra in breakdowns(problem, config, sel)]
    b, extra = min(ways, key=lambda w: w[0].objective_at(problem.objective, [promised], w[1])[0])
    acc = float(sel.accuracy([config.t], config.codec, problem.metric)[0])
    acc_bound = float(bounds.lower(acc, n, problem.bound_confidence))
    if config.t is not None and sel.exit_conf is not None:
        ts, _, _, lb = accuracy_bounds(problem, sel, config.codec)
        passed = int(np.count_nonzero(ts >= config.t))  # thresholds tested before this one, itself included
        if passed:
            acc_bound = float(lb[passed - 1])
    test_rate = float(test.exit_rate([config.t])[0])
    tb, textra = breakdown_for(problem, config, test, b.k2, b.k1, b.up_codec, "test")  # the same deployment
    return Score(config, b, problem.objective, float(b.objective_at(problem.objective, [promised], extra)[0]),
                 acc, acc_bound, rate, float(test.accuracy([config.t], config.codec, problem.metric)[0]), test_rate,
                 float(tb.objective_at(problem.objective, [test_rate], textra)[0]))


def best_threshold(problem: Problem, k: int, r: float, codec: str, evaluations: dict[str, Evaluation]) -> Score:
    """The best t for a fixed (k, r, codec), scanned exactly over the selection confidences.

    Thresholds cost no inference, so once a candidate is evaluated this is exact and free.
    """
    base = score(problem, problem.space.canonical(k, r, None, codec), evaluations)
    if not problem.space.exit_at(k):
        return base
    sel = evaluations["selection"]
    ts, _, rate, acc_lb = accuracy_bounds(problem, sel, codec)
    config, promised = Config(k, r, 0.5, codec), promised_rates(problem, rate, len(sel.label))
    lat = np.min([b.objective_at(problem.objective, promised, extra) for b, extra in breakdowns(problem, config, sel)],
                 axis=0)
    key = objective_key(problem)
    best, best_key = None, key(base.latency_ms, base.acc_bound)
    for i in range(len(ts)):
        if key(lat[i], acc_lb[i]) < best_key:
            best_key, best = key(lat[i], acc_lb[i]), i
    return base if best is None else score(problem, Config(k, r, float(ts[best]), codec), evaluations)


def best_setting(problem: Problem, k: int, r: float, evaluations: dict[str, Evaluation],
                 codecs: tuple[str, ...] | None = None, exit: bool = True) -> Score:
    """The exact best codec (among `codecs`) and, with `exit`, threshold of an evaluated (k, r)."""
    key = objective_key(problem)
    allowed = available_codecs(problem, k, evaluations)
    codecs = tuple(c for c in (codecs or allowed) if c in allowed) or allowed[:1]
    scores = (best_threshold(problem, k, r, c, evaluations) if exit else
              score(problem, problem.space.canonical(k, r, None, c), evaluations) for c in codecs)
    return min(scores, key=lambda s: key(s.latency_ms, s.acc_bound))


def available_codecs(problem: Problem, k: int, evaluations: dict[str, Evaluation]) -> tuple[str, ...]:
    """The codecs of the space at split k that the evaluation answers for (all, for one made here)."""
    sel = evaluations["selection"]
    codecs = tuple(c for c in problem.codecs_at(k) if sel.has(c))
    if not codecs:
        raise ValueError(f"k={k}: the evaluation answers for none of the codecs {', '.join(problem.codecs_at(k))}")
    return codecs


def objective_key(problem: Problem):
    """Sort key: feasible first, then the objective (latency for A0, accuracy for T0)."""
    if problem.T0 is not None:
        T0 = problem.T0  # infeasible: the fastest (closest to T0), as the report's fallback
        return lambda lat, acc: (lat > T0, -acc, lat) if lat <= T0 else (True, lat, -acc)
    A0 = problem.A0 or 0.0
    # infeasible: the most accurate, and of equally accurate ones the fastest (device only over cloud only)
    return lambda lat, acc: (acc < A0, lat if acc >= A0 else -acc, lat)

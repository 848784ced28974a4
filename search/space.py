"""The search space over (k, r, t, codec) and how a configuration is scored from measured parts."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import optuna

from compress.candidate import Evaluation, exit_allowed
from compress.codec import CODECS
from profiles import Network, Profile
from search.latency import Breakdown, predict

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
    codecs: tuple[str, ...] = CODECS
    splits: tuple[int, ...] | None = None  # default: every split 0..K

    def __post_init__(self) -> None:
        if self.splits is None:
            object.__setattr__(self, "splits", tuple(range(self.K + 1)))

    def canonical(self, k: int, r: float, t: float | None, codec: str) -> Config:
        """One name per distinct deployment: k = 0 prunes nothing, and only 0 < k < K has an exit and a codec."""
        r = 0.0 if k == 0 else float(r)
        t = t if exit_allowed(k, self.K) else None
        codec = codec if 0 < k < self.K else "fp32"
        return Config(k, r, t, codec)

    def suggest(self, trial: optuna.Trial) -> Config:
        """Conditional parameters: r only where something is pruned, t and codec only where they act."""
        k = trial.suggest_categorical("k", list(self.splits))
        r = trial.suggest_categorical("r", list(self.ratios)) if k > 0 else 0.0
        t, codec = None, "fp32"
        if exit_allowed(k, self.K) and trial.suggest_categorical("exit", [True, False]):
            t = trial.suggest_float("t", *T_RANGE)
        if 0 < k < self.K:
            codec = trial.suggest_categorical("codec", list(self.codecs))
        return Config(k, float(r), t, codec)

    def params(self, config: Config) -> dict:
        """Optuna parameters that reproduce `config` (for enqueue_trial)."""
        p: dict = {"k": config.k}
        if config.k > 0:
            p["r"] = config.r
        if exit_allowed(config.k, self.K):
            p["exit"] = config.t is not None
            if config.t is not None:
                p["t"] = config.t
        if 0 < config.k < self.K:
            p["codec"] = config.codec
        return p

    def candidates(self) -> list[tuple[int, float]]:
        """Every (k, r) that needs its own network (k = 0 needs one, unpruned)."""
        return [(k, 0.0) if k == 0 else (k, r) for k in self.splits for r in (self.ratios if k else (0.0,))]


@dataclass
class Problem:
    """What a run optimises: profiles, network and the accuracy or latency target."""

    device: Profile
    server: Profile
    network: Network
    A0: float | None = None  # minimise latency subject to accuracy >= A0
    T0: float | None = None  # or maximise accuracy subject to latency <= T0
    metric: str = "top1"
    space: SearchSpace = field(init=False)

    def __post_init__(self) -> None:
        self.space = SearchSpace(self.device.K, tuple(self.device.ratios))


@dataclass
class Score:
    config: Config
    breakdown: Breakdown
    val_acc: float
    test_acc: float
    exit_rate: float
    test_exit_rate: float

    @property
    def latency_ms(self) -> float:
        return self.breakdown.expected_ms

    def feasible(self, problem: Problem) -> bool:
        return violation(problem, self.latency_ms, self.val_acc) <= 0

    def as_dict(self) -> dict:
        return {**asdict(self.config), "expected_ms": self.latency_ms, "val_acc": self.val_acc,
                "test_acc": self.test_acc, "exit_rate": self.exit_rate, "test_exit_rate": self.test_exit_rate,
                **{f"{k}": v for k, v in self.breakdown.as_dict().items()
                   if k in ("device_ms", "exit_ms", "transfer_ms", "server_ms", "bytes")}}


def violation(problem: Problem, latency_ms: float, accuracy: float) -> float:
    """Optuna's constraint value: <= 0 is feasible."""
    if problem.T0 is not None:
        return latency_ms - problem.T0
    return (problem.A0 or 0.0) - accuracy


def score(problem: Problem, config: Config, evaluations: dict[str, Evaluation]) -> Score:
    """Predicted latency breakdown and measured accuracy of one configuration."""
    val, test = evaluations["val"], evaluations["test"]
    rate = float(val.exit_rate([config.t])[0])
    breakdown = predict(problem.device, problem.server, problem.network, config.k, config.r, config.codec,
                        exit_rate=rate if config.t is not None else None)
    return Score(config, breakdown, float(val.accuracy([config.t], config.codec, problem.metric)[0]),
                 float(test.accuracy([config.t], config.codec, problem.metric)[0]), rate,
                 float(test.exit_rate([config.t])[0]))


def best_threshold(problem: Problem, k: int, r: float, codec: str, evaluations: dict[str, Evaluation]) -> Score:
    """The best t for a fixed (k, r, codec), scanned exactly over the validation confidences.

    Thresholds cost no inference, so once a candidate is evaluated this is exact and free.
    """
    base = score(problem, problem.space.canonical(k, r, None, codec), evaluations)
    if not exit_allowed(k, problem.space.K):
        return base
    ts, acc, rate = evaluations["val"].curve(codec, problem.metric)
    lat = predict(problem.device, problem.server, problem.network, k, r, codec, exit_rate=0.0).expected_at(rate)
    best = base
    key = objective_key(problem)
    for i in range(len(ts)):
        if key(lat[i], acc[i]) < key(best.latency_ms, best.val_acc):
            best = score(problem, Config(k, r, float(ts[i]), codec), evaluations)
    return best


def best_setting(problem: Problem, k: int, r: float, evaluations: dict[str, Evaluation],
                 codecs: tuple[str, ...] | None = None, exit: bool = True) -> Score:
    """The exact best codec (among `codecs`) and, with `exit`, threshold of an evaluated (k, r)."""
    key = objective_key(problem)
    codecs = (codecs or problem.space.codecs) if 0 < k < problem.space.K else ("fp32",)
    scores = (best_threshold(problem, k, r, c, evaluations) if exit else
              score(problem, problem.space.canonical(k, r, None, c), evaluations) for c in codecs)
    return min(scores, key=lambda s: key(s.latency_ms, s.val_acc))


def objective_key(problem: Problem):
    """Sort key: feasible first, then the objective (latency for A0, accuracy for T0)."""
    if problem.T0 is not None:
        return lambda lat, acc: (lat > problem.T0, -acc, lat)
    return lambda lat, acc: (acc < (problem.A0 or 0.0), lat if acc >= (problem.A0 or 0.0) else -acc)

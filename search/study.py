"""The Optuna study: storage, the objective over (k, r, t, codec), and the threshold polish."""
from __future__ import annotations

import os
import time
import warnings

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from results.db import check_url, first_start, redact
from search.plan import Known, Plan, known, plan
from search.pool import Abandoned, CandidatePool
from search.space import T_RANGE, Problem, best_setting, score, violation

# A worker killed mid-trial is noticed GRACE_S after its last heartbeat and its trial re-queued.
# The environment may shorten both (the kill test does).
HEARTBEAT_S = int(os.environ.get("SPLITOPT_HEARTBEAT_S", 5))
GRACE_S = int(os.environ.get("SPLITOPT_GRACE_S", 20))
PRUNE_MARGIN = 0.1  # a fine-tune more than this below A0 after its second epoch is stopped


class StorageError(ValueError):
    pass


def storage(url: str) -> RDBStorage:
    """Optuna's RDB storage with heartbeats; a dead worker's trial is failed and re-queued once."""
    check_url(url)  # a password with an unencoded '@': its tail would reach the driver, and its errors, as the host
    kwargs = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return first_start(lambda: RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2)))
    except (sa.exc.OperationalError, sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as e:
        reason = str(getattr(e, "orig", None) or e).splitlines()[0]
        raise StorageError(f"cannot use storage {redact(url)}: {reason}") from None


def open_study(name: str, store: RDBStorage, problem: Problem, multi: bool, seed: int) -> optuna.Study:
    """Create the study or join it; workers starting at once on an empty database all get in."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # group=, heartbeats
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=8)
    pruner = (optuna.pruners.ThresholdPruner(lower=problem.A0 - PRUNE_MARGIN, n_warmup_steps=2)
              if problem.A0 is not None and not multi else optuna.pruners.NopPruner())
    directions = (["minimize", "maximize"] if multi else
                  ["maximize"] if problem.T0 is not None else ["minimize"])
    for attempt in range(8):
        try:
            return optuna.create_study(study_name=name, storage=store, sampler=sampler, pruner=pruner,
                                       directions=directions, load_if_exists=True)
        except (optuna.exceptions.DuplicatedStudyError, sa.exc.IntegrityError, sa.exc.OperationalError):
            time.sleep(0.2 * (attempt + 1))  # another worker is creating it right now
    return optuna.load_study(study_name=name, storage=store, sampler=sampler, pruner=pruner)


def best_feasible_ms(study: optuna.Study) -> float:
    values = [t.user_attrs["latency_ms"] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if t.user_attrs.get("feasible")]
    return min(values, default=float("inf"))


class Objective:
    """Expected latency (or accuracy, or both) of one configuration; fine-tunes only when it can matter."""

    def __init__(self, problem: Problem, pool: CandidatePool, multi: bool = False, skip_hopeless: bool = True):
        self.problem, self.pool, self.multi, self.skip_hopeless = problem, pool, multi, skip_hopeless
        self._polished: set[tuple[int, float]] = set()
        self._known: dict[tuple[int, float], Known] = {}  # what the planner knows, by (k, r)

    def _hopeless(self, trial: optuna.Trial, config) -> str | None:
        """Why (k, r) is not worth a fine-tune, judged from latency alone; None if it is."""
        if self.multi or not self.skip_hopeless or self.pool.known(config.k, config.r):
            return None
        p = self.problem
        bound = p.lower_bound_ms(config.k, config.r)
        if p.T0 is not None:
            return f"latency lower bound {bound:.2f} ms > T0" if bound > p.T0 else None
        best = best_feasible_ms(trial.study)
        return f"latency lower bound {bound:.2f} ms >= best {best:.2f} ms" if bound >= best else None

    def __call__(self, trial: optuna.Trial):
        try:
            return self._trial(trial)
        finally:  # whatever this trial ended in, the planner picks what follows (latency-bound search only)
            if not self.multi and self.problem.T0 is None:
                self._queue_next(trial.study)

    def _trial(self, trial: optuna.Trial):
        p = self.problem
        config = p.space.suggest(trial)
        trial.set_user_attr("config", config.label())
        if not p.space.has(config.k, config.r) or config.codec not in p.codecs_at(config.k):
            reason = (f"codec {config.codec} does not exist at k={config.k} (its second cut must come after k)"
                      if p.space.has(config.k, config.r) else f"k={config.k} r={config.r:g} is not in the grid of that split")
            trial.set_user_attr("skipped", reason)
            raise optuna.TrialPruned(reason)
        trial.set_user_attr("worker_pid", os.getpid())
        reason = self._hopeless(trial, config)
        if reason:
            trial.set_user_attr("skipped", reason)
            raise optuna.TrialPruned(reason)

        def on_epoch(epoch: int, acc: float) -> None:
            if self.multi:
                return
            trial.report(acc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val acc {acc:.3f} after epoch {epoch}")

        try:
            evals = self.pool.evaluations(config.k, config.r, on_epoch)
        except (Abandoned, optuna.TrialPruned) as e:  # given up on, here or by another worker
            self._known[(config.k, config.r)] = known(p, config.k, config.r, None)
            if isinstance(e, optuna.TrialPruned):
                raise
            trial.set_user_attr("skipped", str(e))
            raise optuna.TrialPruned(str(e)) from None
        if not evals["selection"].has(config.codec):  # measured elsewhere under other codecs only
            reason = f"k={config.k} r={config.r:g} was not measured under codec {config.codec}"
            trial.set_user_attr("skipped", reason)
            raise optuna.TrialPruned(reason)
        kr = (config.k, config.r)
        if p.T0 is None and not self.multi and (kr not in self._known or self._known[kr].best is None):
            self._known[kr] = known(p, config.k, config.r, evals)  # the planner's view, its best setting included
        if not self.multi and kr not in self._polished:
            self._polished.add(kr)
            # free (no inference): recorded as a finished trial of its own, so it spends none of --trials
            best = self._known[kr].best if kr in self._known else best_setting(p, config.k, config.r, evals)
            if best.config != config:
                record(trial.study, p, self.pool, best.config, found_by="polish")
        s = score(p, config, evals)
        for key, value in s.as_dict().items():
            trial.set_user_attr(key, value)
        if self.multi:
            return s.latency_ms, s.acc_bound
        trial.set_user_attr("feasible", s.feasible(p))
        trial.set_constraint("T0" if p.T0 is not None else "A0", violation(p, s.latency_ms, s.acc_bound))
        return s.acc_bound if p.T0 is not None else s.latency_ms


    def plan(self, study: optuna.Study) -> Plan:
        """The planner's view: every candidate known without training (this worker, another, the cache),
        the ones other workers are evaluating right now left out."""
        p = self.problem
        for k, r in p.space.candidates():
            if (k, r) not in self._known and self.pool.known(k, r):
                try:
                    evals = self.pool.evaluations(k, r)
                except Abandoned:
                    evals = None
                self._known[(k, r)] = known(p, k, r, evals)
        busy = set()  # what other workers are evaluating now (queued trials are still the planner's to weigh)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if "k" in t.params:
                busy.add((t.params["k"], p.space.ratio_of(t.params)))
        return plan(p, self._known, busy)

    def _queue_next(self, study: optuna.Study) -> None:
        """Queue the candidate the planner puts first; stop the study once its answer is proven optimal over
        the grid, or once A0 is above even the upper bound of the unpruned network's accuracy."""
        p = self.problem
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        pl = self.plan(study)
        if pl.unreachable or (pl.proven and not waiting):  # queued trials are free (a polish, the seeds): run them
            study.set_user_attr("stopped", "proven" if pl.proven else "unreachable")
            study.stop()
            return
        if waiting:
            return  # decide when the queue runs dry, with everything learnt by then
        k, r = pl.order[0]
        study.enqueue_trial(p.space.params(p.space.canonical(k, r, 0.9, p.codecs_at(k)[0])),
                            skip_if_exists=True)


def seed_order(problem: Problem) -> list[int]:
    """The unpruned splits in the order the search tries them: the two ends first (no exit to train; the
    base model's accuracy, feasible for any A0 up to it), then the intermediate splits from the
    lowest latency lower bound up, so that each is skipped, without training its exit, once the best found
    so far is below its bound."""
    p = problem
    K = p.space.K

    def key(k: int) -> tuple[int, float]:
        if not 0 < k < K:
            return 0, float(k)
        r = p.space.ratios_at(k)[0]
        return 1, p.lower_bound_ms(k, r)

    return sorted((k for k in p.space.splits if p.space.ratios_at(k) and p.space.has(k, p.space.ratios_at(k)[0])),
                  key=key)


def seed(study: optuna.Study, problem: Problem) -> int:
    """Queue the unpruned split at every k first (in `seed_order`): they cost no fine-tune (r = 0 only
    trains an exit), and the best of them bounds every pruned candidate that follows."""
    order = seed_order(problem)
    for k in order:  # at the least pruning each split's grid has (0 unless a grid lacks it)
        config = problem.space.canonical(k, problem.space.ratios_at(k)[0], 0.9, problem.codecs_at(k)[0])
        study.enqueue_trial(problem.space.params(config), skip_if_exists=True)
    return len(order)


def record(study: optuna.Study, problem: Problem, pool: CandidatePool, config, **attrs) -> optuna.trial.FrozenTrial:
    """Add `config`, scored from its cached evaluation, as a finished trial: no queue, so it cannot wait
    behind trials a stopped search left queued, and it costs no inference."""
    s = score(problem, config, pool.evaluations(config.k, config.r))
    feasible = s.feasible(problem)
    key = "T0" if problem.T0 is not None else "A0"
    params = problem.space.params(config)
    if "t" in params:
        params["t"] = min(max(params["t"], T_RANGE[0]), T_RANGE[1])
    trial = optuna.trial.create_trial(
        params=params, distributions=problem.space.distributions(config),
        value=s.acc_bound if problem.T0 is not None else s.latency_ms,
        user_attrs={**s.as_dict(), "config": config.label(), "feasible": feasible, **attrs},
        system_attrs={f"constraints:{key}": float(violation(problem, s.latency_ms, s.acc_bound))})
    study.add_trial(trial)
    return trial


def polish(study: optuna.Study, problem: Problem, pool: CandidatePool) -> int:
    """Record, for every evaluated (k, r), its exact best threshold and codec: they cost no inference."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "k" in t.user_attrs]
    seen = {(t.user_attrs["k"], t.user_attrs["r"], t.user_attrs["codec"], t.user_attrs["t"]) for t in done}
    added = 0
    for k, r in sorted({(t.user_attrs["k"], t.user_attrs["r"]) for t in done}):
        c = best_setting(problem, k, r, pool.evaluations(k, r)).config
        if (c.k, c.r, c.codec, c.t) not in seen:
            record(study, problem, pool, c, found_by="polish")
            added += 1
    return added


def adopt(study: optuna.Study, problem: Problem, pool: CandidatePool, reference) -> bool:
    """Record the reference's joint optimum as a trial when it beats every feasible trial (a search stopped by
    its time budget before the baselines' pass evaluated more candidates): the answer is the best known."""
    row = reference[reference.method == "joint optimum (exhaustive)"]
    if row.empty or not bool(row.iloc[0].get("feasible", False)):
        return False
    r = row.iloc[0]
    if not float(r["latency_ms"]) < best_feasible_ms(study) - 1e-9:
        return False
    t = None if r["t"] is None or r["t"] != r["t"] else float(r["t"])
    record(study, problem, pool, problem.space.canonical(int(r["k"]), float(r["r"]), t, r["codec"]),
           found_by="baselines' pass")
    return True

"""One run of the main job: wire data, base model, profiles, storage and study; run workers; report."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from compress import data as datasets
from compress import measurements
from compress import zoo
from compress.base import base_model
from compress.candidate import EXIT_EPOCHS, FINETUNE
from compress.codec import FEATURE_CODECS, INPUT_CODECS, sample_bytes, split_via
from compress.train import Recipe
from profiles import Network, load_profile
from results.db import ProjectDB, redact
from search.latency import Edge
from search.pool import CandidatePool, MeasuredPool
from search.space import Problem, SearchSpace
from search.spec import check_spec
from search.plan import known, plan
from search.study import PRUNE_MARGIN, Objective, adopt, open_study, polish, seed, storage

ROOT = Path(__file__).resolve().parent.parent
# Base training budget by data set (epochs over its training role): Fashion-MNIST's 12,000 images x 8
# epochs take about 4 min for mobilenet_v2 at 32 px on 2 cores; the small sets keep Recipe's 20.
BASE_EPOCHS = {"fashion-mnist": 8}
FINETUNE_EPOCHS = {"fashion-mnist": 1}  # a mobilenet_v2 fine-tune epoch (with distillation) takes about 70 s


@dataclass
class RunSpec:
    """Everything a run (and each of its workers) needs; plain values only."""

    model: str = "mobilenet_v2"
    end_device: str = "emulated-10x"
    server: str = "server"
    bandwidth: float = 10.0
    rtt: float = 5.0
    edge_device: str | None = None  # a third tier: the edge box's (server-role) profile
    edge_cloud_bandwidth: float = 100.0
    edge_cloud_rtt: float = 10.0
    A0: float | None = 0.9
    T0: float | None = None
    metric: str = "top1"
    multi: bool = False
    confidence: float = 0.95  # one-sided Wilson bound on the selection accuracy and share sent; 0 = point
    objective: str = "mean"  # mean, p95 or p99 of per-request latency
    familywise: bool = True  # the bound holds for the chosen candidate among all of the space (Bonferroni)
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    input_size: int = 32
    seed: int = 0
    weights: str | None = None
    base_epochs: int | None = None  # None: Recipe().epochs from scratch, none on top of complete --weights
    train_images: int | None = None  # Fashion-MNIST's training role; None: compress.data.FASHION_SIZES
    finetune_epochs: int | None = None  # None: FINETUNE_EPOCHS of the data set, else FINETUNE.epochs
    exit_epochs: int = EXIT_EPOCHS
    ratios: list[float] | None = None  # default: the profile's grid
    splits: list[int] | None = None  # intermediate split points to consider; default: all (0 and K always)
    precision: str = "fp32"  # training arithmetic (compress.train.PRECISIONS)
    codecs: list[str] = field(default_factory=lambda: list(FEATURE_CODECS))
    input_codecs: list[str] = field(default_factory=lambda: list(INPUT_CODECS))
    edge_cloud_codecs: list[str] = field(default_factory=lambda: ["fp32"])  # the edge's link to the cloud
    trials: int = 40
    time_budget: float | None = None  # seconds of search (after which running trials finish and it stops)
    n_workers: int = 1
    storage: str | None = None
    study: str | None = None
    run_dir: str | None = None
    exhaustive: bool = False
    measurements: str | None = None  # CSV of accuracies measured elsewhere, used instead of fine-tuning
    suggest: int | None = None  # print the next N candidates to fine-tune instead of training them
    measured_only: bool = False  # search only the candidates the measurements hold (nothing is trained)
    progress: bool = True

    def validate(self) -> None:
        check_spec(self)  # search/spec.py: the checks auto.py runs on the command line before torch loads

    def resolved(self) -> "RunSpec":
        """Fill in the run directory, storage URL and study name (stable, so a rerun can resume)."""
        target = f"T0{self.T0:g}" if self.T0 is not None else ("pareto" if self.multi else f"A0{self.A0:g}")
        second = "+".join(c for c in self.edge_cloud_codecs if c != "fp32")
        edge = (f"-{Path(self.edge_device).stem}-{self.edge_cloud_bandwidth:g}mbps" + (f"-{second}" if second else "")
                if self.edge_device else "")
        name = self.study or (f"{self.model}-{self.dataset}-{self.input_size}px-{Path(self.end_device).stem}-"
                              f"{self.bandwidth:g}mbps{edge}-{target}-seed{self.seed}")
        run_dir = self.run_dir or str(ROOT / "runs" / f"{datetime.now():%Y%m%d-%H%M%S}-{name}")
        url = self.storage or f"sqlite:///{Path(run_dir).resolve() / 'study.db'}"
        return RunSpec(**{**asdict(self), "study": name, "run_dir": run_dir, "storage": url})


def families(space: SearchSpace) -> int:
    """How many (k, r, codec) candidates an answer is chosen among."""
    return sum(len(space.codecs_at(k)) for k, _ in space.candidates())


@dataclass
class Context:
    spec: RunSpec
    problem: Problem
    pool: CandidatePool | MeasuredPool
    db: ProjectDB
    storage: optuna.storages.RDBStorage


def problem_for(spec: RunSpec) -> Problem:
    """The profiles, network, target and search space of a run (no data, no model)."""
    device = load_profile(spec.end_device, spec.model, spec.input_size)
    server = load_profile(spec.server, spec.model, spec.input_size)
    K = zoo.build(spec.model, 10, spec.input_size).K  # a too-small input fails here, before any work
    if device.K != K:
        raise ValueError(f"profile {device.source} has {device.K + 1} split points (K = {device.K}) but "
                         f"{spec.model} has {K + 1} (K = {K}): it was measured on another cut of the model")
    edge = None
    if spec.edge_device:
        edge = Edge(load_profile(spec.edge_device, spec.model, spec.input_size),
                    Network(spec.edge_cloud_bandwidth, spec.edge_cloud_rtt))
    problem = Problem(device, server, Network(spec.bandwidth, spec.rtt), A0=None if spec.T0 else spec.A0,
                      T0=spec.T0, metric=spec.metric, confidence=spec.confidence, objective=spec.objective, edge=edge)
    ratios = tuple(problem.space.ratios)
    if spec.ratios is not None:
        bad = [r for r in spec.ratios if r not in ratios]
        if bad:
            raise ValueError(f"ratios {bad} are not in the profile's grid {list(ratios)}")
        ratios = tuple(spec.ratios)
    splits = None
    if spec.splits is not None:
        bad = [k for k in spec.splits if not 0 < k < K]
        if bad:
            raise ValueError(f"splits {bad} are not intermediate split points of {spec.model} (1..{K - 1})")
        splits = tuple(sorted({0, K, *spec.splits}))
    problem.space = SearchSpace.of(device, server, ratios, codecs=tuple(spec.codecs), splits=splits,
                                   input_codecs=tuple(spec.input_codecs),
                                   edge_codecs=tuple(c for c in spec.edge_cloud_codecs if c != "fp32") if edge else ())
    if spec.familywise:
        problem.families = families(problem.space)
    return problem


def _measurements(spec: RunSpec, problem: Problem) -> dict:
    """The measurements file's candidates, checked against the model's splits and the profile's grid."""
    return measurements.load(spec.measurements, problem.space.K, problem.space.ratios, spec.metric,
                             need_n=bool(spec.confidence))


def context(spec: RunSpec, log=print) -> Context:
    """Load everything a worker needs; the base model is trained here at most once (cached), and not at
    all when the measurements cover every candidate the search asks for."""
    spec.validate()
    problem = problem_for(spec)
    Path(spec.run_dir).mkdir(parents=True, exist_ok=True)
    study_storage = storage(spec.storage)  # a bad URL fails here, before any training
    db = ProjectDB(spec.storage)

    def make_pool() -> CandidatePool:
        sizes = {"train": spec.train_images} if spec.train_images else None
        data = datasets.load(spec.dataset, spec.data_root, spec.input_size, spec.seed, sizes)
        log(f"data: {data.describe()}")
        base_recipe = None
        if spec.base_epochs is not None or not spec.weights:
            epochs = spec.base_epochs or BASE_EPOCHS.get(spec.dataset, Recipe().epochs)
            base_recipe = Recipe(epochs=epochs, precision=spec.precision)
        base = base_model(spec.model, data, seed=spec.seed, weights=spec.weights, recipe=base_recipe,
                          progress=spec.progress, log=log)
        finetune_epochs = spec.finetune_epochs or FINETUNE_EPOCHS.get(spec.dataset, FINETUNE.epochs)
        recipe = Recipe(**{**FINETUNE.key(), "epochs": finetune_epochs, "precision": spec.precision})
        # open_study's pruner cut-off, recorded with what it stops (a lower A0 later fine-tunes those again)
        cut = problem.A0 - PRUNE_MARGIN if problem.A0 is not None and not spec.multi else None
        two_link = ((lambda k: tuple(c for c in problem.codecs_at(k) if split_via(c)[1] is not None))
                    if problem.space.edge_codecs else None)
        return CandidatePool(base, data, db, recipe=recipe, exit_epochs=spec.exit_epochs, seed=spec.seed,
                             progress=spec.progress, prune_below=cut, codecs_for=two_link)

    if spec.measurements:
        rows = _measurements(spec, problem)
        log(f"measurements: {len(rows)} candidates from {spec.measurements} (used instead of fine-tuning)")
        pool = MeasuredPool(rows, None if spec.measured_only else make_pool)
        if spec.measured_only:
            space = problem.space
            problem.space = replace(space, pairs=frozenset(kr for kr in space.candidates() if kr in rows))
            if spec.familywise:
                problem.families = families(problem.space)
    else:
        pool = make_pool()
    problem.image_bytes = image_bytes(problem, pool)
    return Context(spec, problem, pool, db, study_storage)


def image_bytes(problem: Problem, pool) -> dict:
    """Problem.image_bytes: the selection and test images' PNG sizes, for an exit on the edge fed the image
    losslessly; from the measurements' k = 0 arrays, else encoded from the data (nothing without an edge, a
    png input codec, or either source)."""
    if problem.edge is None or "png" not in problem.space.input_codecs:
        return {}
    if isinstance(pool, MeasuredPool):
        row = pool.rows.get((0, 0.0), {})
        return {role: {"png": ev.nbytes["png"]} for role, ev in row.items() if "png" in ev.nbytes}
    return {role: {"png": sample_bytes(pool.data.arrays(role)[0].numpy(), "png")} for role in ("selection", "test")}


def work(ctx: Context, show_progress: bool = True) -> optuna.Study:
    """Run trials until the study holds `trials` finished ones (shared with every other worker)."""
    spec = ctx.spec
    study = open_study(spec.study, ctx.storage, ctx.problem, spec.multi, spec.seed)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    if not spec.multi and not study.get_trials(deepcopy=False):
        seed(study, ctx.problem)  # the first worker on an empty study queues the cheap splits
    done = len(study.get_trials(deepcopy=False, states=finished))
    if done < spec.trials:
        study.optimize(Objective(ctx.problem, ctx.pool, spec.multi), n_trials=spec.trials - done,
                       timeout=spec.time_budget, callbacks=[MaxTrialsCallback(spec.trials, states=finished)],
                       catch=(), show_progress_bar=show_progress and spec.progress)
    return study


def spawn_workers(argv: list[str], n: int) -> list[subprocess.Popen]:
    """Extra local workers: the same command line with --join, so they behave like remote ones."""
    cmd = [sys.executable, str(ROOT / "auto.py"), *argv, "--join", "--no-progress"]
    return [subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}) for _ in range(n)]


def versions() -> dict:
    """What a run records of its libraries, as installed."""
    from profiles.profiler import versions as installed

    return installed(("torch", "torchvision", "torch-pruning", "optuna", "onnxruntime", "onnx"))


def public_args(spec: RunSpec) -> dict:
    """The arguments as they may be written out: the storage URL without its password."""
    return {**asdict(spec), "storage": redact(spec.storage)}


def run(spec: RunSpec, argv: list[str] | None = None, log=print) -> dict:
    """The whole job for the main process: search (with workers), polish, reference, report."""
    from results import report
    from search.reference import reference_table

    started = time.perf_counter()
    ctx = context(spec, log=log)
    run_id = ctx.db.start_run(spec.study, public_args(spec), versions())
    status, result = "failed", None
    try:
        log(f"study {spec.study!r} in {redact(spec.storage)}; run directory {spec.run_dir}")
        resuming = report.resume_message(ctx.storage, spec.study, spec.trials)
        if resuming:
            log(resuming)
        workers = spawn_workers(argv or [], spec.n_workers - 1) if spec.n_workers > 1 else []
        study = work(ctx)
        for w in workers:
            w.wait()
        if not spec.multi:
            polish(study, ctx.problem, ctx.pool)
        search_s = time.perf_counter() - started
        in_db = ctx.db.candidate_rows(ctx.pool.base.digest) if ctx.pool.has_base else []
        spent = {"fine_tunes": ctx.pool.fine_tunes, "exit_trainings": ctx.pool.exit_trainings,
                 "grid_candidates": len(ctx.problem.space.candidates()),
                 "grid_fine_tunes": sum(1 for k, r in ctx.problem.space.candidates() if k > 0 and r > 0),
                 "candidates_in_db": len(in_db), "search_seconds": round(search_s, 1),
                 "measured_rows": len(getattr(ctx.pool, "rows", ()))}
        if not spec.multi and ctx.problem.A0 is not None:  # how settled the answer is, by bounds alone
            settled = Objective(ctx.problem, ctx.pool).plan(study)
            spent.update(proven_optimal=settled.proven, can_still_beat=len(settled.order),
                         set_aside=len(settled.set_aside), stopped=study.user_attrs.get("stopped", "budget"),
                         unpruned_bound=settled.unpruned_bound, unreachable=settled.unreachable)
        reference = None if spec.multi else reference_table(ctx.problem, ctx.pool, build=spec.exhaustive,
                                                            progress=spec.progress)
        if reference is not None and adopt(study, ctx.problem, ctx.pool, reference):
            log("the baselines' pass evaluated a better configuration than the search had: recorded as a trial")
        spent.update(fine_tunes=ctx.pool.fine_tunes, exit_trainings=ctx.pool.exit_trainings)  # baselines included
        result = report.write(ctx, study, reference, spent, versions(), public_args(spec))
        result["seconds"] = round(time.perf_counter() - started, 1)
        status = "done" if result.get("feasible", True) else "infeasible"
        return result
    finally:
        ctx.db.finish_run(run_id, status, report.run_summary(result, time.perf_counter() - started))
        ctx.db.dispose()


def suggest(spec: RunSpec, log=print) -> dict:
    """Ask without telling: from the measurements alone (nothing trained, no study), the best answer so
    far and the next `spec.suggest` candidates worth a fine-tune, in the planner's order."""
    from results.report import suggestions

    spec.validate()
    problem = problem_for(spec)
    if problem.A0 is None:
        raise ValueError("--suggest ranks fine-tunes for a latency search under --A0 (not --T0 or --multi)")
    rows = _measurements(spec, problem) if spec.measurements else {}
    wanted = set(problem.space.candidates())
    measured = {kr: known(problem, *kr, ev) for kr, ev in rows.items() if kr in wanted}
    result = suggestions(problem, plan(problem, measured), spec.suggest, len(rows) - len(measured))
    log(result["text"])
    return result


def join(spec: RunSpec) -> None:
    """A worker only: add trials to an existing (or new) shared study, then stop."""
    work(context(spec, log=lambda *_: None), show_progress=False)

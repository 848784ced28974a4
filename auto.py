"""Compression-aware partition search: find the fastest (split k, pruning ratio r, exit threshold t,
feature codec) whose validation accuracy is at least A0, for a CNN split between an end device and a
server, from measured latency profiles and measured accuracies.

    python auto.py --model mobilenet_v2 --end_device emulated-10x --bandwidth 10 --A0 0.9
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from types import SimpleNamespace

# Before torch loads: OpenMP threads that spin while another process holds the other core slowed
# training and evaluation here by 3x to 100x (measured); passive waiting costs nothing when idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Only light modules here: torch (10 s to load) waits until the arguments are checked (main)
from compress.codec import FEATURE_CODECS, INPUT_CODECS
from compress.names import DATASETS, MODELS, PRECISIONS
from profiles.profile import shipped_models
from search.spec import check_spec

STORAGE_ENV = "SPLITOPT_STORAGE"  # how --n-workers hands the storage URL to its workers (not on argv)


def _floats(text: str) -> list[float]:
    try:
        return [round(float(x), 4) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("scenario")
    shipped = shipped_models()
    with_profiles = "; ".join(f"{m} ({', '.join(map(str, sizes))} px)" for m, sizes in shipped.items()) or "none"
    others = [m for m in MODELS if m not in shipped]
    g.add_argument("--model", default="mobilenet_v2",
                   help=f"architecture: {', '.join(MODELS)}. Shipped profiles: {with_profiles}"
                        + (f"; {', '.join(others)} need a profile of your own first (python -m profiles bundle "
                           f"--model M --input-size S --out DIR, then DIR/runner.py on the device; README: "
                           f"Profiling a real end device)" if others else ""))
    g.add_argument("--end_device", "--end-device", dest="end_device", default="emulated-10x",
                   help="end-device profile: a shipped name (python -m profiles list) or a profile JSON path")
    g.add_argument("--server", default="server", help="server profile: a shipped name or a JSON path")
    g.add_argument("--bandwidth", type=float, default=10.0, help="uplink bandwidth in Mbit/s (> 0)")
    g.add_argument("--rtt", type=float, default=5.0, help="network round-trip time in ms")
    g.add_argument("--edge_device", "--edge-device", dest="edge_device", default=None,
                   help="a third tier between the end device and the server (the cloud): an edge box's server-role "
                        "profile, a shipped name (emulated-edge-4x) or a JSON path.  --bandwidth/--rtt are then the "
                        "end device's link to the edge; the search also picks the second cut")
    g.add_argument("--edge_cloud_bandwidth", "--edge-cloud-bandwidth", dest="edge_cloud_bandwidth", type=float,
                   default=100.0, help="with --edge_device: the edge-to-cloud link in Mbit/s (> 0)")
    g.add_argument("--edge_cloud_rtt", "--edge-cloud-rtt", dest="edge_cloud_rtt", type=float, default=10.0,
                   help="with --edge_device: the edge-to-cloud round-trip time in ms")
    g.add_argument("--edge_cloud_codecs", "--edge-cloud-codecs", dest="edge_cloud_codecs", default="fp32",
                   help="with --edge_device: codecs the edge may send to the cloud with, from fp32, fp16, int8 "
                        "(comma-separated).  Beyond fp32 they change answers, so each evaluated candidate is also "
                        "run once per first codec, second cut and second codec (its tail only)")
    g.add_argument("--A0", type=float, default=0.9,
                   help="required accuracy, in (0, 1]: its lower confidence bound on the selection split must reach it")
    g.add_argument("--confidence", type=float, default=0.95,
                   help="one-sided confidence of the promise (Wilson bound on the selection accuracy and on the "
                        "share of samples sent); 0 = point estimates")
    g.add_argument("--per-candidate-bound", dest="familywise", action="store_false",
                   help="bound each candidate at --confidence instead of the chosen one among all candidates "
                        "(Bonferroni over the (k, r, codec) candidates of the space, the default)")
    g.add_argument("--objective", default="mean", choices=("mean", "p95", "p99"),
                   help="latency to minimise: the mean per request or a per-request quantile")
    g.add_argument("--T0", type=float, default=None,
                   help="instead of --A0: the most accurate configuration with expected latency <= T0 ms")
    g.add_argument("--multi", action="store_true", help="multi-objective (latency, accuracy): the Pareto front")
    g.add_argument("--metric", default="top1", choices=("top1", "top5"), help="accuracy metric of A0")
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", default="fashion-mnist", help=f"data set: {', '.join(DATASETS)}")
    g.add_argument("--data-root", default=None,
                   help="directory of the data set (Fashion-MNIST's IDX files, default /usr/share/datasets/"
                        "fashion-mnist; a CIFAR-10 copy; an ImageFolder tree)")
    g.add_argument("--input-size", type=int, default=32, help="square input size in pixels (must match a profile)")
    g.add_argument("--seed", type=int, default=0, help="seed of the data split, training and sampler")
    g.add_argument("--weights", default=None, help="local state-dict or checkpoint file to start the base model from")
    g.add_argument("--base-epochs", type=int, default=None,
                   help="epoch budget of the base model's training (default 8 on fashion-mnist, else 20; with "
                        "--weights: continue "
                        "training from them for this many epochs, e.g. from a smaller input size)")
    g.add_argument("--train-images", type=int, default=None,
                   help="Fashion-MNIST training images (default 12,000; up to 59,000). Measured on 2 cores: "
                        "48,000 x 6 epochs reached test 0.924 (resnet18, 10.5 min) and 0.908 (mobilenet_v2, "
                        "16.5 min); the default 12,000 x 8 gives 0.894 and 0.860")
    g.add_argument("--exit-epochs", type=int, default=20, help="epochs of each early exit's training")
    g.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="training arithmetic; bf16 = autocast + channels_last, about 2x faster on CPUs with AMX")
    g.add_argument("--finetune-epochs", type=int, default=None,
                   help="epoch budget of each candidate's fine-tune (default 1 on fashion-mnist, else 3)")
    g = p.add_argument_group("search")
    g.add_argument("--trials", type=int, default=40, help="finished trials the study should hold")
    g.add_argument("--time-budget", type=float, default=None,
                   help="seconds of search: after it, the running trial finishes and the study stops (the result "
                        "says how much of the grid was evaluated)")
    g.add_argument("--ratios", type=_floats, default=None, help="pruning ratios to search (default: the profile's grid)")
    g.add_argument("--splits", type=_ints, default=None,
                   help="intermediate split points to search, e.g. 3,4,5 (default: all; device only and "
                        "cloud only are always included)")
    g.add_argument("--codecs", default=",".join(FEATURE_CODECS),
                   help=f"feature codecs to search at a split, from {', '.join(FEATURE_CODECS)}")
    g.add_argument("--input-codecs", default=",".join(INPUT_CODECS),
                   help=f"image codecs for k = 0 (cloud only), from {', '.join(INPUT_CODECS)}")
    g.add_argument("--measurements", default=None, metavar="FILE",
                   help="CSV of accuracies measured elsewhere (k, r, top1, n, ...; see README): used instead of "
                        "fine-tuning where a row exists")
    g.add_argument("--measured-only", action="store_true",
                   help="with --measurements: search only the candidates the file holds, train nothing "
                        "(a published landscape, or fine-tunes that run elsewhere)")
    g.add_argument("--suggest", type=int, default=None, metavar="N",
                   help="train nothing: print the best answer the measurements give so far and the next N "
                        "candidates worth a fine-tune (ask); add their rows and rerun (tell)")
    g.add_argument("--exhaustive", action="store_true",
                   help="fine-tune the whole grid for exact baselines and the exhaustive optimum")
    g.add_argument("--storage", default=None,
                   help=f"Optuna storage URL (default: ${STORAGE_ENV}, else sqlite in the run directory); "
                        "mysql+pymysql://user:pass@host:3306/db to share a study (a password on the command line "
                        f"is readable by any local user: prefer --storage-file or ${STORAGE_ENV})")
    g.add_argument("--storage-file", default=None, metavar="PATH",
                   help="read the storage URL from the first line of this file (e.g. mode 600)")
    g.add_argument("--study", default=None, help="study name: resumes it if it exists")
    g.add_argument("--n-workers", type=int, default=1, help="worker processes on this machine")
    g.add_argument("--join", action="store_true", help="only add trials to the shared study (a worker), no report")
    g.add_argument("--run-dir", default=None, help="output directory (default runs/<time>-<study>)")
    g = p.add_argument_group("deployment")
    g.add_argument("--deploy", action="store_true",
                   help="export the chosen split, serve it on loopback and measure it over the test split")
    g.add_argument("--deploy-limit", type=int, default=None, help="test samples to send when deploying")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def _names(text: str) -> list[str]:
    return [c for c in text.split(",") if c]


def storage_from(args) -> str | None:
    """The storage URL: --storage, else the first line of --storage-file, else $SPLITOPT_STORAGE (None: SQLite
    in the run directory).  The file and the variable keep a password off the command line, which any local
    user can read (ps, /proc/<pid>/cmdline)."""
    if args.storage and args.storage_file:
        raise ValueError("give the storage URL once: --storage or --storage-file, not both")
    if args.storage_file:
        try:
            with open(args.storage_file, encoding="utf-8") as f:
                url = f.readline().strip()
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else "not UTF-8 text"
            raise ValueError(f"--storage-file {args.storage_file}: cannot read it ({why})") from None
        if not url:
            raise ValueError(f"--storage-file {args.storage_file}: its first line is empty; it must hold the "
                             "storage URL, e.g. mysql+pymysql://user:pass@host:3306/db")
        return url
    return args.storage or os.environ.get(STORAGE_ENV) or None


def spec_from(args):
    from search.run import RunSpec

    return RunSpec(model=args.model, end_device=args.end_device, server=args.server, bandwidth=args.bandwidth,
                   rtt=args.rtt, edge_device=args.edge_device, edge_cloud_bandwidth=args.edge_cloud_bandwidth,
                   edge_cloud_rtt=args.edge_cloud_rtt, A0=args.A0, T0=args.T0, metric=args.metric, multi=args.multi,
                   confidence=args.confidence, objective=args.objective, familywise=args.familywise,
                   dataset=args.dataset, data_root=args.data_root, input_size=args.input_size, seed=args.seed,
                   weights=args.weights, base_epochs=args.base_epochs, train_images=args.train_images,
                   finetune_epochs=args.finetune_epochs, exit_epochs=args.exit_epochs,
                   ratios=args.ratios, splits=args.splits, precision=args.precision,
                   codecs=_names(args.codecs), edge_cloud_codecs=_names(args.edge_cloud_codecs),
                   input_codecs=_names(args.input_codecs), trials=args.trials,
                   time_budget=args.time_budget,
                   n_workers=args.n_workers, storage=args.storage, study=args.study, run_dir=args.run_dir,
                   exhaustive=args.exhaustive, measurements=args.measurements, suggest=args.suggest,
                   measured_only=args.measured_only,
                   progress=args.progress)


def worker_argv(argv: list[str], spec) -> list[str]:
    """The command line of an extra local worker: the resolved study and run directory."""
    skip = {"--study", "--run-dir", "--storage", "--storage-file", "--n-workers"}
    out, it = [], iter(argv)
    for a in it:
        name = a.split("=", 1)[0]
        if name in skip:
            if "=" not in a:
                next(it, None)
            continue
        if name in ("--deploy", "--exhaustive"):
            continue
        out.append(a)
    return out + ["--study", spec.study, "--run-dir", spec.run_dir]


def check_profiles(args) -> None:
    """Both profiles exist for the model and input size (a one-line error naming the bundle command
    that makes a missing one), checked before torch loads."""
    from profiles.profile import load_profile

    load_profile(args.end_device, args.model, args.input_size)
    load_profile(args.server, args.model, args.input_size)
    if args.edge_device:
        load_profile(args.edge_device, args.model, args.input_size)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    try:  # before search.run imports torch: an argument error answers at once, not after 10 s
        args.storage = storage_from(args)
        check_spec(SimpleNamespace(**{**vars(args), "codecs": _names(args.codecs),
                                      "input_codecs": _names(args.input_codecs),
                                      "edge_cloud_codecs": _names(args.edge_cloud_codecs)}))
        check_profiles(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from search.run import join, run, suggest

    try:
        spec = spec_from(args)
        spec.validate()
        if spec.suggest:
            suggest(spec)
            return 0
        spec = spec.resolved()
        if args.join:
            join(spec)
            return 0
        os.environ[STORAGE_ENV] = spec.storage  # workers inherit it from the environment, not argv
        result = run(spec, argv=worker_argv(argv, spec))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not result.get("feasible"):
        return 1
    if args.deploy:
        deploy(spec, result, limit=args.deploy_limit)
    return 0


def deploy(spec, result: dict, limit: int | None = None) -> dict:
    """Export the chosen split, serve it on loopback, run the edge over the test split, compare."""
    from pathlib import Path

    from profiles.profile import foreign_profiles
    from runtime.deploy import deploy_candidate, drift_line, profile_check, quota_line, retimed_ms
    from runtime.edge import stall_line
    from search.run import context

    ctx = context(spec, log=lambda *_: None)
    best = result["best"]
    cand = ctx.pool.candidate(int(best["k"]), float(best["r"]))
    out = Path(spec.run_dir) / "deploy"
    if spec.edge_device:  # three tiers: end device, edge server (runtime.relay), cloud (runtime.tiers)
        from runtime.tiers import deploy_searched
        return deploy_searched(ctx, cand, result, out, limit, progress=spec.progress)
    # a device profile measured under a CPU quota (profiles.quota): the edge runs under the same one
    quota = ctx.problem.device.meta.get("cpu_quota") or {}
    check = profile_check(ctx.problem.device, ctx.problem.server, cand.k, cand.ratio)  # timed right before
    # predicted for exactly the test samples the edge sends: their exit decisions come from the evaluation
    _, summary = deploy_candidate(cand, ctx.pool.data, out, best["t"], best["codec"], result["predicted"], seed=spec.seed,
                                  bandwidth=spec.bandwidth, rtt=spec.rtt,
                                  slowdown=float(ctx.problem.device.meta.get("slowdown", 1.0)), limit=limit,
                                  server_threads=int(ctx.problem.server.meta.get("threads", 1)),
                                  csv=out / "edge.csv", progress=spec.progress,
                                  cpu_quota=quota.get("fraction"), quota_period_ms=quota.get("period_ms"))
    if summary.get("cpu_quota"):
        print(quota_line(summary))
    predicted = summary["predicted"]
    promised = {"mean total": result["best"]["expected_ms"]}  # at the promised (bounded) exit rate
    if spec.objective == "p95":
        promised["p95 total"] = result["best"]["latency_ms"]
    rows = [("device+exit", predicted["mean_device_exit_ms"], summary["device_ms"] + summary["exit_ms"]),
            ("transfer", predicted["mean_transfer_ms"], summary["transfer_ms"]),
            ("server", predicted["mean_server_ms"], summary["server_ms"]),
            ("mean total", predicted["total_ms"], summary["mean_ms"]),
            ("p95 total", predicted["p95_ms"], summary["p95_ms"])]
    print(f"\n== deployed over loopback ({ctx.problem.network}), {summary['n']} test samples")
    foreign = foreign_profiles(ctx.problem.device, ctx.problem.server)
    if foreign:
        print(foreign)
    print("predicted: the latency model for exactly these samples' exit decisions; promised: what the search "
          "promised from the selection split")
    print(f"{'ms per request':<16}{'promised':>10}{'predicted':>10}{'measured':>10}{'vs pred':>9}{'vs promise':>11}")
    for name, p, m in rows:
        pr = promised.get(name)
        pr_text = f"{pr:>10.3f}" if pr is not None else f"{'':>10}"
        vs_promise = f"{100 * (m / pr - 1):>+10.1f}%" if pr else f"{'':>11}"
        vs_pred = f"{100 * (m / p - 1):>+8.1f}%" if p > 0 else f"{'':>9}"
        print(f"{name:<16}{pr_text}{p:>10.3f}{m:>10.3f}{vs_pred}{vs_promise}")
    mean_promise = promised["mean total"]
    print(f"p50 {summary['p50_ms']:.3f} ms; accuracy {summary['accuracy']:.4f} "
          f"(predicted {predicted['accuracy']:.4f}, promised >= {result['best']['acc_bound']:.4f}); "
          f"exit rate {summary['exit_rate']:.3f} (predicted {predicted['exit_rate']:.3f}, "
          f"promised {result['best']['exit_rate']:.3f}); "
          f"{summary['agreement']:.1%} of samples answered as evaluated; "
          f"{summary['bytes_per_request']:.0f} bytes per request")
    within = abs(summary["mean_ms"] / predicted["total_ms"] - 1) <= 0.10
    kept = summary["mean_ms"] <= 1.10 * mean_promise
    print(f"mean within 10% of the prediction: {'yes' if within else 'NO'}; "
          f"not above the promise by more than 10%: {'yes' if kept else 'NO'}")
    print(drift_line(check, predicted, summary["mean_ms"]))
    stalls = stall_line(summary, predicted["total_ms"])
    if stalls:
        print(stalls)
    summary.update(promised_mean_ms=mean_promise, within_10pct_of_prediction=within,
                   within_10pct_of_promise=kept, foreign_profiles=foreign, profile_check=check,
                   retimed_ms=retimed_ms(predicted, check))
    (out / "deploy.json").write_text(json.dumps({"predicted": predicted, "measured": summary}, indent=2,
                                                default=str))
    return summary


if __name__ == "__main__":
    sys.exit(main())

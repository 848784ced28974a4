"""The checks of a run's arguments, importable without torch.

auto.py runs them on the parsed command line before anything imports torch (search.run does, at the
top): an argument error answered after 9-15 s of loading; now at once.  RunSpec.validate runs the same
checks, so a RunSpec built in code gets the same one-line errors.
"""
from __future__ import annotations

from compress.codec import EDGE_CODECS, FEATURE_CODECS, INPUT_CODECS
from compress.names import check_dataset, check_model, check_precision, check_train_images
from results.storage_url import check_url


def check_spec(spec) -> None:
    """Raise ValueError (one line: what is wrong, what is allowed) for the first bad field of `spec`, any
    object with RunSpec's field names (a RunSpec, or the command line's namespace)."""
    check_model(spec.model)
    if not spec.bandwidth > 0:
        raise ValueError(f"--bandwidth must be > 0 Mbit/s, got {spec.bandwidth:g}")
    if spec.rtt < 0:
        raise ValueError(f"--rtt must be >= 0 ms, got {spec.rtt:g}")
    if getattr(spec, "edge_device", None):
        if not spec.edge_cloud_bandwidth > 0:
            raise ValueError(f"--edge_cloud_bandwidth must be > 0 Mbit/s, got {spec.edge_cloud_bandwidth:g}")
        if spec.edge_cloud_rtt < 0:
            raise ValueError(f"--edge_cloud_rtt must be >= 0 ms, got {spec.edge_cloud_rtt:g}")
    if spec.T0 is None and not spec.multi and (spec.A0 is None or not 0 < spec.A0 <= 1):
        raise ValueError(f"--A0 must be in (0, 1], got {spec.A0}")
    if spec.T0 is not None and not spec.T0 > 0:
        raise ValueError(f"--T0 must be > 0 ms, got {spec.T0:g}")
    if spec.metric not in ("top1", "top5"):
        raise ValueError(f"--metric must be top1 or top5, got {spec.metric!r}")
    for name, value in (("--trials", spec.trials), ("--n-workers", spec.n_workers),
                        ("--base-epochs", spec.base_epochs), ("--finetune-epochs", spec.finetune_epochs),
                        ("--exit-epochs", spec.exit_epochs)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if getattr(spec, "measured_only", False) and not getattr(spec, "measurements", None):
        raise ValueError("--measured-only needs --measurements FILE")
    suggest = getattr(spec, "suggest", None)
    if suggest is not None and suggest < 1:
        raise ValueError(f"--suggest must be at least 1 candidate, got {suggest}")
    if spec.time_budget is not None and not spec.time_budget > 0:
        raise ValueError(f"--time-budget must be > 0 seconds, got {spec.time_budget:g}")
    check_precision(spec.precision)
    check_dataset(spec.dataset)
    check_train_images(spec.dataset, getattr(spec, "train_images", None))
    for flag, given, allowed in (("--codecs", spec.codecs, FEATURE_CODECS),
                                 ("--input-codecs", spec.input_codecs, INPUT_CODECS)):
        if not given:
            raise ValueError(f"{flag} needs at least one of: {', '.join(allowed)}")
        for c in given:
            if c not in allowed:
                raise ValueError(f"unknown codec {c!r} in {flag}; choose from: {', '.join(allowed)}")
    second = list(getattr(spec, "edge_cloud_codecs", None) or ["fp32"])
    for c in second:
        if c not in ("fp32",) + EDGE_CODECS:
            raise ValueError(f"unknown codec {c!r} in --edge_cloud_codecs; choose from: fp32, {', '.join(EDGE_CODECS)}")
    if any(c != "fp32" for c in second) and not getattr(spec, "edge_device", None):
        raise ValueError("--edge_cloud_codecs needs --edge_device (without an edge there is no second link)")
    if spec.storage:
        check_url(spec.storage)
    # numpy and pandas (not torch): imported only once the cheap checks passed
    from search.bounds import check_confidence
    from search.latency import check_objective

    check_confidence(spec.confidence)
    check_objective(spec.objective)

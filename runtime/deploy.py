"""Deploy an exported split on this machine: the cloud server on loopback, the edge over the test split.

The server runs in-process (its own threads); the edge applies the end device's emulation (slowdown)
and shapes the uplink (bandwidth, rtt), so the measurement is comparable with the prediction.  With a
CPU quota (a device profile measured under profiles.quota), the edge runs as its own process under the
same quota, fed the test samples as a file, so the quota slows the device and not the server.
"""
from __future__ import annotations

import json
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from runtime import manifest as mf
from runtime.cloud import CloudServer
from runtime.edge import run_edge, summarize
from runtime.export import export_split
from search.latency import predicted_per_sample


ROOT = Path(__file__).resolve().parent.parent


def deploy(out_dir: str | Path, data=None, *, bandwidth: float | str | None = 10.0, rtt: float = 5.0,
           slowdown: float = 1.0, limit: int | None = None, server_threads: int = 1, csv: str | Path | None = None,
           secret: bytes | None = None, timeout: float = 5.0, progress: bool = False,
           cpu_quota: float | None = None, quota_period_ms: float | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Serve `out_dir`'s tail on 127.0.0.1 (ephemeral port), run the edge, return (per-sample rows, summary).

    Summary keys: n, mean_ms, p50_ms, p95_ms, exit_rate, fallback_rate, failed, accuracy,
    bytes_per_request, bytes_per_sample, the per-part means device_ms, exit_ms, transfer_ms, server_ms,
    and the run's settings (bandwidth_mbps, rtt_ms, slowdown, k, K, r, t, codec, predicted).
    `cpu_quota` (CPUs, e.g. 0.1) runs the edge as a process under that quota (profiles.quota); the
    summary then also holds `cpu_quota` (fraction, period, limiter) and `throttled_ms`.
    """
    manifest = mf.load(out_dir)
    with ExitStack() as stack:
        server = None
        if manifest["tail"] is not None:  # k = K: nothing to serve, the device answers every sample
            server = stack.enter_context(CloudServer(out_dir, "127.0.0.1", 0, threads=server_threads, secret=secret))
        df, summary = run_end(out_dir, None if server is None else ("127.0.0.1", server.port), data,
                              cpu_quota=cpu_quota, quota_period_ms=quota_period_ms, bandwidth=bandwidth, rtt=rtt,
                              slowdown=slowdown, limit=limit, csv=csv, secret=secret, timeout=timeout,
                              progress=progress)
        if server is not None:
            summary["server_stats"] = dict(server.stats)
    return df, summary


def run_end(model_dir: str | Path, server: tuple[str, int] | None, data=None, *, cpu_quota: float | None = None,
            quota_period_ms: float | None = None, csv: str | Path | None = None, secret: bytes | None = None,
            **kwargs) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The end device (runtime.edge) over `model_dir`'s test split against `server` (a cloud or an edge
    server); (per-sample rows, summary).  In this process, or with `cpu_quota` as `python -m runtime.edge`
    under that quota (profiles.quota), fed the samples as a file, so the quota slows the end device alone;
    the summary then also holds `cpu_quota` (fraction, period, limiter) and `throttled_ms`.  Takes
    run_rows' bandwidth, rtt, slowdown, limit, timeout and progress."""
    if cpu_quota is None:
        df = run_edge(model_dir, server, data=data, csv=csv, secret=secret, **kwargs)
        return df, summarize(df)
    from profiles import quota
    from runtime.edge import _test_split

    out = Path(model_dir)
    images, labels = _test_split(mf.load(out), data, None)
    limit = kwargs.get("limit")
    n = len(images) if limit is None else min(int(limit), len(images))
    samples = mf.save_samples(out / "samples.npz", images[:n], labels[:n])
    csv = Path(csv) if csv is not None else out / "edge.csv"
    summary_json = out / "edge-summary.json"
    args = ["-m", "runtime.edge", "--model-dir", str(out), "--images", str(samples), "--csv", str(csv),
            "--summary-json", str(summary_json), "--quiet"]
    for flag in ("rtt", "slowdown", "timeout", "bandwidth"):
        if kwargs.get(flag) is not None:
            args += [f"--{flag}", str(kwargs[flag])]
    if server is not None:
        args += ["--server", f"{server[0]}:{server[1]}"]
    with tempfile.TemporaryDirectory(prefix="deploy-") as tmp:
        if secret is not None:
            key = Path(tmp) / "secret"
            key.write_bytes(secret)
            key.chmod(0o600)
            args += ["--secret-file", str(key)]
        info, throttled = quota.run_python(args, cpu_quota, quota_period_ms, "the end device (runtime.edge)", ROOT)
    df = pd.read_csv(csv, keep_default_na=False, dtype={"error": str})
    df.attrs.update(json.loads(summary_json.read_text())["attrs"])
    summary = summarize(df)
    summary.update(cpu_quota=info, throttled_ms=throttled)
    return df, summary


def quota_line(summary: dict[str, Any]) -> str:
    """What a deploy under a CPU quota says about it (run_end's `cpu_quota` and `throttled_ms`)."""
    q = summary["cpu_quota"]
    return (f"end device ran under a CPU quota of {q['fraction']:g} CPU (period {q['period_ms']:g} ms, "
            f"{q['mechanism']}), as its profile was measured; throttled {summary.get('throttled_ms') or 0:.0f} ms in all"
            + (f"; no cgroup could be used: {q['why_not_cgroup']}" if q.get("why_not_cgroup") else ""))


def deploy_candidate(candidate, data, out_dir: str | Path, threshold: float | None, codec: str,
                     parts: dict | None = None, *, seed: int = 0, limit: int | None = None,
                     **kwargs) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Export a compression candidate's split (head + exit, tail) to `out_dir`, then `deploy` it over the
    first `limit` test samples.

    With `parts` (the predicted device, exit, transfer and server ms of this split), the prediction is
    made for exactly the samples sent: their exit decisions and answers come from the candidate's test
    evaluation, so prediction and measurement differ only by the latency model and the runtime.  The
    summary then holds `predicted` (mean parts, total_ms, p95_ms, exit_rate, accuracy) and `agreement`,
    the share of samples whose exit decision and answer the deployment reproduced exactly.
    """
    evaluated = evaluated_answers(candidate, threshold, codec, limit)
    predicted = None
    if parts is not None and evaluated is not None:
        exited, answer, label = evaluated
        predicted = {**predicted_per_sample(parts, exited), "accuracy": float((answer == label).mean())}
    export_split(candidate, data, out_dir, threshold, codec, predicted=predicted, seed=seed)
    df, summary = deploy(out_dir, data, limit=limit, **kwargs)
    if parts is not None and evaluated is not None:
        summary["agreement"] = agreement(df, *evaluated[:2])
    return df, summary


# One re-timing is itself noisy on a shared VM: in `make bench` (2026-12-06) the drift-scaled prediction moved 12
# of 36 deployments into 10% of the measurement and 12 others out, so only a larger drift earns a warning.
DRIFT_WARN = 0.20


def profile_check(device, server, k: int, r: float, edge=None, k2: int | None = None,
                  k1: int | None = None) -> dict[str, float]:
    """`profiles.profiler.drift` of the deployed (k, r) (with an `edge` profile: the three tiers, the edge's
    blocks [k, k2), or [k1, k) and the exit with `k1`), timed right before the deployment (a device profiled
    under a CPU quota under that quota)."""
    from profiles.profiler import drift

    return drift(device, server, k, r, edge=edge, k2=k2, k1=k1)


def side_compute(predicted: dict) -> tuple[dict[str, float], float]:
    """(predicted compute ms per side, predicted mean total) of a deployment's prediction: two tiers'
    (`predicted_per_sample`) or three tiers' (runtime.tiers, rows by tier)."""
    if "mean total" in predicted:
        device, warm = predicted["device+exit"], predicted.get("device warm", 0.0)
        rest, total = {"edge": predicted["edge"], "cloud": predicted["cloud"]}, predicted["mean total"]
    else:
        device, warm = predicted["mean_device_exit_ms"], predicted.get("mean_device_warm_ms", 0.0)
        rest, total = {"server": predicted["mean_server_ms"]}, predicted["total_ms"]
    return {"device": device - warm, "device_warm": warm, **rest}, total


def _ratio(check: dict[str, float], side: str) -> float:
    """A side's drift; the warm device part without its own timing takes the cold one's; 1 for none."""
    f = check.get(side, check.get("device", float("nan")) if side == "device_warm" else float("nan"))
    return 1.0 if f != f else f


def retimed_ms(predicted: dict, check: dict[str, float]) -> float:
    """The mean predicted total with each side's compute scaled by its drift (`profile_check`): what the
    latency model predicts once the parts are timed now, the transfers unchanged."""
    compute, total = side_compute(predicted)
    return total + sum(ms * (_ratio(check, side) - 1) for side, ms in compute.items())


def drift_line(check: dict[str, float], predicted: dict, measured_ms: float) -> str:
    """The profile check in one or two lines: each side's drift, the re-timed prediction, and a warning when
    a side these samples use has drifted more than DRIFT_WARN from its profile."""
    compute, _ = side_compute(predicted)
    sides = [f"{side.replace('_', ' ')} x{check[side]:.2f} ({check[f'meas_{side}_ms']:.3f} vs "
             f"{check[f'pred_{side}_ms']:.3f} ms)" for side in compute if side in check and check[side] == check[side]]
    again = retimed_ms(predicted, check)
    text = (f"profile check (this split's parts timed now, as the rows were): {', '.join(sides)}; predicted with "
            f"them: {again:.3f} ms, measured {100 * (measured_ms / again - 1):+.1f}% against it")
    off = [side.replace("_", " ") for side, ms in compute.items()  # only the sides timed on their own
           if side in check and abs(_ratio(check, side) - 1) > DRIFT_WARN and ms > 0]
    if off:
        text += (f"\nthe {' and '.join(off)} part{'s' if len(off) > 1 else ''} now run{'' if len(off) > 1 else 's'} "
                 f"more than {DRIFT_WARN:.0%} off the profile: the prediction inherits that before the runtime adds "
                 "anything (re-time it on a quiet machine: python -m profiles measure, README: Profiling)")
    return text


def evaluated_answers(candidate, threshold: float | None, codec: str,
                      limit: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(exited, answer, label) of the first `limit` test samples as the candidate's evaluation has them,
    the per-sample truth a deployment is predicted from and checked against; None without a test split."""
    test = candidate.evaluations.get("test")
    if test is None:
        return None
    n = len(test.label) if limit is None else min(int(limit), len(test.label))
    exited, answer = (a[:n] for a in test.answers(threshold, codec))
    return exited, answer, test.label[:n]


def exit_decisions(df: pd.DataFrame) -> np.ndarray:
    """Per deployed sample: answered by the candidate's exit under its threshold, on the end device or on
    the edge (an exit placed there, runtime.tiers' k1); a fallback to an exit is no exit decision."""
    decided = df.exited.to_numpy(dtype=bool)
    if "edge_exited" in df:  # rows from before the edge's exit lack it
        decided = decided | df.edge_exited.to_numpy(dtype=bool)
    return decided


def agreement(df: pd.DataFrame, exited: np.ndarray, answer: np.ndarray) -> float:
    """The share of deployed samples whose exit decision (exit_decisions) and answer are the evaluation's."""
    same = (exit_decisions(df) == exited[:len(df)]) & (df.pred.to_numpy() == answer[:len(df)])
    return float(same.mean()) if len(df) else float("nan")

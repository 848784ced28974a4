"""Deploy an exported split on this machine: the cloud server on loopback, the edge over the test split.

The server runs in-process (its own threads); the edge applies the end device's emulation (slowdown)
and shapes the uplink (bandwidth, rtt), so the measurement is comparable with the prediction.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from runtime import manifest as mf
from runtime.cloud import CloudServer
from runtime.edge import run_edge, summarize
from runtime.export import export_split
from search.latency import predicted_per_sample


def deploy(out_dir: str | Path, data=None, *, bandwidth: float | str | None = 10.0, rtt: float = 5.0,
           slowdown: float = 1.0, limit: int | None = None, server_threads: int = 1, csv: str | Path | None = None,
           secret: bytes | None = None, timeout: float = 5.0, progress: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Serve `out_dir`'s tail on 127.0.0.1 (ephemeral port), run the edge, return (per-sample rows, summary).

    Summary keys: n, mean_ms, p50_ms, p95_ms, exit_rate, fallback_rate, failed, accuracy,
    bytes_per_request, bytes_per_sample, the per-part means device_ms, exit_ms, transfer_ms, server_ms,
    and the run's settings (bandwidth_mbps, rtt_ms, slowdown, k, K, r, t, codec, predicted).
    """
    manifest = mf.load(out_dir)
    if manifest["tail"] is None:  # k = K: nothing to serve, the device answers every sample
        df = run_edge(out_dir, None, bandwidth=bandwidth, rtt=rtt, slowdown=slowdown, limit=limit, csv=csv,
                      data=data, progress=progress)
        return df, summarize(df)
    with CloudServer(out_dir, "127.0.0.1", 0, threads=server_threads, secret=secret) as server:
        df = run_edge(out_dir, ("127.0.0.1", server.port), bandwidth=bandwidth, rtt=rtt, slowdown=slowdown,
                      limit=limit, csv=csv, secret=secret, timeout=timeout, data=data, progress=progress)
        summary = summarize(df)
        summary["server_stats"] = dict(server.stats)
    return df, summary


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
    test = candidate.evaluations.get("test")
    predicted = exited = answer = None
    if parts is not None and test is not None:
        n = len(test.label) if limit is None else min(int(limit), len(test.label))
        exited, answer = (a[:n] for a in test.answers(threshold, codec))
        predicted = {**predicted_per_sample(parts, exited), "accuracy": float((answer == test.label[:n]).mean())}
    export_split(candidate, data, out_dir, threshold, codec, predicted=predicted, seed=seed)
    df, summary = deploy(out_dir, data, limit=limit, **kwargs)
    if exited is not None:
        same = (df.exited.to_numpy() == exited[:len(df)]) & (df.pred.to_numpy() == answer[:len(df)])
        summary["agreement"] = float(same.mean()) if len(df) else float("nan")
    return df, summary

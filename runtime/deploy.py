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
                     predicted: dict | None = None, *, seed: int = 0, **kwargs) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Export a compression candidate's split (head + exit, tail) to `out_dir`, then `deploy` it."""
    export_split(candidate, data, out_dir, threshold, codec, predicted=predicted, seed=seed)
    return deploy(out_dir, data, **kwargs)

"""Runtime measurements: predicted vs measured latency of a split that sends, at several bandwidths, and the
cloud server's throughput with 1, 4 and 16 concurrent edge clients (unshaped loopback).

    python bench/runtime_bench.py --model resnet18 --k 4 --r 0.5 --codec int8 --out runs/bench/runtime
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from compress import data as datasets  # noqa: E402
from compress.base import base_model  # noqa: E402
from compress.candidate import build_candidate  # noqa: E402
from profiles import Network, load_profile  # noqa: E402
from runtime.cloud import CloudServer  # noqa: E402
from runtime.deploy import deploy  # noqa: E402
from runtime.edge import run_edge, summarize  # noqa: E402
from runtime.export import export_split  # noqa: E402
from search.latency import predict  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--r", type=float, default=0.5)
    p.add_argument("--codec", default="int8")
    p.add_argument("--bandwidths", default="1,10,100")
    p.add_argument("--rtt", type=float, default=5.0)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--out", default="runs/bench/runtime")
    a = p.parse_args()
    out = Path(a.out)
    data = datasets.load("digits", input_size=32)
    cand = build_candidate(base_model(a.model, data), data, a.k, a.r)
    export_split(cand, data, out / "split", None, a.codec)
    device, server = load_profile("host", a.model, 32), load_profile("server", a.model, 32)
    rows = []
    for bw in map(float, a.bandwidths.split(",")):
        pred = predict(device, server, Network(bw, a.rtt), a.k, a.r, a.codec)
        _, s = deploy(out / "split", data, bandwidth=bw, rtt=a.rtt, limit=a.limit, server_threads=2)
        rows.append({"bandwidth_mbps": bw, "predicted_ms": pred.expected_ms, "measured_mean_ms": s["mean_ms"],
                     "measured_p95_ms": s["p95_ms"], "error_pct": 100 * (s["mean_ms"] / pred.expected_ms - 1),
                     "pred_device": pred.device_ms, "meas_device": s["device_ms"],
                     "pred_transfer": pred.transfer_ms, "meas_transfer": s["transfer_ms"],
                     "pred_server": pred.server_ms, "meas_server": s["server_ms"], "bytes": pred.bytes})
        print(rows[-1], flush=True)
    lat = pd.DataFrame(rows)
    thr = []
    with CloudServer(out / "split", "127.0.0.1", 0, threads=2) as srv:
        for clients in (1, 4, 16):
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                dfs = list(pool.map(lambda _: run_edge(out / "split", ("127.0.0.1", srv.port), limit=a.limit,
                                                       data=data), range(clients)))
            wall = time.perf_counter() - start
            df = pd.concat(dfs)
            thr.append({"clients": clients, "requests": len(df), "throughput_rps": len(df) / wall,
                        "p50_ms": float(np.percentile(df.total_ms, 50)), "p95_ms": float(np.percentile(df.total_ms, 95)),
                        "server_p95_ms": float(np.percentile(df.server_ms, 95)),
                        "accuracy": summarize(df)["accuracy"]})
            print(thr[-1], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    lat.to_csv(out / "latency.csv", index=False)
    pd.DataFrame(thr).to_csv(out / "throughput.csv", index=False)
    print(lat.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(pd.DataFrame(thr).to_string(index=False, float_format=lambda x: f"{x:.2f}"))


if __name__ == "__main__":
    main()

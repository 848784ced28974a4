"""Runtime measurements: ONNX Runtime against PyTorch eager (batch 1, one thread, interleaved), goodput of
the shaped uplink against its configured rate, and the cloud server's throughput with 1, 4 and 16 edge
clients on unshaped loopback.

    python bench/runtime_bench.py --out runs/bench/runtime
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from compress import data as datasets  # noqa: E402
from compress import onnx_io, zoo  # noqa: E402
from compress.base import base_model  # noqa: E402
from compress.candidate import build_candidate  # noqa: E402
from runtime.client import Client  # noqa: E402
from runtime.cloud import CloudServer  # noqa: E402
from runtime.edge import run_edge, summarize  # noqa: E402
from runtime.export import export_split  # noqa: E402
from runtime.link import Link  # noqa: E402


def ort_vs_eager(models: list[str], sizes: list[int], repeats: int) -> pd.DataFrame:
    """Median ms per image of the head (blocks before the middle split) and of the whole network."""
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            for size in sizes:
                net = zoo.build(model, 10, size).eval()
                x = torch.randn(1, 3, size, size)
                for part, k in (("head", net.K // 2), ("whole", net.K)):
                    module = net.head(k).eval()
                    sess = onnx_io.session(onnx_io.export(module, x, Path(tmp) / f"{model}-{size}-{part}.onnx"))
                    xn = x.numpy()
                    times = {"ort": [], "eager": []}
                    with torch.no_grad():
                        for _ in range(3):  # warm-up
                            module(x), onnx_io.run(sess, xn)
                        for _ in range(repeats):  # interleaved, so both see the same machine state
                            t = time.perf_counter(); onnx_io.run(sess, xn); times["ort"].append(time.perf_counter() - t)
                            t = time.perf_counter(); module(x); times["eager"].append(time.perf_counter() - t)
                    ort_ms, eager_ms = (1e3 * float(np.median(times[n])) for n in ("ort", "eager"))
                    rows.append({"model": model, "size": size, "part": f"{part} (k={k})", "ort_ms": ort_ms,
                                 "eager_ms": eager_ms, "eager_over_ort": eager_ms / ort_ms, "repeats": repeats})
                    print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def goodput(model_dir: Path, rates: list[float | None], seconds: float, repeats: int) -> pd.DataFrame:
    """Bytes pushed through the paced link per second of SINK round trip (rtt 0), against the set rate."""
    rows = []
    with CloudServer(model_dir, "127.0.0.1", 0, threads=1) as srv:
        for rate in rates:
            nbytes = min(int((rate or 1000) * 1e6 / 8 * seconds), 32 << 20)
            client = Client("127.0.0.1", srv.port, link=Link(bandwidth=rate))
            client.sink(64 << 10)  # connect and warm the TCP window
            times = [client.sink(nbytes) for _ in range(repeats)]
            client.close()
            measured = 8 * nbytes / float(np.median(times)) / 1e6
            rows.append({"set_mbps": rate if rate else "unshaped", "bytes": nbytes, "goodput_mbps": measured,
                         "goodput_over_set": measured / rate if rate else np.nan, "repeats": repeats})
            print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def throughput(model_dir: Path, data, clients_list: list[int], limit: int) -> pd.DataFrame:
    rows = []
    with CloudServer(model_dir, "127.0.0.1", 0, threads=2) as srv:
        for clients in clients_list:
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                dfs = list(pool.map(lambda _: run_edge(model_dir, ("127.0.0.1", srv.port), limit=limit, data=data),
                                    range(clients)))
            wall = time.perf_counter() - start
            df = pd.concat(dfs)
            rows.append({"clients": clients, "requests": len(df), "throughput_rps": len(df) / wall,
                         "p50_ms": float(np.percentile(df.total_ms, 50)), "p95_ms": float(np.percentile(df.total_ms, 95)),
                         "server_p95_ms": float(np.percentile(df.server_ms, 95)), "accuracy": summarize(df)["accuracy"]})
            print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18,mobilenet_v2")
    p.add_argument("--sizes", default="32,224")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--rates", default="1,10,100,1000", help="link rates in Mbit/s (plus unshaped)")
    p.add_argument("--limit", type=int, default=100, help="requests per client in the throughput test")
    p.add_argument("--out", default="runs/bench/runtime")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ort_vs_eager(a.models.split(","), [int(s) for s in a.sizes.split(",")], a.repeats).to_csv(
        out / "ort_vs_eager.csv", index=False)
    # a split that sends (resnet18 32 px, k=4 r=0.5 int8, no exit) serves the link and server tests
    data = datasets.load("digits", input_size=32)
    export_split(build_candidate(base_model("resnet18", data), data, 4, 0.5), data, out / "split", None, "int8")
    goodput(out / "split", [float(r) for r in a.rates.split(",")] + [None], 0.5, 3).to_csv(
        out / "goodput.csv", index=False)
    throughput(out / "split", data, [1, 4, 16], a.limit).to_csv(out / "throughput.csv", index=False)


if __name__ == "__main__":
    main()

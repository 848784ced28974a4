"""Assemble docs/benchmarks.md from the CSV files the bench scripts wrote in this run (runs/bench/)."""
from __future__ import annotations

import json
import platform
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def table(path: Path) -> str:
    if not path.exists():
        return f"(not run: {path.relative_to(ROOT)} missing)\n"
    text = pd.read_csv(path).to_string(index=False, float_format=lambda x: f"{x:.3f}")
    return f"```\n{text}\n```\n"


def main() -> None:
    from search.run import versions

    bench, docs = ROOT / "runs" / "bench", ROOT / "docs"
    docs.mkdir(exist_ok=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    parts = [f"# Benchmarks\n\nGenerated {datetime.now():%Y-%m-%d %H:%M} by `make bench-quick` on {cpu} "
             f"({platform.node()}), versions {json.dumps(versions())}. Every figure below was measured in that run "
             "(candidates may come from the cache; their fine-tune times are from when they were built).\n"]
    baselines = sorted((ROOT / "runs").glob("bench-r18-exh/baselines.csv"))
    parts.append("## Joint search against the baselines (resnet18, digits 32 px, emulated-10x, 10 Mbit/s, A0 0.95)\n")
    parts.append(table(baselines[0]) if baselines else "(not run)\n")
    parts.append("## Search efficiency: until within 1% of the exhaustive optimum (5 seeds)\n")
    parts.append(table(bench / "search_efficiency.csv"))
    parts.append("## Prediction against measurement (resnet18 k=4 r=0.5 int8, host device, loopback, rtt 5 ms)\n")
    parts.append(table(bench / "runtime" / "latency.csv"))
    parts.append("## Cloud server throughput (unshaped loopback)\n")
    parts.append(table(bench / "runtime" / "throughput.csv"))
    parts.append("## Compression candidates (resnet18, digits 32 px)\n")
    parts.append(table(bench / "compress-resnet18.csv"))
    (docs / "benchmarks.md").write_text("\n".join(parts))
    print(f"wrote {docs / 'benchmarks.md'}")


if __name__ == "__main__":
    main()

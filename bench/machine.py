"""Profiles of the machine a benchmark runs on, timed in the run, so a deployed check compares like with like
(the shipped profiles were timed on another machine, perhaps another VM of the same kind)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from profiles.__main__ import DEFAULT_DEVICES, DEFAULT_EMULATED


def profiles_now(model: str, size: int, ratios: list[float], root: Path) -> dict[str, str]:
    """The shipped set timed on this machine now, as `python -m profiles defaults` makes it (host: 1 thread,
    server: 2, each with its overhead section and idle curve, and the emulations made from them), for one
    model, size and ratio grid: {shipped name: profile path}."""
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "profiles", "--root", str(root), "defaults", "--models", model, "--input-size",
           str(size), "--ratios", ",".join(f"{r:g}" for r in ratios)]
    got = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True)
    if got.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed: {got.stderr.strip()[-500:]}")
    print(f"profiles of this machine timed in {time.perf_counter() - started:.0f} s -> {root}", flush=True)
    return {name: str(root / name / f"{model}-{size}px.json")
            for name in [d[0] for d in DEFAULT_DEVICES] + [e[0] for e in DEFAULT_EMULATED]}

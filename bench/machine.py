"""Profiles of the machine a benchmark runs on, timed in the run, so a deployed check compares like with like
(the shipped profiles were timed on another machine, perhaps another VM of the same kind)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from profiles.__main__ import DEFAULT_EMULATED


def profiles_now(model: str, size: int, ratios: list[float], root: Path) -> dict[str, str]:
    """Profiles of this machine timed now (host: 1 thread, server: 2, each with its overhead and idle curve, as
    `profiles defaults` makes the shipped ones) and the emulated end devices and edge made from them:
    {shipped name: profile path}."""
    started = time.perf_counter()

    def profiles(*argv: str) -> None:
        cmd = [sys.executable, "-m", "profiles", "--root", str(root), *argv]
        got = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True)
        if got.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[2:])} failed: {got.stderr.strip()[-500:]}")

    common = ["--model", model, "--input-size", str(size), "--ratios", ",".join(f"{r:g}" for r in ratios), "--overhead"]
    profiles("measure", "--device", "host", "--role", "device", "--threads", "1", *common)
    profiles("measure", "--device", "server", "--role", "server", "--threads", "2", *common)
    for measured in ("host", "server"):
        profiles("idle", "--model", model, "--input-size", str(size), "--device", measured)
    for name, source, factor in DEFAULT_EMULATED:
        profiles("emulate", "--from", source, "--factor", f"{factor:g}", "--name", name, "--input-size", str(size))
    print(f"profiles of this machine timed in {time.perf_counter() - started:.0f} s -> {root}", flush=True)
    return {name: str(root / name / f"{model}-{size}px.json")
            for name in ("host", "server", *(e[0] for e in DEFAULT_EMULATED))}

"""The profiling runner: times the ONNX parts of a profiling bundle and writes the profile JSON.

Needs only the standard library, numpy and onnxruntime, so it runs on an end device that has nothing
else.  `python -m profiles bundle` copies this file (and quota.py) into every bundle, so on the device:

    python runner.py --out profile.json [--device NAME] [--threads 1]       # inside the bundle directory
    python -m profiles.runner BUNDLE_DIR --out profile.json                 # from this repository

The in-process profiler (`python -m profiles measure`) writes a bundle to a scratch directory and times
it with the same functions, so both produce the same rows the same way.

A bundle ships graphs without weights: each part's large float tensors are external data that this
runner writes before the part's session opens, normal values with the mean and standard deviation of
the exported tensor (a CPU's time does not depend on the values; keeping their scale keeps denormals
away).  The bundle stays a few hundred KB instead of the network's weights once per (k, r).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import onnxruntime as ort

BUNDLE_FORMAT = "splitopt-profile-bundle"
BUNDLE_VERSION = 1
BUNDLE_FILE = "bundle.json"
QUOTA_ENV = "SPLITOPT_CPU_QUOTA"  # set by profiles.quota for a process it runs under a CPU quota

DEFAULT_REPEATS = 30
DEFAULT_WARMUP = 5
DEFAULT_MIN_MS = 200.0  # timed milliseconds per part at least (see time_session)
MAX_RUNS = 5000
STAT_KEYS = ("mean_ms", "median_ms", "p10_ms", "p90_ms")
NOTHING = {"mean_ms": 0.0, "median_ms": 0.0, "p10_ms": 0.0, "p90_ms": 0.0, "n": 0}  # a part that runs no layer

# Idle time before each timed run.  Measured (mobilenet_v2 32 px, emulated-10x, deployed): with it the
# prediction was 3.6% above the deployed mean at k = 3 and 21% above device only; timed busy (no gap) it
# was 4.5% and 69% below, as the emulation's own wait slows the next model call on this VM.
COLD_GAP_S = 0.001
COLD_FLUSH_BYTES = 8 << 20  # memory touched before each timed run: more than this CPU's L2 per core
MAX_COLD_RUNS = 300


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Hardware", "Processor")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions(dists: Iterable[str] = ("onnxruntime", "numpy")) -> dict[str, str]:
    """Installed versions from the package metadata (torch_pruning 1.6.1 reports 1.6.0 as __version__)."""
    out = {"python": platform.python_version()}
    for dist in dists:
        try:
            out[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist.replace("-", "_")] = "absent"
    return out


def session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session as compress.onnx_io.session makes it (a copy: this file imports nothing of the project)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def time_session(sess, x: np.ndarray, repeats: int, warmup: int, min_ms: float = DEFAULT_MIN_MS,
                 cold: bool = False, gap_s: float = 0.0) -> dict[str, float]:
    """Mean, median, p10 and p90 milliseconds of at least `repeats` runs after `warmup` untimed ones.

    Short parts run more often, until about `min_ms` of timed runs: 30 runs of a 0.05 ms part span less
    than one scheduler time slice, so one preemption by another process would decide the whole median.
    `cold` times each run as a deployment meets it: after other work has evicted the caches (8 MiB
    touched) and, with `gap_s`, after an idle wait (waiting for the next request or the reply: a thread
    pool goes to sleep).  Measured here at 32 px: mobilenet_v2 parts take 5-10% longer cold on one thread, and
    20-35% longer after a 2 ms idle gap on two threads, than in a tight loop.
    """
    feed = {sess.get_inputs()[0].name: x}
    start = time.perf_counter()
    for _ in range(max(warmup, 1)):
        sess.run(None, feed)
    estimate_ms = (time.perf_counter() - start) * 1e3 / max(warmup, 1)
    n = max(repeats, min(MAX_COLD_RUNS if cold else MAX_RUNS, math.ceil(min_ms / max(estimate_ms, 1e-3))))
    flush = np.zeros(COLD_FLUSH_BYTES, np.uint8) if cold else None
    times = np.empty(n)
    for i in range(n):
        if flush is not None:
            flush += 1
            if gap_s:
                time.sleep(gap_s)
        start = time.perf_counter()
        sess.run(None, feed)
        times[i] = time.perf_counter() - start
    p10, med, p90 = np.percentile(times * 1e3, [10, 50, 90])
    return {"mean_ms": round(float(times.mean() * 1e3), 4), "median_ms": round(float(med), 4),
            "p10_ms": round(float(p10), 4), "p90_ms": round(float(p90), 4), "n": int(n)}


def marginal(fused: dict, head: dict) -> dict:
    """The exit's cost as the runtime pays it: one graph with the head (head.onnx), minus the head alone.
    Timed as a graph of its own, the exit also paid a second session call (measured: mobilenet_v2 k=2,
    head + exit 0.053 ms apart against 0.034 ms fused)."""
    keys = STAT_KEYS + (("warm_ms",) if "warm_ms" in fused and "warm_ms" in head else ())
    out = {key: round(max(fused[key] - head[key], 0.0), 4) for key in keys}
    return {**out, "n": fused["n"]}


# -- the bundle -------------------------------------------------------------------------------------

def load_bundle(bundle_dir: str | Path) -> dict[str, Any]:
    """Read and check `bundle_dir/bundle.json`; one-line errors."""
    path = Path(bundle_dir) / BUNDLE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {BUNDLE_FILE} in {str(bundle_dir)!r}: make a bundle with "
                                f"`python -m profiles bundle --model M --input-size S --out DIR` on the workstation")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path} is not a profiling bundle (format {doc.get('format') if isinstance(doc, dict) else None!r})")
    if doc.get("version") != BUNDLE_VERSION:
        raise ValueError(f"{path} is bundle version {doc.get('version')!r}; this runner reads {BUNDLE_VERSION}")
    missing = [k for k in ("model", "input_size", "num_classes", "K", "ratios", "role", "parts", "jobs", "bytes")
               if k not in doc]
    if missing:
        raise ValueError(f"{path}: malformed bundle, missing {', '.join(missing)}")
    for pid, part in doc["parts"].items():
        name = part.get("file", "")
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"{path}: part {pid} names {name!r}, not a file inside the bundle")
        if not (Path(bundle_dir) / name).is_file():
            raise FileNotFoundError(f"{path} names {name} but it is missing: copy the whole bundle directory")
    return doc


def materialize(bundle_dir: str | Path, part: dict[str, Any], workdir: str | Path) -> Path:
    """Copy the part's graph into `workdir` and write its weights there; returns the graph's path."""
    src = Path(bundle_dir) / part["file"]
    dst = Path(workdir) / src.name
    shutil.copyfile(src, dst)
    if part.get("data"):
        rng = np.random.default_rng(int(part["seed"]))
        with open(Path(workdir) / part["data"], "wb") as f:
            for offset, length, mean, std in part["tensors"]:
                if f.tell() != offset:
                    raise ValueError(f"part {part['file']}: tensor at offset {offset} is not contiguous")
                f.write(rng.normal(mean, std, length // 4).astype("<f4").tobytes())
    return dst


def example(shape: list[int], seed: int = 0) -> np.ndarray:
    """A part's input: standard normal float32 (latency ignores the values)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def time_parts(bundle_dir: str | Path, part_ids: Iterable[str], threads: int = 1, repeats: int = DEFAULT_REPEATS,
               warmup: int = DEFAULT_WARMUP, min_ms: float = DEFAULT_MIN_MS,
               progress: Callable[[int, int, str], None] | None = None,
               bundle: dict[str, Any] | None = None, warm: bool = False) -> dict[str, dict]:
    """Time each named part of a bundle whole, in a fresh session, cold (see time_session): {id: stats};
    with `warm`, also back to back (stats["warm_ms"]: what the end device pays after answering itself)."""
    bundle = bundle or load_bundle(bundle_dir)
    ids = list(dict.fromkeys(part_ids))
    out: dict[str, dict] = {}
    for i, pid in enumerate(ids):
        if progress is not None:
            progress(i, len(ids), pid)
        part = bundle["parts"][pid]
        with tempfile.TemporaryDirectory(prefix="part-") as tmp:
            sess = session(materialize(bundle_dir, part, tmp), threads)
            try:
                x = example(part["input_shape"])
                out[pid] = time_session(sess, x, repeats, warmup, min_ms, cold=True, gap_s=COLD_GAP_S)
                if warm:
                    out[pid]["warm_ms"] = time_session(sess, x, repeats, warmup, min_ms)["mean_ms"]
            finally:
                del sess
    return out


def latency_rows(bundle: dict[str, Any], stats: dict[str, dict]) -> list[dict]:
    """The profile's latency rows from the timed parts: head and marginal exit (device), tail (server)."""
    rows = []
    for job in bundle["jobs"]:
        k, r = int(job["k"]), float(job["r"])
        head = stats[job["head"]] if job.get("head") else NOTHING
        if bundle["role"] != "device":
            rows.append({"part": "tail", "k": k, "r": r, **(stats[job["tail"]] if job.get("tail") else NOTHING)})
        if bundle["role"] == "device" or job.get("fused"):  # a server's at r = 0 only: what an edge box runs
            rows.append({"part": "head", "k": k, "r": r, **head})
        if job.get("fused"):
            rows.append({"part": "exit", "k": k, "r": r, **marginal(stats[job["fused"]], head)})
    return rows


def needed_parts(bundle: dict[str, Any]) -> list[str]:
    """Every part the bundle's jobs time, in job order."""
    return [job[key] for job in bundle["jobs"] for key in ("head", "fused", "tail") if job.get(key)]


def current_quota() -> dict[str, Any] | None:
    """The CPU quota this process runs under (set by profiles.quota), or None."""
    text = os.environ.get(QUOTA_ENV)
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def method(bundle: dict[str, Any], threads: int, repeats: int, warmup: int, min_ms: float) -> str:
    """How the profile was measured, in words (the profile's meta.method)."""
    quota = current_quota()
    emulated = (f"EMULATED SLOW DEVICE: this host under a CPU quota of {quota['fraction']:g} CPU "
                f"({quota['mechanism']}, period {quota['period_ms']:g} ms; profiles.quota), so call overhead "
                f"and contention slow down with the model; ") if quota else ""
    return (f"{emulated}ONNX Runtime {ort.__version__} CPUExecutionProvider, sequential, {threads} intra-op "
            f"thread(s), batch 1, float32, timed by profiles.runner from a profiling bundle; each part whole in a "
            f"fresh session, its weights written before the session opens (normal values with each exported "
            f"tensor's mean and std); a row is the mean (median, p10, p90) of n timed session.run calls after "
            f"{warmup} warm-up runs, each timed run cold as in deployment ({COLD_FLUSH_BYTES >> 20} MiB of "
            f"memory touched and {COLD_GAP_S * 1e3:g} ms idle before it), n = at least {repeats} and enough for "
            f"{min_ms:g} ms of timed runs (at most {MAX_COLD_RUNS}); the latency model uses the mean. A device part's "
            f"warm_ms is the mean of the same part run back to back (no memory touched, no idle gap), timed the same way after "
            f"the cold runs. "
            f"{bundle.get('method', '')}")


def check_timing(threads: int, repeats: int, warmup: int, min_ms: float) -> None:
    """One-line ValueError for timing settings no profile can be made with."""
    if threads < 1 or repeats < 1 or warmup < 0 or min_ms < 0:
        raise ValueError(f"need threads >= 1, repeats >= 1, warmup >= 0 and min_ms >= 0 "
                         f"(got {threads}, {repeats}, {warmup}, {min_ms})")


def profile_doc(bundle_dir: str | Path, device: str | None = None, threads: int = 1, repeats: int = DEFAULT_REPEATS,
                warmup: int = DEFAULT_WARMUP, min_ms: float = DEFAULT_MIN_MS, progress: bool = False,
                bundle: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time every part of the bundle and return the profile document (profiles.profile's format)."""
    check_timing(threads, repeats, warmup, min_ms)
    bundle = bundle or load_bundle(bundle_dir)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    start = time.perf_counter()

    tty = sys.stderr.isatty()

    def show(i: int, n: int, pid: str) -> None:
        if tty:
            print(f"\r[{i + 1}/{n}] {pid:<32}", end="", file=sys.stderr, flush=True)
        elif i == 0 or (i + 1) * 10 // n != i * 10 // n:  # about every tenth part in a log
            print(f"[{i + 1}/{n}] {pid}", file=sys.stderr, flush=True)

    stats = time_parts(bundle_dir, needed_parts(bundle), threads, repeats, warmup, min_ms,
                       show if progress else None, bundle, warm=bundle["role"] == "device")
    if progress and tty:
        print(file=sys.stderr)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    meta = {
        "device": device or socket.gethostname(), "role": bundle["role"], "cpu": cpu_name(),
        "host": socket.gethostname(), "threads": int(threads), "slowdown": 1.0, "emulates": None,
        "versions": versions(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "method": method(bundle, threads, repeats, warmup, min_ms),
        "model": bundle["model"], "input_size": int(bundle["input_size"]), "num_classes": int(bundle["num_classes"]),
        "K": int(bundle["K"]), "ratios": [float(r) for r in bundle["ratios"]], "repeats": int(repeats),
        "warmup": int(warmup), "min_ms": float(min_ms), "seconds": round(time.perf_counter() - start, 2),
        # Other processes share the CPU: the load average tells how much the numbers may be off.
        "cpus": os.cpu_count(), "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after], "importance": bundle.get("importance"),
        "platform": platform.platform(), "bundle": bundle.get("created"),
    }
    quota = current_quota()
    if quota:
        meta["cpu_quota"] = quota
    return {"meta": meta, "latency": latency_rows(bundle, stats), "bytes": bundle["bytes"]}


def write_json(doc: dict[str, Any], path: str | Path) -> Path:
    """Write atomically (a reader never sees half a file), in the shipped profiles' layout."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)
    return path


def _quota_module():
    try:
        from profiles import quota  # in the repository
    except ImportError:
        import quota  # type: ignore[no-redef]  # beside runner.py in a bundle
    return quota


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runner.py", description="Time a profiling bundle's ONNX parts on this "
                                "device and write its profile JSON (needs only numpy and onnxruntime).")
    p.add_argument("bundle", nargs="?", default=None,
                   help="bundle directory (default: the directory of this file when it holds bundle.json)")
    p.add_argument("--out", required=True, help="profile JSON to write")
    p.add_argument("--device", default=None, help="the device's name in the profile (default: the host name)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (the edge runs 1)")
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    p.add_argument("--min-ms", type=float, default=DEFAULT_MIN_MS,
                   help="time short parts more often, until this many ms of timed runs")
    p.add_argument("--cpu-quota", type=float, default=None, metavar="F",
                   help="emulate a slow device: run under a CPU quota of F CPUs (e.g. 0.1) via profiles.quota")
    p.add_argument("--cpu-period-ms", type=float, default=None, help="quota period (default: profiles.quota's)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    bundle_dir = Path(args.bundle) if args.bundle else Path(__file__).resolve().parent
    if args.cpu_quota is not None and current_quota() is None:
        quota = _quota_module()
        try:  # the whole process runs under the quota, so rerun this command inside it
            return quota.run(list(sys.orig_argv) if argv is None else [sys.executable, "-m", "profiles.runner", *argv],
                             args.cpu_quota, args.cpu_period_ms)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        doc = profile_doc(bundle_dir, args.device, args.threads, args.repeats, args.warmup, args.min_ms,
                          progress=not args.quiet)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = write_json(doc, args.out)
    meta = doc["meta"]
    print(f"wrote {path}: {meta['role']} profile of {meta['model']} {meta['input_size']}px on {meta['device']} "
          f"({meta['cpu']}, {meta['threads']} thread(s)), {len(doc['latency'])} rows in {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

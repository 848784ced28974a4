"""The profiler: measures a device's (or server's) latency table with ONNX Runtime, emulates slower
devices from a measured one, and checks a profile's predictions against fresh measurements.

Every (k, r) is pruned once and each part is exported and timed *whole*: summing per-block times
would miss what fusing and memory effects across blocks do, and the runtime runs whole parts too.
"""
from __future__ import annotations

import copy
import datetime as dt
import math
import os
import platform
import socket
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from compress import onnx_io, zoo
from compress.candidate import ExitBranch, exit_allowed
from compress.codec import CODECS
from compress.prune import RATIO_GRID, prune
from profiles.profile import (DATA_ROOT, Profile, ProfileNotFoundError, available_profiles, check_pair,
                              profile_path, read_json, rkey, save_json)

DEFAULT_REPEATS = 30
DEFAULT_WARMUP = 5
DEFAULT_MIN_MS = 200.0  # timed milliseconds per part at least (see time_session)
MAX_RUNS = 5000
STAT = "mean_ms"  # what the latency model predicts with: expected latency is a mean
IMPORTANCE = "magnitude"  # which channels go does not change any shape, so not the latency either


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions(dists=("torch", "torchvision", "torch-pruning", "onnxruntime", "onnx")) -> dict[str, str]:
    """Installed versions from the package metadata (torch_pruning 1.6.1 reports 1.6.0 as __version__)."""
    out = {"python": platform.python_version()}
    for dist in dists:
        try:
            out[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist.replace("-", "_")] = "absent"
    return out


# Idle time before each timed run.  Measured (mobilenet_v2 32 px, emulated-10x, deployed): with it the
# prediction was 3.6% above the deployed mean at k = 3 and 21% above device only; timed busy (no gap) it
# was 4.5% and 69% below, as the emulation's own wait slows the next model call on this VM.
COLD_GAP_S = 0.001
COLD_FLUSH_BYTES = 8 << 20  # memory touched before each timed run: more than this CPU's L2 per core
MAX_COLD_RUNS = 300


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


NOTHING = {"mean_ms": 0.0, "median_ms": 0.0, "p10_ms": 0.0, "p90_ms": 0.0, "n": 0}  # a part that runs no layer


class HeadWithExit(nn.Module):
    """Image -> (exit logits, split tensor): the device graph the runtime exports as head.onnx."""

    def __init__(self, head: nn.Module, exit_branch: nn.Module):
        super().__init__()
        self.head, self.exit = head, exit_branch

    def forward(self, x: torch.Tensor):
        feats = self.head(x)
        return self.exit(feats), feats


@contextmanager
def _quiet_torch() -> Iterator[None]:
    """One torch thread while pruning and exporting (nothing torch does is timed): on a busy CPU a
    second thread makes an export up to 5x slower, and no torch worker competes with the timed runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_num_threads(before)


class _Timer:
    """Exports a module to a scratch directory and times it in a fresh session."""

    def __init__(self, workdir: str, threads: int, repeats: int, warmup: int, min_ms: float, gap_s: float = 0.0):
        self.workdir, self.threads, self.repeats, self.warmup = Path(workdir), threads, repeats, warmup
        self.min_ms, self.gap_s = min_ms, gap_s
        self.count = 0

    def __call__(self, module: nn.Module, example: torch.Tensor, outputs: tuple[str, ...] = ("output",)) -> dict:
        self.count += 1
        path = onnx_io.export(module.eval(), example, self.workdir / f"part{self.count}.onnx", output_names=outputs)
        sess = onnx_io.session(path, self.threads)
        try:
            return time_session(sess, example.numpy(), self.repeats, self.warmup, self.min_ms, cold=True,
                                gap_s=self.gap_s)
        finally:
            del sess
            path.unlink(missing_ok=True)


def _marginal(fused: dict, head: dict) -> dict:
    """The exit's cost as the runtime pays it: one graph with the head (head.onnx), minus the head alone.
    Timed as a graph of its own, the exit also paid a second session call (measured: mobilenet_v2 k=2,
    head + exit 0.053 ms apart against 0.034 ms fused)."""
    out = {key: round(max(fused[key] - head[key], 0.0), 4) for key in ("mean_ms", "median_ms", "p10_ms", "p90_ms")}
    return {**out, "n": fused["n"]}


def _variant(base: zoo.SplitModel, k: int, r: float, input_size: int) -> tuple[zoo.SplitModel, torch.Tensor, torch.Tensor]:
    """The pruned network of (k, r), the input and the split tensor (random values: latency ignores them)."""
    if k == 0 or r == 0:
        model = base
    else:
        with torch.enable_grad():  # torch-pruning traces the graph with autograd
            model = prune(base, k, r, input_size, IMPORTANCE)
    model.eval()
    x = torch.randn(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = model.head(k).eval()(x)
    return model, x, feats


def _split_info(base: zoo.SplitModel, k: int, feats: torch.Tensor) -> zoo.SplitInfo:
    name = "input" if k == 0 else base.block_names[k - 1]
    return zoo.SplitInfo(k, name, tuple(feats.shape[1:]), feats[0].numel(), last=k == base.K)


def _bytes_rows(info: zoo.SplitInfo, r: float) -> list[dict]:
    return [{"k": info.k, "r": r, "codec": c, "bytes": int(info.bytes(c)), "shape": list(info.shape)} for c in CODECS]


def measure(model: str, input_size: int, device: str, role: str = "device", threads: int = 1,
            ratios: Iterable[float] = RATIO_GRID, repeats: int = DEFAULT_REPEATS, warmup: int = DEFAULT_WARMUP,
            min_ms: float = DEFAULT_MIN_MS, num_classes: int = 10, progress: bool = True) -> dict[str, Any]:
    """Measure one profile document (see profiles.profile for the format); nothing is written."""
    if role not in ("device", "server"):
        raise ValueError(f"role must be 'device' or 'server', got {role!r}")
    if threads < 1 or repeats < 1 or warmup < 0 or min_ms < 0:
        raise ValueError(f"need threads >= 1, repeats >= 1, warmup >= 0 and min_ms >= 0 "
                         f"(got {threads}, {repeats}, {warmup}, {min_ms})")
    ratios = sorted({rkey(r) for r in ratios})
    if not ratios or not all(0.0 <= r < 1.0 for r in ratios):
        raise ValueError(f"ratios must be a non-empty list in [0, 1), got {ratios}")
    load_before = os.getloadavg()
    start = time.perf_counter()
    torch.manual_seed(0)
    base = zoo.build(model, num_classes, input_size).eval()
    K = base.K
    latency, nbytes = [], []
    shared_tail: dict | None = None  # at k = 0 nothing is pruned: one tail serves every r
    jobs = [(k, r) for k in range(K + 1) for r in ratios]
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp, _quiet_torch():
        timer = _Timer(tmp, threads, repeats, warmup, min_ms, gap_s=COLD_GAP_S)
        for k, r in tqdm(jobs, desc=f"{device} {model} {input_size}px", disable=not progress, leave=False):
            pruned, x, feats = _variant(base, k, r, input_size)
            nbytes += _bytes_rows(_split_info(base, k, feats), r)
            if role == "device":
                head = timer(pruned.head(k), x) if k > 0 else NOTHING
                latency.append({"part": "head", "k": k, "r": r, **head})
                if exit_allowed(k, K):
                    torch.manual_seed(k)
                    branch = ExitBranch(feats.shape[1], num_classes)
                    fused = timer(HeadWithExit(pruned.head(k), branch), x, ("exit", "features"))
                    latency.append({"part": "exit", "k": k, "r": r, **_marginal(fused, head)})
            else:
                if k == K:
                    tail = NOTHING
                elif k == 0:
                    shared_tail = shared_tail or timer(pruned.tail(0), x)
                    tail = shared_tail
                else:
                    tail = timer(pruned.tail(k), feats)
                latency.append({"part": "tail", "k": k, "r": r, **tail})
    meta = {
        "device": device, "role": role, "cpu": cpu_name(), "host": socket.gethostname(), "threads": int(threads),
        "slowdown": 1.0, "emulates": None, "versions": versions(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "method": _method(role, threads, repeats, warmup, min_ms),
        "model": model, "input_size": int(input_size), "num_classes": int(num_classes), "K": K,
        "ratios": ratios, "repeats": int(repeats), "warmup": int(warmup), "min_ms": float(min_ms),
        "seconds": round(time.perf_counter() - start, 2),
        # Other processes share the CPU: the load average tells how much the numbers may be off.
        "cpus": os.cpu_count(), "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()], "importance": IMPORTANCE,
    }
    return {"meta": meta, "latency": latency, "bytes": nbytes}


def _method(role: str, threads: int, repeats: int, warmup: int, min_ms: float) -> str:
    import onnxruntime as ort
    parts = ("head = blocks [0, k) of the network pruned at (k, r); exit = compress.candidate.ExitBranch on "
             "the pruned split tensor, as the marginal time of one graph of head and exit (what the runtime "
             "runs) over the head alone, per statistic; k = 0 runs no head (0 ms)") if role == "device" else \
        ("tail = blocks [k, K) of the network pruned at (k, r) (its first layer's input channels follow the "
         "pruned split tensor); k = K runs no tail (0 ms); k = 0 is unpruned, so one tail is timed for every r")
    return (f"ONNX Runtime {ort.__version__} CPUExecutionProvider, sequential, {threads} intra-op thread(s), "
            f"batch 1, float32; each (k, r) pruned once (torch-pruning, {IMPORTANCE}, random weights) and "
            f"each part exported whole (TorchScript exporter, opset 17) into a fresh session; a row is the "
            f"mean (median, p10, p90) of n timed session.run calls after {warmup} warm-up runs, each timed run "
            f"cold as in deployment ({COLD_FLUSH_BYTES >> 20} MiB of memory touched and {COLD_GAP_S * 1e3:g} ms "
            f"idle before it), n = at least {repeats} and enough for {min_ms:g} ms of timed runs (at most "
            f"{MAX_COLD_RUNS}); the latency model uses the mean. {parts}. "
            f"bytes = compress.zoo.SplitInfo.bytes of the pruned split tensor.")


def measure_to_file(model: str, input_size: int, device: str, out: str | Path | None = None,
                    root: str | Path | None = None, **kwargs) -> Path:
    """`measure` and write the profile (to profiles/data/<device>/<model>-<size>px.json by default)."""
    doc = measure(model, input_size, device, **kwargs)
    return save_json(doc, out or profile_path(device, model, input_size, root))


def scaled(doc: dict[str, Any], factor: float, name: str, source: str) -> dict[str, Any]:
    """A copy of a profile with every latency multiplied by `factor` (bytes and overhead unchanged).

    The overhead rows (per-request runtime cost outside the model, profiles.overhead) are copied as they
    are: the runtime's --slowdown spins only for the model's own compute (runtime.edge `_slow` around
    head.run), so the emulated device pays this host's overhead, not `factor` times it.
    """
    if not factor > 0:
        raise ValueError(f"slowdown factor must be > 0, got {factor}")
    doc = copy.deepcopy(doc)
    meta = doc["meta"]
    first = meta["emulates"] or source  # emulating an emulation still points at the measured device
    meta.update({
        "device": name, "slowdown": round(float(meta["slowdown"]) * factor, 6), "emulates": first,
        "emulated_on": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "method": (f"EMULATED: the measured profile of {first!r} with every latency multiplied by "
                   f"{float(meta['slowdown']) * factor:g} (bytes unchanged; overhead rows, if any, copied "
                   f"unscaled: the runtime's slowdown spins for the model's compute only, so the emulated device "
                   f"pays the host's per-request overhead); the runtime emulates the same device by spinning "
                   f"(slowdown - 1) x its head compute time. Source method: {meta['method']}"),
    })
    if isinstance(meta.get("overhead"), dict):
        meta["overhead"]["copied_from"] = (f"{first!r} unscaled (the runtime's slowdown spins for model compute "
                                           f"only)")
    for row in doc["latency"]:
        for key in ("mean_ms", "median_ms", "p10_ms", "p90_ms"):
            if key not in row:
                continue
            row[key] = round(row[key] * factor, 4)
    return doc


def emulate(source: str, factor: float, name: str, root: str | Path | None = None,
            sizes: Iterable[int] | None = None) -> list[Path]:
    """Write scaled copies of every profile of device `source` (only those at `sizes` px if given) as
    device `name`."""
    if name == source:
        raise ValueError("the emulated device needs a name of its own")
    stems = available_profiles(source, root)
    if not stems:
        raise ProfileNotFoundError(f"device {source!r} has no profiles under {root or DATA_ROOT}")
    if sizes is not None:
        wanted = sorted({int(size) for size in sizes})
        stems = [stem for stem in stems if any(stem.endswith(f"-{size}px") for size in wanted)]
        if not stems:
            raise ProfileNotFoundError(f"device {source!r} has no profiles at {', '.join(f'{v}px' for v in wanted)}; "
                                       f"it has: {', '.join(available_profiles(source, root))}")
    out = []
    for stem in stems:
        src = Path(root or DATA_ROOT) / source / f"{stem}.json"
        out.append(save_json(scaled(read_json(src), factor, name, source), Path(root or DATA_ROOT) / name / src.name))
    return out


def validate(device: Profile, server: Profile, repeats: int | None = None, warmup: int | None = None,
             min_ms: float | None = None, progress: bool = True) -> pd.DataFrame:
    """Predicted vs freshly measured compute time of every (k, r): device (head + exit) and server (tail).

    The device side is measured as one graph (head with its exit, as the runtime runs it) so the check
    also covers the additivity of the profile's separate head and exit rows.  An emulated device's
    measured time is multiplied by its slowdown, as the runtime's sleep does.
    """
    check_pair(device, server)
    repeats = repeats or int(device.meta["repeats"])
    warmup = int(device.meta["warmup"]) if warmup is None else warmup
    min_ms = float(device.meta.get("min_ms", 0.0)) if min_ms is None else min_ms  # as the profile was timed
    torch.manual_seed(0)
    base = zoo.build(device.model, device.num_classes, device.input_size).eval()
    rows = []
    jobs = [(k, r) for k in range(base.K + 1) for r in device.ratios]
    with tempfile.TemporaryDirectory(prefix="validate-") as tmp, _quiet_torch():
        on_device = _Timer(tmp, device.threads, repeats, warmup, min_ms, gap_s=COLD_GAP_S)
        on_server = _Timer(tmp, server.threads, repeats, warmup, min_ms, gap_s=COLD_GAP_S)
        for k, r in tqdm(jobs, desc=f"validate {device.device}+{server.device}", disable=not progress, leave=False):
            pruned, x, feats = _variant(base, k, r, device.input_size)
            head = pruned.head(k)
            if exit_allowed(k, base.K):
                module, outputs = HeadWithExit(head, ExitBranch(feats.shape[1], device.num_classes)), ("exit", "features")
            else:
                module, outputs = head, ("output",)
            dev_ms = on_device(module, x, outputs)[STAT] * device.slowdown if k > 0 else 0.0
            srv_ms = on_server(pruned.tail(k), feats)[STAT] if k < base.K else 0.0
            pred_dev = device.ms("head", k, r) + device.ms("exit", k, r)
            pred_srv = server.ms("tail", k, r)
            rows.append({"k": k, "r": r, "pred_device_ms": pred_dev, "meas_device_ms": round(dev_ms, 4),
                         "pred_server_ms": pred_srv, "meas_server_ms": round(srv_ms, 4),
                         "pred_ms": pred_dev + pred_srv, "meas_ms": round(dev_ms + srv_ms, 4)})
    table = pd.DataFrame(rows)
    table["ape"] = _ape(table.pred_ms, table.meas_ms)
    table["device_ape"] = _ape(table.pred_device_ms, table.meas_device_ms)
    table["server_ape"] = _ape(table.pred_server_ms, table.meas_server_ms)
    table.attrs.update({"device": device.device, "server": server.device, "model": device.model,
                        "input_size": device.input_size, "repeats": repeats, "min_ms": min_ms})
    return table


def _ape(pred: pd.Series, meas: pd.Series) -> pd.Series:
    """Absolute percentage error of the prediction, in % of the measurement (NaN where nothing ran)."""
    return (100 * (pred - meas).abs() / meas.where(meas > 0)).round(2)


def summarize(table: pd.DataFrame) -> dict[str, float]:
    """Median and worst absolute percentage error, total and per side."""
    out = {}
    for col in ("ape", "device_ape", "server_ape"):
        out[f"median_{col}"] = round(float(table[col].median()), 2)
        out[f"max_{col}"] = round(float(table[col].max()), 2)
    return out


def environment_note() -> str:
    """One line on the machine's state, printed beside results measured on a shared CPU."""
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{cpu_name()} on {socket.gethostname()}, {os.cpu_count()} CPUs, load average {load}, python {sys.version.split()[0]}"

"""The profiler: measures a device's (or server's) latency table with ONNX Runtime, emulates slower
devices from a measured one, and checks a profile's predictions against fresh measurements.

One mechanism serves this machine and a remote end device: `profiles.bundle.export_parts` writes the
ONNX parts every (k, r) needs, `profiles.runner` times them.  `measure` does both in-process (the bundle
in a scratch directory); on a device that has only numpy and onnxruntime, the bundle is copied there
and its runner.py writes the same profile.
"""
from __future__ import annotations

import copy
import datetime as dt
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from compress.candidate import exit_allowed
from compress.prune import RATIO_GRID
from profiles import runner
from profiles.profile import (DATA_ROOT, Profile, ProfileNotFoundError, available_profiles, check_pair,
                              profile_path, read_json, save_json)
# Timing lives in profiles.runner (numpy and onnxruntime only); these names stay importable from here.
from profiles.runner import (COLD_FLUSH_BYTES, COLD_GAP_S, DEFAULT_MIN_MS, DEFAULT_REPEATS, DEFAULT_WARMUP,  # noqa: F401
                             MAX_COLD_RUNS, MAX_RUNS, NOTHING, STAT_KEYS, cpu_name, time_session)

STAT = "mean_ms"  # what the latency model predicts with: expected latency is a mean
WORKSTATION_LIBS = ("torch", "torchvision", "torch-pruning", "onnxruntime", "onnx", "numpy")


def versions(dists: Iterable[str] = WORKSTATION_LIBS) -> dict[str, str]:
    """Installed versions from the package metadata (torch_pruning 1.6.1 reports 1.6.0 as __version__)."""
    return runner.versions(dists)


def measure(model: str, input_size: int, device: str, role: str = "device", threads: int = 1,
            ratios: Iterable[float] = RATIO_GRID, repeats: int = DEFAULT_REPEATS, warmup: int = DEFAULT_WARMUP,
            min_ms: float = DEFAULT_MIN_MS, num_classes: int = 10, progress: bool = True) -> dict[str, Any]:
    """Measure one profile document (see profiles.profile for the format); nothing is written.

    Exports the bundle into a scratch directory and times it with profiles.runner, as a device would."""
    from profiles.bundle import export_parts

    if role not in ("device", "server"):
        raise ValueError(f"role must be 'device' or 'server', got {role!r}")
    runner.check_timing(threads, repeats, warmup, min_ms)  # before the export, which takes a while
    load_before = os.getloadavg()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        bundle = export_parts(model, input_size, tmp, role, ratios, num_classes, progress, standalone=False)
        doc = runner.profile_doc(tmp, device, threads, repeats, warmup, min_ms, bundle=bundle)
    doc["meta"].update({
        "host": socket.gethostname(), "versions": versions(), "seconds": round(time.perf_counter() - start, 2),
        "loadavg_before": [round(v, 2) for v in load_before],
        "method": "In-process (python -m profiles measure): " + doc["meta"]["method"],
    })
    return doc


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
        for key in ("mean_ms", "median_ms", "p10_ms", "p90_ms", "warm_ms"):
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


def add_exits(device: str, model: str, input_size: int, root: str | Path | None = None,
              path: str | Path | None = None, progress: bool = True) -> Path:
    """Add head and exit rows at r = 0 to an existing server-role profile in place: what an edge box pays to
    run an unpruned candidate's first blocks and its exit (search.latency's exit on the edge).  A measured
    profile's are timed here as its rows were (its threads, repeats, warmup, min_ms); an emulated profile
    copies its source's, scaled by its own slowdown over the source's (measure that one first).  Rows
    already there are replaced."""
    from profiles.bundle import export_parts
    from profiles.profile import emulated_source_path

    path = Path(path or profile_path(device, model, input_size, root))
    doc = read_json(path)
    meta = doc["meta"]
    if meta["role"] != "server":
        raise ValueError(f"{path} is a {meta['role']} profile: exit rows are measured with its heads (profiles "
                         "measure --role device); this adds them to a server-role (edge) profile")
    if 0.0 not in [float(r) for r in meta["ratios"]]:
        raise ValueError(f"{path} has no r = 0 in its grid: an edge's exit rows are at r = 0")
    source = meta.get("emulates")
    if source:
        src_path = emulated_source_path(source, model, input_size, root)
        src = read_json(src_path)
        factor = float(meta["slowdown"]) / float(src["meta"]["slowdown"])
        rows = [{**row, **{key: round(row[key] * factor, 4) for key in STAT_KEYS + ("warm_ms",) if key in row}}
                for row in src["latency"] if row["part"] != "tail"]
        if not rows:
            raise ValueError(f"{src_path} has no exit rows: add them first (python -m profiles exits --device "
                             f"{source} ...)")
        how = {**(src["meta"].get("exits") or {}), "copied_from": f"{source!r} x {factor:g}"}
    else:
        threads, repeats, warmup = int(meta["threads"]), int(meta["repeats"]), int(meta["warmup"])
        min_ms = float(meta.get("min_ms", DEFAULT_MIN_MS))
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="exits-") as tmp:
            bundle = export_parts(model, input_size, tmp, "server", [0.0], int(meta["num_classes"]), progress,
                                  standalone=False)
            ids = [job[key] for job in bundle["jobs"] for key in ("head", "fused") if job.get(key)]
            stats = runner.time_parts(tmp, ids, threads, repeats, warmup, min_ms, bundle=bundle)
        rows = [row for row in runner.latency_rows(bundle, {**stats, **{j["tail"]: NOTHING for j in bundle["jobs"]
                                                                          if j.get("tail")}})
                if row["part"] != "tail"]
        how = {"host": socket.gethostname(), "cpu": cpu_name(), "threads": threads, "repeats": repeats,
               "warmup": warmup, "min_ms": min_ms, "versions": versions(),
               "seconds": round(time.perf_counter() - start, 2),
               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "method": "profiles.profiler.add_exits: " + bundle["method"]}
    doc["latency"] = [row for row in doc["latency"] if row["part"] == "tail"] + rows
    meta["exits"] = how
    Profile(doc, str(path))  # complete and valid before anything is written
    return save_json(doc, path)


def validate(device: Profile, server: Profile, repeats: int | None = None, warmup: int | None = None,
             min_ms: float | None = None, progress: bool = True, at: tuple[int, float] | None = None,
             device_side: bool = True) -> pd.DataFrame:
    """Predicted vs freshly measured compute time of every (k, r), or of the one (k, r) `at`: device
    (head + exit) and server (tail); without `device_side` the server alone (the device's columns NaN).

    The device side is measured as one graph (head with its exit, as the runtime runs it) so the check
    also covers the additivity of the profile's separate head and exit rows.  An emulated profile's
    measured time (a device's, or a server-role edge box's) is multiplied by its slowdown, as the runtime's
    spin does.  The parts come from one bundle (profiles.bundle) timed by profiles.runner, as `measure`
    makes them.
    """
    from profiles.bundle import export_parts

    edge_itself = device.role == "server" and device.has_exits and at is not None and at[1] == 0.0
    if not edge_itself:  # an edge box timing its own head and exit (drift's k1, rows at r = 0) needs no pair
        check_pair(device, server)
    repeats = repeats or int(device.meta["repeats"])
    warmup = int(device.meta["warmup"]) if warmup is None else warmup
    min_ms = float(device.meta.get("min_ms", 0.0)) if min_ms is None else min_ms  # as the profile was timed
    rows = []
    with tempfile.TemporaryDirectory(prefix="validate-") as tmp:
        bundle = export_parts(device.model, device.input_size, tmp, "both" if device_side else "server",
                              device.ratios if at is None else [at[1]],
                              device.num_classes, progress, standalone=False, splits=None if at is None else [at[0]])
        K, jobs = bundle["K"], bundle["jobs"]

        def on_dev(job: dict) -> str:  # the device's graph: head with its exit where the split has one
            return job["fused"] if exit_allowed(job["k"], K) else job["head"]

        dev_ids = [on_dev(job) for job in jobs if job["k"] > 0] if device_side else []
        # one split (the deploy's check): also back to back, as a request after an on-device answer runs
        quota = device.meta.get("cpu_quota")
        if quota and dev_ids:  # timed as the profile was: the runner's own timing in a process under the same quota
            on_device = _time_under_quota(quota, tmp, dev_ids, device.threads, repeats, warmup, min_ms,
                                          warm=at is not None)
        else:
            on_device = runner.time_parts(tmp, dev_ids, device.threads, repeats, warmup, min_ms, bundle=bundle,
                                          warm=at is not None)
        on_server = runner.time_parts(tmp, [job["tail"] for job in jobs if job["tail"]], server.threads,
                                      repeats, warmup, min_ms, bundle=bundle)
    for job in jobs:
        k, r = job["k"], job["r"]
        dev_ms = (on_device[on_dev(job)][STAT] * device.slowdown if k > 0 else 0.0) if device_side else math.nan
        srv_ms = on_server[job["tail"]][STAT] * server.slowdown if job["tail"] else 0.0
        pred_dev = device.ms("head", k, r) + device.ms("exit", k, r)
        pred_srv = server.ms("tail", k, r)
        rows.append({"k": k, "r": r, "pred_device_ms": pred_dev, "meas_device_ms": round(dev_ms, 4),
                     "pred_server_ms": pred_srv, "meas_server_ms": round(srv_ms, 4),
                     "pred_ms": pred_dev + pred_srv, "meas_ms": round(dev_ms + srv_ms, 4)})
        warm = on_device[on_dev(job)].get("warm_ms") if k > 0 and device_side else None
        if warm is not None:
            rows[-1].update(pred_device_warm_ms=device.ms("head", k, r, warm=True) + device.ms("exit", k, r, warm=True),
                            meas_device_warm_ms=round(warm * device.slowdown, 4))
    table = pd.DataFrame(rows)
    table["ape"] = _ape(table.pred_ms, table.meas_ms)
    table["device_ape"] = _ape(table.pred_device_ms, table.meas_device_ms)
    table["server_ape"] = _ape(table.pred_server_ms, table.meas_server_ms)
    table.attrs.update({"device": device.device, "server": server.device, "model": device.model,
                        "input_size": device.input_size, "repeats": repeats, "min_ms": min_ms})
    return table


_TIME_PARTS = ("import json, sys\nfrom profiles import runner\na = json.loads(sys.argv[1])\n"
               "stats = runner.time_parts(a['dir'], a['ids'], a['threads'], a['repeats'], a['warmup'], a['min_ms'], "
               "warm=a['warm'])\nopen(a['out'], 'w').write(json.dumps(stats))\n")


def _time_under_quota(quota: dict, bundle_dir: str, ids: list[str], threads: int, repeats: int, warmup: int,
                      min_ms: float, warm: bool) -> dict[str, dict]:
    """`runner.time_parts` in a child process under the CPU quota a device profile records (profiles.quota),
    so a quota'd device is re-timed as it was measured."""
    import json

    from profiles import quota as quotas

    out = Path(bundle_dir) / "quota-stats.json"
    args = json.dumps({"dir": str(bundle_dir), "ids": ids, "threads": threads, "repeats": repeats,
                       "warmup": warmup, "min_ms": min_ms, "warm": warm, "out": str(out)})
    quotas.run_python(["-c", _TIME_PARTS, args], float(quota["fraction"]), quota.get("period_ms"), "timing",
                      Path(__file__).resolve().parent.parent)
    return json.loads(out.read_text())


def drift(device: Profile, server: Profile, k: int, r: float, edge: Profile | None = None,
          k2: int | None = None, k1: int | None = None) -> dict[str, float]:
    """How much slower (> 1) or faster (< 1) this machine runs one (k, r)'s parts now than their profile rows
    say: freshly measured over profiled compute time per side, with both times (NaN for a side that runs
    nothing).  A shared VM's speed drifts, and a deployment inherits the drift before its runtime adds
    anything (README: What a run prints).

    Two tiers: sides "device" (head + exit, cold as the rows time it), "device_warm" (the same back to
    back, as after an on-device answer; against the rows' warm_ms) and "server" (the tail).  With an `edge`
    profile (three tiers, the edge running blocks [k, k2)): "device", "device_warm", "edge" and "cloud" (the
    tail from k2, on `server`).  The edge
    is timed on its tail from k, blocks [k, K): its rows price [k, k2) as the difference of two tails, which
    a ratio of one of them tracks without timing a second graph that differs only in its length.  With `k1`
    (the exit at k run by the edge): "device" is timed at (k1, 0) (k1 = 0: nothing runs there), "edge" on
    its blocks [0, k) with the exit (its head and exit rows) and "cloud" on the tail from k, beside it."""
    if k1 is not None and edge is not None:
        out = {"pred_device_ms": 0.0, "meas_device_ms": 0.0}
        if k1 > 0:
            dev = validate(device, server, progress=False, at=(k1, 0.0)).iloc[0]
            out = {col: float(dev[col]) for col in ("pred_device_ms", "meas_device_ms")}
        row = validate(edge, server, progress=False, at=(k, 0.0)).iloc[0]  # the edge as the device of one graph
        out.update(pred_edge_ms=float(row["pred_device_ms"]), meas_edge_ms=float(row["meas_device_ms"]),
                   pred_cloud_ms=float(row["pred_server_ms"]), meas_cloud_ms=float(row["meas_server_ms"]))
        return _ratios(out)
    row = validate(device, edge or server, progress=False, at=(k, r)).iloc[0]
    out = {col: float(row[col]) for col in ("pred_device_ms", "meas_device_ms", "pred_server_ms", "meas_server_ms",
                                            "pred_device_warm_ms", "meas_device_warm_ms") if col in row}
    if edge is not None:
        out["pred_edge_ms"], out["meas_edge_ms"] = out.pop("pred_server_ms"), out.pop("meas_server_ms")
        cloud = {"pred_server_ms": 0.0, "meas_server_ms": 0.0}
        if k2 is not None and k2 < device.K:
            cloud = validate(device, server, progress=False, at=(k2, 0.0), device_side=False).iloc[0]
        out["pred_cloud_ms"], out["meas_cloud_ms"] = float(cloud["pred_server_ms"]), float(cloud["meas_server_ms"])
    return _ratios(out)


def _ratios(out: dict[str, float]) -> dict[str, float]:
    """`out` with each timed side's measured/predicted ratio (NaN for a side that runs nothing)."""
    for side in ("device", "device_warm", "server", "edge", "cloud"):
        if f"pred_{side}_ms" in out:
            pred = out[f"pred_{side}_ms"]
            out[side] = out[f"meas_{side}_ms"] / pred if pred > 0 else float("nan")
    return out


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

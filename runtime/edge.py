"""The edge client: runs head.onnx on the device, answers at the exit or asks the cloud for the rest.

    python -m runtime.edge --model-dir DIR --server HOST:PORT [--bandwidth MBPS|auto] [--rtt MS]
        [--slowdown F] [--limit N] [--csv PATH] [--secret-file F] [--tls-ca C] [--images samples.npz]
    python -m runtime.edge --model-dir DIR --save-images samples.npz --limit N   # workstation, for --images

Per test sample, one row (all times in ms, measured with perf_counter):

- device_ms: normalisation + head.onnx (which includes the exit branch: one graph, so exit_ms is 0)
  + encoding the split tensor when it is sent (at k = 0, the image under the manifest's input codec).
  The emulated slowdown spins (F - 1) x the head.onnx run only, the part the profile measured, so an
  "emulated-10x" device runs the model 10x slower.
- head_ms: that head.onnx run itself, on this host before the slowdown (0 without a head): F x head_ms
  is what the emulation spends, so a device part off its prediction can be traced to the host's own run.
- transfer_ms: from handing the frame to the link until the reply is read, minus server_ms; with a
  shaped link it includes the rtt and the paced serialization (runtime.link), so it matches
  T_N(b) = rtt + 8 b / bandwidth plus the real loopback cost.
- server_ms: the server's own time for the request (decode, queue, tail inference), from the reply.
- total_ms: wall time of the whole sample, about the sum of the parts.
- edge_ms, edge_transfer_ms, cloud_ms: through an edge server (runtime.relay), its reply's split of
  server_ms (its own ms, edge-to-cloud, cloud; 0 otherwise).
- edge_exited: the edge server answered with an exit placed on it (runtime.tiers' k1), by the exit's
  threshold, without asking the cloud; edge_fallback: it answered with that exit because the cloud
  failed.  Both come from the reply's flags (runtime.protocol), never from timings; `exited` stays the
  device's own exit.
- steal_ms: CPU time the hypervisor gave to other guests since the previous reading, summed over this
  machine's CPUs (/proc/stat, 10 ms ticks; NaN where the kernel does not count it), read after a sample
  slower than STALL_MIN_MS and otherwise at most once a second (0 in between): what tells a stalled sample
  caused by the VM from one caused by the model or the link.

Faults (runtime.client): a failed request is retried with exponential back-off; if every attempt
fails and a direct server is configured (`--direct HOST:PORT`: in three tiers, the cloud reached without
the edge, serving this directory's own tail, blocks [k, K)), the request goes there (direct=True);
otherwise, or if that fails too, the device answers alone: fallback=True, the exit's prediction when the
split has an exit, else pred = -1 (counted wrong).  Every sample gets exactly one row.

On a device with only numpy and onnxruntime (and the files of runtime.EDGE_FILES): pass the test
samples as a file (`--images samples.npz`, written on the workstation with --save-images or
runtime.manifest.save_samples); without it the edge loads the data set
through compress.data, which needs torch.  pandas is needed only by `run_edge`, which returns a
DataFrame; the command line and `run_rows` use plain rows.
"""
from __future__ import annotations

import argparse
import csv as csvlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import numpy as np

from compress.onnx_io import session, warm_up
from runtime import link as links
from runtime import manifest as mf
from runtime import protocol as wire
from runtime.client import AuthError, Client, Remote, parse_address
from runtime.protocol import ProtocolError, RemoteError

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ["index", "device_ms", "exit_ms", "transfer_ms", "server_ms", "total_ms", "exited", "fallback",
           "direct", "bytes_sent", "pred", "label", "correct", "attempts", "error"]
# through an edge server (runtime.relay), its reply splits server_ms: its own ms, edge-to-cloud, cloud (else 0)
TIER_COLUMNS = ["edge_ms", "edge_transfer_ms", "cloud_ms"]
EDGE_EXIT_COLUMNS = ["edge_exited", "edge_fallback"]  # the reply's flags: the edge's exit answered (see the doc)
COLUMNS += TIER_COLUMNS + EDGE_EXIT_COLUMNS + ["head_ms", "steal_ms"]
_TICK_MS = 1e3 / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)
# a sample this much slower than the median (and by at least STALL_MIN_MS) stalled: the machine, not the model
STALL_FACTOR, STALL_MIN_MS = 20.0, 100.0
STEAL_EVERY_S = 1.0  # steal time is read at least this often (and after every sample over STALL_MIN_MS)


def stolen_ms(stat: str | None = None) -> float:
    """CPU time stolen from this machine since boot, summed over its CPUs: the 8th field of /proc/stat's
    "cpu" line (`stat` its text; read here when None).  NaN where there is no such count."""
    try:
        if stat is None:
            with open("/proc/stat") as f:
                stat = f.readline()
        fields = stat.split("\n", 1)[0].split()
        return float(fields[8]) * _TICK_MS if fields[0] == "cpu" and len(fields) > 8 else math.nan
    except (OSError, ValueError, IndexError):
        return math.nan


def exit_confidence(logits: np.ndarray) -> float:
    """The max softmax of one sample's exit logits: the exit answers when it is >= t.  One function for
    the end device and an edge server with an exit (runtime.relay), so both decide alike."""
    z = logits - logits.max()
    p = np.exp(z)
    return float(p.max() / p.sum())


def run_edge(model_dir: str | Path, server: str | tuple[str, int] | None = None, **kwargs) -> "pd.DataFrame":
    """Run the device side over the manifest's test split; one row per sample (see the module doc).

    Takes `run_rows`'s arguments.  The DataFrame's `attrs` hold the run's settings; `summarize(df)`
    gives the headline numbers.
    """
    import pandas as pd

    rows, attrs = run_rows(model_dir, server, **kwargs)
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs.update(attrs)
    return df


def run_rows(model_dir: str | Path, server: str | tuple[str, int] | None = None, *,
             bandwidth: float | str | None = None, rtt: float = 0.0, slowdown: float = 1.0,
             limit: int | None = None, csv: str | Path | None = None, secret: bytes | None = None,
             tls_ca: str | None = None, timeout: float = 5.0, retries: int = 2, backoff: float = 0.05,
             max_backoff: float = 2.0, data=None, data_root: str | None = None, images: str | Path | None = None,
             direct: str | tuple[str, int] | None = None,
             on_sample: Callable[[dict[str, Any]], None] | None = None,
             progress: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the device side; (one row per sample, the run's settings).  Needs no pandas.

    `bandwidth` in Mbit/s shapes the uplink; None uses the link as it is; "auto" measures it (then
    leaves it unshaped) and records the result.  The samples come from `images` (a .npz of
    runtime.manifest.save_samples), else `data` (already loaded DataSplits), else the data set the
    manifest names (compress.data, which needs torch).
    `direct` is a second server for the same tensor (this directory's tail), tried when `server` fails;
    it shares the link's shaping.  `on_sample(row)` sees every finished row (tests use it to kill the
    server mid-run).
    A refused shared secret raises AuthError: that is a configuration error, not a network fault.
    """
    manifest = mf.load(model_dir)
    if not slowdown >= 1.0:
        raise ValueError(f"slowdown must be >= 1 (a factor on this host's compute time), got {slowdown}")
    k, K = manifest["k"], manifest["K"]
    needs_server = k < K
    if needs_server and server is None:
        raise ValueError(f"split k={k} < K={K} needs a server address (HOST:PORT)")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if not 0 < timeout < math.inf:  # 0 would make the sockets non-blocking: every request would fail
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    if not (isinstance(retries, int) and retries >= 0):  # -1 would make no attempt at all
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    if images is not None:
        samples, labels = mf.load_samples(images, manifest)
    else:
        samples, labels = _test_split(manifest, data, data_root)
    n = len(samples) if limit is None else min(int(limit), len(samples))
    device = Device(model_dir, manifest, slowdown)
    t = manifest["t"]

    attrs: dict[str, Any] = {"model_dir": str(model_dir), "server": None, "bandwidth_mbps": None,
                             "bandwidth_measured": False, "rtt_ms": float(rtt), "slowdown": float(slowdown),
                             "k": k, "K": K, "r": manifest["r"], "t": t, "codec": manifest["codec"],
                             "predicted": manifest.get("predicted")}
    remote = second = None
    if needs_server:
        shaped = None if bandwidth in (None, "auto") else float(bandwidth)  # type: ignore[arg-type]
        attrs["bandwidth_mbps"] = shaped

        def connect(address, key: str, measure: bool = False) -> Remote:
            host, port = parse_address(address)
            attrs[key] = f"{host}:{port}"
            client = Client(host, port, secret, tls_ca, timeout, links.Link(shaped, float(rtt)))
            try:
                client.connect()  # connect up front, so the first sample does not pay the handshake
                if measure:
                    mbps, measured_rtt = links.measure(client)
                    attrs.update(bandwidth_mbps=mbps, bandwidth_measured=True, measured_rtt_ms=measured_rtt)
            except AuthError:
                raise
            except (OSError, ProtocolError, RemoteError) as e:
                client.close()
                attrs[f"{key}_connect_error"] = str(e)  # the samples will retry and fall back on their own
            return Remote(client, retries, backoff, max_backoff)

        remote = connect(server, "server", measure=bandwidth == "auto")
        if direct is not None:
            second = connect(direct, "direct")

    rows = []
    iterator = range(n)
    if progress:
        try:
            from tqdm.auto import tqdm
            iterator = tqdm(iterator, desc="edge", unit="sample")
        except ImportError:  # a device without tqdm: no bar
            pass
    try:
        stolen, read_at = stolen_ms(), time.perf_counter()  # read between samples, outside their timing
        counted = not math.isnan(stolen)
        for i in iterator:
            row = device.answer(i, samples[i:i + 1], int(labels[i]), remote, second)
            row["steal_ms"] = 0.0 if counted else math.nan
            # reading /proc/stat costs the next model call about 10 us (measured, x the emulated slowdown):
            # read after a slow sample, else at most once a second
            if counted and (row["total_ms"] >= STALL_MIN_MS or time.perf_counter() - read_at >= STEAL_EVERY_S):
                now = stolen_ms()
                row["steal_ms"], stolen, read_at = now - stolen, now, time.perf_counter()
            rows.append(row)
            if on_sample is not None:
                on_sample(row)
    finally:
        for r in (remote, second):
            if r is not None:
                r.client.close()
    if csv is not None:
        write_csv(rows, csv)
    return rows, attrs


def write_csv(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """The per-sample table as CSV (the columns of COLUMNS, as pandas' to_csv(index=False) writes them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csvlib.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


class Device:
    """The end device: head.onnx on one ONNX Runtime thread, the exit rule, the emulated slowdown."""

    def __init__(self, model_dir: str | Path, manifest: dict[str, Any], slowdown: float = 1.0):
        self.manifest = manifest
        self.slowdown = slowdown
        self.use_exit = bool(manifest["exit"])
        self.t = manifest["t"]
        self.codec = mf.manifest_codec(manifest)  # k = 0: the uint8 image, raw or through an image codec
        self.head = session(mf.part_path(model_dir, manifest, "head"), threads=1) if manifest["head"] else None
        self.last = manifest["tail"] is None  # k = K: the head is the whole model
        if self.head is not None:
            self.input = self.head.get_inputs()[0].name
            shape = (1, *manifest["input"]["shape"])
            warm_up(self.head, shape)  # as the profile: the first runs are not a sample's time

    def answer(self, index: int, image: np.ndarray, label: int, remote: Remote | None,
               direct: Remote | None = None) -> dict[str, Any]:
        """One sample, start to answer, as a CSV row (`direct`: the server tried when `remote` fails)."""
        start = time.perf_counter()
        row: dict[str, Any] = {"index": index, "exit_ms": 0.0, "transfer_ms": 0.0, "server_ms": 0.0,
                               "exited": False, "fallback": False, "direct": False, "bytes_sent": 0, "label": label,
                               "attempts": 0, "head_ms": 0.0,
                               "error": "", **dict.fromkeys(TIER_COLUMNS, 0.0),
                               **dict.fromkeys(EDGE_EXIT_COLUMNS, False)}
        exit_pred = -1
        x: np.ndarray = image
        if self.head is not None:
            x = mf.normalize(image, self.manifest)
            compute = time.perf_counter()
            feed = {self.input: x}
            outs = self.head.run(None, feed)
            row["head_ms"] = (time.perf_counter() - compute) * 1e3
            # the emulated device is slower at what the profile measured (the model), not at Python's part
            _slow(row["head_ms"] / 1e3, self.slowdown, rerun=lambda: self.head.run(None, feed))
            if self.last:
                return self._device_only(row, start, int(outs[0][0].argmax()))
            if self.use_exit:
                exit_logits, x = outs
                exit_pred = int(exit_logits[0].argmax())
                if exit_confidence(exit_logits[0]) >= self.t:
                    row["exited"] = True
                    return self._device_only(row, start, exit_pred)
            else:
                x = outs[0]
        if remote is None:
            raise ValueError("this split needs a server")
        tensor = wire.encode(x, self.codec)
        device_end = time.perf_counter()
        reply, attempts, error = remote.infer(tensor)
        if reply is None and direct is not None:
            reply, more, direct_error = direct.infer(tensor)
            attempts += more
            row["direct"] = reply is not None
            error = error if reply is not None else f"{error}; direct: {direct_error}"
        done = time.perf_counter()
        row.update(device_ms=(device_end - start) * 1e3, attempts=attempts, error=error)
        if reply is None:  # the device answers alone: the exit's guess, or nothing (-1) without an exit
            row.update(fallback=True, transfer_ms=(done - device_end) * 1e3, pred=exit_pred)
        else:
            row.update(server_ms=reply.server_ms, transfer_ms=max((done - device_end) * 1e3 - reply.server_ms, 0.0),
                       bytes_sent=len(tensor.payload), pred=int(reply.classes[0]))  # payload, as bytes(k, r) counts
            if reply.tiers is not None:
                row.update(zip(TIER_COLUMNS, reply.tiers))
            row.update(edge_exited=bool(reply.flags & wire.EDGE_EXIT),  # the flags say it, not the timings
                       edge_fallback=bool(reply.flags & wire.EXIT_FALLBACK))
        return _close(row, start)

    def _device_only(self, row: dict[str, Any], start: float, pred: int) -> dict[str, Any]:
        row.update(device_ms=(time.perf_counter() - start) * 1e3, pred=pred)
        return _close(row, start)


def _close(row: dict[str, Any], start: float) -> dict[str, Any]:
    row["total_ms"] = (time.perf_counter() - start) * 1e3
    row["correct"] = row["pred"] == row["label"]
    return row


def _slow(compute_s: float, slowdown: float, clock=time.perf_counter, rerun=None) -> float:
    """The emulated device: what took `compute_s` here takes `slowdown` times as long.

    The extra (slowdown - 1) x compute_s is busy time, not a sleep: a slow device is busy while it
    computes, and a sleeping core comes back cold (measured: device only, mobilenet_v2 32 px at 10x, 7.08 ms
    per request with a sleep against 3.71 ms spinning, 4.70 predicted).  With `rerun` (the same model call
    again) the busy time runs the model while a whole run still fits and spins only the rest: a Python
    spin loop evicts the model from the core's caches, so the next sample's call ran 11% slower than the
    profile's warm row after a 10x spin (measured, resnet18 k=2 32 px; 27-49% at 50x).  Returns the extra seconds.
    """
    if slowdown <= 1.0 or compute_s <= 0:
        return 0.0
    extra = (slowdown - 1.0) * compute_s
    deadline = clock() + extra
    if rerun is not None:
        now = clock()
        while now + compute_s <= deadline:
            rerun()
            now = clock()
    while clock() < deadline:
        pass
    return extra


def _test_split(manifest: dict, data, data_root: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 test images and labels the manifest names (the same split seed as the search)."""
    spec = manifest["data"]
    if data is None:
        from compress import data as datasets
        data = datasets.load(spec["name"], data_root, spec["input_size"], spec["seed"])
    elif (data.name, data.input_size) != (spec["name"], spec["input_size"]):
        raise ValueError(f"data {data.name}@{data.input_size}px does not match the manifest's "
                         f"{spec['name']}@{spec['input_size']}px")
    images, labels = data.arrays(spec.get("split", "test"))
    return images.numpy(), labels.numpy()


def summarize(df: "pd.DataFrame | Iterable[Mapping[str, Any]]", attrs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Headline numbers of an edge run (a DataFrame of run_edge, or run_rows' rows and attrs); per-part
    means are over all samples (0 where a part did not run), so they add up like DESIGN's
    T = T_D + (1 - p_exit) (T_N + T_C).  Quantiles interpolate linearly, as pandas' do."""
    if hasattr(df, "to_dict"):
        rows, attrs = df.to_dict("records"), {**df.attrs, **(attrs or {})}
    else:
        rows, attrs = list(df), dict(attrs or {})
    n = len(rows)

    def col(name: str) -> np.ndarray:
        return np.array([row[name] for row in rows], dtype=float)

    def optional(name: str, missing: float = math.nan) -> np.ndarray:  # a column older rows may lack
        return np.array([row.get(name, missing) for row in rows], dtype=float)

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if len(values) else float("nan")

    total, sent = col("total_ms"), col("bytes_sent")
    out: dict[str, Any] = {
        "n": n,
        "mean_ms": mean(total),
        "p50_ms": float(np.percentile(total, 50)) if n else float("nan"),
        "p95_ms": float(np.percentile(total, 95)) if n else float("nan"),
        "exit_rate": mean(col("exited")),  # the device's own exit
        "edge_exit_rate": mean(optional("edge_exited", 0.0)),  # an exit placed on the edge (by its threshold)
        "edge_fallback_rate": mean(optional("edge_fallback", 0.0)),  # that exit, answering for a failed cloud
        "fallback_rate": mean(col("fallback")),
        "direct_rate": mean(col("direct")) if all("direct" in row for row in rows) else 0.0,
        "failed": int((col("pred") < 0).sum()),
        "accuracy": mean(col("correct")),
        "bytes_per_request": float(sent[sent > 0].mean()) if (sent > 0).any() else 0.0,
        "bytes_per_sample": float(sent.mean()) if n else 0.0,
    }
    for part in ("device_ms", "exit_ms", "transfer_ms", "server_ms"):
        out[part] = mean(col(part))
    head, steal = optional("head_ms"), optional("steal_ms")
    out["head_ms"] = mean(head)
    stalled = total > max(STALL_FACTOR * out["p50_ms"], out["p50_ms"] + STALL_MIN_MS) if n else np.zeros(0, bool)
    out.update(stalls=int(stalled.sum()), longest_ms=float(total.max()) if n else float("nan"),
               mean_ms_without_stalls=mean(total[~stalled]),
               steal_ms=float(steal.sum()), stall_steal_ms=float(steal[stalled].sum()),
               stall_wall_ms=float(total[stalled].sum()), stall_head_ms=float(np.nansum(head[stalled])))
    out.update({k: v for k, v in attrs.items() if k != "model_dir"})
    return out


def stall_line(summary: Mapping[str, Any], predicted_ms: float) -> str | None:
    """One line on the samples that stalled (one stall of a VM can decide the mean of a thousand), or None."""
    if not summary.get("stalls"):
        return None
    m, steal = summary["mean_ms_without_stalls"], summary.get("stall_steal_ms", math.nan)
    cause = ("the hypervisor's steal time is not counted here" if math.isnan(steal) else
             f"the hypervisor stole {steal:.0f} ms of CPU time during them ({summary['stall_wall_ms']:.0f} ms wall)")
    f, head = float(summary.get("slowdown") or 1.0), summary.get("stall_head_ms", 0.0)
    if f > 1 and head:  # a hiccup of this host inside the model call is multiplied like the model's own time
        cause += (f"; this host's own head.onnx runs took {head:.1f} ms of it, which the emulated slowdown "
                  f"multiplied by {f:g} to {f * head:.0f} ms")
    return (f"{summary['stalls']} sample(s) stalled (longest {summary['longest_ms']:.0f} ms, over {STALL_FACTOR:g}x the "
            f"median {summary['p50_ms']:.3f} ms; {cause}): mean without them {m:.3f} ms "
            f"({100 * (m / predicted_ms - 1):+.1f}% against the prediction)")


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"{s['n']} samples, k={s.get('k')}/{s.get('K')} r={s.get('r')} t={s.get('t')} codec={s.get('codec')}",
             f"latency ms: mean {s['mean_ms']:.2f}  p50 {s['p50_ms']:.2f}  p95 {s['p95_ms']:.2f}",
             f"  mean parts: device {s['device_ms']:.2f}  exit {s['exit_ms']:.2f}  transfer {s['transfer_ms']:.2f}"
             f"  server {s['server_ms']:.2f}",
             f"exit rate {s['exit_rate']:.3f}  fallback rate {s['fallback_rate']:.3f}"
             + (f"  direct rate {s['direct_rate']:.3f}" if s.get("direct_rate") else "")
             + (f"  edge exit rate {s['edge_exit_rate']:.3f} (edge fallbacks {s['edge_fallback_rate']:.3f})"
                if s.get("edge_exit_rate") or s.get("edge_fallback_rate") else "") + f"  failed {s['failed']}"
             f"  accuracy {s['accuracy']:.4f}",
             f"bytes per request {s['bytes_per_request']:.0f}  (per sample {s['bytes_per_sample']:.0f})"]
    if s.get("bandwidth_measured"):
        lines.append(f"measured link: {s['bandwidth_mbps']:.1f} Mbit/s, rtt {s['measured_rtt_ms']:.3f} ms")
    predicted = s.get("predicted")
    if isinstance(predicted, dict) and "total_ms" in predicted:
        lines.append(f"predicted mean: {predicted['total_ms']:.2f} ms")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.edge", description="Run the device side of an exported split.")
    p.add_argument("--model-dir", required=True, help="directory with manifest.json and head.onnx")
    p.add_argument("--server", help="cloud server HOST:PORT (not needed when k = K)")
    p.add_argument("--bandwidth", default=None,
                   help="uplink shaping in Mbit/s, or 'auto' to measure the real link (default: unshaped)")
    p.add_argument("--rtt", type=float, default=0.0, help="emulated round-trip time in ms, half each way")
    p.add_argument("--slowdown", type=float, default=1.0, help="device emulation factor >= 1 on head compute")
    p.add_argument("--limit", type=int, default=None, help="first N test samples only")
    p.add_argument("--csv", default=None, help="write the per-sample table here")
    p.add_argument("--secret-file", default=None,
                   help="shared secret: the edge and the server prove it to each other (a server that cannot "
                        "is refused)")
    p.add_argument("--tls-ca", default=None, help="CA (or self-signed) certificate: connect over TLS")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait on the server per attempt (> 0)")
    p.add_argument("--retries", type=int, default=2, help="retries per request before the fallback (>= 0)")
    p.add_argument("--data-root", default=None, help="local CIFAR-10 / ImageFolder copy, as for auto.py")
    p.add_argument("--direct", default=None, metavar="HOST:PORT",
                   help="three tiers: a cloud server of this directory's own tail (python -m runtime.cloud --model-dir "
                        "DIR), tried when --server (the edge) fails, before the device answers alone")
    p.add_argument("--images", default=None, metavar="NPZ",
                   help="test samples as a .npz (images uint8 NCHW, labels; runtime.manifest.save_samples): "
                        "the edge then needs neither torch nor the data set")
    p.add_argument("--save-images", default=None, metavar="NPZ",
                   help="on the workstation: write the manifest's test samples (the first --limit) for --images, "
                        "then exit")
    p.add_argument("--summary-json", default=None, help="also write the summary (and the run's settings) here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _bandwidth(value: str | None) -> float | str | None:
    if value is None or value == "auto":
        return value
    try:
        mbps = float(value)
    except ValueError:
        raise ValueError(f"--bandwidth must be a number of Mbit/s or 'auto', got {value!r}") from None
    if not mbps > 0:
        raise ValueError(f"--bandwidth must be > 0 Mbit/s, got {value}")
    return mbps


def check_args(args: argparse.Namespace) -> str | None:
    """The first out-of-range argument as a one-line message, or None."""
    if not 0 < args.timeout < math.inf:
        return f"--timeout must be a positive number of seconds, got {args.timeout}"
    if args.retries < 0:
        return f"--retries must be >= 0, got {args.retries}"
    if args.limit is not None and args.limit < 0:
        return f"--limit must be >= 0, got {args.limit}"
    if not 0 <= args.rtt < math.inf:
        return f"--rtt must be >= 0 ms, got {args.rtt}"
    if not 1 <= args.slowdown < math.inf:
        return f"--slowdown must be >= 1, got {args.slowdown}"
    try:
        _bandwidth(args.bandwidth)
        if args.direct is not None:
            parse_address(args.direct)
    except ValueError as e:
        return str(e)
    return None


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if (problem := check_args(args)) is not None:
        p.error(problem)
    if args.save_images:
        try:
            manifest = mf.load(args.model_dir)
            images, labels = _test_split(manifest, None, args.data_root)
            n = len(images) if args.limit is None else min(args.limit, len(images))
            print(f"wrote {mf.save_samples(args.save_images, images[:n], labels[:n])}: {n} test samples")
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        secret = wire.read_secret(args.secret_file) if args.secret_file else None
        rows, attrs = run_rows(args.model_dir, args.server, bandwidth=_bandwidth(args.bandwidth), rtt=args.rtt,
                               slowdown=args.slowdown, limit=args.limit, csv=args.csv, secret=secret,
                               tls_ca=args.tls_ca, timeout=args.timeout, retries=args.retries,
                               data_root=args.data_root, images=args.images, direct=args.direct,
                               progress=not args.quiet)
    except (ValueError, FileNotFoundError, AuthError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = summarize(rows, attrs)
    if args.summary_json:
        Path(args.summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary_json).write_text(json.dumps({"summary": summary, "attrs": attrs}, indent=1, default=str))
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

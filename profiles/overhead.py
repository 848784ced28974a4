"""Per-request runtime overhead outside the model: what a deployed request costs beyond `session.run`.

The latency rows of a profile time `session.run` of each part and nothing else.  A deployed request also
pays the runtime's Python and I/O work: on the device, normalising the image, the exit decision, the
row bookkeeping and encoding the split tensor; on the link, framing, the socket calls on both sides and
parsing the reply; on the server, decoding the tensor, its checks and packing the reply.  At 32 px that
is of the size of the model parts themselves, so the latency model needs it.

It is measured here through the runtime's own code (runtime.edge.Device.answer, runtime.protocol's
encode and framing, runtime.client's Client/Remote, an in-process runtime.cloud.CloudServer on a real
loopback TCP socket, as `auto.py --deploy` runs it) with trivial ONNX graphs of the right input and
output shapes, whose outputs are constants: the model costs almost nothing, and what it does cost (the
trivial graph's own `session.run`, timed on the same session like a profile row) is subtracted.
Each number lines up with the runtime's column it adds to:

- device_overhead_ms: the edge's device_ms of a sample answered on the device (exit or k = K), minus
  the trivial head.onnx run; at k = 0 (no head) the device_ms of a sent sample minus its encode_ms;
- encode_ms: `runtime.protocol.encode` of the split tensor under the codec (in device_ms when sent);
- link_overhead_ms: the edge's transfer_ms on an unshaped loopback with zero rtt, i.e. the wall time of
  `Remote.infer` (framing, send, the server reading and validating the frame, the reply back, parsing
  it) minus the server's reported time: the cost beyond the modelled rtt + 8 b / B;
- frame_bytes (the section's meta, server side): the bytes a request frame carries beyond its payload
  (the header), which a shaped link serialises with it: T_N counts payload + frame_bytes;
- server_overhead_ms: the server's reported server_ms (decode, checks, normalisation at k = 0, the
  session lock, packing the reply) minus the trivial tail.onnx run.

The content is realistic where the codec's cost depends on it: split tensors are post-ReLU-like
(max(0, N(0, 1)): about half zeros) and the image is a smooth colour image (low-frequency sinusoids and
gradients) with Gaussian noise (sigma 6 grey levels).  Emulated devices are not measured: the runtime's
--slowdown spins only for the model's own compute (runtime.edge `_slow` around head.run), so an
emulated device pays this host's overhead, and its profile gets the measured device's rows unscaled.
"""
from __future__ import annotations

import copy
import datetime as dt
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from tqdm.auto import tqdm

from profiles.profile import Profile, emulated_source_path, overhead_codecs, profile_path, read_json, save_json

DEFAULT_REPEATS = 30
DEFAULT_WARMUP = 5
DEFAULT_MIN_MS = 100.0  # timed milliseconds per quantity at least (as profiler.time_session)
MAX_RUNS = 5000
NOISE_GREY_LEVELS = 6.0
CONTENT = ("split tensors post-ReLU-like, max(0, N(0, 1)) (about half zeros); the k = 0 image a smooth colour "
           f"image (low-frequency sinusoids and gradients per channel) plus Gaussian noise of sigma "
           f"{NOISE_GREY_LEVELS:g} grey levels, uint8")


# -- content and trivial models ---------------------------------------------------------------------

def features(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A post-ReLU-like split tensor (1, *shape): max(0, N(0, 1)), about half zeros."""
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal((1, *shape)), 0).astype(np.float32)


def image(size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth colour image (1, C, size, size) uint8 with some noise: what an image codec sees."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    planes = []
    for c in range(channels):
        fx, fy, phase = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
        plane = 128 + 55 * np.sin(2 * np.pi * (fx * x + fy * y) + phase) + 40 * (x - y) * (c - 1)
        planes.append(plane + rng.normal(0.0, NOISE_GREY_LEVELS, plane.shape))
    return np.clip(np.rint(np.stack(planes)), 0, 255).astype(np.uint8)[None]


def _trivial_onnx(path: Path, input_shape: tuple[int, ...], outputs: dict[str, np.ndarray]) -> None:
    """A graph whose outputs are constants (Identity of initializers): ~0 compute, the right shapes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.ascontiguousarray(v, np.float32), f"{name}_value") for name, v in outputs.items()]
    nodes = [helper.make_node("Identity", [f"{name}_value"], [name]) for name in outputs]
    graph = helper.make_graph(nodes, "trivial", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             [1, *input_shape])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(v.shape)) for n, v in outputs.items()],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def trivial_split(out: Path, k: int, K: int, shape: tuple[int, ...], codec: str | None, input_size: int,
                  num_classes: int = 10, exits: bool = True) -> dict[str, Any]:
    """Write a runtime model directory (manifest.json, head.onnx, tail.onnx) of a split at k whose parts
    are trivial graphs; at 0 < k < K the head's exit is confident (`exits`) or not.  Returns the manifest."""
    from compress.data import MEAN, STD
    from runtime import manifest as mf

    out.mkdir(parents=True, exist_ok=True)
    image_shape = (3, input_size, input_size)
    split_shape = image_shape if k == 0 else tuple(shape)
    logits = np.linspace(-1.0, 1.0, num_classes, dtype=np.float32)[None]
    confident = np.zeros((1, num_classes), np.float32)
    confident[0, 0] = 20.0  # softmax max ~1: answered at the exit
    head = tail = None
    use_exit = 0 < k < K
    if k > 0:
        outs = {"logits": logits} if k == K else {"exit": confident if exits else logits * 0.01,
                                                   "split": features(split_shape)}
        _trivial_onnx(out / mf.HEAD, image_shape, outs)
        head = {"file": mf.HEAD, "input": "input", "input_shape": list(image_shape), "outputs": list(outs)}
    if k < K:
        _trivial_onnx(out / mf.TAIL, split_shape, {"logits": logits})
        tail = {"file": mf.TAIL, "input": "input", "input_shape": list(split_shape), "output": "logits"}
    manifest = {
        "format": mf.FORMAT, "model": {"arch": "trivial", "blocks": [f"b{i}" for i in range(K)],
                                       "num_classes": num_classes},
        "k": k, "r": 0.0, "K": K, "t": 0.5 if use_exit else None, "codec": codec or "fp32", "exit": use_exit,
        "data": {"name": "synthetic", "input_size": input_size, "seed": 0, "split": "test",
                 "num_classes": num_classes, "mean": list(MEAN), "std": list(STD)},
        "input": {"shape": list(image_shape), "dtype": "uint8", "layout": "NCHW"},
        "split": {"shape": list(split_shape)},
        "head": head, "tail": tail, "predicted": None,
    }
    mf.save(manifest, out)
    return manifest


# -- timing -----------------------------------------------------------------------------------------

def repeat(step: Callable[[], Iterable[float]], repeats: int, warmup: int, min_ms: float) -> np.ndarray:
    """Values (one row per timed call) of `step` after `warmup` untimed calls: at least `repeats`
    calls, and as many as fill about `min_ms` of wall time (at most MAX_RUNS), as profiler.time_session."""
    took = []
    for _ in range(max(warmup, 1)):
        start = time.perf_counter()
        step()
        took.append((time.perf_counter() - start) * 1e3)
    estimate_ms = float(np.median(took))  # not the mean: a first call may import a codec's library
    n = max(repeats, min(MAX_RUNS, math.ceil(min_ms / max(estimate_ms, 1e-3))))
    return np.array([tuple(step()) for _ in range(n)], dtype=float)


def _timed(fn: Callable[[], Any]) -> Callable[[], tuple[float]]:
    def step() -> tuple[float]:
        start = time.perf_counter()
        fn()
        return ((time.perf_counter() - start) * 1e3,)
    return step


def _median(values: np.ndarray) -> float:
    return float(np.median(values))


class _NoServer:
    """Stands in for runtime.client.Remote on the device side: the request is not sent (fallback row)."""

    def infer(self, tensor):
        return None, 0, "not sent: measuring the device side only"


# -- the two sides ------------------------------------------------------------------------------------

def device_side(k: int, K: int, shape: tuple[int, ...], codecs: tuple[str | None, ...], input_size: int,
                num_classes: int, workdir: Path, repeats: int, warmup: int, min_ms: float) -> list[dict]:
    """device_overhead_ms and encode_ms at split k for each codec (the runtime's Device, head on 1 thread)."""
    from profiles.profiler import time_session
    from runtime import manifest as mf
    from runtime import protocol as wire
    from runtime.edge import Device

    img = image(input_size)
    rows = []
    own: float | None = None  # device_overhead_ms of the answered-on-device path (codec-free)
    for codec in codecs:
        d = workdir / f"dev-k{k}-{codec}"
        manifest = trivial_split(d, k, K, shape, codec, input_size, num_classes, exits=True)
        device = Device(d, manifest)
        if k == K:
            encode_ms, n_enc = 0.0, 0
        else:
            if k == 0:
                x = img
            else:
                x = device.head.run(None, {device.input: mf.normalize(img, manifest)})[1]
            sent = mf.manifest_codec(manifest)
            enc = repeat(_timed(lambda: wire.encode(x, sent)), repeats, warmup, min_ms)
            encode_ms, n_enc = _median(enc), len(enc)
        if k == 0:  # no head, every sample is sent: device_ms holds the encoding, take it out
            remote = _NoServer()
            ms = repeat(lambda: (device.answer(0, img, 0, remote)["device_ms"],), repeats, warmup, min_ms)
            device_ms, n = max(_median(ms) - encode_ms, 0.0), len(ms)
        else:
            if own is None:
                ms = repeat(lambda: (device.answer(0, img, 0, None)["device_ms"],), repeats, warmup, min_ms)
                model = time_session(device.head, mf.normalize(img, manifest), repeats, warmup, min_ms)["median_ms"]
                own, n_own = max(_median(ms) - model, 0.0), len(ms)
            device_ms, n = own, n_own
        rows.append({"codec": codec, "device_overhead_ms": round(device_ms, 4), "encode_ms": round(encode_ms, 4),
                     "n": int(min(n, n_enc) if n_enc else n)})
    return rows


def server_side(k: int, K: int, shape: tuple[int, ...], codecs: tuple[str | None, ...], input_size: int,
                num_classes: int, threads: int, workdir: Path, repeats: int, warmup: int, min_ms: float) -> list[dict]:
    """link_overhead_ms and server_overhead_ms at split k for each codec: a real CloudServer on loopback."""
    from profiles.profiler import time_session
    from runtime import link as links
    from runtime import manifest as mf
    from runtime import protocol as wire
    from runtime.client import Client, Remote
    from runtime.cloud import CloudServer

    if k == K:  # nothing is sent
        return [{"codec": None, "link_overhead_ms": 0.0, "server_overhead_ms": 0.0, "n": 0}]
    x = image(input_size) if k == 0 else features(tuple(shape))
    rows = []
    for codec in codecs:
        d = workdir / f"srv-k{k}-{codec}"
        manifest = trivial_split(d, k, K, shape, codec, input_size, num_classes)
        tensor = wire.encode(x, mf.manifest_codec(manifest))  # the device's work: not timed here
        with CloudServer(d, "127.0.0.1", 0, threads=threads) as server:
            client = Client("127.0.0.1", server.port, link=links.Link(None, 0.0))
            remote = Remote(client, retries=0)
            try:
                client.connect()

                def step() -> tuple[float, float]:
                    start = time.perf_counter()
                    reply, _, error = remote.infer(tensor)  # as runtime.edge.Device.answer times it
                    wall = (time.perf_counter() - start) * 1e3
                    if reply is None:
                        raise RuntimeError(f"the trivial server refused a {codec} request: {error}")
                    return wall - reply.server_ms, reply.server_ms

                got = repeat(step, repeats, warmup, min_ms)
            finally:
                client.close()
            tail_in = mf.normalize(x, manifest) if k == 0 else x  # only its shape matters to a trivial tail
            model = time_session(server.session, tail_in, repeats, warmup, min_ms)["median_ms"]
        rows.append({"codec": codec, "link_overhead_ms": round(max(_median(got[:, 0]), 0.0), 4),
                     "server_overhead_ms": round(max(_median(got[:, 1]) - model, 0.0), 4), "n": len(got),
                     "frame_bytes": len(tensor.frame(1)) - len(tensor.payload)})  # what the wire adds
    return rows


# -- a profile's section ------------------------------------------------------------------------------

def measured_ratios(profile: Profile, k: int, every_ratio: bool = False) -> list[float]:
    """The ratios measured at split k: all of them, or the two ends of the grid where the split tensor's
    shape differs (the loader interpolates between them in the number of elements)."""
    if every_ratio:
        ratios = profile.ratios
    else:
        ratios = [profile.ratios[0], profile.ratios[-1]]
    seen, out = set(), []
    for r in ratios:
        shape = profile.shape(k, r) if 0 < k < profile.K else ()
        if shape not in seen:
            seen.add(shape)
            out.append(r)
    return out


def measure(profile: Profile, repeats: int = DEFAULT_REPEATS, warmup: int = DEFAULT_WARMUP,
            min_ms: float = DEFAULT_MIN_MS, every_ratio: bool = False, progress: bool = True) -> dict[str, Any]:
    """The overhead section of `profile`'s role: {"rows": [...], "meta": {...}} (nothing is written)."""
    from profiles.profiler import cpu_name, versions

    if profile.slowdown != 1.0 or profile.meta.get("emulates"):
        raise ValueError(f"{profile.source} is emulated: it takes the overhead of the device it emulates "
                         f"({profile.meta.get('emulates')!r}) unscaled, not a measurement of its own")
    if repeats < 1 or warmup < 0 or min_ms < 0:
        raise ValueError(f"need repeats >= 1, warmup >= 0 and min_ms >= 0 (got {repeats}, {warmup}, {min_ms})")
    check_quota(profile)
    role, K = profile.role, profile.K
    threads = 1 if role == "device" else profile.threads  # runtime.edge runs head.onnx on one thread
    load_before = os.getloadavg()
    start = time.perf_counter()
    jobs = [(k, r) for k in range(K + 1) for r in measured_ratios(profile, k, every_ratio)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        for k, r in tqdm(jobs, desc=f"overhead {profile.device} {profile.model} {profile.input_size}px",
                         disable=not progress, leave=False):
            shape = profile.shape(k, r)
            codecs = overhead_codecs(k, K)
            args = (k, K, shape, codecs, profile.input_size, profile.num_classes)
            if role == "device":
                got = device_side(*args, Path(tmp), repeats, warmup, min_ms)
            else:
                got = server_side(*args, threads, Path(tmp), repeats, warmup, min_ms)
            rows += [{"k": k, "r": r, **row} for row in got]
    # the request's framing beyond its payload (the same for every split and codec): the link carries it
    frames = {row.pop("frame_bytes") for row in rows if "frame_bytes" in row}
    meta = {
        "host": socket.gethostname(), "cpu": cpu_name(), "cpus": os.cpu_count(), "threads": int(threads),
        "versions": versions(("onnxruntime", "onnx", "numpy", "pillow")),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "method": method(role, threads, repeats, warmup, min_ms, every_ratio),
        "ratios_measured": "every ratio" if every_ratio else "the two ends of the grid (where the shape differs)",
        "repeats": int(repeats), "warmup": int(warmup), "min_ms": float(min_ms),
        "seconds": round(time.perf_counter() - start, 2),
        "loadavg_before": [round(v, 2) for v in load_before], "loadavg_after": [round(v, 2) for v in os.getloadavg()],
    }
    if frames:
        meta["frame_bytes"] = max(frames)
    if profile.meta.get("cpu_quota"):
        meta["cpu_quota"] = profile.meta["cpu_quota"]
    return {"rows": rows, "meta": meta}


def check_quota(profile: Profile) -> None:
    """A profile timed under a CPU quota (profiles.quota) gets its overhead measured under the same one,
    and a profile timed without one not under one: the overhead must slow down with the model."""
    from profiles.runner import current_quota

    want, have = profile.meta.get("cpu_quota"), current_quota()
    if want and (not have or float(have["fraction"]) != float(want["fraction"])):
        raise ValueError(f"{profile.source} was timed under a CPU quota of {want['fraction']:g}: measure its overhead "
                         f"under the same one (python -m profiles.quota --cpu {want['fraction']:g} -- python -m "
                         f"profiles overhead ...)")
    if have and not want:
        raise ValueError(f"this process runs under a CPU quota of {have['fraction']:g} but {profile.source} was not "
                         f"timed under one")


def method(role: str, threads: int, repeats: int, warmup: int, min_ms: float, every_ratio: bool) -> str:
    import onnxruntime as ort

    if role == "device":
        what = ("device_overhead_ms = the median device_ms of runtime.edge.Device.answer for a sample answered on "
                "the device (the exit fires; k = K: the whole model), minus the median session.run of the trivial "
                "head on the same session; at k = 0 (no head) the median device_ms of a sent sample minus "
                "encode_ms. encode_ms = median runtime.protocol.encode of the split tensor (k = 0: the image) "
                "under the codec, paid only when the sample is sent")
    else:
        what = ("an in-process runtime.cloud.CloudServer on 127.0.0.1 and runtime.client.Client/Remote over an "
                "unshaped runtime.link.Link (rtt 0), one request at a time as runtime.edge sends them; "
                "link_overhead_ms = median of (Remote.infer wall time - the server's reported server_ms), i.e. "
                "the runtime's transfer_ms beyond rtt + 8 b / B: framing, send, the server's read and "
                "validation of the frame, the reply back and its parsing; server_overhead_ms = the median "
                "reported server_ms (decode, checks, normalisation at k = 0, session lock, reply packing) minus "
                "the median session.run of the trivial tail on the server's own session")
    ratios = ("Every (k, r) measured" if every_ratio else
              "Measured at the smallest and the largest ratio of the grid (once where the shape does not "
              "change: k = 0, k = K); other ratios are interpolated linearly in the split tensor's number of "
              "elements by the loader")
    return (f"Per-request runtime overhead outside the model, through the runtime's real code paths with trivial "
            f"ONNX graphs (constant outputs of the split's shapes; ONNX Runtime {ort.__version__}, "
            f"{threads} intra-op thread(s)) whose own session.run is subtracted. {what}. Each number is the "
            f"median of n timed requests after {warmup} warm-up ones, n = at least {repeats} and enough for "
            f"{min_ms:g} ms (at most {MAX_RUNS}). Content: {CONTENT}. {ratios}. An emulated device is not "
            f"measured: runtime.edge spins for --slowdown only around head.run (the model's compute), so it "
            f"pays this host's overhead and its profile carries these rows unscaled.")


def with_overhead(doc: dict[str, Any], section: dict[str, Any]) -> dict[str, Any]:
    """A copy of a profile document with its overhead section (rows and meta["overhead"]) replaced."""
    doc = copy.deepcopy(doc)
    doc["overhead"] = copy.deepcopy(section["rows"])
    doc["meta"]["overhead"] = copy.deepcopy(section["meta"])
    return doc


def section_of(doc: dict[str, Any]) -> dict[str, Any] | None:
    if not doc.get("overhead"):
        return None
    return {"rows": doc["overhead"], "meta": doc["meta"].get("overhead", {})}


def add_to_file(device: str, model: str, input_size: int, root: str | Path | None = None,
                path: str | Path | None = None, **kwargs) -> Path:
    """Measure and write the overhead section of an existing profile in place (replacing any).

    An emulated profile gets the section of the device it emulates, unscaled (measure that one first).
    """
    path = Path(path or profile_path(device, model, input_size, root))
    doc = read_json(path)
    profile = Profile(doc, str(path))
    if profile.meta.get("emulates"):
        source = profile.meta["emulates"]
        src_path = emulated_source_path(source, model, input_size, root)
        src = read_json(src_path)
        section = section_of(src)
        if section is None:
            raise ValueError(f"{path} emulates {source!r}, whose profile {src_path} has no overhead section yet: "
                             f"measure it first (python -m profiles overhead --device {source} ...)")
        if src["meta"]["role"] != profile.role:
            raise ValueError(f"{path} is a {profile.role} profile but {src_path} is a {src['meta']['role']} one")
        section = copy.deepcopy(section)
        section["meta"]["copied_from"] = f"{source!r} unscaled (the runtime's slowdown spins for model compute only)"
    else:
        section = measure(profile, **kwargs)
    return save_json(with_overhead(doc, section), path)

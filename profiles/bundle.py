"""Profiling bundles: every ONNX part a profile times, exported on the workstation, timed anywhere.

    python -m profiles bundle --model resnet18 --input-size 32 --out bundle-r18-32   # workstation
    python bundle-r18-32/runner.py --out profile.json                               # end device

A bundle directory holds `bundle.json` (model, K, ratio grid, role, the jobs (k, r) with the part each
times, the bytes table), `parts/*.onnx` (graphs whose large float tensors are external data the runner
writes: see profiles.runner) and, unless it is a scratch bundle of the in-process profiler, runner.py
and quota.py to run it with only numpy and onnxruntime.

Every (k, r) is pruned once (torch-pruning, on the whole network with the tail's own layers ignored)
and each part is exported *whole*: summing per-block times would miss what fusing and memory effects
across blocks do, and the runtime runs whole parts too.  A device bundle holds per (k, r) the head
(blocks [0, k)) and, where the split has an exit, the head with compress.candidate.ExitBranch as one
graph (what runtime.export writes as head.onnx); a server bundle the tail (blocks [k, K); k = 0 is not
pruned, so one tail serves every r).
"""
from __future__ import annotations

import datetime as dt
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from compress import onnx_io, zoo
from compress.candidate import ExitBranch, HeadWithExit, exit_allowed
from compress.codec import CODECS
from compress.prune import RATIO_GRID, prune
from profiles import runner
from profiles.profile import rkey

IMPORTANCE = "magnitude"  # which channels go does not change any shape, so not the latency either
WEIGHT_MIN_BYTES = 1024  # float tensors at least this large are written by the runner, not shipped
ROLES = ("device", "server")
_HERE = Path(__file__).resolve().parent
SHIPPED = ("runner.py", "quota.py")  # what a device needs beside the parts


@contextmanager
def quiet_torch() -> Iterator[None]:
    """One torch thread while pruning and exporting (nothing torch does is timed): on a busy CPU a
    second thread makes an export up to 5x slower, and no torch worker competes with the timed runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_num_threads(before)


def variant(base: zoo.SplitModel, k: int, r: float, input_size: int) -> tuple[zoo.SplitModel, torch.Tensor, torch.Tensor]:
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


def split_info(base: zoo.SplitModel, k: int, feats: torch.Tensor) -> zoo.SplitInfo:
    name = "input" if k == 0 else base.block_names[k - 1]
    return zoo.SplitInfo(k, name, tuple(feats.shape[1:]), feats[0].numel(), last=k == base.K)


def bytes_rows(info: zoo.SplitInfo, r: float) -> list[dict]:
    return [{"k": info.k, "r": r, "codec": c, "bytes": int(info.bytes(c)), "shape": list(info.shape)} for c in CODECS]


def strip_weights(src: Path, dst: Path, data_name: str) -> list[list[float]]:
    """Write `src` to `dst` with its float tensors of WEIGHT_MIN_BYTES or more as external data in
    `data_name` (not written); returns [offset, length, mean, std] per tensor, in file order."""
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(src))
    tensors, offset = [], 0
    for t in model.graph.initializer:
        if t.data_type != TensorProto.FLOAT or t.data_location == TensorProto.EXTERNAL:
            continue
        values = numpy_helper.to_array(t)
        length = int(values.size) * 4
        if length < WEIGHT_MIN_BYTES:
            continue
        tensors.append([offset, length, float(np.mean(values, dtype=np.float64)), float(np.std(values, dtype=np.float64))])
        for field in ("raw_data", "float_data"):
            t.ClearField(field)
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        offset += length
    onnx.save(model, str(dst))
    return tensors


class _Writer:
    """Exports modules into `out/parts` as weight-free graphs and records them as bundle parts."""

    def __init__(self, out: Path, scratch: Path):
        self.out, self.scratch = out, scratch
        (out / "parts").mkdir(parents=True, exist_ok=True)
        self.parts: dict[str, dict[str, Any]] = {}

    def __call__(self, pid: str, module: nn.Module, example: torch.Tensor, outputs: tuple[str, ...] = ("output",)) -> str:
        raw = onnx_io.export(module.eval(), example, self.scratch / f"{pid}.onnx", output_names=outputs)
        tensors = strip_weights(raw, self.out / "parts" / f"{pid}.onnx", f"{pid}.bin")
        raw.unlink()
        self.parts[pid] = {"file": f"parts/{pid}.onnx", "data": f"{pid}.bin" if tensors else None,
                           "input_shape": list(example.shape), "outputs": list(outputs),
                           "seed": len(self.parts), "tensors": tensors}
        return pid


def _check(role: str, ratios: Iterable[float], input_size: int) -> list[float]:
    if role not in ROLES + ("both",):
        raise ValueError(f"role must be 'device' or 'server', got {role!r}")
    ratios = sorted({rkey(r) for r in ratios})
    if not ratios or not all(0.0 <= r < 1.0 for r in ratios):
        raise ValueError(f"ratios must be a non-empty list in [0, 1), got {ratios}")
    if input_size < 1:
        raise ValueError(f"input size must be a positive number of pixels, got {input_size}")
    return ratios


def parts_method(role: str) -> str:
    """How the parts were made, in words (appended to the runner's description)."""
    parts = ("head = blocks [0, k) of the network pruned at (k, r); exit = compress.candidate.ExitBranch on "
             "the pruned split tensor, as the marginal time of one graph of head and exit (what the runtime "
             "runs) over the head alone, per statistic; k = 0 runs no head (0 ms)") if role == "device" else \
        ("tail = blocks [k, K) of the network pruned at (k, r) (its first layer's input channels follow the "
         "pruned split tensor); k = K runs no tail (0 ms); k = 0 is unpruned, so one tail is timed for every r; "
         "exit (r = 0 only: an exit an edge box runs) = compress.candidate.ExitBranch at k as the marginal time "
         "of one graph of head and exit over the head alone, per statistic")
    return (f"Parts from profiles.bundle: each (k, r) pruned once (torch-pruning, {IMPORTANCE}, random weights) "
            f"and each part exported whole (TorchScript exporter, opset 17). {parts}. bytes = "
            f"compress.zoo.SplitInfo.bytes of the pruned split tensor.")


def export_parts(model: str, input_size: int, out: str | Path, role: str = "device",
                 ratios: Iterable[float] = RATIO_GRID, num_classes: int = 10, progress: bool = True,
                 standalone: bool = True, splits: Iterable[int] | None = None) -> dict[str, Any]:
    """Write the bundle of `model` at `input_size` for a `role` profile into `out`; returns bundle.json's
    content.  `standalone` also copies runner.py and quota.py in (what a device needs to run it);
    role "both" (for profiles.profiler.validate) holds head, exit and tail parts in one bundle.  `splits`
    keeps only those split points (validate of one (k, r)); None: every one."""
    ratios = _check(role, ratios, input_size)
    out = Path(out)
    if out.is_dir() and any(out.iterdir()):
        if not (out / runner.BUNDLE_FILE).is_file():
            raise ValueError(f"{out} exists and is not empty: give a new directory for the bundle")
        shutil.rmtree(out / "parts", ignore_errors=True)  # an older bundle: its parts are replaced whole
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    base = zoo.build(model, num_classes, input_size).eval()
    K = base.K
    jobs, nbytes = [], []
    with tempfile.TemporaryDirectory(prefix="bundle-") as scratch, quiet_torch():
        write = _Writer(out, Path(scratch))
        keep = set(range(K + 1)) if splits is None else {int(k) for k in splits}
        todo = [(k, r) for k in range(K + 1) if k in keep for r in ratios]
        for k, r in tqdm(todo, desc=f"bundle {model} {input_size}px", disable=not progress, leave=False):
            pruned, x, feats = variant(base, k, r, input_size)
            nbytes += bytes_rows(split_info(base, k, feats), r)
            job: dict[str, Any] = {"k": k, "r": r}
            if role in ("device", "both") or (role == "server" and r == 0.0 and exit_allowed(k, K)):
                # a server times the exit of unpruned candidates only (an exit placed on an edge box)
                job["head"] = write(f"head-k{k}-r{r:g}", pruned.head(k), x) if k > 0 else None
                if exit_allowed(k, K):
                    torch.manual_seed(k)
                    branch = ExitBranch(feats.shape[1], num_classes)
                    job["fused"] = write(f"fused-k{k}-r{r:g}", HeadWithExit(pruned.head(k), branch), x,
                                         ("exit", "features"))
            if role in ("server", "both"):
                if k == K:
                    job["tail"] = None
                elif k == 0:  # unpruned at k = 0: one tail for every r
                    job["tail"] = "tail-k0" if "tail-k0" in write.parts else write("tail-k0", pruned.tail(0), x)
                else:
                    job["tail"] = write(f"tail-k{k}-r{r:g}", pruned.tail(k), feats)
            jobs.append(job)
    doc = {
        "format": runner.BUNDLE_FORMAT, "version": runner.BUNDLE_VERSION, "role": role, "model": model,
        "input_size": int(input_size), "num_classes": int(num_classes), "K": K, "ratios": ratios,
        "importance": IMPORTANCE, "method": parts_method(role if role != "both" else "device"),
        "created": {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "host": socket.gethostname(),
                    "versions": runner.versions(("torch", "torchvision", "torch-pruning", "onnx", "onnxruntime"))},
        "jobs": jobs, "parts": write.parts, "bytes": nbytes,
    }
    runner.write_json(doc, out / runner.BUNDLE_FILE)
    if standalone:
        for name in SHIPPED:
            shutil.copyfile(_HERE / name, out / name)
        (out / "README.txt").write_text(readme(doc))
    return doc


def readme(doc: dict[str, Any]) -> str:
    """What to do with the bundle on the device (README.txt in the bundle)."""
    flag = "--end_device" if doc["role"] == "device" else "--server"
    return (f"Profiling bundle: {doc['model']} at {doc['input_size']} px, {doc['role']} role, K = {doc['K']}, "
            f"ratios {', '.join(f'{r:g}' for r in doc['ratios'])}.\n\n"
            f"On the device (needs Python 3.9+, numpy and onnxruntime only: pip install numpy onnxruntime):\n\n"
            f"    python runner.py --out profile.json --device NAME"
            f"{'' if doc['role'] == 'device' else ' --threads 2'}\n\n"
            f"Back on the workstation:\n\n"
            f"    python -m profiles check profile.json\n"
            f"    python auto.py --model {doc['model']} --input-size {doc['input_size']} {flag} profile.json ...\n")


def size_bytes(out: str | Path) -> int:
    """Bytes of every file of a bundle directory."""
    return sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())

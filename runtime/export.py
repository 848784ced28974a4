"""Export a candidate's split as head.onnx + tail.onnx + manifest.json, checked against PyTorch.

head.onnx takes the normalised float image (NCHW, dynamic batch) and gives the exit logits and the
split tensor ("exit", "split"), or only "split" when the split has no exit (or t is None); at k = K
its one output is the final "logits".  tail.onnx takes the split tensor and gives "logits".
k = 0 has no head (the device sends the uint8 image, raw or through an image codec; the server decodes,
normalises and runs the whole model as tail.onnx); k = K has no tail (the device runs everything).
"""
from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from compress import codec as codecs
from compress import onnx_io
from compress.candidate import Candidate, HeadWithExit
from compress.data import DataSplits
from runtime import manifest as mf

ATOL = 1e-4  # ORT and eager PyTorch agree to ~1e-6 on these models; 1e-4 leaves room, catches real faults
RTOL = 1e-4  # of the largest reference magnitude: deep random-weight features can reach the hundreds
SAMPLES = 32


def check_close(part: str, got: np.ndarray, ref: np.ndarray, atol: float = ATOL, rtol: float = RTOL) -> float:
    """Max abs difference of an exported part's output; ValueError beyond `atol + rtol * max|ref|`."""
    if got.shape != ref.shape:
        raise ValueError(f"{part}: ONNX output shape {got.shape} differs from PyTorch {ref.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
    bound = atol + rtol * (float(np.max(np.abs(ref))) if ref.size else 0.0)
    if not diff <= bound:  # also refuses NaN
        raise ValueError(f"{part} differs from PyTorch by {diff:.3g} (max abs) > tolerance {bound:.3g}; not exported")
    return diff


def export_checked(module: nn.Module, x: torch.Tensor, path: Path, names: tuple[str, ...],
                   refs: tuple[torch.Tensor, ...], atol: float = ATOL, rtol: float = RTOL,
                   where: str = "") -> dict[str, float]:
    """Export `module` to `path` (example x[:1]), run it with ONNX Runtime on `x` and compare each output with
    PyTorch's `refs`: {"<file stem>.<output>": max abs difference}; ValueError beyond the tolerance."""
    onnx_io.export(module, x[:1], path, output_names=names)
    got = onnx_io.run(onnx_io.session(path), x.numpy())
    return {f"{path.stem}.{name}": check_close(f"{where}{path.name} output {name!r}", g, r.numpy(), atol, rtol)
            for name, g, r in zip(names, got, refs)}


def export_split(candidate: Candidate, data: DataSplits, out_dir: str | Path, threshold: float | None,
                 codec: str, predicted: dict[str, Any] | None = None, seed: int = 0, samples: int = SAMPLES,
                 atol: float = ATOL, rtol: float = RTOL) -> dict[str, Any]:
    """Write the split's ONNX parts and manifest into `out_dir`; returns the manifest.

    `threshold` None means the exit is not used (and not exported).  `seed` is the data-split seed
    the edge needs to load the same test split.  Every part is run by ONNX Runtime on `samples` test
    images and compared with PyTorch; a difference beyond the tolerance raises ValueError.
    `codec` is a feature codec at 0 < k < K and an input codec at k = 0, where a feature codec means
    "raw" (older callers pass fp32); the manifest records the codec the wire carries.
    """
    k, model = candidate.k, candidate.model
    K = model.K
    sent = mf.wire_codec(k, K, codec)  # refuses an unknown codec, and an image codec past k = 0, up front
    if threshold is not None:
        if candidate.exit is None:
            raise ValueError(f"threshold t={threshold} given but split k={k} has no exit branch")
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold t must be in [0, 1] or None, got {threshold}")
    use_exit = threshold is not None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (mf.NAME, mf.HEAD, mf.TAIL):  # a previous export of another k must not linger
        (out / stale).unlink(missing_ok=True)

    modes = [(m, m.training) for m in (model, candidate.exit) if m is not None]
    try:
        head, tail = candidate.head(), candidate.tail()  # .eval(): slices would otherwise train shared BN
        exit_branch = candidate.exit.eval() if use_exit else None
        images, _ = data.arrays("test")
        x = data.normalize(images[:samples])
        with torch.no_grad():
            feats = head(x)
            logits = tail(feats)
            exit_logits = exit_branch(feats) if exit_branch is not None else None
        diffs: dict[str, float] = {}
        head_entry = tail_entry = None
        if k > 0:
            names = ("exit", "split") if use_exit else ("logits",) if k == K else ("split",)
            module = HeadWithExit(head, exit_branch) if use_exit else head
            refs = (exit_logits, feats) if use_exit else (feats,)
            diffs.update(export_checked(module, x, out / mf.HEAD, names, refs, atol, rtol))
            head_entry = {"file": mf.HEAD, "input": "input", "input_shape": list(x.shape[1:]),
                          "outputs": list(names)}
        if k < K:
            diffs.update(export_checked(tail, feats, out / mf.TAIL, ("logits",), (logits,), atol, rtol))
            tail_entry = {"file": mf.TAIL, "input": "input", "input_shape": list(feats.shape[1:]),
                          "output": "logits"}
    finally:
        for m, training in modes:
            m.train(training)

    numel = int(np.prod(feats.shape[1:]))
    # bytes per sample: exact for a fixed-size codec, null for a variable one (measured per sample at run
    # time); max_bytes is the bound the server's protocol accepts, exact or not
    if sent is None:
        wire, size, most = None, 0, 0
    else:
        wire = "uint8" if sent == "raw" else sent
        most = codecs.max_payload_bytes(numel, sent)
        size = None if codecs.is_variable(sent) else most
    manifest = {
        "format": mf.FORMAT,
        "model": {"arch": getattr(model, "arch", type(model).__name__), "blocks": list(model.block_names),
                  "num_classes": int(logits.shape[1])},
        "k": k, "r": float(candidate.ratio), "K": K,
        "t": None if threshold is None else float(threshold),
        "codec": codec if sent is None else sent,
        "exit": use_exit,
        "data": {"name": data.name, "input_size": data.input_size, "seed": seed, "split": "test",
                 "num_classes": data.num_classes, "mean": list(data.mean), "std": list(data.std)},
        "input": {"shape": [3, data.input_size, data.input_size], "dtype": "uint8", "layout": "NCHW",
                  "normalize": "(x - 255 * mean) / (255 * std), per channel, in float32"},
        "split": {"shape": list(feats.shape[1:]), "wire_dtype": wire, "bytes": size, "max_bytes": most},
        "head": head_entry,
        "tail": tail_entry,
        "predicted": predicted,
        "tolerance": {"atol": atol, "rtol": rtol, "samples": int(x.shape[0]), "max_abs_diff": diffs},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                     "python": platform.python_version()},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    mf.save(manifest, out)
    return manifest

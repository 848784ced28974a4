"""torch module -> ONNX file -> ONNX Runtime session: the one conversion profiles and runtime share."""
from __future__ import annotations

import warnings
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

if TYPE_CHECKING:  # the cloud server and edge only need sessions: no torch import there
    import torch
    from torch import nn


def export(module: "nn.Module", example: "torch.Tensor", path: str | Path, input_name: str = "input",
           output_names: tuple[str, ...] = ("output",), dynamic_batch: bool = True) -> Path:
    """Export with the TorchScript-based exporter (0.2 s a part, one self-contained file).

    The module is put in eval mode first: split slices of a network are new modules whose mode would
    otherwise switch shared BatchNorm layers to training.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    axes = {name: {0: "batch"} for name in (input_name, *output_names)} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=list(output_names),
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


def session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with a fixed intra-op thread count (recorded in every profile)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


WARMUP_RUNS = 5  # as profiles.runner.DEFAULT_WARMUP: a deployed part starts where its profile row started


def warm_up(sess: ort.InferenceSession, shape: tuple[int, ...], runs: int = WARMUP_RUNS) -> None:
    """Run `sess` on zeros `runs` times, as the profile does before timing its rows: the first runs
    allocate.  (Measured: the first deployed request still took 0.34-0.58 ms against 0.11 ms steady after
    5 warm-up runs, as after 1: the data loading between warm-up and the first sample makes it cold.)"""
    x = np.zeros(shape, np.float32)
    for _ in range(runs):
        run(sess, x)


def run(sess: ort.InferenceSession, x: np.ndarray) -> list[np.ndarray]:
    return sess.run(None, {sess.get_inputs()[0].name: x})

"""Feature codecs for the split tensor: what the wire carries and what accuracy must count.

fp32 and fp16 are plain casts; int8 is an affine 8-bit code with a per-tensor offset and scale
(two float32 values sent in front of the codes).  `roundtrip` applies the same loss in torch so the
evaluation sees exactly what the server will decode.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch stays unimported in the cloud server, which only decodes
    import torch

CODECS = ("fp32", "fp16", "int8")
_INT8_HEADER = np.dtype("<f4").itemsize * 2  # offset and scale


def check(codec: str) -> str:
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of: {', '.join(CODECS)}")
    return codec


def payload_bytes(numel: int, codec: str) -> int:
    """Bytes of an encoded tensor of `numel` elements."""
    check(codec)
    return {"fp32": 4 * numel, "fp16": 2 * numel, "int8": numel + _INT8_HEADER}[codec]


def encode(x: np.ndarray, codec: str) -> bytes:
    """Little-endian bytes of `x` under `codec`."""
    x = np.asarray(x, dtype=np.float32)
    if check(codec) == "fp32":
        return x.astype("<f4").tobytes()
    if codec == "fp16":
        return x.astype("<f2").tobytes()
    lo, scale = _int8_params(float(x.min()) if x.size else 0.0, float(x.max()) if x.size else 0.0)
    q = np.clip(np.rint((x - lo) / scale), 0, 255).astype(np.uint8)
    return np.array([lo, scale], dtype="<f4").tobytes() + q.tobytes()


def decode(payload: bytes, codec: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `encode`; raises ValueError when the payload does not fit the shape."""
    numel = int(np.prod(shape)) if shape else 1
    if len(payload) != payload_bytes(numel, codec):
        raise ValueError(f"{codec} payload of {len(payload)} bytes does not fit shape {tuple(shape)} "
                         f"(expected {payload_bytes(numel, codec)})")
    if codec == "fp32":
        return np.frombuffer(payload, dtype="<f4").reshape(shape).astype(np.float32)
    if codec == "fp16":
        return np.frombuffer(payload, dtype="<f2").reshape(shape).astype(np.float32)
    lo, scale = np.frombuffer(payload[:_INT8_HEADER], dtype="<f4")
    q = np.frombuffer(payload[_INT8_HEADER:], dtype=np.uint8).reshape(shape)
    return (q.astype(np.float32) * scale + lo).astype(np.float32)


def _int8_params(lo: float, hi: float) -> tuple[float, float]:
    scale = (hi - lo) / 255.0
    return np.float32(lo), np.float32(scale if scale > 0 else 1.0)


def roundtrip(x: "torch.Tensor", codec: str) -> "torch.Tensor":
    """Apply the codec's loss to a batch, one tensor (one request) at a time, as the wire would."""
    import torch

    if check(codec) == "fp32":
        return x
    if codec == "fp16":
        return x.half().float()
    flat = x.flatten(1)
    lo = flat.min(dim=1).values
    hi = flat.max(dim=1).values
    scale = ((hi - lo) / 255.0).float()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    lo, scale = lo.float(), scale.float()
    shape = (-1,) + (1,) * (x.dim() - 1)
    q = torch.clamp(torch.round((x - lo.view(shape)) / scale.view(shape)), 0, 255)
    return q * scale.view(shape) + lo.view(shape)


def max_error(x: np.ndarray, codec: str) -> float:
    """Error bound of one roundtrip of `x`: 0, fp16's relative step, or half an int8 step."""
    x = np.asarray(x, dtype=np.float32)
    if codec == "fp32" or x.size == 0:
        return 0.0
    if codec == "fp16":
        return float(np.abs(x).max()) * 2.0 ** -11 + 6e-8
    _, scale = _int8_params(float(x.min()), float(x.max()))
    return float(scale) / 2 * 1.001 + 1e-6

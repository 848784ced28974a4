"""Codecs: what the wire carries at a split and what accuracy must count.

Feature codecs (0 < k < K): fp32 and fp16 are plain casts; int8 is an affine 8-bit code with a
per-tensor offset and scale (two float32 values sent in front of the codes); int8-zlib is the same code
followed by zlib (lossless), so its size depends on the sample.  Input codecs (k = 0, the image itself):
raw uint8, PNG (lossless), and JPEG or WebP at a few qualities (Pillow), as the split-computing
literature compares against.  `roundtrip` and `roundtrip_images` apply the same loss as the wire so the
evaluation sees exactly what the server will decode, and report the bytes of each sample.
"""
from __future__ import annotations

import io
import zlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch stays unimported in the cloud server, which only decodes
    import torch

CODECS = ("fp32", "fp16", "int8")  # fixed size: bytes follow from the shape (the profile's bytes table)
FEATURE_CODECS = CODECS + ("int8-zlib",)
IMAGE_FORMATS = {"png": ("PNG", None), "jpeg90": ("JPEG", 90), "jpeg75": ("JPEG", 75), "jpeg50": ("JPEG", 50),
                 "webp90": ("WEBP", 90), "webp75": ("WEBP", 75), "webp50": ("WEBP", 50)}
INPUT_CODECS = ("raw",) + tuple(IMAGE_FORMATS)
ALL_CODECS = FEATURE_CODECS + INPUT_CODECS
VARIABLE = ("int8-zlib",) + tuple(IMAGE_FORMATS)  # bytes depend on the sample: measured per sample
SAME_LOSS = {"int8-zlib": "int8", "png": "raw"}  # lossless on top of another codec: the same answers
# With an edge tier, the edge may send the tensor at its own cut k2 under a fixed-size codec of its own: the
# pair is one name, "<first link's codec>><k2>:<second link's codec>" (e.g. "int8-zlib>3:fp16"), evaluated
# and searched like any codec.  fp32 on the second link is the plain name (the edge's cut is then free).
EDGE_CODECS = ("fp16", "int8")
_INT8_HEADER = np.dtype("<f4").itemsize * 2  # offset and scale
ZLIB_LEVEL = 6


def check(codec: str, allowed: tuple[str, ...] = FEATURE_CODECS) -> str:
    if codec not in allowed:
        raise ValueError(f"unknown codec {codec!r}; choose one of: {', '.join(allowed)}")
    return codec


def is_variable(codec: str) -> bool:
    """Whether the first link's bytes depend on the sample (the second link's codecs are fixed-size)."""
    return first(codec) in VARIABLE


def via(codec: str, k2: int, second: str) -> str:
    """The name of `codec` on the first link and `second` on the edge-to-cloud link at cut k2."""
    check(second, EDGE_CODECS)
    return f"{codec}>{int(k2)}:{second}"


def split_via(codec: str) -> tuple[str, int | None, str]:
    """(first link's codec, k2, second link's codec) of a name; (codec, None, "fp32") for a plain one."""
    if ">" not in codec:
        return codec, None, "fp32"
    head, _, rest = codec.partition(">")
    k2, _, second = rest.partition(":")
    if not k2.isdigit() or second not in EDGE_CODECS:
        raise ValueError(f"codec {codec!r}: a two-link codec is FIRST>K2:SECOND with SECOND one of "
                         f"{', '.join(EDGE_CODECS)}, e.g. int8>3:fp16")
    return head, int(k2), second


def first(codec: str) -> str:
    """The codec of the first link (the end device's)."""
    return split_via(codec)[0]


def same_loss(codec: str) -> str:
    """The codec whose answers `codec` shares (SAME_LOSS on the first link; the second's are all lossy)."""
    c1, k2, c2 = split_via(codec)
    c1 = SAME_LOSS.get(c1, c1)
    return c1 if k2 is None else via(c1, k2, c2)


def payload_bytes(numel: int, codec: str) -> int:
    """Bytes of an encoded tensor of `numel` elements (fixed-size codecs only)."""
    check(codec, CODECS + ("raw",))
    return {"fp32": 4 * numel, "fp16": 2 * numel, "int8": numel + _INT8_HEADER, "raw": numel}[codec]


def max_payload_bytes(numel: int, codec: str) -> int:
    """An upper bound on the encoded size: what a receiver may accept for this shape."""
    if codec == "int8-zlib":
        return payload_bytes(numel, "int8") + 64 + numel // 100  # zlib's worst case on incompressible data
    if codec in IMAGE_FORMATS:
        return 4 * numel + 4096  # an image format never needs more than this for a small image
    return payload_bytes(numel, codec)


def encode(x: np.ndarray, codec: str) -> bytes:
    """Little-endian bytes of `x` under `codec` (image codecs take a uint8 (C, H, W) or (1, C, H, W) image)."""
    check(codec, ALL_CODECS)
    if codec in INPUT_CODECS:
        return _encode_image(x, codec)
    x = np.asarray(x, dtype=np.float32)
    if codec == "fp32":
        return x.astype("<f4").tobytes()
    if codec == "fp16":
        return x.astype("<f2").tobytes()
    lo, scale = _int8_params(float(x.min()) if x.size else 0.0, float(x.max()) if x.size else 0.0)
    q = np.clip(np.rint((x - lo) / scale), 0, 255).astype(np.uint8)
    payload = np.array([lo, scale], dtype="<f4").tobytes() + q.tobytes()
    return zlib.compress(payload, ZLIB_LEVEL) if codec == "int8-zlib" else payload


def decode(payload: bytes, codec: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `encode`; raises ValueError when the payload does not fit the shape."""
    check(codec, ALL_CODECS)
    numel = int(np.prod(shape)) if shape else 1
    if codec in INPUT_CODECS:
        return _decode_image(payload, codec, shape)
    if codec == "int8-zlib":
        payload = _inflate(payload, payload_bytes(numel, "int8"))
        codec = "int8"
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


def _inflate(payload: bytes, expected: int) -> bytes:
    """zlib with a cap on the output, so a small hostile payload cannot expand without bound."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(payload, expected + 1)
    except zlib.error as e:
        raise ValueError(f"int8-zlib payload is not a zlib stream: {e}") from None
    if len(out) != expected or d.unconsumed_tail or not d.eof:
        raise ValueError(f"int8-zlib payload inflates to {len(out)}{'+' if d.unconsumed_tail else ''} bytes, "
                         f"expected {expected}")
    return out


def _chw(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.dtype != np.uint8:
        raise ValueError(f"an image codec takes a uint8 (C, H, W) image, got {x.dtype} {x.shape}")
    return x


def _encode_image(x: np.ndarray, codec: str) -> bytes:
    x = _chw(x)
    if codec == "raw":
        return np.ascontiguousarray(x).tobytes()
    from PIL import Image

    fmt, quality = IMAGE_FORMATS[codec]
    grey = x.shape[0] == 1 or bool((x == x[:1]).all())  # grey stored as 3 equal channels: send one
    img = Image.fromarray(np.ascontiguousarray(x[0] if grey else x.transpose(1, 2, 0)), "L" if grey else "RGB")
    buf = io.BytesIO()
    kwargs = {"optimize": True} if fmt == "PNG" else {"quality": quality}
    if fmt == "WEBP":
        kwargs["method"] = 4
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _decode_image(payload: bytes, codec: str, shape: tuple[int, ...]) -> np.ndarray:
    shape = tuple(int(s) for s in shape)
    chw = shape[1:] if len(shape) == 4 and shape[0] == 1 else shape
    if len(chw) != 3:
        raise ValueError(f"an image codec needs a (1, C, H, W) or (C, H, W) shape, got {shape}")
    if codec == "raw":
        if len(payload) != int(np.prod(shape)):
            raise ValueError(f"raw payload of {len(payload)} bytes does not fit shape {shape}")
        return np.frombuffer(payload, dtype=np.uint8).reshape(shape)
    from PIL import Image

    fmt, _ = IMAGE_FORMATS[codec]
    c, h, w = chw
    try:
        img = Image.open(io.BytesIO(payload), formats=[fmt])
        if img.size != (w, h):  # checked before decoding the pixels: no decompression bomb
            raise ValueError(f"{codec} image is {img.size[0]}x{img.size[1]}, expected {w}x{h}")
        arr = np.asarray(img.convert("L" if c == 1 else "RGB"))
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{codec} payload is not a valid {fmt} image: {e}") from None
    arr = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr).reshape(shape)


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
    flat = x.flatten(1)  # int8 and int8-zlib lose the same: zlib is lossless
    lo = flat.min(dim=1).values
    hi = flat.max(dim=1).values
    scale = ((hi - lo) / 255.0).float()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    lo, scale = lo.float(), scale.float()
    shape = (-1,) + (1,) * (x.dim() - 1)
    q = torch.clamp(torch.round((x - lo.view(shape)) / scale.view(shape)), 0, 255)
    return q * scale.view(shape) + lo.view(shape)


def sample_bytes(x: np.ndarray, codec: str) -> np.ndarray:
    """Per sample of a batch (N, ...): bytes on the wire under `codec` (encoded for real where variable)."""
    x = np.asarray(x)
    if not is_variable(codec):
        return np.full(len(x), payload_bytes(int(np.prod(x.shape[1:])), codec), dtype=np.int64)
    return np.array([len(encode(xi, codec)) for xi in x], dtype=np.int64)


def roundtrip_images(images: np.ndarray, codec: str) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 batch (N, C, H, W) through an input codec: (decoded images, bytes per sample)."""
    check(codec, INPUT_CODECS)
    images = np.asarray(images, dtype=np.uint8)
    if codec == "raw":
        return images, sample_bytes(images, "raw")
    out, sizes = np.empty_like(images), np.empty(len(images), dtype=np.int64)
    for i, img in enumerate(images):
        payload = encode(img, codec)
        sizes[i] = len(payload)
        out[i] = decode(payload, codec, img.shape)
    return out, sizes


def max_error(x: np.ndarray, codec: str) -> float:
    """Error bound of one roundtrip of `x`: 0, fp16's relative step, or half an int8 step."""
    x = np.asarray(x, dtype=np.float32)
    if codec == "fp32" or x.size == 0:
        return 0.0
    if codec == "fp16":
        return float(np.abs(x).max()) * 2.0 ** -11 + 6e-8
    _, scale = _int8_params(float(x.min()), float(x.max()))
    return float(scale) / 2 * 1.001 + 1e-6

"""manifest.json of an exported split: what the edge and the cloud each need to run their part.

Kept free of torch so the cloud server only needs numpy and ONNX Runtime to read it.

"codec" names what the wire carries: at k = 0 an input codec ("raw" or an image codec), at 0 < k < K a
feature codec.  A manifest from before the image codecs may name a feature codec at k = 0: that means
"raw" (`wire_codec`).  split.bytes is the payload size of a fixed-size codec and null for a variable one
(int8-zlib, the image codecs), whose size depends on the sample; split.max_bytes is the upper bound the
server accepts either way.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from compress import codec as codecs

FORMAT = 1
NAME = "manifest.json"
HEAD, TAIL = "head.onnx", "tail.onnx"


def load(model_dir: str | Path) -> dict[str, Any]:
    """Read and sanity-check `model_dir/manifest.json`; one-line errors for anything missing."""
    path = Path(model_dir) / NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {NAME} in {str(model_dir)!r}: export the split first (runtime.export_split)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} has manifest format {manifest.get('format')!r}; this runtime reads {FORMAT}")
    for part in ("head", "tail"):
        if manifest.get(part):
            part_path(model_dir, manifest, part)
    return manifest


def part_path(model_dir: str | Path, manifest: dict[str, Any], part: str) -> Path:
    """The file of `part` ("head" or "tail"), which must be a file inside `model_dir`.

    A manifest only names files of its own export: an absolute path, a `..` or a symlink that leads
    out of the directory is refused, so a manifest cannot make the server load (or serve) another file.
    """
    name = manifest[part]["file"] if isinstance(manifest.get(part), dict) else None
    where = Path(model_dir) / NAME
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: {part}.file must be a file name, got {name!r}")
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError(f"{where}: {part}.file {name!r} must be a relative path inside the model directory")
    root = Path(model_dir).resolve()
    path = (root / name).resolve()  # follows symlinks: the file itself must be inside too
    if not path.is_relative_to(root):
        raise ValueError(f"{where}: {part}.file {name!r} resolves to {path}, outside the model directory {root}")
    if not path.is_file():
        raise FileNotFoundError(f"{where} names {name} but it is missing")
    return path


def save(manifest: dict[str, Any], model_dir: str | Path) -> Path:
    path = Path(model_dir) / NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)  # a reader never sees half a manifest
    return path


def wire_codec(k: int, K: int, codec: str) -> str | None:
    """The codec the edge sends with at split k: None at k = K (nothing is sent), an input codec at
    k = 0 (any feature codec means "raw": older callers and manifests name fp32 there), else `codec`,
    which must then be a feature codec."""
    codecs.check(codec, codecs.ALL_CODECS)
    if k == K:
        return None
    if k == 0:
        return codec if codec in codecs.INPUT_CODECS else "raw"
    if codec not in codecs.FEATURE_CODECS:
        raise ValueError(f"codec {codec!r} compresses the input image: only k = 0 sends it; at k = {k} choose one "
                         f"of: {', '.join(codecs.FEATURE_CODECS)}")
    return codec


def manifest_codec(manifest: dict[str, Any]) -> str | None:
    """`wire_codec` of a loaded manifest."""
    return wire_codec(manifest["k"], manifest["K"], manifest["codec"])


def normalize(images: np.ndarray, manifest: dict[str, Any]) -> np.ndarray:
    """uint8 NCHW -> float32 model input, the same arithmetic as compress.data.DataSplits.normalize."""
    mean = np.asarray(manifest["data"]["mean"], dtype=np.float32).reshape(1, -1, 1, 1) * np.float32(255.0)
    std = np.asarray(manifest["data"]["std"], dtype=np.float32).reshape(1, -1, 1, 1) * np.float32(255.0)
    return ((images.astype(np.float32) - mean) / std).astype(np.float32)


def save_samples(path: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Test samples for an edge without torch or the data set: uint8 NCHW images and int64 labels (.npz)."""
    images, labels = np.asarray(images), np.asarray(labels)
    _check_samples(images, labels, "samples")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=labels.astype(np.int64))
    return path


def _check_samples(images: np.ndarray, labels: np.ndarray, where: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
        raise ValueError(f"{where}: need uint8 NCHW images and one label each, got {images.dtype} {images.shape} "
                         f"and {len(labels)} labels")


def load_samples(path: str | Path, manifest: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of a save_samples file, checked against the manifest's input shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"samples file {str(path)!r} does not exist (write it with runtime.manifest.save_samples)")
    try:
        with np.load(path, allow_pickle=False) as f:
            images, labels = f["images"], f["labels"]
    except (KeyError, ValueError, OSError) as e:
        raise ValueError(f"{path} is not a samples file (images, labels): {e}") from None
    _check_samples(images, labels, str(path))
    if manifest is not None and list(images.shape[1:]) != list(manifest["input"]["shape"]):
        raise ValueError(f"{path} holds {list(images.shape[1:])} images but the model takes {manifest['input']['shape']}")
    return images, labels


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")

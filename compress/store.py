"""On-disk cache of trained weights and evaluations: content-addressed, atomic, safe across processes."""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from filelock import FileLock

ROOT_ENV = "SPLITOPT_CACHE"


def cache_root() -> Path:
    """`$SPLITOPT_CACHE`, or `.cache/` beside the project (git-ignored)."""
    root = Path(os.environ.get(ROOT_ENV) or Path(__file__).resolve().parent.parent / ".cache")
    root.mkdir(parents=True, exist_ok=True)
    return root


def digest(obj: Any) -> str:
    """Stable short hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@contextmanager
def locked(path: Path, timeout: float = 3600) -> Iterator[None]:
    """Hold an inter-process lock on `path` (so one process trains, the others wait and load)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=timeout):
        yield


def save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file and an atomic rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: Path) -> Any:
    """Load a cache entry (tensors and plain data only)."""
    return torch.load(path, map_location="cpu", weights_only=True)

"""The profile file format and its loader.

A profile is one JSON file per (device, model, input size) at
``profiles/data/<device>/<model>-<input_size>px.json``::

    {"meta": {...how, where and when it was measured...},
     "latency": [{"part", "k", "r", "median_ms", "p10_ms", "p90_ms", "n"}, ...],
     "bytes": [{"k", "r", "codec", "bytes", "shape"}, ...]}

A device-role profile holds head rows for every (k, r) and exit rows where the split has an exit
(0 < k < K); a server-role profile holds tail rows for every (k, r).  Both hold the bytes table.
Numbers of an emulated profile are already scaled: nothing downstream multiplies them again.
"""
from __future__ import annotations

import json
import math
import operator
from pathlib import Path
from typing import Any

import pandas as pd

DATA_ROOT = Path(__file__).resolve().parent / "data"
ROLES = ("device", "server")
PARTS = ("head", "exit", "tail")
CODECS = ("fp32", "fp16", "int8")  # same as compress.codec.CODECS; kept here so loading needs no torch
META_KEYS = ("device", "role", "cpu", "host", "threads", "slowdown", "emulates", "versions", "date", "method",
             "model", "input_size", "num_classes", "K", "ratios", "repeats", "warmup", "seconds")
LATENCY_KEYS = ("part", "k", "r", "median_ms", "p10_ms", "p90_ms", "n")
BYTES_KEYS = ("k", "r", "codec", "bytes", "shape")


class ProfileNotFoundError(FileNotFoundError, ValueError):
    """No profile for that device, model or input size (catchable as either base class)."""


def rkey(r: float) -> float:
    """Ratios are compared rounded, so 0.30000000000000004 finds the 0.3 row."""
    return round(float(r), 4)


def has_exit(k: int, K: int) -> bool:
    """Same rule as compress.candidate.exit_allowed: no exit on the raw input or after the classifier."""
    return 0 < k < K


def parts_for(role: str) -> tuple[str, ...]:
    return ("head", "exit") if role == "device" else ("tail",)


def profile_path(device: str, model: str, input_size: int, root: str | Path | None = None) -> Path:
    return Path(root or DATA_ROOT) / device / f"{model}-{int(input_size)}px.json"


def available_devices(root: str | Path | None = None) -> list[str]:
    """Names of the devices with at least one profile under `root` (the shipped data by default)."""
    root = Path(root or DATA_ROOT)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("*px.json")))


def available_profiles(device: str, root: str | Path | None = None) -> list[str]:
    """'<model>-<size>px' names profiled for `device`."""
    return sorted(p.stem for p in (Path(root or DATA_ROOT) / device).glob("*px.json"))


class Profile:
    """A loaded, validated profile: latency and bytes tables with fast lookups."""

    def __init__(self, doc: dict[str, Any], source: str = "<dict>"):
        self.source = source
        _check_doc(doc, source)
        self.doc = doc
        self.meta: dict[str, Any] = doc["meta"]
        self.latency = pd.DataFrame(doc["latency"], columns=list(LATENCY_KEYS))
        self.bytes = pd.DataFrame(doc["bytes"], columns=list(BYTES_KEYS))
        self._ms = {(row["part"], int(row["k"]), rkey(row["r"])): float(row["median_ms"]) for row in doc["latency"]}
        self._bytes = {(int(row["k"]), rkey(row["r"]), row["codec"]): int(row["bytes"]) for row in doc["bytes"]}
        self._ratios = [rkey(r) for r in self.meta["ratios"]]  # looked up on every prediction: kept once
        self._check_complete()

    # The meta fields everyone asks for, as attributes.
    device = property(lambda self: self.meta["device"])
    role = property(lambda self: self.meta["role"])
    model = property(lambda self: self.meta["model"])
    input_size = property(lambda self: int(self.meta["input_size"]))
    num_classes = property(lambda self: int(self.meta["num_classes"]))
    K = property(lambda self: int(self.meta["K"]))
    threads = property(lambda self: int(self.meta["threads"]))
    slowdown = property(lambda self: float(self.meta["slowdown"]))
    ratios = property(lambda self: list(self._ratios))

    def __repr__(self) -> str:
        return (f"Profile({self.device!r}, role={self.role}, {self.model} {self.input_size}px, K={self.K}, "
                f"{len(self.ratios)} ratios, slowdown={self.slowdown:g})")

    def ms(self, part: str, k: int, r: float) -> float:
        """Median milliseconds of `part` at split k, ratio r.

        k = 0 runs no head, k = K no tail, and a split without an exit runs no exit: all 0 ms.
        """
        if part not in PARTS:
            raise ValueError(f"unknown part {part!r}; choose one of: {', '.join(PARTS)}")
        if part not in parts_for(self.role):
            raise ValueError(f"profile {self.device!r} is a {self.role} profile: it has no {part} times "
                             f"(those are in a {'server' if part == 'tail' else 'device'} profile)")
        self._check_kr(k, r)
        if part == "exit" and not has_exit(k, self.K):
            return 0.0
        return self._ms[(part, int(k), rkey(r))]

    def tensor_bytes(self, k: int, r: float, codec: str = "fp32") -> int:
        """Bytes sent at split k (0 at k = K; the uint8 image at k = 0 whatever the codec)."""
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; choose one of: {', '.join(CODECS)}")
        self._check_kr(k, r)
        return self._bytes[(int(k), rkey(r), codec)]

    def shape(self, k: int, r: float) -> tuple[int, ...]:
        """Shape (without batch) of the tensor at split k under ratio r."""
        self._check_kr(k, r)
        row = self.bytes[(self.bytes.k == k) & (self.bytes.r.map(rkey) == rkey(r))].iloc[0]
        return tuple(row["shape"])

    def _check_kr(self, k: int, r: float) -> None:
        try:
            k = operator.index(k)  # ints and numpy integers, not 1.5
        except TypeError:
            raise ValueError(f"split point k={k!r} is not an integer") from None
        if not 0 <= k <= self.K:
            raise ValueError(f"split point k={k} is outside 0..{self.K} for {self.model}")
        if rkey(r) not in self._ratios:
            raise ValueError(f"ratio r={r} is not in the profiled grid {self.ratios} of {self.source}")

    def _check_complete(self) -> None:
        missing = []
        for k in range(self.K + 1):
            for r in self.ratios:
                for part in parts_for(self.role):
                    if part == "exit" and not has_exit(k, self.K):
                        continue
                    if (part, k, r) not in self._ms:
                        missing.append(f"{part} k={k} r={r}")
                missing += [f"bytes k={k} r={r} {c}" for c in CODECS if (k, r, c) not in self._bytes]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ValueError(f"{self.source}: incomplete profile, missing rows: {', '.join(missing[:3])}{more}")
        wrong = [p for p in set(self.latency.part) if p not in parts_for(self.role)]
        if wrong:
            raise ValueError(f"{self.source}: a {self.role} profile cannot hold {', '.join(sorted(wrong))} rows")
        values = self.latency[["median_ms", "p10_ms", "p90_ms"]].to_numpy(dtype=float)
        if not (values >= 0).all() or not all(math.isfinite(v) for v in values.ravel()):
            raise ValueError(f"{self.source}: latency values must be finite and >= 0")


def _check_doc(doc: Any, source: str) -> None:
    """One-line errors for a file that is not a profile, naming what is missing."""
    if not isinstance(doc, dict):
        raise ValueError(f"{source}: a profile is a JSON object with meta, latency and bytes")
    for key in ("meta", "latency", "bytes"):
        if key not in doc:
            raise ValueError(f"{source}: malformed profile, missing {key!r}")
    meta = doc["meta"]
    if not isinstance(meta, dict):
        raise ValueError(f"{source}: malformed profile, 'meta' is not an object")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{source}: malformed profile, meta lacks {', '.join(missing)}")
    if meta["role"] not in ROLES:
        raise ValueError(f"{source}: role must be one of {', '.join(ROLES)}, got {meta['role']!r}")
    for table, keys in (("latency", LATENCY_KEYS), ("bytes", BYTES_KEYS)):
        if not isinstance(doc[table], list):
            raise ValueError(f"{source}: malformed profile, {table!r} is not a list of rows")
        for i, row in enumerate(doc[table]):
            lacking = [k for k in keys if not isinstance(row, dict) or k not in row]
            if lacking:
                raise ValueError(f"{source}: malformed profile, {table} row {i} lacks {', '.join(lacking)}")


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ProfileNotFoundError(f"profile file {str(path)!r} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def save_json(doc: dict[str, Any], path: str | Path) -> Path:
    """Write a profile (validated first, so a broken table never reaches disk)."""
    Profile(doc, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def _is_path(text: str) -> bool:
    return text.endswith(".json") or "/" in text or "\\" in text


def load_profile(device_or_path: str, model: str, input_size: int, root: str | Path | None = None) -> Profile:
    """Load the profile of a shipped device (or any device under `root`) or of a JSON file path.

    The file must describe `model` at `input_size`; errors are one line and say what exists instead.
    """
    name = str(device_or_path)
    if _is_path(name):
        profile = Profile(read_json(name), name)
        if (profile.model, profile.input_size) != (model, int(input_size)):
            raise ValueError(f"{name} profiles {profile.model} at {profile.input_size}px, "
                             f"not {model} at {input_size}px")
        return profile
    devices = available_devices(root)
    if name not in devices:
        raise ProfileNotFoundError(f"unknown device {name!r}; available: {', '.join(devices) or 'none'} "
                                   f"(or pass a profile .json path)")
    path = profile_path(name, model, input_size, root)
    if not path.is_file():
        raise ProfileNotFoundError(f"device {name!r} has no profile for {model} at {input_size}px; it has: "
                                   f"{', '.join(available_profiles(name, root))}")
    profile = Profile(read_json(path), str(path))
    if (profile.model, profile.input_size) != (model, int(input_size)):
        raise ValueError(f"{path} holds {profile.model} at {profile.input_size}px: the file is misnamed")
    return profile


def check_pair(device: Profile, server: Profile) -> None:
    """Raise a one-line ValueError unless the two profiles can be combined into one prediction."""
    if device.role != "device":
        raise ValueError(f"{device.source} is a {device.role} profile; the end device needs a device profile")
    if server.role != "server":
        raise ValueError(f"{server.source} is a {server.role} profile; the server needs a server profile")
    for what, a, b in (("model", device.model, server.model), ("input size", device.input_size, server.input_size),
                       ("classes", device.num_classes, server.num_classes), ("K", device.K, server.K),
                       ("ratio grid", device.ratios, server.ratios)):
        if a != b:
            raise ValueError(f"device profile {device.device!r} and server profile {server.device!r} differ in "
                             f"{what}: {a} vs {b}")

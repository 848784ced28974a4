"""The profile file format and its loader.

A profile is one JSON file per (device, model, input size) at
``profiles/data/<device>/<model>-<input_size>px.json``::

    {"meta": {...how, where and when it was measured...},
     "latency": [{"part", "k", "r", "mean_ms", "median_ms", "p10_ms", "p90_ms", "n", "warm_ms"}, ...],
     "bytes": [{"k", "r", "codec", "bytes", "shape"}, ...],
     "overhead": [{"k", "r", "codec", <the role's two overhead keys>, "n"}, ...]}   (optional)

A device-role profile holds head rows for every (k, r) and exit rows where the split has an exit
(0 < k < K), or no exit rows at all (then the search runs without exits);
a server-role profile holds tail rows for every (k, r) and, optionally, head and exit rows at r = 0 for
every 0 < k < K (what an edge box pays to run an unpruned candidate's first blocks and its exit branch:
search.latency's exit on the edge);
a split may also be measured at a subset of `meta.ratios` only (a per-split rate grid, as published
tables often are): the ratios its head (tail) rows cover are its grid, and every other table must
cover exactly those.  Both hold the bytes table, for
the fixed-size codecs (fp32, fp16, int8; at k = 0 every row is the uint8 image, which is also "raw").
Numbers of an emulated profile are already scaled: nothing downstream multiplies them again.

The optional "overhead" section is the per-request runtime cost outside the model (the latency rows
time `session.run` only), measured by `profiles.overhead` through the real runtime code with trivial
ONNX graphs; `meta["overhead"]` says how, where and when.  All values are median milliseconds:

- device profile: ``device_overhead_ms`` (every request: normalisation, the exit decision, Python glue;
  the runtime's device_ms minus head.onnx) and ``encode_ms`` (only when the sample is sent: the codec);
- server profile: ``link_overhead_ms`` (the exchange on an unshaped loopback beyond the modelled
  rtt + 8 b / B: framing, send, the server reading and validating the frame, the reply back, parsing it;
  the runtime's transfer_ms at zero rtt) and ``server_overhead_ms`` (decoding, checks, normalisation at
  k = 0, packing the reply; the server's reported server_ms minus tail.onnx); its meta's ``frame_bytes``
  is what a request frame adds to the payload on the wire (the header), which the network model counts.

A latency row's optional ``warm_ms`` is the mean of the same part run back to back (no idle wait, caches
warm), where the other statistics time each run cold (memory touched and an idle gap before it).  The
latency model charges the end device the warm time for a request that follows one the device answered
itself and the cold time otherwise (search.latency).  Rows without it (older files, 224 px) use the cold
time for both.

The optional ``meta["idle"]`` is the machine's idle curve (profiles.idle): how much slower a cold call runs
after idling 2, 5, ... 100 ms than after the rows' own 1 ms (``gap_ms``, ``factor``).  The latency model
prices a cold part after the wait its side really has (`Profile.idle_factor`); without it, a factor of 1.

An overhead row holds only its role's two keys; `Profile.overhead(k, r, codec)` returns all four, 0.0 for the
other role's.  Codecs: k = 0 takes the input codecs (raw, png, jpeg*, webp*; a feature codec there means
raw, as in the runtime), 0 < k < K the feature codecs (fp32, fp16, int8, int8-zlib), and k = K sends
nothing (one row with codec null).  Rows need not cover every ratio: a (k, codec) measured at some
ratios is interpolated linearly in the split tensor's number of elements (the bytes table's shape) for
the others, and held constant beyond the measured range.  The overhead is not scaled for an emulated
device: the runtime's --slowdown spins only for the model's own compute.  A profile without the
section (older files) loads with every overhead 0.0 and `has_overhead` False.
"""
from __future__ import annotations

import json
import math
import operator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

DATA_ROOT = Path(__file__).resolve().parent / "data"
ROLES = ("device", "server")
PARTS = ("head", "exit", "tail")
# Codec names, the same as compress.codec's CODECS, FEATURE_CODECS, INPUT_CODECS, ALL_CODECS and VARIABLE;
# copied here so that loading a profile needs neither torch nor Pillow (tests check they agree).
CODECS = ("fp32", "fp16", "int8")  # fixed size: the bytes table holds them
FEATURE_CODECS = CODECS + ("int8-zlib",)  # 0 < k < K
IMAGE_CODECS = ("png", "jpeg90", "jpeg75", "jpeg50", "webp90", "webp75", "webp50")
INPUT_CODECS = ("raw",) + IMAGE_CODECS  # k = 0
ALL_CODECS = FEATURE_CODECS + INPUT_CODECS
VARIABLE = ("int8-zlib",) + IMAGE_CODECS  # bytes depend on the sample: measured per sample, not profiled
META_KEYS = ("device", "role", "cpu", "host", "threads", "slowdown", "emulates", "versions", "date", "method",
             "model", "input_size", "num_classes", "K", "ratios", "repeats", "warmup", "seconds")
LATENCY_KEYS = ("part", "k", "r", "median_ms", "p10_ms", "p90_ms", "n")
BYTES_KEYS = ("k", "r", "codec", "bytes", "shape")
ROW_GAP_MS = 1.0  # the idle gap before each timed cold run of a latency row (profiles.runner.COLD_GAP_S)
OVERHEAD_PARTS = ("device_overhead_ms", "encode_ms", "link_overhead_ms", "server_overhead_ms")
ROLE_OVERHEAD = {"device": ("device_overhead_ms", "encode_ms"), "server": ("link_overhead_ms", "server_overhead_ms")}


def overhead_keys(role: str) -> tuple[str, ...]:
    """Keys of an overhead row of a `role` profile."""
    return ("k", "r", "codec", *ROLE_OVERHEAD[role], "n")


def overhead_codecs(k: int, K: int) -> tuple[str | None, ...]:
    """The codecs an overhead section has rows for at split k (None at k = K: nothing is sent)."""
    return (None,) if k == K else INPUT_CODECS if k == 0 else FEATURE_CODECS


class ProfileNotFoundError(FileNotFoundError, ValueError):
    """No profile for that device, model or input size (catchable as either base class)."""


def rkey(r: float) -> float:
    """Ratios are compared rounded, so 0.30000000000000004 finds the 0.3 row."""
    return round(float(r), 4)


def has_exit(k: int, K: int) -> bool:
    """Same rule as compress.candidate.exit_allowed: no exit on the raw input or after the classifier."""
    return 0 < k < K


def parts_for(role: str) -> tuple[str, ...]:
    return ("head", "exit") if role == "device" else ("tail", "head", "exit")


def profile_path(device: str, model: str, input_size: int, root: str | Path | None = None) -> Path:
    return Path(root or DATA_ROOT) / device / f"{model}-{int(input_size)}px.json"


def emulated_source_path(source: str, model: str, input_size: int, root: str | Path | None = None) -> Path:
    """The profile an emulated one was made from (`meta["emulates"]`: a device name or a .json path)."""
    return Path(source) if source.endswith(".json") else profile_path(source, model, input_size, root)


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
        import pandas as pd  # here, not at the top: auto.py's --help and argument checks list profiles cheaply

        self.source = source
        _check_doc(doc, source)
        self.doc = doc
        self.meta: dict[str, Any] = doc["meta"]
        self.latency = pd.DataFrame(doc["latency"], columns=list(LATENCY_KEYS))
        self.bytes = pd.DataFrame(doc["bytes"], columns=list(BYTES_KEYS))
        # expected latency is a mean: rows measured with one use it, older rows their median
        self._ms = {(row["part"], int(row["k"]), rkey(row["r"])): float(row.get("mean_ms", row["median_ms"]))
                    for row in doc["latency"]}
        self._warm = {(row["part"], int(row["k"]), rkey(row["r"])): float(row["warm_ms"])
                      for row in doc["latency"] if row.get("warm_ms") is not None}
        self._bytes = {(int(row["k"]), rkey(row["r"]), row["codec"]): int(row["bytes"]) for row in doc["bytes"]}
        self._shapes = {(int(row["k"]), rkey(row["r"])): tuple(row["shape"]) for row in doc["bytes"]}
        self._ratios = [rkey(r) for r in self.meta["ratios"]]  # looked up on every prediction: kept once
        # an exit is optional: a profile holds exit rows for every intermediate split or none at all
        self.has_exits = any(part == "exit" for part, _, _ in self._ms)
        main = "head" if self.role == "device" else "tail"
        # a split may be measured at some ratios of the grid only (a per-split rate grid): its rows say which
        self._grid = {k: [r for r in self._ratios if (main, k, r) in self._ms] for k in range(self.K + 1)}
        self._check_complete()
        self.overhead_rows = pd.DataFrame(doc.get("overhead") or [], columns=list(overhead_keys(self.role)))
        self._overhead = self._overhead_table(doc.get("overhead") or [])

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
    has_overhead = property(lambda self: bool(self._overhead), doc="True when the profile has an overhead section")
    frame_bytes = property(lambda self: int((self.meta.get("overhead") or {}).get("frame_bytes", 0)),
                           doc="bytes a request frame carries beyond its payload (0 when not measured)")

    def idle_factor(self, gap_ms: float) -> float:
        """How much slower a cold part runs after `gap_ms` of idle than its row (timed after 1 ms), from the
        profile's idle curve (profiles.idle): 1.0 without one and up to the rows' own gap, linear between
        the measured gaps, flat beyond the last, never decreasing (a noisy dip is no speed-up to count on)."""
        curve = self.idle_curve()
        if not curve:
            return 1.0
        xs, ys = zip(*curve)
        return _interp(float(gap_ms), list(xs), list(ys))

    def idle_curve(self) -> tuple[tuple[float, float], ...]:
        """The knots (gap ms, factor) `idle_factor` interpolates: from (the rows' own gap, 1.0), never
        decreasing; () without an idle curve."""
        curve = self.meta.get("idle")
        if not curve:
            return ()
        knots = [(ROW_GAP_MS, 1.0)]
        for gap, factor in zip(curve["gap_ms"], curve["factor"]):
            if gap > ROW_GAP_MS:
                knots.append((float(gap), max(knots[-1][1], float(factor))))
        return tuple(knots)

    def __repr__(self) -> str:
        return (f"Profile({self.device!r}, role={self.role}, {self.model} {self.input_size}px, K={self.K}, "
                f"{len(self.ratios)} ratios, slowdown={self.slowdown:g})")

    def ms(self, part: str, k: int, r: float, warm: bool = False) -> float:
        """Milliseconds of `part` at split k, ratio r (the mean; the median in profiles measured without one).

        `warm`: run back to back (the row's warm_ms; the cold time where the row has none).
        k = 0 runs no head, k = K no tail, and a split without an exit runs no exit: all 0 ms.
        """
        if part not in PARTS:
            raise ValueError(f"unknown part {part!r}; choose one of: {', '.join(PARTS)}")
        if part not in parts_for(self.role):
            raise ValueError(f"profile {self.device!r} is a {self.role} profile: it has no {part} times "
                             f"(those are in a {'server' if part == 'tail' else 'device'} profile)")
        self._check_kr(k, r)
        if part == "exit" and not self.exit_at(k):
            if has_exit(k, self.K):
                raise ValueError(f"profile {self.source} has no exit rows: the search there runs without exits")
            return 0.0
        if part == "head" and k == 0:  # k = 0 runs no head (a server profile has no row for it)
            return 0.0
        if part != "tail" and self.role == "server" and (rkey(r) != 0.0 or not self.has_exits):
            raise ValueError(f"server profile {self.source} has {part} rows at r = 0 only, where it has exit rows "
                             f"(an exit on an edge belongs to an unpruned candidate), not at k={k} r={r}")
        key = (part, int(k), rkey(r))
        return self._warm.get(key, self._ms[key]) if warm else self._ms[key]

    def ratios_at(self, k: int) -> list[float]:
        """The ratios split k was measured at (the whole grid unless the profile has per-split grids)."""
        return list(self._grid[int(k)])

    def exit_at(self, k: int) -> bool:
        """Whether split k has an exit in this profile (0 < k < K, and exit rows measured)."""
        return self.has_exits and has_exit(k, self.K)

    def tensor_bytes(self, k: int, r: float, codec: str = "fp32") -> int:
        """Bytes sent at split k under a fixed-size codec: 0 at k = K (whatever the codec); at k = 0 the
        uint8 image for "raw" and for any fixed feature codec (the runtime sends the image raw then).

        A variable-size codec (int8-zlib, the image codecs) raises ValueError below k = K: its bytes
        depend on the sample and are measured per sample (compress.codec.sample_bytes), not profiled.
        """
        if codec not in ALL_CODECS:
            raise ValueError(f"unknown codec {codec!r}; choose one of: {', '.join(ALL_CODECS)}")
        self._check_kr(k, r)
        if k == self.K:
            return 0
        if codec in VARIABLE:
            raise ValueError(f"codec {codec!r} has a variable size: its bytes depend on the sample and are "
                             f"measured per sample (compress.codec.sample_bytes), not in the profile; "
                             f"fixed-size codecs: {', '.join(CODECS + ('raw',))}")
        if codec == "raw":
            if k != 0:
                raise ValueError(f"codec 'raw' sends the uint8 image: only at k = 0, not at k = {k}")
            codec = "fp32"  # every k = 0 row holds the image bytes
        return self._bytes[(int(k), rkey(r), codec)]

    def overhead(self, k: int, r: float, codec: str | None = "fp32") -> dict[str, float]:
        """Per-request runtime overhead (ms) at split k, ratio r under `codec`: the four keys of
        OVERHEAD_PARTS, 0.0 for the other role's and for all of them without an overhead section.

        k = 0 takes an input codec (a feature codec means "raw"), 0 < k < K a feature codec; at k = K
        nothing is sent and any codec (or None) gives the device-only row.
        """
        key = self._overhead_key(k, r, codec)
        zeros = dict.fromkeys(OVERHEAD_PARTS, 0.0)
        if not self._overhead:
            return zeros
        return {**zeros, **self._overhead[key]}

    def _overhead_key(self, k: int, r: float, codec: str | None) -> tuple[int, float, str | None]:
        self._check_kr(k, r)
        if codec is not None and codec not in ALL_CODECS:
            raise ValueError(f"unknown codec {codec!r}; choose one of: {', '.join(ALL_CODECS)}")
        if k == self.K:
            return int(k), rkey(r), None
        if codec is None:
            raise ValueError(f"split k={k} sends a tensor: name its codec")
        if k == 0:
            return 0, rkey(r), codec if codec in INPUT_CODECS else "raw"
        if codec not in FEATURE_CODECS:
            raise ValueError(f"codec {codec!r} applies to the input image (k = 0 only); at k = {k} choose one "
                             f"of: {', '.join(FEATURE_CODECS)}")
        return int(k), rkey(r), codec

    def _overhead_table(self, rows: list[dict]) -> dict[tuple[int, float, str | None], dict[str, float]]:
        """Every (k, r, codec) of the grid from the measured rows, interpolated in the split's numel."""
        if not rows:
            return {}
        parts = ROLE_OVERHEAD[self.role]
        points: dict[tuple[int, str | None], dict[float, list[float]]] = {}
        for row in rows:
            k, r = int(row["k"]), rkey(row["r"])
            if not 0 <= k <= self.K or r not in self._grid[k]:
                raise ValueError(f"{self.source}: overhead row k={k} r={r} is outside the profile's splits or grid")
            if row["codec"] not in overhead_codecs(k, self.K):
                raise ValueError(f"{self.source}: overhead row k={k} has codec {row['codec']!r}; that split takes "
                                 f"{', '.join(map(str, overhead_codecs(k, self.K)))}")
            values = [float(row[p]) for p in parts]
            if not all(math.isfinite(v) and v >= 0 for v in values):
                raise ValueError(f"{self.source}: overhead values must be finite and >= 0 (row k={k} r={r} "
                                 f"codec={row['codec']})")
            numel = float(math.prod(self.shape(k, r)))
            points.setdefault((k, row["codec"]), {}).setdefault(numel, []).append(values)
        missing = [f"k={k} {c}" for k in range(self.K + 1) for c in overhead_codecs(k, self.K) if (k, c) not in points]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ValueError(f"{self.source}: incomplete overhead section, no rows for {', '.join(missing[:3])}{more}")
        table = {}
        for (k, codec), by_numel in points.items():
            xs = sorted(by_numel)
            ys = [[sum(v[i] for v in by_numel[x]) / len(by_numel[x]) for x in xs] for i in range(len(parts))]
            for r in self._grid[k]:
                numel = float(math.prod(self.shape(k, r)))
                table[(k, r, codec)] = {p: round(_interp(numel, xs, y), 4) for p, y in zip(parts, ys)}
        return table

    def shape(self, k: int, r: float) -> tuple[int, ...]:
        """Shape (without batch) of the tensor at split k under ratio r."""
        self._check_kr(k, r)
        return self._shapes[(int(k), rkey(r))]

    def _check_kr(self, k: int, r: float) -> None:
        try:
            k = operator.index(k)  # ints and numpy integers, not 1.5
        except TypeError:
            raise ValueError(f"split point k={k!r} is not an integer") from None
        if not 0 <= k <= self.K:
            raise ValueError(f"split point k={k} is outside 0..{self.K} for {self.model}")
        if rkey(r) not in self._grid.get(k, ()):
            grid = self.ratios if self._grid.get(k) == self._ratios else self._grid.get(k)
            raise ValueError(f"ratio r={r} is not in the profiled grid {grid} of {self.source}"
                             + ("" if grid is self.ratios else f" at split k={k}"))

    def _check_complete(self) -> None:
        missing = [f"{'head' if self.role == 'device' else 'tail'} k={k} (no ratio at all)"
                   for k, rs in self._grid.items() if not rs]
        for k in range(self.K + 1):
            for r in self._grid[k]:
                for part in parts_for(self.role):
                    if part == "exit" and not (self.has_exits and has_exit(k, self.K)):
                        continue
                    if self.role == "server" and part != "tail" and not (r == 0.0 and self.exit_at(k)):
                        continue  # an edge's head and exit: unpruned, beside the exit rows only
                    if (part, k, r) not in self._ms:
                        missing.append(f"{part} k={k} r={r}")
                missing += [f"bytes k={k} r={r} {c}" for c in CODECS if (k, r, c) not in self._bytes]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ValueError(f"{self.source}: incomplete profile, missing rows: {', '.join(missing[:3])}{more}")
        wrong = [p for p in set(self.latency.part) if p not in parts_for(self.role)]
        if wrong:
            raise ValueError(f"{self.source}: a {self.role} profile cannot hold {', '.join(sorted(wrong))} rows")
        values = self.latency[["median_ms", "p10_ms", "p90_ms"]].to_numpy(dtype=float).ravel().tolist()
        values += list(self._warm.values())
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise ValueError(f"{self.source}: latency values must be finite and >= 0")


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise linear through (xs, ys) (xs sorted, distinct), constant beyond the ends."""
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def _check_idle(curve: Any, source: str) -> None:
    if not isinstance(curve, dict) or not isinstance(curve.get("gap_ms"), list) or not isinstance(curve.get("factor"), list):
        raise ValueError(f"{source}: malformed profile, meta['idle'] needs gap_ms and factor lists")
    gaps, factors = curve["gap_ms"], curve["factor"]
    if len(gaps) != len(factors) or not gaps:
        raise ValueError(f"{source}: meta['idle'] gap_ms and factor must be non-empty lists of the same length")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in [*gaps, *factors]):
        raise ValueError(f"{source}: meta['idle'] values must be finite numbers > 0")
    if list(gaps) != sorted(set(gaps)):
        raise ValueError(f"{source}: meta['idle'] gap_ms must be strictly increasing")


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
    if meta.get("idle") is not None:
        _check_idle(meta["idle"], source)
    rows = doc.get("overhead")
    if rows is None:
        return
    if not isinstance(rows, list):
        raise ValueError(f"{source}: malformed profile, 'overhead' is not a list of rows")
    keys = overhead_keys(meta["role"])
    other = [p for p in OVERHEAD_PARTS if p not in keys]
    for i, row in enumerate(rows):
        lacking = [k for k in keys if not isinstance(row, dict) or k not in row]
        if lacking:
            raise ValueError(f"{source}: malformed profile, overhead row {i} lacks {', '.join(lacking)}")
        foreign = [p for p in other if p in row]
        if foreign:
            raise ValueError(f"{source}: a {meta['role']} profile's overhead rows cannot hold {', '.join(foreign)} "
                             f"(that part belongs to the other role's profile)")


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
    from profiles.runner import write_json  # here: onnxruntime loads only when a profile is written

    Profile(doc, str(path))
    return write_json(doc, path)


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
                                   f"{', '.join(available_profiles(name, root))}; "
                                   f"{how_to_make(model, input_size, _role_of(name, root))}")
    profile = Profile(read_json(path), str(path))
    if (profile.model, profile.input_size) != (model, int(input_size)):
        raise ValueError(f"{path} holds {profile.model} at {profile.input_size}px: the file is misnamed")
    return profile


def _role_of(device: str, root: str | Path | None = None) -> str:
    """The role of a device's existing profiles ("device" when it has none that say)."""
    for stem in available_profiles(device, root):
        try:
            return str(json.loads((Path(root or DATA_ROOT) / device / f"{stem}.json").read_text())["meta"]["role"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return "device"


def how_to_make(model: str, input_size: int, role: str = "device") -> str:
    """One line naming the commands that make a missing profile (README: Profiling a real end device)."""
    out = f"bundle-{model}-{int(input_size)}px" + ("" if role == "device" else "-server")
    server = role == "server"
    return (f"make one with `python -m profiles bundle --model {model} --input-size {int(input_size)}"
            f"{' --role server' if server else ''} --out {out}`, run `python {out}/runner.py --out "
            f"{'server' if server else 'device'}.json{' --threads 2' if server else ''}` on the "
            f"{'server' if server else 'device'} (numpy and onnxruntime suffice) and pass "
            f"{'--server server.json' if server else '--end_device device.json'}")


def shipped_models(root: str | Path | None = None) -> dict[str, list[int]]:
    """{model: input sizes} some device under `root` (the shipped data) has a profile for; reads no file."""
    stems = {stem for d in available_devices(root) for stem in available_profiles(d, root)}
    out: dict[str, list[int]] = {}
    for stem in stems:
        model, _, size = stem.rpartition("-")
        out.setdefault(model, []).append(int(size.removesuffix("px")))
    return {m: sorted(sizes) for m, sizes in sorted(out.items())}


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


def foreign_profiles(*profiles: Profile, cpu: str | None = None) -> str | None:
    """One line naming the profiles timed on a CPU other than `cpu` (this machine's by default), else None.

    A deployment on loopback runs every tier here, so a profile from another machine (or the emulations
    derived from its rows) predicts another CPU: the deployed check then measures the machines' gap too."""
    if cpu is None:
        from profiles.runner import cpu_name
        cpu = cpu_name()
    other = [p for p in profiles if p.meta.get("cpu") and p.meta["cpu"] != cpu]
    if not other:
        return None
    names = ", ".join(f"{p.device} ({p.meta['cpu']}, {str(p.meta.get('date', '?'))[:10]})" for p in other)
    sizes = sorted({p.input_size for p in other})
    return (f"note: profiles timed on another CPU than this one ({cpu}): {names}; the deployed figures compare "
            f"this machine with those tables (re-measure here: python -m profiles defaults "
            + " ".join(f"--input-size {s}" for s in sizes) + ")")

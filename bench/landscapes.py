"""Landscapes to replay a search on: (k, r) -> per-sample arrays, with the profiles they go with.

- synthetic: a shipped device/server profile pair re-gridded to many ratios (latency, bytes and shapes
  interpolated linearly in r between the measured ratios; exits dropped, 2-tier as in CNNPC's tables) and
  accuracies drawn per seed: a per-split drop that grows with r, plus independent noise per (k, r), so
  accuracy is not monotone in r.  Labelled synthetic wherever it is reported.
- measured: a grid this project fine-tuned (every candidate of a run's space), read from the cache.

Both give raw arrays ({"label", "final": {codec: pred}, ...}) for bench/oracle.py and the same candidates
as a measurements CSV for the product (`auto.py --measurements`).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "profiles" / "data"


@dataclass
class Landscape:
    name: str
    device: dict  # profile documents
    server: dict
    arrays: dict  # (k, r) -> {"selection": {...}, "test": {...}} raw arrays
    kind: str  # "synthetic" or "measured"
    codecs: dict | None = None  # k -> the codecs searched there; None: fp32 (raw at k = 0)
    csv: Path | None = None  # the measurements file it was read from (measured landscapes)

    def codecs_at(self, k: int) -> list[str]:
        if self.codecs:
            return self.codecs[k]
        return ["raw"] if k == 0 else ["fp32"]

    @property
    def ratios(self) -> list[float]:
        return [round(float(r), 4) for r in self.device["meta"]["ratios"]]

    @property
    def K(self) -> int:
        return int(self.device["meta"]["K"])


def regrid(doc: dict, ratios: list[float], keep_exits: bool = False) -> dict:
    """A profile document on another ratio grid, each row interpolated linearly in r at its split."""
    out = copy.deepcopy(doc)
    old = [round(float(r), 4) for r in doc["meta"]["ratios"]]
    out["meta"]["ratios"] = ratios
    out["meta"]["method"] = (f"{doc['meta']['method']}; synthetic: interpolated linearly in r from the measured "
                             f"ratios {old} to {len(ratios)} ratios")
    out["meta"]["device"] = f"{doc['meta']['device']}-regridded"
    rows = []
    server = doc["meta"]["role"] == "server"
    dropped = set() if keep_exits else {"exit"} | ({"head"} if server else set())  # a server's head goes with its exit
    parts = {row["part"] for row in doc["latency"]} - dropped
    for part in parts:
        for k in range(int(doc["meta"]["K"]) + 1):
            src = {round(float(x["r"]), 4): x for x in doc["latency"] if x["part"] == part and int(x["k"]) == k}
            xs = sorted(src)
            if not xs:  # no such part at this split (an exit at k = 0 or K)
                continue
            for r in ([0.0] if server and part != "tail" else ratios):  # a server's head and exit: r = 0 only
                row = {key: float(np.interp(r, xs, [src[x][key] for x in xs]))
                       for key in ("mean_ms", "median_ms", "p10_ms", "p90_ms") if key in src[xs[0]]}
                rows.append({"part": part, "k": k, "r": r, **row, "n": src[xs[0]]["n"]})
    out["latency"] = rows
    bytes_rows = []
    for k in range(int(doc["meta"]["K"]) + 1):
        for codec in {b["codec"] for b in doc["bytes"]}:
            src = {round(float(b["r"]), 4): b for b in doc["bytes"] if int(b["k"]) == k and b["codec"] == codec}
            xs = sorted(src)
            for r in ratios:
                per_channel = src[xs[0]]["bytes"] / src[xs[0]]["shape"][0]
                channels = int(round(np.interp(r, xs, [src[x]["shape"][0] for x in xs])))
                shape = [channels, *src[xs[0]]["shape"][1:]]
                bytes_rows.append({"k": k, "r": r, "codec": codec, "bytes": int(round(per_channel * channels)),
                                   "shape": shape})
    out["bytes"] = bytes_rows
    out["overhead"] = [o for o in doc.get("overhead") or [] if round(float(o["r"]), 4) in ratios]
    return out


def load_doc(device: str, model: str, size: int) -> dict:
    return json.loads((PROFILES / device / f"{model}-{size}px.json").read_text())


def counted(acc: float, n: int, rng: np.random.Generator) -> dict:
    """Per-sample arrays with a binomial draw of right answers around `acc` (labels 0, wrong 1)."""
    right = rng.random(n) < acc
    return {"label": np.zeros(n, dtype=np.int64), "final": {"fp32": np.where(right, 0, 1).astype(np.int64)}}


def synthetic(model: str, seed: int, n_ratios: int = 40, device: str = "emulated-10x", size: int = 32,
              base_acc: float = 0.92, noise: float = 0.004, n: int = 4000) -> Landscape:
    """Accuracy = base - a_k (r / r_max)^p_k + noise: splits differ in how much pruning they tolerate."""
    rng = np.random.default_rng(seed)
    ratios = [round(0.975 * i / (n_ratios - 1), 4) for i in range(n_ratios)]  # 0.025 apart at 40
    dev = regrid(load_doc(device, model, size), ratios)
    srv = regrid(load_doc("server", model, size), ratios)
    K = int(dev["meta"]["K"])
    arrays = {}
    drop = rng.uniform(0.05, 0.5, K + 1)
    power = rng.uniform(1.0, 3.0, K + 1)
    for k in range(K + 1):
        for r in (ratios if k else [0.0]):
            mean = base_acc - drop[k] * (r / ratios[-1]) ** power[k] + (rng.normal(0, noise) if r > 0 else 0.0)
            mean = float(np.clip(mean, 0.1, 0.999))
            arrays[(k, r)] = {"selection": counted(mean, n, rng), "test": counted(mean, n, rng)}
    # k = 0 and r = 0 everywhere run the same unpruned network: one accuracy for all of them
    for k in range(K + 1):
        arrays[(k, 0.0)] = arrays[(0, 0.0)]
    return Landscape(f"synthetic {model} {device} {n_ratios} ratios seed {seed}", dev, srv, arrays, "synthetic")


def to_csv(land: Landscape, path: Path) -> Path:
    """The landscape as a measurements file for `auto.py --measurements` (accuracy counts, no arrays)."""
    import pandas as pd

    rows = []
    for (k, r), s in sorted(land.arrays.items()):
        sel, test = s["selection"], s["test"]
        codec = "raw" if k == 0 else "fp32"
        pred = sel["final"]["fp32"]
        rows.append({"k": k, "r": r, "codec": codec, "top1": float(np.mean(pred == sel["label"])), "n": len(pred),
                     "test_top1": float(np.mean(test["final"]["fp32"] == test["label"])), "n_test": len(test["label"])})
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False, float_format="%.10g")
    return path


FEATURES, IMAGES = ["fp32", "fp16", "int8", "int8-zlib"], ["raw", "png", "jpeg90", "jpeg75", "jpeg50", "webp90",
                                                          "webp75", "webp50"]


def _npz(path: Path) -> dict:
    """A candidate's per-sample arrays from its .npz (keys "<split>.<field>[.<codec>]"), read directly."""
    out: dict = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            split, name, *codec = key.split(".")
            d = out.setdefault(split, {"final": {}, "nbytes": {}})
            if codec:
                d.setdefault(name, {})[codec[0]] = z[key]
            else:
                d[name] = z[key]
    return out


def measured(csv: Path, model: str, device: str = "emulated-10x", size: int = 32) -> Landscape:
    """A grid this project measured (bench/measure_grid.py) with the shipped profiles it was cut for."""
    import pandas as pd

    df = pd.read_csv(csv)
    arrays = {(int(row.k), round(float(row.r), 4)): _npz(csv.parent / row.arrays) for row in df.itertuples()}
    dev, srv = load_doc(device, model, size), load_doc("server", model, size)
    ratios = sorted({r for _, r in arrays})
    if ratios != [round(float(r), 4) for r in dev["meta"]["ratios"]]:  # a grid measured on part of the ratios
        dev, srv = regrid(dev, ratios, keep_exits=True), regrid(srv, ratios, keep_exits=True)
    K = int(dev["meta"]["K"])
    codecs = {k: IMAGES if k == 0 else FEATURES if k < K else ["fp32"] for k in range(K + 1)}
    return Landscape(f"measured {model} {csv.parent.name} {device}", dev, srv, arrays, "measured", codecs, csv)

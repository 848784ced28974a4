"""A compression candidate (k, r): pruned head, early exit at the split, fine-tuned, evaluated, cached.

The exit branch reads the (pruned) split tensor and is trained on the frozen head's features, so it
never changes what the server receives.  The evaluation keeps per-sample arrays, so the accuracy and
exit rate of any threshold, and of any codec, cost no inference.
"""
from __future__ import annotations

import io
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress import codec as codecs
from compress import store
from compress.base import BaseModel
from compress.data import DataSplits
from compress.prune import check, prune
from compress.train import Recipe, autocast, fit, seed_everything
from compress.zoo import SplitModel

FINETUNE = Recipe(epochs=3, lr=3e-3, patience=2)  # measured: 3e-3 recovers more than 1e-3 on digits
EXIT_EPOCHS = 20
SPLITS = ("selection", "test")  # what a candidate is evaluated on per sample (val only steers training)


class ExitBranch(nn.Module):
    """A cheap classifier on the split tensor: 1x1 conv, pooling and a linear layer."""

    def __init__(self, channels: int, num_classes: int, hidden: int = 128):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                                  nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class HeadWithExit(nn.Module):
    """blocks -> (exit logits, split tensor) in one graph: what the end device (head.onnx), a profile's fused
    part and an edge running the exit (edge.onnx) export."""

    def __init__(self, head: nn.Module, exit_branch: nn.Module):
        super().__init__()
        self.head, self.exit = head, exit_branch

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.head(x)
        return self.exit(feats), feats


@dataclass
class Evaluation:
    """Per-sample arrays of one candidate on one split; `final` and `final_top5` are per codec."""

    label: np.ndarray
    exit_conf: np.ndarray | None  # max softmax of the exit; None where the split has no exit
    exit_pred: np.ndarray | None
    exit_top5: np.ndarray | None  # label within the exit's top five
    final: dict[str, np.ndarray]
    final_top5: dict[str, np.ndarray]
    nbytes: dict[str, np.ndarray] = field(default_factory=dict)  # per-sample bytes of variable-size codecs

    def _codec(self, codec: str | None) -> str:
        """The pass that answers for `codec`: None is the first (fp32, or raw at k = 0, where fp32 means raw)."""
        if codec is None or (codec == "fp32" and codec not in self.final and "raw" in self.final):
            return next(iter(self.final))
        if codec not in self.final:
            raise ValueError(f"no evaluation under codec {codec!r} (evaluated: {', '.join(self.final)})")
        return codec

    def has(self, codec: str) -> bool:
        """Whether this evaluation answers for `codec` (a candidate measured elsewhere may hold one codec)."""
        try:
            self._codec(codec)
        except ValueError:
            return False
        return not codecs.is_variable(codec) or codec in self.nbytes

    def sample_bytes(self, codec: str) -> np.ndarray:
        """Measured bytes per sample under a variable-size codec."""
        if codec not in self.nbytes:
            raise ValueError(f"no per-sample bytes for codec {codec!r} (measured: {', '.join(self.nbytes) or 'none'})")
        return self.nbytes[codec]

    def exits(self, threshold: float | None) -> np.ndarray:
        """Per sample: answered at the exit, i.e. its confidence >= t (never with t = None or no exit).

        The one exit rule: exit rates, accuracies and a deployment's expected answers all follow it.
        """
        if threshold is None or self.exit_conf is None:
            return np.zeros(len(self.label), dtype=bool)
        return self.exit_conf >= threshold

    def exit_rate(self, thresholds) -> np.ndarray:
        """Fraction answered at the exit for each threshold (None = no exit); NaN without samples."""
        if not len(self.label):
            return np.full(len(np.atleast_1d(np.asarray(thresholds, dtype=object))), np.nan)
        return np.array([float(self.exits(t).mean()) for t in np.atleast_1d(np.asarray(thresholds, dtype=object))])

    def accuracy(self, thresholds, codec: str | None = None, metric: str = "top1") -> np.ndarray:
        """Accuracy for each threshold: the exit answers where its confidence >= t, the tail elsewhere."""
        codec = self._codec(codec)
        final = self.final[codec] == self.label if metric == "top1" else self.final_top5[codec]
        if not len(self.label):  # a candidate measured elsewhere without held-out samples
            return np.full(len(np.atleast_1d(np.asarray(thresholds, dtype=object))), np.nan)
        if self.exit_conf is None:
            return np.full(len(np.atleast_1d(np.asarray(thresholds, dtype=object))), float(final.mean()))
        exit_ok = self.exit_pred == self.label if metric == "top1" else self.exit_top5
        return np.array([float(np.where(self.exits(t), exit_ok, final).mean())
                         for t in np.atleast_1d(np.asarray(thresholds, dtype=object))])

    def answers(self, threshold: float | None, codec: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per sample: answered at the exit, and the class the split model answers.

        What a deployment of this candidate must reproduce sample by sample (same data, same order).
        """
        at_exit = self.exits(threshold)
        final = self.final[self._codec(codec)]
        return at_exit, (final if self.exit_pred is None else np.where(at_exit, self.exit_pred, final))

    def curve(self, codec: str | None = None, metric: str = "top1") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(thresholds, accuracy, exit rate) at every distinct exit confidence, in decreasing order.

        Accuracy and exit rate only change at a sample's confidence, so these thresholds cover every
        outcome a continuous t can have; one sort and a cumulative sum, no loop.
        """
        if self.exit_conf is None:
            return np.empty(0), np.empty(0), np.empty(0)
        codec = self._codec(codec)
        final_ok = (self.final[codec] == self.label) if metric == "top1" else self.final_top5[codec]
        exit_ok = (self.exit_pred == self.label) if metric == "top1" else self.exit_top5
        order = np.argsort(-self.exit_conf, kind="stable")
        conf = self.exit_conf[order]
        gain = np.cumsum(exit_ok[order].astype(int) - final_ok[order].astype(int))
        last = np.r_[np.nonzero(np.diff(conf))[0], len(conf) - 1]  # last sample of each confidence value
        n = len(conf)
        return conf[last].astype(float), (final_ok.sum() + gain[last]) / n, (last + 1) / n


def pack_evaluations(evaluations: dict[str, Evaluation]) -> bytes:
    """Per-split evaluations as one .npz blob: the file cache and the project tables store this."""
    arrays = {}
    for split, ev in evaluations.items():
        for name, value in ev.__dict__.items():
            if isinstance(value, dict):
                arrays.update({f"{split}.{name}.{c}": a for c, a in value.items()})
            elif value is not None:
                arrays[f"{split}.{name}"] = value
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def unpack_evaluations(blob: bytes) -> dict[str, Evaluation]:
    """Inverse of pack_evaluations; never unpickles."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        fields: dict[str, dict] = {}
        for key in z.files:
            split, name, *codec = key.split(".")
            f = fields.setdefault(split, {"exit_conf": None, "exit_pred": None, "exit_top5": None,
                                          "final": {}, "final_top5": {}, "nbytes": {}})
            if codec:
                f[name][codec[0]] = z[key]
            else:
                f[name] = z[key]
    return {split: Evaluation(**f) for split, f in fields.items()}


@dataclass
class Candidate:
    k: int
    ratio: float
    model: SplitModel  # pruned network: head(k) on the device, tail(k) on the server
    exit: ExitBranch | None
    evaluations: dict[str, Evaluation]  # "selection" and "test"
    meta: dict = field(default_factory=dict)  # timings, fine-tune history, bytes, cache path

    def head(self) -> nn.Sequential:
        return self.model.head(self.k).eval()

    def tail(self) -> nn.Sequential:
        return self.model.tail(self.k).eval()


def exit_allowed(k: int, K: int) -> bool:
    return 0 < k < K


def _topk_hit(logits: torch.Tensor, labels: torch.Tensor, k: int = 5) -> torch.Tensor:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def codecs_at(k: int, K: int) -> tuple[str, ...]:
    """What a split can send: the image under an input codec (k = 0), features under a feature codec
    (0 < k < K), nothing at k = K (one pass, named fp32 by convention)."""
    return codecs.INPUT_CODECS if k == 0 else codecs.FEATURE_CODECS if k < K else ("fp32",)


@torch.no_grad()
def evaluate(model: SplitModel, exit_branch: nn.Module | None, k: int, data: DataSplits, split: str,
             codec_names: tuple[str, ...] | None = None) -> Evaluation:
    """Per-sample exit and final predictions on a split, what is sent passed through each codec.

    At k = 0 the uint8 images go through each input codec (decoded images, bytes measured per sample);
    at 0 < k < K the split tensor goes through each feature codec.  A two-link codec (codec.via: an edge
    runs blocks [k, k2) and sends on under a codec of its own) passes the tensor at k2 through that one too.
    A lossless codec (codec.SAME_LOSS: int8-zlib on int8, PNG on raw) shares the answers of the codec it
    loses as much as, so only its bytes are measured.
    """
    model.eval()
    head, tail = model.head(k).eval(), model.tail(k).eval()
    if exit_branch is not None:
        exit_branch.eval()
    names = codec_names or codecs_at(k, model.K)
    cols: dict[str, list] = {"label": [], "conf": [], "pred": [], "top5": []}
    passes = list(dict.fromkeys(codecs.same_loss(c) for c in names))
    finals: dict[str, list] = {c: [] for c in passes}
    finals5: dict[str, list] = {c: [] for c in passes}
    sizes: dict[str, list] = {c: [] for c in names if codecs.is_variable(c)}
    for images, labels in data.loader(split, batch_size=256):
        cols["label"].append(labels)
        received: dict[str, torch.Tensor] = {}  # block k's input as each first-link codec delivers it
        nbytes: dict[str, np.ndarray] = {}  # per-sample bytes of each variable first-link codec
        at_k2: dict[tuple[str, int], torch.Tensor] = {}  # the edge's output per first-link codec and cut
        if k == 0:
            sent = images.numpy()
        else:
            feats = head(data.normalize(images))
            sent = feats.numpy()
            if exit_branch is not None:
                probs = F.softmax(exit_branch(feats), dim=1)
                conf, pred = probs.max(dim=1)
                cols["conf"].append(conf)
                cols["pred"].append(pred)
                cols["top5"].append(_topk_hit(probs, labels))

        def arrive(c1: str) -> torch.Tensor:
            if c1 not in received:
                if k == 0:
                    decoded, nbytes[c1] = codecs.roundtrip_images(sent, c1)
                    received[c1] = data.normalize(torch.from_numpy(decoded))
                else:
                    received[c1] = codecs.roundtrip(feats, c1) if k < model.K else feats
            return received[c1]

        for c in passes:
            c1, k2, c2 = codecs.split_via(c)
            if k2 is None:
                logits = tail(arrive(c1))
            else:  # the edge's blocks (once per first codec and cut), the second link's loss, the cloud's
                if (c1, k2) not in at_k2:
                    at_k2[(c1, k2)] = model.blocks(k, k2)(arrive(c1))
                logits = model.blocks(k2, model.K)(codecs.roundtrip(at_k2[(c1, k2)], c2))
            finals[c].append(logits.argmax(1))
            finals5[c].append(_topk_hit(logits, labels))
        for c in sizes:
            c1 = codecs.first(c)
            if c1 not in nbytes:  # a lossless codec: encoded for its bytes only
                nbytes[c1] = codecs.sample_bytes(sent, c1)
            sizes[c].append(torch.from_numpy(nbytes[c1]))
    cat = lambda xs: torch.cat(xs).numpy() if xs else None  # noqa: E731
    of = codecs.same_loss
    return Evaluation(cat(cols["label"]), cat(cols["conf"]), cat(cols["pred"]), cat(cols["top5"]),
                      {c: cat(finals[of(c)]) for c in names}, {c: cat(finals5[of(c)]) for c in names},
                      {c: cat(v) for c, v in sizes.items()})


@torch.no_grad()
def _features(head: nn.Module, data: DataSplits, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    head.eval()
    xs, ys = zip(*((head(data.normalize(x)), y) for x, y in data.loader(split, batch_size=256)))
    return torch.cat(xs), torch.cat(ys)


def train_exit(head: nn.Module, exit_branch: ExitBranch, data: DataSplits, epochs: int, seed: int,
               lr: float = 1e-2, batch_size: int = 64, precision: str = "fp32") -> None:
    """Train the exit on the frozen head's features, computed once (the head stays as it is)."""
    seed_everything(seed)
    feats, labels = _features(head, data, "train")
    opt = torch.optim.AdamW(exit_branch.parameters(), lr=lr, weight_decay=1e-4)
    steps = -(-len(feats) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    exit_branch.train()
    for _ in range(epochs):
        order = torch.randperm(len(feats))
        for i in range(0, len(feats), batch_size):
            idx = order[i:i + batch_size]
            with autocast(precision):
                logits = exit_branch(feats[idx]).float()
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    exit_branch.eval()


def candidate_key(base: BaseModel, k: int, ratio: float, importance: str = "magnitude", recipe: Recipe = FINETUNE,
                  exit_epochs: int = EXIT_EPOCHS, seed: int = 0) -> dict:
    """Everything that determines a candidate's weights and evaluation."""
    return {"base": base.digest, "k": k, "r": round(float(ratio), 4), "importance": importance,
            "recipe": recipe.key(), "exit_epochs": exit_epochs, "seed": seed, "format": 3}


def candidate_path(key: dict):
    return store.cache_root() / "candidates" / key["base"] / f"k{key['k']}-r{key['r']}-{store.digest(key)}.pt"


def build_candidate(base: BaseModel, data: DataSplits, k: int, ratio: float, importance: str = "magnitude",
                    recipe: Recipe = FINETUNE, exit_epochs: int = EXIT_EPOCHS, seed: int = 0,
                    on_epoch: Callable[[int, float], None] | None = None, progress: bool = True) -> Candidate:
    """Prune, fine-tune (r > 0, distilling from the base model), train the exit and evaluate; cached.

    `on_epoch(epoch, val_acc)` sees every fine-tuning epoch and may raise to abandon the candidate
    (nothing is cached then).
    """
    ratio = round(float(ratio), 4)
    check(base.model, k, ratio, importance)
    key = candidate_key(base, k, ratio, importance, recipe, exit_epochs, seed)
    path = candidate_path(key)
    with store.locked(path):
        model = prune(base.model, k, ratio, data.input_size, importance)
        exit_branch = _make_exit(model, k, data) if exit_allowed(k, model.K) else None
        if path.exists():
            entry = store.load(path)
            model.load_state_dict(entry["model"])
            if exit_branch is not None:
                exit_branch.load_state_dict(entry["exit"])
            evals = unpack_evaluations(entry["evaluations"])
            return Candidate(k, ratio, model.eval(), exit_branch, evals, {**entry["meta"], "cached": True})
        start = time.perf_counter()
        history = []
        if ratio > 0 and k > 0:
            history = fit(model, data, recipe, seed=seed, teacher=base.model, on_epoch=on_epoch,
                          desc=f"fine-tune k={k} r={ratio}", progress=progress)
        finetune_s = time.perf_counter() - start
        if exit_branch is not None:
            train_exit(model.head(k), exit_branch, data, exit_epochs, seed, precision=recipe.precision)
        evals = {s: evaluate(model, exit_branch, k, data, s) for s in SPLITS}
        meta = {**key, "history": history, "finetune_seconds": round(finetune_s, 3),
                "total_seconds": round(time.perf_counter() - start, 3), "path": str(path),
                "val_acc": history[-1]["val_acc"] if history else None,
                "sel_acc": float(evals["selection"].accuracy([None])[0]),
                "test_acc": float(evals["test"].accuracy([None])[0])}
        store.save({"model": model.state_dict(), "exit": exit_branch.state_dict() if exit_branch else None,
                    "evaluations": pack_evaluations(evals), "meta": meta}, path)
    return Candidate(k, ratio, model.eval(), exit_branch, evals, {**meta, "cached": False})


def add_codecs(candidate: Candidate, data: DataSplits, names) -> Candidate:
    """`candidate` with its evaluations extended to the codecs `names` it lacks (two-link codecs: they are
    asked for only with an edge tier), evaluated once and kept in its cache entry beside the others."""
    missing = tuple(c for c in dict.fromkeys(names) if c not in candidate.evaluations["selection"].final)
    if not missing:
        return candidate
    for split in SPLITS:
        ev, more = candidate.evaluations[split], evaluate(candidate.model, candidate.exit, candidate.k, data, split,
                                                          missing)
        ev.final.update(more.final)
        ev.final_top5.update(more.final_top5)
        ev.nbytes.update(more.nbytes)
    path = candidate.meta.get("path")
    if path:
        path = Path(path)
        with store.locked(path):
            if path.exists():
                entry = store.load(path)
                stored = unpack_evaluations(entry["evaluations"])  # another process may have added its own
                for split, ev in candidate.evaluations.items():
                    for name in ("final", "final_top5", "nbytes"):
                        getattr(stored[split], name).update(getattr(ev, name))
                entry["evaluations"] = pack_evaluations(stored)
                store.save(entry, path)
    return candidate


def _make_exit(model: SplitModel, k: int, data: DataSplits) -> ExitBranch:
    with torch.no_grad():
        feats = model.head(k).eval()(torch.zeros(1, 3, data.input_size, data.input_size))
    torch.manual_seed(k)
    return ExitBranch(feats.shape[1], data.num_classes)

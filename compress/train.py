"""Training and fine-tuning: one loop for the base model and for pruned candidates (with distillation)."""
from __future__ import annotations

import copy
import random
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from compress.data import DataSplits
from compress.names import PRECISIONS, check_precision  # noqa: F401 - PRECISIONS re-exported


WARMUP = 0.3  # share of the schedule spent raising the learning rate; no early stop before its end


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of a training run; part of every cache key."""

    epochs: int = 20
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    patience: int = 4  # epochs without a better validation loss before stopping (after warm-up)
    shift: float = 0.0  # random translation, as a fraction of the input size (hurt on digits)
    kd_alpha: float = 0.7  # weight of the distillation term when a teacher is given
    kd_temperature: float = 4.0
    precision: str = "fp32"  # or "bf16": autocast + channels_last, ~2x faster on CPUs with AMX (measured)

    def key(self) -> dict:
        return asdict(self)


def autocast(precision: str):
    """Mixed precision for the forward pass; the weights and the optimiser stay in fp32."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def memory_format(precision: str) -> torch.memory_format:
    return torch.channels_last if precision == "bf16" else torch.contiguous_format


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _shift(images: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Random translation per sample, zero padded (digits are centred; this is their augmentation)."""
    pad = int(round(images.shape[-1] * fraction))
    if pad == 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    off = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
    return torch.stack([padded[i, :, a:a + h, b:b + w] for i, (a, b) in enumerate(off.tolist())])


@torch.no_grad()
def evaluate(model: nn.Module, data: DataSplits, split: str = "val") -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) of `model` on a split."""
    model.eval()
    correct, loss, n = 0, 0.0, 0
    for x, y in data.loader(split, batch_size=256):
        logits = model(data.normalize(x))
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    return correct / n, loss / n


def fit(model: nn.Module, data: DataSplits, recipe: Recipe, seed: int = 0, teacher: nn.Module | None = None,
        on_epoch: Callable[[int, float], None] | None = None, desc: str = "train",
        progress: bool = True) -> list[dict]:
    """Train `model` in place with Adam + cosine schedule and early stopping on validation loss.

    With a `teacher`, the loss mixes distillation (soft targets at `kd_temperature`) and cross-entropy.
    `on_epoch(epoch, val_acc)` runs after every epoch and may raise to stop (an Optuna pruner does).
    The weights of the epoch with the lowest validation loss after warm-up are kept.
    """
    check_precision(recipe.precision)
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    fmt = memory_format(recipe.precision)
    model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    loader = data.loader("train", recipe.batch_size, shuffle=True, seed=seed)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, pct_start=WARMUP,
                                                total_steps=recipe.epochs * len(loader))
    if teacher is not None:
        teacher.eval().to(memory_format=fmt)
    best, best_state, stale, history = float("inf"), None, 0, []
    bar = tqdm(range(recipe.epochs), desc=desc, leave=False, disable=not progress)
    for epoch in bar:
        model.train()
        for x, y in loader:
            x = data.normalize(_shift(x, recipe.shift, gen)).contiguous(memory_format=fmt)
            with autocast(recipe.precision):
                logits = model(x).float()
            loss = F.cross_entropy(logits, y)
            if teacher is not None:
                with torch.no_grad(), autocast(recipe.precision):
                    soft = F.softmax(teacher(x).float() / recipe.kd_temperature, dim=1)
                kd = F.kl_div(F.log_softmax(logits / recipe.kd_temperature, dim=1), soft, reduction="batchmean")
                loss = recipe.kd_alpha * kd * recipe.kd_temperature ** 2 + (1 - recipe.kd_alpha) * loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc, val_loss = evaluate(model, data, "val")
        history.append({"epoch": epoch + 1, "val_acc": acc, "val_loss": val_loss})
        bar.set_postfix(val_acc=f"{acc:.3f}", val_loss=f"{val_loss:.3f}")
        if on_epoch is not None:
            on_epoch(epoch + 1, acc)
        if epoch + 1 <= WARMUP * recipe.epochs:
            continue  # the learning rate is still rising: these weights are not candidates
        if val_loss < best:
            best, best_state, stale = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
        if stale >= recipe.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    for m in (model, teacher):  # pruning, export and evaluation expect the default layout
        if m is not None:
            m.to(memory_format=torch.contiguous_format)
    model.eval()
    return history

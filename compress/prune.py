"""Structured channel pruning of the device side (blocks [0, k)) with torch-pruning's dependency graph.

The whole network is pruned with every server-side layer ignored.  torch-pruning then removes output
channels only inside the head, including the split tensor's own channels, and the dependency graph
trims the *input* channels of the first server-side layers that consume them (the first conv of the
next stage, and a ResNet stage's downsample branch).  Nothing else in the tail changes, which is why
the tail's latency is profiled per (k, r) too.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch_pruning as tp
from torch import nn

from compress.zoo import SplitModel

IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "magnitude": lambda: tp.importance.MagnitudeImportance(p=2),
    "l1": lambda: tp.importance.MagnitudeImportance(p=1),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
    "random": lambda: tp.importance.RandomImportance(),
}
RATIO_GRID = tuple(round(0.1 * i, 1) for i in range(10))


def check(model: SplitModel, k: int, ratio: float, importance: str = "magnitude") -> None:
    """Raise a one-line ValueError for a candidate that cannot exist."""
    model._check_k(k)
    if not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio r={ratio!r} is outside [0, 1)")
    if importance not in IMPORTANCES:
        raise ValueError(f"unknown importance {importance!r}; choose one of: {', '.join(IMPORTANCES)}")


def prune(model: SplitModel, k: int, ratio: float, input_size: int, importance: str = "magnitude") -> SplitModel:
    """A pruned copy of `model`: blocks [0, k) lose `ratio` of their channels; `model` is untouched."""
    check(model, k, ratio, importance)
    pruned = copy.deepcopy(model).eval()
    if k == 0 or ratio == 0.0:
        return pruned
    ignored: list[nn.Module] = list(pruned.tail(k).modules())
    ignored += [m for m in pruned.modules() if isinstance(m, nn.Linear) and m.out_features == _classes(pruned)]
    pruner = tp.pruner.MetaPruner(
        pruned,
        example_inputs=torch.zeros(1, 3, input_size, input_size),
        importance=IMPORTANCES[importance](),
        pruning_ratio=float(ratio),
        ignored_layers=ignored,
    )
    pruner.step()
    pruned.arch = model.arch
    return pruned


def _classes(model: SplitModel) -> int:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

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
    example = torch.zeros(1, 3, input_size, input_size)
    pruner = tp.pruner.MetaPruner(
        pruned,
        example_inputs=example,
        importance=IMPORTANCES[importance](),
        pruning_ratio=float(ratio),
        ignored_layers=_server_only_layers(pruned, k, example),
    )
    pruner.step()
    pruned.arch = model.arch
    return pruned


def _server_only_layers(model: SplitModel, k: int, example: torch.Tensor) -> list[nn.Module]:
    """Layers whose output channels must stay: every tail layer not coupled to a head layer's channels.

    A coupled group (for example a ResNet stage whose residual stream starts in the stem) is pruned as
    a whole, tail members included: the dependency graph keeps the network consistent.  The classifier
    keeps its classes.
    """
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    head = set(model.head(k).modules())
    coupled: set[nn.Module] = set()
    for group in graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)):
        outs = [dep.target.module for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)]
        if any(m in head for m in outs):
            coupled.update(outs)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return [m for m in layers if m not in head and m not in coupled] + [layers[-1]]


def coupled_tail_layers(model: SplitModel, pruned: SplitModel, k: int) -> list[str]:
    """Names of server-side layers whose output channels pruning changed (shared residual channels)."""
    before = dict(model.tail(k).named_modules())
    return [name for name, m in pruned.tail(k).named_modules()
            if isinstance(m, nn.Conv2d) and m.out_channels != before[name].out_channels]


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

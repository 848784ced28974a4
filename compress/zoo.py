"""Model zoo: torchvision architectures as ordered lists of named blocks.

Split point k (0..K) means blocks [0, k) run on the end device and [k, K) on the server;
exactly one tensor flows across every boundary.  Blocks follow the architectures' stages so
that no residual connection crosses a boundary.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torchvision import models as tvm

from compress.codec import payload_bytes
from compress.names import MODELS


class Classifier(nn.Module):
    """Pooling, flatten and the torchvision classifier, as one block."""

    def __init__(self, pool: nn.Module, head: nn.Module):
        super().__init__()
        self.pool = pool
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(_pool(self.pool, x), 1))


def _pool(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`pool(x)`; an adaptive average pool up to a multiple of the input's size averages one input cell
    per output cell, i.e. it repeats each cell: written as a nearest-neighbour resize, which the ONNX
    exporter takes (it refuses a pool whose output size is not a factor of its input's: vgg11_bn at 32 px)."""
    if isinstance(pool, nn.AdaptiveAvgPool2d):
        h, w = int(x.shape[-2]), int(x.shape[-1])
        size = pool.output_size if isinstance(pool.output_size, tuple) else (pool.output_size,) * 2
        oh, ow = (h if size[0] is None else size[0]), (w if size[1] is None else size[1])
        if (oh, ow) != (h, w) and oh % h == 0 and ow % w == 0:
            return nn.functional.interpolate(x, size=(oh, ow), mode="nearest")
    return pool(x)


def _mobilenet_v2(m: tvm.MobileNetV2) -> list[tuple[str, nn.Module]]:
    f = m.features
    stages = [("stem", 0, 2), ("stage24", 2, 4), ("stage32", 4, 7), ("stage64", 7, 11),
              ("stage96", 11, 14), ("stage160", 14, 17), ("stage320", 17, 18), ("conv1280", 18, 19)]
    blocks = [(name, nn.Sequential(*f[a:b])) for name, a, b in stages]
    return blocks + [("classifier", Classifier(nn.AdaptiveAvgPool2d(1), m.classifier))]


def _resnet18(m: tvm.ResNet) -> list[tuple[str, nn.Module]]:
    return [("stem", nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)),
            ("layer1", m.layer1), ("layer2", m.layer2), ("layer3", m.layer3), ("layer4", m.layer4),
            ("classifier", Classifier(m.avgpool, m.fc))]


def _by_pools(features: nn.Sequential) -> list[tuple[str, nn.Module]]:
    """Cut a VGG/AlexNet feature stack after every max-pool."""
    blocks, current = [], []
    for layer in features:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            blocks.append((f"conv{len(blocks) + 1}", nn.Sequential(*current)))
            current = []
    assert not current, "feature stack does not end with a pool"
    return blocks


def _vgg(m: tvm.VGG) -> list[tuple[str, nn.Module]]:
    return _by_pools(m.features) + [("classifier", Classifier(m.avgpool, m.classifier))]


ZOO: dict[str, tuple[Callable[..., nn.Module], Callable[[nn.Module], list]]] = {
    "mobilenet_v2": (tvm.mobilenet_v2, _mobilenet_v2),
    "resnet18": (tvm.resnet18, _resnet18),
    "vgg11_bn": (tvm.vgg11_bn, _vgg),
    "alexnet": (tvm.alexnet, _vgg),
}
assert tuple(ZOO) == MODELS, "compress.names.MODELS lists the zoo for the command line (without torch)"


class SplitModel(nn.Sequential):
    """A CNN as named blocks; `head(k)` runs on the device and `tail(k)` on the server."""

    arch: str

    @property
    def K(self) -> int:
        return len(self)

    @property
    def block_names(self) -> list[str]:
        return list(self._modules)

    def head(self, k: int) -> nn.Sequential:
        self._check_k(k)
        return self.blocks(0, k)

    def tail(self, k: int) -> nn.Sequential:
        self._check_k(k)
        return self.blocks(k, self.K)

    def blocks(self, a: int, b: int) -> nn.Sequential:
        """Blocks [a, b), sharing this model's modules: head(k) is blocks(0, k), tail(k) blocks(k, K), and the
        edge's part of a three-tier split blocks(k, k2)."""
        self._check_k(a)
        self._check_k(b)
        if a > b:
            raise ValueError(f"blocks [{a}, {b}) of {self.arch}: the second cut must not come before the first")
        return nn.Sequential(OrderedDict(list(self._modules.items())[a:b])).train(self.training)

    def _check_k(self, k: int) -> None:
        if not isinstance(k, int) or not 0 <= k <= self.K:
            raise ValueError(f"split point k={k!r} is outside 0..{self.K} for {self.arch}")


@dataclass(frozen=True)
class SplitInfo:
    k: int
    block: str  # the block that produces this tensor ("input" for k = 0)
    shape: tuple[int, ...]  # without the batch dimension
    numel: int
    last: bool = False  # k = K: the device answers, nothing is sent

    def bytes(self, codec: str = "fp32") -> int:
        """Payload bytes on the wire; k = 0 sends the uint8 image whatever the codec."""
        if self.last:
            return 0
        return self.numel if self.k == 0 else payload_bytes(self.numel, codec)


def _runs(model: nn.Module, size: int) -> bool:
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, size, size, device="meta"))
        return True
    except RuntimeError:
        return False


def _meta_model(arch: str, num_classes: int) -> nn.Module:
    with torch.device("meta"):
        return ZOO[arch][0](num_classes=num_classes).eval()


def min_input_size(arch: str, num_classes: int = 10) -> int:
    """Smallest square input the architecture accepts, probed on the meta device (no compute)."""
    model = _meta_model(arch, num_classes)
    lo, hi = 1, 512
    while lo < hi:
        mid = (lo + hi) // 2
        if _runs(model, mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def build(arch: str, num_classes: int = 10, input_size: int = 224, source: nn.Module | None = None) -> SplitModel:
    """Build `arch` as a SplitModel; with `source`, reuse that torchvision model's modules (and weights)."""
    if arch not in ZOO:
        raise ValueError(f"unknown model {arch!r}; choose one of: {', '.join(ZOO)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    factory, cut = ZOO[arch]
    if not _runs(_meta_model(arch, num_classes), input_size):
        raise ValueError(f"{arch} cannot take a {input_size}px input; the minimum is "
                         f"{min_input_size(arch, num_classes)}px")
    tv = source if source is not None else factory(num_classes=num_classes)
    model = SplitModel(OrderedDict(cut(tv)))
    model.arch = arch
    return model


def torchvision_model(arch: str, num_classes: int = 10) -> nn.Module:
    if arch not in ZOO:
        raise ValueError(f"unknown model {arch!r}; choose one of: {', '.join(ZOO)}")
    return ZOO[arch][0](num_classes=num_classes)


def split_table(model: SplitModel, input_size: int) -> list[SplitInfo]:
    """Shape and size of the tensor at every split point 0..K."""
    x = torch.zeros(1, 3, input_size, input_size)
    rows = [SplitInfo(0, "input", tuple(x.shape[1:]), x[0].numel())]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for k, (name, block) in enumerate(model.named_children(), start=1):
            x = block(x)
            rows.append(SplitInfo(k, name, tuple(x.shape[1:]), x[0].numel(), last=k == model.K))
    model.train(was_training)
    return rows

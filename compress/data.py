"""Data sets as uint8 images at the model's input size, split train/validation/test.

Images stay uint8 (what the device's camera gives and what k = 0 sends); `DataSplits.normalize`
turns a batch into the float input of the model.  Nothing is ever downloaded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

DATASETS = ("digits", "cifar10", "imagefolder")
MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, so torchvision weights transfer
STD = (0.229, 0.224, 0.225)


@dataclass
class DataSplits:
    name: str
    input_size: int
    num_classes: int
    train: Dataset
    val: Dataset
    test: Dataset
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    _m: torch.Tensor = field(init=False, repr=False)
    _s: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._m = torch.tensor(self.mean).view(1, 3, 1, 1) * 255.0
        self._s = torch.tensor(self.std).view(1, 3, 1, 1) * 255.0

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW batch -> float model input."""
        return (images.float() - self._m) / self._s

    def loader(self, split: str, batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> DataLoader:
        ds = {"train": self.train, "val": self.val, "test": self.test}[split]
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen)

    def arrays(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole split as (uint8 images, labels)."""
        xs, ys = zip(*(batch for batch in self.loader(split, batch_size=256)))
        return torch.cat(xs), torch.cat(ys)


def _stratified(labels: np.ndarray, seed: int, fractions: tuple[float, float]) -> tuple[np.ndarray, ...]:
    """Indices of a stratified (train, val, test) split; `fractions` are (val, test)."""
    idx = np.arange(len(labels))
    val_f, test_f = fractions
    rest, test = train_test_split(idx, test_size=test_f, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=val_f / (1 - test_f), stratify=labels[rest],
                                  random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)


def _digits(input_size: int, seed: int) -> DataSplits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float().unsqueeze(1) * (255.0 / 16.0)
    x = torch.nn.functional.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8).repeat(1, 3, 1, 1)
    y = torch.from_numpy(d.target).long()
    full = TensorDataset(x, y)
    tr, va, te = _stratified(d.target, seed, (0.2, 0.2))
    return DataSplits("digits", input_size, 10, Subset(full, tr), Subset(full, va), Subset(full, te))


def _image_transform(input_size: int):
    from torchvision import transforms as T

    return T.Compose([T.Resize((input_size, input_size)), T.PILToTensor()])


def _require(root: str | None, what: str, how: str) -> str:
    if not root or not os.path.isdir(root):
        raise FileNotFoundError(f"{what} not found at {root!r}: {how}")
    return root


def _cifar10(root: str | None, input_size: int, seed: int) -> DataSplits:
    from torchvision.datasets import CIFAR10

    how = ("download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
           "and extract it into that directory (it then holds cifar-10-batches-py/)")
    _require(root, "CIFAR-10", how)
    try:
        train_full = CIFAR10(root, train=True, download=False, transform=_image_transform(input_size))
        test = CIFAR10(root, train=False, download=False, transform=_image_transform(input_size))
    except RuntimeError:
        raise FileNotFoundError(f"CIFAR-10 not found at {root!r}: {how}") from None
    labels = np.asarray(train_full.targets)
    train, val = train_test_split(np.arange(len(labels)), test_size=0.1, stratify=labels, random_state=seed)
    return DataSplits("cifar10", input_size, 10, Subset(train_full, np.sort(train)),
                      Subset(train_full, np.sort(val)), test)


def _imagefolder(root: str | None, input_size: int, seed: int) -> DataSplits:
    from torchvision.datasets import ImageFolder

    _require(root, "ImageFolder tree", "point --data-root at a directory with one sub-directory of images per class")
    full = ImageFolder(root, transform=_image_transform(input_size))
    labels = np.asarray(full.targets)
    tr, va, te = _stratified(labels, seed, (0.15, 0.15))
    return DataSplits("imagefolder", input_size, len(full.classes), Subset(full, tr), Subset(full, va),
                      Subset(full, te))


def load(name: str = "digits", root: str | None = None, input_size: int = 32, seed: int = 0) -> DataSplits:
    """Load a data set by name; see DATASETS."""
    if name == "digits":
        return _digits(input_size, seed)
    if name == "cifar10":
        return _cifar10(root, input_size, seed)
    if name == "imagefolder":
        return _imagefolder(root, input_size, seed)
    raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")

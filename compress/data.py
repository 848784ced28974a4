"""Data sets as uint8 images at the model's input size, in four disjoint roles fixed by the seed.

- train: weights of the base model, the fine-tunes and the exits;
- val: early stopping and the Optuna pruner;
- selection: every choice of the search (threshold, codec, the A0/T0 check, exit rates of the latency model);
- test: reported only, never used for a choice.

Images stay uint8 (what the device's camera gives and what k = 0 sends); `DataSplits.normalize`
turns a batch into the float input of the model.  Nothing is ever downloaded.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from compress.names import DATASETS, check_dataset

ROLES = ("train", "val", "selection", "test")
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz")
# Fashion-MNIST role sizes: the selection split is large so that the one-sided bound on its accuracy is
# tight (n = 4000 at p = 0.9: one-sided 95% Wilson margin 0.8 points); train is a subset of the 59,000 left
# so the cold demo stays short.
FASHION_SIZES = {"train": 12000, "val": 1000, "selection": 4000, "test": 4000}
MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, so torchvision weights transfer
STD = (0.229, 0.224, 0.225)


@dataclass
class DataSplits:
    name: str
    input_size: int
    num_classes: int
    train: Dataset
    val: Dataset
    selection: Dataset
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
        if split not in ROLES:
            raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(ROLES)}")
        ds = getattr(self, split)
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen)

    def arrays(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole split as (uint8 images, labels)."""
        xs, ys = zip(*(batch for batch in self.loader(split, batch_size=256)))
        return torch.cat(xs), torch.cat(ys)

    def sizes(self) -> dict[str, int]:
        return {role: len(getattr(self, role)) for role in ROLES}

    def describe(self) -> str:
        return f"{self.name} at {self.input_size}px: " + ", ".join(f"{r} {n}" for r, n in self.sizes().items())


def _stratified(labels: np.ndarray, seed: int, sizes: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """Indices of a stratified split into len(sizes) + 1 disjoint parts: the rest first, then one part of
    each size (a fraction of all samples, or a count)."""
    rest = np.arange(len(labels))
    parts = []
    for size in sizes:
        n = size if isinstance(size, int) else int(round(size * len(labels)))
        if n > len(rest):
            raise ValueError(f"cannot take {n} samples from the {len(rest)} left")
        if n == len(rest):
            rest, part = rest[:0], rest
        else:
            rest, part = train_test_split(rest, test_size=n, stratify=labels[rest], random_state=seed)
        parts.append(np.sort(part))
    return (np.sort(rest), *parts)


def _digits(input_size: int, seed: int) -> DataSplits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float().unsqueeze(1) * (255.0 / 16.0)
    x = torch.nn.functional.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8).repeat(1, 3, 1, 1)
    y = torch.from_numpy(d.target).long()
    full = TensorDataset(x, y)
    tr, va, se, te = _stratified(d.target, seed, (0.15, 0.25, 0.15))
    return DataSplits("digits", input_size, 10, *(Subset(full, i) for i in (tr, va, se, te)))


def _read_idx(path: str) -> np.ndarray:
    """An IDX file (gzip): big-endian dims after a magic whose third byte is the type (8 = uint8)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} values for dims {tuple(dims)}")
    return data.reshape(tuple(dims))


def _grey_to_input(images: np.ndarray, input_size: int) -> torch.Tensor:
    """uint8 (N, H, W) grey images -> uint8 (N, 3, S, S), resized bilinearly once, here."""
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    if x.shape[-1] != input_size:
        x = torch.nn.functional.interpolate(x.float(), size=(input_size, input_size), mode="bilinear",
                                            align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1).contiguous()


def _fashion_mnist(root: str | None, input_size: int, seed: int, sizes: dict[str, int] | None = None) -> DataSplits:
    root = root or FASHION_ROOT
    missing = [f for f in FASHION_FILES if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise FileNotFoundError(f"Fashion-MNIST not found in {root!r} (missing {', '.join(missing)}): "
                                f"apt-get install dataset-fashion-mnist, or put {', '.join(FASHION_FILES)} "
                                f"there (or in --data-root)")
    sizes = {**FASHION_SIZES, **(sizes or {})}
    x_tr, y_tr, x_te, y_te = (_read_idx(os.path.join(root, f)) for f in FASHION_FILES)
    # train and val come from the upstream training file, selection and test from its test file
    rest, val = _stratified(y_tr, seed, (sizes["val"],))
    if sizes["train"] < len(rest):
        _, train = _stratified(y_tr[rest], seed, (sizes["train"],))
        train = rest[train]
    else:
        train = rest
    _, sel, test = _stratified(y_te, seed, (sizes["selection"], sizes["test"]))
    tr = TensorDataset(_grey_to_input(x_tr[np.r_[train, val]], input_size),
                       torch.from_numpy(y_tr[np.r_[train, val]].astype(np.int64)))
    te = TensorDataset(_grey_to_input(x_te[np.r_[sel, test]], input_size),
                       torch.from_numpy(y_te[np.r_[sel, test]].astype(np.int64)))
    n_tr, n_sel = len(train), len(sel)
    return DataSplits("fashion-mnist", input_size, 10, Subset(tr, np.arange(n_tr)),
                      Subset(tr, np.arange(n_tr, n_tr + len(val))), Subset(te, np.arange(n_sel)),
                      Subset(te, np.arange(n_sel, n_sel + len(test))))


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
    train, val = _stratified(np.asarray(train_full.targets), seed, (0.1,))
    _, sel, te = _stratified(np.asarray(test.targets), seed, (5000, 5000))  # the upstream test file, halved
    return DataSplits("cifar10", input_size, 10, Subset(train_full, train), Subset(train_full, val),
                      Subset(test, sel), Subset(test, te))


def _imagefolder(root: str | None, input_size: int, seed: int) -> DataSplits:
    from torchvision.datasets import ImageFolder

    _require(root, "ImageFolder tree", "point --data-root at a directory with one sub-directory of images per class")
    full = ImageFolder(root, transform=_image_transform(input_size))
    labels = np.asarray(full.targets)
    tr, va, se, te = _stratified(labels, seed, (0.1, 0.2, 0.15))
    return DataSplits("imagefolder", input_size, len(full.classes), *(Subset(full, i) for i in (tr, va, se, te)))


def load(name: str = "fashion-mnist", root: str | None = None, input_size: int = 32, seed: int = 0,
         sizes: dict[str, int] | None = None) -> DataSplits:
    """Load a data set by name; see DATASETS.  `sizes` overrides Fashion-MNIST's role sizes."""
    if name == "fashion-mnist":
        return _fashion_mnist(root, input_size, seed, sizes)
    if name == "digits":
        return _digits(input_size, seed)
    if name == "cifar10":
        return _cifar10(root, input_size, seed)
    if name == "imagefolder":
        return _imagefolder(root, input_size, seed)
    check_dataset(name)  # raises: every name of DATASETS has a branch above
    raise AssertionError(name)

import os

import numpy as np
import pytest
import torch

from compress import data as datasets


def test_digits_stratified_split_is_fixed_and_disjoint():
    a = datasets.load("digits", input_size=32, seed=0)
    b = datasets.load("digits", input_size=32, seed=0)
    c = datasets.load("digits", input_size=32, seed=1)
    assert a.sizes() == {"train": 808, "val": 270, "selection": 449, "test": 270}
    ids = [set(getattr(a, r).indices.tolist()) for r in datasets.ROLES]
    assert sum(len(i) for i in ids) == 1797 and len(set().union(*ids)) == 1797  # disjoint, nothing lost
    assert np.array_equal(a.test.indices, b.test.indices)
    assert not np.array_equal(a.test.indices, c.test.indices)
    assert not np.array_equal(a.selection.indices, c.selection.indices)
    x, y = a.arrays("test")
    assert x.dtype == torch.uint8 and x.shape == (270, 3, 32, 32)
    counts = np.bincount(y.numpy(), minlength=10)
    assert counts.min() >= 26 and counts.max() <= 28  # stratified: 27 per class
    z = a.normalize(x[:4])
    assert z.dtype == torch.float32 and abs(z.mean().item()) < 3


def test_missing_paths_get_one_line():
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 not found at '/nonexistent': download"):
        datasets.load("cifar10", root="/nonexistent")
    with pytest.raises(FileNotFoundError, match="ImageFolder tree not found"):
        datasets.load("imagefolder", root="/nonexistent")
    with pytest.raises(ValueError, match="choose one of: fashion-mnist, digits, cifar10, imagefolder"):
        datasets.load("mnist")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist.*t10k-labels-idx1-ubyte.gz"):
        datasets.load("fashion-mnist", root="/nonexistent")


def _write_idx(path, array):
    import gzip
    import struct

    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def test_fashion_mnist_roles_from_idx_files(tmp_path):
    """A small slice in the upstream format: roles disjoint, sizes as asked, pixels and labels intact."""
    rng = np.random.default_rng(0)
    x_tr, y_tr = rng.integers(0, 256, (300, 28, 28)), np.repeat(np.arange(10), 30)
    x_te, y_te = rng.integers(0, 256, (100, 28, 28)), np.repeat(np.arange(10), 10)
    x_tr[:, 0, 0], x_tr[:, 0, 1] = np.arange(300) % 256, np.arange(300) // 256  # a fingerprint per image
    for name, arr in zip(datasets.FASHION_FILES, (x_tr, y_tr, x_te, y_te)):
        _write_idx(tmp_path / name, arr)
    sizes = {"train": 200, "val": 50, "selection": 60, "test": 40}
    d = datasets.load("fashion-mnist", root=str(tmp_path), input_size=28, seed=0, sizes=sizes)
    assert d.sizes() == sizes
    x, y = d.arrays("train")
    assert x.shape == (200, 3, 28, 28) and x.dtype == torch.uint8 and bool((x[:, 0] == x[:, 2]).all())
    xv, _ = d.arrays("val")
    fingerprint = lambda imgs: (imgs[:, 0, 0, 0].long() + 256 * imgs[:, 0, 0, 1].long()).tolist()  # noqa: E731
    assert not set(fingerprint(x)) & set(fingerprint(xv))  # train and validation never share an image
    # each image keeps its own label: look the fingerprint up in the source
    for src, img, label in zip(fingerprint(x[:20]), x[:20], y[:20]):
        assert label == y_tr[src] and np.array_equal(img[0].numpy(), x_tr[src])
    _, ys = d.arrays("selection")
    assert np.bincount(ys.numpy(), minlength=10).tolist() == [6] * 10  # stratified
    resized = datasets.load("fashion-mnist", root=str(tmp_path), input_size=32, seed=0, sizes=sizes)
    assert resized.arrays("test")[0].shape == (40, 3, 32, 32)
    with pytest.raises(ValueError, match="cannot take 500 samples"):
        datasets.load("fashion-mnist", root=str(tmp_path), sizes={**sizes, "selection": 500})


def test_imagefolder_tree(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    d = datasets.load("imagefolder", root=str(tmp_path), input_size=16)
    assert d.num_classes == 2 and sum(d.sizes().values()) == 20
    x, _ = d.arrays("train")
    assert x.shape[1:] == (3, 16, 16) and x.dtype == torch.uint8


def test_real_fashion_mnist_slice():
    """The Debian files themselves (make test installs them): upstream sizes and class balance, a small slice."""
    root = datasets.FASHION_ROOT
    if not all(os.path.isfile(os.path.join(root, f)) for f in datasets.FASHION_FILES):
        pytest.skip(f"Fashion-MNIST is not installed in {root} (make test installs it where apt is available)")
    labels = datasets._read_idx(os.path.join(root, "train-labels-idx1-ubyte.gz"))
    assert labels.shape == (60000,) and np.bincount(labels).tolist() == [6000] * 10
    sizes = {"train": 300, "val": 100, "selection": 200, "test": 200}
    d = datasets.load("fashion-mnist", input_size=32, seed=0, sizes=sizes)
    assert d.sizes() == sizes and d.num_classes == 10
    x, y = d.arrays("selection")
    assert np.bincount(y.numpy(), minlength=10).tolist() == [20] * 10
    assert 40 < float(x.float().mean()) < 120  # real garments on black: neither blank nor saturated

import numpy as np
import pytest
import torch

from compress import data as datasets


def test_digits_stratified_split_is_fixed_and_disjoint():
    a = datasets.load("digits", input_size=32, seed=0)
    b = datasets.load("digits", input_size=32, seed=0)
    c = datasets.load("digits", input_size=32, seed=1)
    assert (len(a.train), len(a.val), len(a.test)) == (1077, 360, 360)
    ids = [set(s.indices.tolist()) for s in (a.train, a.val, a.test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert np.array_equal(a.test.indices, b.test.indices)
    assert not np.array_equal(a.test.indices, c.test.indices)
    x, y = a.arrays("test")
    assert x.dtype == torch.uint8 and x.shape == (360, 3, 32, 32)
    counts = np.bincount(y.numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 36 per class
    z = a.normalize(x[:4])
    assert z.dtype == torch.float32 and abs(z.mean().item()) < 3


def test_missing_paths_get_one_line():
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 not found at '/nonexistent': download"):
        datasets.load("cifar10", root="/nonexistent")
    with pytest.raises(FileNotFoundError, match="ImageFolder tree not found"):
        datasets.load("imagefolder", root="/nonexistent")
    with pytest.raises(ValueError, match="choose one of: digits, cifar10, imagefolder"):
        datasets.load("mnist")


def test_imagefolder_tree(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    d = datasets.load("imagefolder", root=str(tmp_path), input_size=16)
    assert d.num_classes == 2 and len(d.train) + len(d.val) + len(d.test) == 20
    x, _ = d.arrays("train")
    assert x.shape[1:] == (3, 16, 16) and x.dtype == torch.uint8

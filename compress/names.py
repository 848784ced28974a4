"""Names the command line is checked against, importable without torch: an argument error answers at once
instead of after the 10 s that loading torch takes here.  compress.zoo, compress.data and compress.train
use these (tests/test_hardening_cli.py checks that the zoo builds exactly MODELS)."""
from __future__ import annotations

MODELS = ("mobilenet_v2", "resnet18", "vgg11_bn", "alexnet")  # compress.zoo.ZOO, in this order
DATASETS = ("fashion-mnist", "digits", "cifar10", "imagefolder")
PRECISIONS = ("fp32", "bf16")  # training arithmetic (compress.train)
FASHION_TRAIN_MAX = 59000  # Fashion-MNIST's upstream training file (60,000) less compress.data's validation role


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown training precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")


def check_dataset(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def check_train_images(dataset: str, n: int | None) -> None:
    """`--train-images`: the size of Fashion-MNIST's training role (the other data sets' roles are fixed)."""
    if n is None:
        return
    if dataset != "fashion-mnist":
        raise ValueError(f"--train-images sets Fashion-MNIST's training role; {dataset} has fixed roles")
    if not 100 <= n <= FASHION_TRAIN_MAX:
        raise ValueError(f"--train-images must be in [100, {FASHION_TRAIN_MAX}], got {n}")


def check_model(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")

"""Compression-aware partition search: find the fastest (split, pruning ratio, exit threshold) with
accuracy >= A0 for a CNN split between an end device and a server.

    python auto.py --model mobilenet_v2 --end_device emulated-10x --bandwidth 10 --A0 0.9
"""
from __future__ import annotations

import argparse
import sys

from compress import zoo
from compress.data import DATASETS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenet_v2", help=f"architecture: {', '.join(zoo.ZOO)}")
    p.add_argument("--end_device", "--end-device", dest="end_device", default="emulated-10x",
                   help="end-device profile: a shipped name (see profiles/data) or a profile file path")
    p.add_argument("--server", default="server", help="server profile: a shipped name or a file path")
    p.add_argument("--bandwidth", type=float, default=10.0, help="uplink bandwidth in Mbit/s (> 0)")
    p.add_argument("--rtt", type=float, default=5.0, help="network round-trip time in ms")
    p.add_argument("--A0", type=float, default=0.9, help="required validation accuracy, in (0, 1]")
    p.add_argument("--dataset", default="digits", help=f"data set: {', '.join(DATASETS)}")
    p.add_argument("--data-root", default=None, help="directory of a local CIFAR-10 or ImageFolder copy")
    p.add_argument("--input-size", type=int, default=32, help="square input size in pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split, training and search")
    p.add_argument("--weights", default=None,
                   help="local state-dict or checkpoint file to start from (otherwise trained here)")
    return p


def fail(message: str) -> "NoReturn":  # noqa: F821
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from compress import data as datasets
    from compress.base import base_model

    try:
        zoo.build(args.model, 10, args.input_size)  # validates model and input size before any work
        data = datasets.load(args.dataset, args.data_root, args.input_size, args.seed)
        base = base_model(args.model, data, seed=args.seed, weights=args.weights)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    print(f"base {args.model} on {data.name} at {data.input_size}px: val {base.meta['val_acc']:.4f}, "
          f"test {base.meta['test_acc']:.4f} ({base.meta['epochs']} epochs, {base.meta['train_seconds']} s)")
    print(f"{'k':>3}  {'after block':<12} {'shape':<16} {'fp32 bytes':>10}")
    for row in zoo.split_table(base.model, data.input_size):
        print(f"{row.k:>3}  {row.block:<12} {'x'.join(map(str, row.shape)):<16} {row.bytes('fp32'):>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

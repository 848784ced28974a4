"""Compress stage: model zoo as ordered blocks, data sets, base training, structured pruning of the
device side (torch-pruning), early exits, fine-tuning and the cached per-sample evaluation of every
candidate (k, r).  Feeds the search; knows nothing about latency."""

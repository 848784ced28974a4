"""The runtime stage: this folder owns running a chosen split for real.

- `export`: head.onnx / tail.onnx / manifest.json of a candidate, checked against PyTorch;
  `manifest`: reading it (no torch needed)
- `protocol`: the binary wire format (fixed header, raw little-endian payload, no pickle)
- `cloud`: the server (`python -m runtime.cloud`); `edge`: the device (`python -m runtime.edge`);
  `client`: its connection to the server (handshake, retries, back-off)
- `link`: uplink shaping (token bucket + rtt) and link measurement
- `deploy`: server on loopback + edge over the test split, for `auto.py --deploy`

Names are imported lazily so that `python -m runtime.cloud` does not load torch's exporter.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"export_split": "runtime.export", "CloudServer": "runtime.cloud", "run_edge": "runtime.edge",
            "summarize": "runtime.edge", "deploy": "runtime.deploy", "load_manifest": "runtime.manifest"}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    return getattr(module, "load" if name == "load_manifest" else name)

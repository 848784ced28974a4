"""The runtime stage: this folder owns running a chosen split for real.

- `export`: head.onnx / tail.onnx / manifest.json of a candidate, checked against PyTorch;
  `manifest`: reading it (no torch needed)
- `protocol`: the binary wire format (fixed header, raw little-endian payload, no pickle)
- `cloud`: the server (`python -m runtime.cloud`); `edge`: the device (`python -m runtime.edge`);
  `client`: its connection to the server (handshake, retries, back-off)
- `link`: uplink shaping (token bucket + rtt) and link measurement
- `deploy`: server on loopback + edge over the test split, for `auto.py --deploy`
- `relay`: the edge server of three tiers (`python -m runtime.relay`: blocks [k, k2), or [k1, k) and an exit that answers
  when sure, then on to the cloud);
  `tiers`: the three parts' export and their deployment, for `auto.py --deploy --edge_device ...`

Names are imported lazily so that `python -m runtime.cloud` does not load torch's exporter.
"""
from __future__ import annotations

import importlib
from typing import Any

# What the edge needs on a device that has only numpy and onnxruntime (tests/test_bundle.py runs it so).
EDGE_FILES = ("runtime/__init__.py", "runtime/edge.py", "runtime/client.py", "runtime/protocol.py",
              "runtime/manifest.py", "runtime/link.py", "compress/__init__.py", "compress/codec.py",
              "compress/onnx_io.py")

_EXPORTS = {"export_split": "runtime.export", "CloudServer": "runtime.cloud", "run_edge": "runtime.edge",
            "summarize": "runtime.edge", "deploy": "runtime.deploy", "load_manifest": "runtime.manifest",
            "RelayServer": "runtime.relay", "export_tiers": "runtime.tiers", "deploy_three": "runtime.tiers"}

__all__ = [*_EXPORTS, "EDGE_FILES"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    return getattr(module, "load" if name == "load_manifest" else name)

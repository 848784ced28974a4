"""Profiling stage: measures devices and servers, owns the profile format, its loader and the network model.

Shipped profiles live in profiles/data/<device>/<model>-<input_size>px.json; `python -m profiles --help`
measures, emulates, lists, bundles and validates them.  `profiles.runner` (the device side of a
profiling bundle) and `profiles.quota` need only the standard library, numpy and onnxruntime, so the
names below load lazily: importing the package pulls in nothing else.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Network": "profiles.network", "Profile": "profiles.profile", "ProfileNotFoundError": "profiles.profile",
            "available_devices": "profiles.profile", "load_profile": "profiles.profile"}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'profiles' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

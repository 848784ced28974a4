"""One-sided confidence bounds on a proportion: what a promise made on the selection split may claim.

The Wilson score bound: for x successes in n trials at confidence C (one-sided, z = Phi^-1(C)),

    lower = (p + z^2 / 2n - z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n),   p = x / n

and the upper bound with +z.  It stays inside [0, 1], is never degenerate at p = 0 or 1 (a rare send
seen 0 times in n still gets an upper bound above 0), and is close to nominal coverage at the sizes used
here.  `confidence = 0` means no bound: the point estimate x / n (the old behaviour).
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np


def check_confidence(confidence: float) -> float:
    if not (confidence == 0 or 0.5 <= confidence < 1):
        raise ValueError(f"--confidence must be 0 (point estimates) or in [0.5, 1), got {confidence:g}")
    return float(confidence)


def z_value(confidence: float) -> float:
    if confidence == 0:
        return 0.0
    if not 0.5 <= confidence < 1:  # a shared-out (family-wise) confidence may exceed what the flag allows
        raise ValueError(f"confidence must be 0 or in [0.5, 1), got {confidence:g}")
    return NormalDist().inv_cdf(confidence)


def _wilson(p, n, z: float, sign: float) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    n = np.asarray(n, dtype=float)
    if z == 0:
        return p.copy()
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return np.clip((centre + sign * spread) / (1 + z2 / n), 0.0, 1.0)


def lower(p, n, confidence: float) -> np.ndarray:
    """One-sided Wilson lower bound of a proportion observed as `p` over `n` samples."""
    return _wilson(p, n, z_value(confidence), -1.0)


def upper(p, n, confidence: float) -> np.ndarray:
    """One-sided Wilson upper bound of a proportion observed as `p` over `n` samples."""
    return _wilson(p, n, z_value(confidence), +1.0)

"""The network model: a link of fixed bandwidth and round-trip time.

``transfer_ms(b) = rtt + 8 b / bandwidth`` (bandwidth in Mbit/s, so 8 b / (1000 * bandwidth) ms).
The request pays the whole round trip once: the split tensor goes up, the small answer comes back.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class Network:
    bandwidth_mbps: float
    rtt_ms: float = 0.0

    def __post_init__(self) -> None:
        if not _real(self.bandwidth_mbps) or self.bandwidth_mbps <= 0:
            raise ValueError(f"bandwidth must be a finite number of Mbit/s > 0, got {self.bandwidth_mbps!r}")
        if not _real(self.rtt_ms) or self.rtt_ms < 0:
            raise ValueError(f"round-trip time must be a finite number of ms >= 0, got {self.rtt_ms!r}")

    def transfer_ms(self, n_bytes: int) -> float:
        """Milliseconds to send `n_bytes` and get the answer; 0 bytes means nothing is sent: 0 ms."""
        if n_bytes < 0:
            raise ValueError(f"byte count must be >= 0, got {n_bytes}")
        if n_bytes == 0:
            return 0.0
        return self.rtt_ms + 8.0 * n_bytes / (1000.0 * self.bandwidth_mbps)

    def transfer_ms_many(self, n_bytes) -> np.ndarray:
        """`transfer_ms` over an array of byte counts."""
        b = np.asarray(n_bytes, dtype=float)
        if (b < 0).any():
            raise ValueError("byte counts must be >= 0")
        return np.where(b > 0, self.rtt_ms + 8.0 * b / (1000.0 * self.bandwidth_mbps), 0.0)

    def __str__(self) -> str:
        return f"{self.bandwidth_mbps:g} Mbit/s, rtt {self.rtt_ms:g} ms"

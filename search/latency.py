"""The latency model: expected end-to-end latency of a candidate (k, r, codec, exit rate) from profiles.

    T = T_D(head k, r) + T_D(exit k, r) + (1 - p_exit) * (T_N(bytes(k, r, codec)) + T_C(tail k, r))

Every number comes from a measured (or named-emulated) profile and a Network; a result is a Breakdown,
never a bare number.  `exit_rate=None` means the candidate has no exit branch at all ("no exit" is its
own value): the exit costs nothing and never answers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from profiles.network import Network
from profiles.profile import Profile, check_pair, has_exit


@dataclass(frozen=True)
class Breakdown:
    device_ms: float  # head on the end device
    exit_ms: float  # exit branch on the end device (0 without an exit)
    transfer_ms: float  # rtt + 8 bytes / bandwidth, 0 when nothing is sent (k = K)
    server_ms: float  # tail on the server
    bytes: int  # payload at the split under the codec
    exit_rate: float  # fraction answered at the exit
    k: int | None = None
    r: float | None = None
    codec: str | None = None

    @property
    def expected_ms(self) -> float:
        return self.device_ms + self.exit_ms + (1.0 - self.exit_rate) * (self.transfer_ms + self.server_ms)

    def expected_at(self, exit_rates) -> np.ndarray:
        """Expected latency for many exit rates at once (same split, same costs)."""
        p = np.asarray(exit_rates, dtype=float)
        return self.device_ms + self.exit_ms + (1.0 - p) * (self.transfer_ms + self.server_ms)

    def as_dict(self) -> dict:
        return {**asdict(self), "expected_ms": self.expected_ms}


PARTS = ("device_ms", "exit_ms", "transfer_ms", "server_ms")


def predicted_at(parts: dict, exit_rate: float) -> dict[str, float]:
    """The four predicted parts with their expected total at another exit rate (a deployment's test split)."""
    b = Breakdown(*(float(parts[p]) for p in PARTS), bytes=0, exit_rate=float(exit_rate))
    return {**{p: getattr(b, p) for p in PARTS}, "exit_rate": b.exit_rate, "total_ms": b.expected_ms}


def predicted_per_sample(parts: dict, exited) -> dict[str, float]:
    """The prediction for a known set of samples (a deployment's): each sample costs the exit path
    (head + exit) if the exit answers it, else the full path. Gives the parts, the total, the p95, and
    each part's mean over the samples (`mean_*`, what a measured run's per-part means compare with)."""
    exited = np.asarray(exited, dtype=bool)
    out = predicted_at(parts, float(exited.mean()) if exited.size else 0.0)
    exit_path = out["device_ms"] + out["exit_ms"]
    per_sample = np.where(exited, exit_path, exit_path + out["transfer_ms"] + out["server_ms"])
    out["p95_ms"] = float(np.quantile(per_sample, 0.95)) if exited.size else float("nan")
    sent = 1.0 - out["exit_rate"]
    out.update(mean_device_exit_ms=exit_path, mean_transfer_ms=sent * out["transfer_ms"],
               mean_server_ms=sent * out["server_ms"])
    return out


def _check_rate(exit_rate: float | None, k: int, K: int) -> float:
    if exit_rate is None:
        return 0.0
    if not 0.0 <= exit_rate <= 1.0:
        raise ValueError(f"exit rate must be in [0, 1], got {exit_rate}")
    if exit_rate > 0 and not has_exit(k, K):
        raise ValueError(f"split k={k} has no exit branch (exits exist for 0 < k < {K}), so its exit rate is 0")
    return float(exit_rate)


def predict(device: Profile, server: Profile, network: Network, k: int, r: float, codec: str = "fp32",
            exit_rate: float | None = None) -> Breakdown:
    """Breakdown of the expected latency of (k, r) under `codec` with a measured exit rate."""
    check_pair(device, server)
    rate = _check_rate(exit_rate, k, device.K)
    n_bytes = device.tensor_bytes(k, r, codec)
    exit_ms = device.ms("exit", k, r) if exit_rate is not None else 0.0
    return Breakdown(device_ms=device.ms("head", k, r), exit_ms=exit_ms, transfer_ms=network.transfer_ms(n_bytes),
                     server_ms=server.ms("tail", k, r), bytes=n_bytes, exit_rate=rate, k=k, r=r, codec=codec)


def expected_ms_many(device: Profile, server: Profile, network: Network, k: int, r: float, codec: str,
                     exit_rates) -> np.ndarray:
    """Expected latency of (k, r, codec) with an exit, for an array of exit rates (one per threshold)."""
    rates = np.asarray(exit_rates, dtype=float)
    if rates.size and (rates.min() < 0 or rates.max() > 1):
        raise ValueError("exit rates must be in [0, 1]")
    return predict(device, server, network, k, r, codec, exit_rate=0.0 if has_exit(k, device.K) else None) \
        .expected_at(rates)


def lower_bound_ms(device: Profile, server: Profile, network: Network, k: int, r: float,
                   codec: str = "fp32") -> float:
    """The lowest latency (k, r, codec) can reach over every threshold, "no exit" included.

    With an exit, the best case answers every sample there (exit rate 1): head + exit; without one (or
    when sending is cheaper than the exit itself) it is head + transfer + tail.  A candidate whose bound
    is already worse than the best feasible one found can be skipped without evaluating its accuracy.
    """
    none = predict(device, server, network, k, r, codec, exit_rate=None)
    if not has_exit(k, device.K):
        return none.expected_ms
    return none.device_ms + min(device.ms("exit", k, r), none.transfer_ms + none.server_ms)


def predict_all(device: Profile, server: Profile, network: Network, codec: str = "fp32") -> pd.DataFrame:
    """Breakdowns of every (k, r) without an exit (exit rate 0): the reference table of a search."""
    check_pair(device, server)
    rows = [predict(device, server, network, k, r, codec).as_dict()
            for k in range(device.K + 1) for r in device.ratios]
    return pd.DataFrame(rows)

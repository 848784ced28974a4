"""Link shaping on the edge side, so a loopback or LAN run sees the network the prediction assumes.

DESIGN's network model is `T_N(b) = rtt + 8 b / bandwidth` for the uplink payload of one request.
`Link` reproduces it: before a frame leaves, half the round-trip time passes (propagation out); the
frame is then paced through a token bucket at `bandwidth` (serialization); after the reply is read
the other half passes (propagation back).  The reply itself (a few hundred bytes of logits) is not
paced, as in the model.  The 44-byte frame header is paced with the payload, as a real link would, and
the latency model prices it (the server profile's `frame_bytes`).

Every wait ends on time (`wait`: sleep, then spin the last SPIN_S): `time.sleep` overshoots and wakes a
cold process, about 0.3 ms per request over the three waits here (measured, 5 ms rtt, 10 Mbit/s), which
is this emulator's artefact, not the network's.
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Callable, Protocol

CHUNK = 16 << 10  # pacing granularity; the bucket keeps the long-run rate exact whatever the chunk
SPIN_S = 0.0005  # a wait sleeps until this close to its end, then spins


def wait(seconds: float, clock: Callable[[], float] = time.perf_counter) -> None:
    """Wait `seconds` and return on time: sleep most of it, spin the rest."""
    end = clock() + seconds
    if seconds > SPIN_S:
        time.sleep(seconds - SPIN_S)
    while clock() < end:
        pass


class TokenBucket:
    """A pacer at `rate` bytes/s in the GCRA form: each byte has a theoretical departure time (tat).

    Up to `tolerance` seconds of lag behind the schedule are caught up rather than forgiven, so the
    oversleep of `time.sleep` does not make the rate drift low over many chunks.  `reset()` starts an
    idle link with no burst credit.
    """

    def __init__(self, rate: float, tolerance: float = 0.002, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = wait):
        if not rate > 0:
            raise ValueError(f"token bucket rate must be > 0 bytes/s, got {rate}")
        self.rate = float(rate)
        self.tolerance = float(tolerance)
        self._clock, self._sleep = clock, sleep
        self._tat = clock()

    def reset(self) -> None:
        self._tat = self._clock()

    def consume(self, n: int) -> float:
        """Wait until `n` more bytes may have left at `rate`; returns the seconds waited."""
        now = self._clock()
        self._tat = max(self._tat, now - self.tolerance) + n / self.rate
        wait = self._tat - now
        if wait > 0:
            self._sleep(wait)
            return wait
        return 0.0


@dataclass
class Link:
    """The emulated uplink: `bandwidth` in Mbit/s (None = the real link, unshaped) and `rtt` in ms."""

    bandwidth: float | None = None
    rtt: float = 0.0
    chunk: int = CHUNK

    def __post_init__(self) -> None:
        if self.bandwidth is not None and not self.bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0 Mbit/s, got {self.bandwidth}")
        if not self.rtt >= 0:
            raise ValueError(f"rtt must be >= 0 ms, got {self.rtt}")
        self._bucket = TokenBucket(self.bandwidth * 1e6 / 8) if self.bandwidth is not None else None

    def send(self, sock: socket.socket, data: bytes) -> None:
        """Send one frame: half the rtt, then the bytes at the shaped rate."""
        if self.rtt:
            wait(self.rtt / 2000)
        if self._bucket is None:
            sock.sendall(data)
            return
        # The edge waits for each reply, so every frame starts on an idle link: no burst credit, and
        # the frame takes 8 b / bandwidth as in the model.
        self._bucket.reset()
        view = memoryview(data)
        for start in range(0, len(view), self.chunk):
            piece = view[start:start + self.chunk]
            self._bucket.consume(len(piece))  # wait for the piece's serialization time, then hand it over
            sock.sendall(piece)

    def received(self) -> None:
        """Call after reading a reply: the other half of the rtt."""
        if self.rtt:
            wait(self.rtt / 2000)

    def predicted_ms(self, nbytes: int) -> float:
        """T_N(b) of DESIGN for this link (rtt only when unshaped)."""
        return self.rtt + (8 * nbytes / (self.bandwidth * 1e6) * 1e3 if self.bandwidth else 0.0)


class Probe(Protocol):
    def ping(self) -> float: ...  # seconds for one PING/PONG

    def sink(self, nbytes: int) -> float: ...  # seconds to push nbytes and get the SINK_ACK


def measure(probe: Probe, nbytes: int = 4 << 20, pings: int = 5) -> tuple[float, float]:
    """(bandwidth Mbit/s, rtt ms) of the real link: median ping, and a bulk send minus one rtt."""
    rtts = sorted(probe.ping() for _ in range(pings))
    rtt = rtts[len(rtts) // 2]
    probe.sink(64 << 10)  # warm up the TCP window before timing
    seconds = probe.sink(nbytes)
    transfer = max(seconds - rtt, 1e-9)
    return 8 * nbytes / transfer / 1e6, rtt * 1e3

"""runtime.link: the token bucket's schedule on a fake clock, chunked sends intact, link measurement."""
from __future__ import annotations

import socket
import threading

import pytest

from runtime.link import Link, TokenBucket, measure


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float, oversleep: float = 0.0) -> None:
        self.slept.append(seconds)
        self.now += seconds + oversleep


def test_frame_takes_its_serialization_time():
    clock = FakeClock()
    bucket = TokenBucket(1.25e6, clock=clock, sleep=clock.sleep)  # 10 Mbit/s
    start = clock.now
    for _ in range(64):
        bucket.consume(16384)  # 1 MiB
    assert clock.now - start == pytest.approx(8 * (1 << 20) / 10e6)


def test_oversleep_is_caught_up_not_accumulated():
    clock = FakeClock()
    bucket = TokenBucket(1e6, tolerance=0.002, clock=clock, sleep=lambda s: clock.sleep(s, oversleep=0.0005))
    start = clock.now
    for _ in range(100):
        bucket.consume(10_000)  # 10 ms each
    # each sleep overshoots 0.5 ms, yet only the last overshoot remains
    assert clock.now - start == pytest.approx(1.0 + 0.0005)


def test_idle_link_gives_no_burst_credit_after_reset():
    clock = FakeClock()
    bucket = TokenBucket(1e6, clock=clock, sleep=clock.sleep)
    clock.now += 60.0  # idle for a minute
    bucket.reset()
    assert bucket.consume(5000) == pytest.approx(0.005)


def test_rate_must_be_positive():
    with pytest.raises(ValueError, match="rate must be > 0"):
        TokenBucket(0)
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        Link(bandwidth=-1)
    with pytest.raises(ValueError, match="rtt must be >= 0"):
        Link(rtt=-5)


def test_predicted_transfer_matches_design_model():
    assert Link(10.0, 5.0).predicted_ms(125_000) == pytest.approx(5.0 + 100.0)
    assert Link(None, 2.0).predicted_ms(10 ** 9) == 2.0


def test_shaped_send_delivers_every_byte_in_order():
    a, b = socket.socketpair()
    data = bytes(range(256)) * 1000
    received = bytearray()

    def reader():
        while len(received) < len(data):
            chunk = b.recv(65536)
            if not chunk:
                break
            received.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    Link(bandwidth=2000.0, rtt=0.0, chunk=4096).send(a, data)  # fast enough to keep the test short
    t.join()
    a.close()
    b.close()
    assert bytes(received) == data


class FakeProbe:
    def __init__(self, rtt: float, bytes_per_s: float):
        self.rtt, self.rate = rtt, bytes_per_s

    def ping(self) -> float:
        return self.rtt

    def sink(self, nbytes: int) -> float:
        return self.rtt + nbytes / self.rate


def test_measure_separates_rtt_and_bandwidth():
    mbps, rtt_ms = measure(FakeProbe(0.004, 2.5e6), nbytes=1 << 20)
    assert rtt_ms == pytest.approx(4.0)
    assert mbps == pytest.approx(20.0)

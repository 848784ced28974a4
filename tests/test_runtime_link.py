"""runtime.link: the token bucket's schedule on a fake clock, chunked sends intact, link measurement."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from runtime.link import Link, TokenBucket, measure, wait


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


def test_emulated_slowdown_scales_the_model_call_only(tmp_path, monkeypatch, digits32, random_resnet18):
    """--slowdown stretches the head.onnx run (what the profile measures), not normalisation or encoding:
    a normalisation made 20 ms slow must not be multiplied, and _slow sees only the model's time."""
    from compress.candidate import Candidate
    from runtime import edge
    from runtime import manifest as mf
    from runtime.export import export_split

    export_split(Candidate(random_resnet18.K, 0.0, random_resnet18, None, {}, {}), digits32, tmp_path,
                 threshold=None, codec="fp32")
    seen, spans = [], []
    real_slow, real_normalize = edge._slow, mf.normalize

    def spy_slow(compute_s, f, **kw):  # when the timed model call started, how long it took, the factor
        seen.append((time.perf_counter() - compute_s, compute_s, f))
        return real_slow(compute_s, f, **kw)

    def slow_normalize(*a):
        start = time.perf_counter()
        time.sleep(0.02)
        out = real_normalize(*a)
        spans.append((start, time.perf_counter()))
        return out

    monkeypatch.setattr(edge, "_slow", spy_slow)
    monkeypatch.setattr(mf, "normalize", slow_normalize)
    df = edge.run_edge(tmp_path, None, slowdown=4.0, limit=3, data=digits32)
    assert len(seen) == 3 == len(spans) and all(f == 4.0 for *_, f in seen)
    for (started, compute_s, _), (n0, n1), device_ms in zip(seen, spans, df.device_ms):
        assert started >= n1  # the slowed time starts after the normalisation: it is not multiplied
        assert device_ms >= (n1 - n0) * 1e3 + 4 * compute_s * 1e3 - 0.5  # ... but it is paid once, unscaled
    # each row names the host's own model run, the time the emulation multiplied
    assert list(df.head_ms) == pytest.approx([compute_s * 1e3 for _, compute_s, _ in seen], rel=1e-9)


class TickingClock(FakeClock):
    """Advances 1 us per reading, as a spinning loop sees a real clock do."""

    def __call__(self) -> float:
        self.now += 1e-6
        return self.now


def test_slow_spins_the_extra_time_on_its_clock():
    from runtime.edge import _slow

    clock = TickingClock()
    start = clock.now
    assert _slow(0.010, 5.0, clock) == pytest.approx(0.040)
    assert clock.slept == [] and clock.now - start == pytest.approx(0.040, abs=5e-6)  # busy, as a slow device is
    before = clock.now
    assert _slow(0.010, 1.0, clock) == 0.0 and clock.now == before  # no emulation: no wait


def test_slow_fills_the_extra_time_with_model_runs_and_spins_only_the_rest():
    """With `rerun`, the busy time is the model again (keeping it in the caches) while a whole run fits;
    the total is still slowdown x the timed call, and a run that would overshoot is not started."""
    from runtime.edge import _slow

    clock = TickingClock()
    runs = []

    def rerun():  # one model run: 3 ms on the clock
        runs.append(clock.now)
        clock.now += 0.003

    start = clock.now
    assert _slow(0.003, 4.5, clock, rerun=rerun) == pytest.approx(0.0105)
    assert len(runs) == 3  # 9 ms of the 10.5 ms are runs; a fourth would end 1.5 ms late
    assert clock.now - start == pytest.approx(0.0105, abs=2e-5) and clock.slept == []
    assert _slow(0.003, 1.0, clock, rerun=rerun) == 0.0 and len(runs) == 3  # no emulation: no run


@pytest.mark.parametrize("seconds", [0.0, 0.0001, 0.0004, 0.002, 0.006])
def test_wait_never_returns_before_its_end(seconds):
    """The link's waits spin out what a sleep leaves, so a wait is never short (below and above SPIN_S)."""
    for _ in range(20):
        start = time.perf_counter()
        wait(seconds)
        assert time.perf_counter() - start >= seconds

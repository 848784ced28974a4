"""The latency model on the shipped resnet18 32 px profiles: the DESIGN formula checked by hand."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from profiles import Network, Profile, load_profile
from search.latency import (PARTS, Breakdown, expected_ms_many, lower_bound_ms, predict, predict_all,
                            predicted_per_sample)

MODEL, SIZE = "resnet18", 32


def _compute_only(profile: Profile) -> Profile:
    """The profile without its runtime-overhead rows: the DESIGN formula of the model's compute alone."""
    doc = copy.deepcopy(_cold(profile).doc)
    doc.pop("overhead", None)
    doc["meta"].pop("overhead", None)
    return Profile(doc, profile.source)


def _cold(profile: Profile) -> Profile:
    """Every request priced from the cold rows alone: no warm times, no idle curve (tests of their own
    below add them by hand)."""
    doc = copy.deepcopy(_no_idle(profile).doc)
    for row in doc["latency"]:
        row.pop("warm_ms", None)
    return Profile(doc, profile.source)


def _no_idle(profile: Profile, curve: dict | None = None) -> Profile:
    """A copy without the measured idle curve (or with `curve` instead)."""
    doc = copy.deepcopy(profile.doc)
    doc["meta"].pop("idle", None)
    if curve is not None:
        doc["meta"]["idle"] = curve
    return Profile(doc, profile.source)


@pytest.fixture(scope="module")
def host():
    return _compute_only(load_profile("host", MODEL, SIZE))


@pytest.fixture(scope="module")
def server():
    return _compute_only(load_profile("server", MODEL, SIZE))


def test_runtime_overheads_add_to_every_request_and_to_each_send():
    """With the measured overheads: O_D on every request, encode + link + server runtime on each send."""
    host, server = _cold(load_profile("host", MODEL, SIZE)), _cold(load_profile("server", MODEL, SIZE))
    assert host.has_overhead and server.has_overhead
    bare = predict(_compute_only(host), _compute_only(server), Network(10, 5), 2, 0.5, "int8", exit_rate=0.25)
    b = predict(host, server, Network(10, 5), 2, 0.5, "int8", exit_rate=0.25)
    o = {**host.overhead(2, 0.5, "int8"), **{k: v for k, v in server.overhead(2, 0.5, "int8").items() if v}}
    assert min(o.values()) > 0
    frame = 8 * server.frame_bytes / (1000 * 10)  # the header measured with the overheads, at 10 Mbit/s
    assert server.frame_bytes > 0
    assert b.expected_ms == pytest.approx(bare.expected_ms + o["device_overhead_ms"] + 0.75 * (
        o["encode_ms"] + o["link_overhead_ms"] + o["server_overhead_ms"] + frame))
    on_device = predict(host, server, Network(10, 5), host.K, 0.5, "fp32")
    assert on_device.expected_ms == pytest.approx(host.ms("head", host.K, 0.5) + on_device.device_overhead_ms)
    assert on_device.encode_ms == on_device.link_overhead_ms == on_device.server_overhead_ms == 0


def test_the_frame_header_is_serialised_with_the_payload():
    """T_N counts the server profile's frame_bytes with the payload; nothing is sent, nothing is counted."""
    host = _compute_only(load_profile("host", MODEL, SIZE))
    doc = copy.deepcopy(_compute_only(load_profile("server", MODEL, SIZE)).doc)
    bare = Profile(copy.deepcopy(doc), "bare")
    doc["meta"]["overhead"] = {"frame_bytes": 500}
    framed = Profile(doc, "framed")
    assert (bare.frame_bytes, framed.frame_bytes) == (0, 500)
    net = Network(1.0, 5.0)
    for k, codec in ((0, "raw"), (2, "int8"), (3, "fp32")):
        payload = host.tensor_bytes(k, 0.5, "fp32" if codec == "raw" else codec)
        b = predict(host, framed, net, k, 0.5, codec)
        assert b.bytes == payload  # the payload, as the runtime's bytes_sent counts it
        assert b.transfer_ms == pytest.approx(5.0 + 8 * (payload + 500) / 1000.0)
        assert b.transfer_ms - predict(host, bare, net, k, 0.5, codec).transfer_ms == pytest.approx(4.0)
    assert predict(host, framed, net, host.K, 0.5, "fp32").transfer_ms == 0.0


def _with(profile: Profile, part: str, k: int, r: float, ms: float) -> Profile:
    """A copy of a loaded profile with one latency row set to a round number."""
    doc = copy.deepcopy(profile.doc)
    for row in doc["latency"]:
        if (row["part"], row["k"], row["r"]) == (part, k, r):
            row["mean_ms"] = row["median_ms"] = row["p10_ms"] = row["p90_ms"] = ms
    return Profile(doc, "edited")


def test_formula_by_hand(host, server):
    device = _with(_with(host, "head", 2, 0.5, 1.0), "exit", 2, 0.5, 0.25)
    srv = _with(server, "tail", 2, 0.5, 3.0)
    n = device.tensor_bytes(2, 0.5, "fp16")
    assert n == 2 * 32 * 8 * 8  # resnet18 layer1 output at 32 px, half its 64 channels, 2 bytes each
    b = predict(device, srv, Network(10, 5), k=2, r=0.5, codec="fp16", exit_rate=0.4)
    transfer = 5 + 8 * 4096 / 10_000  # rtt + 8 bytes / (10 Mbit/s)
    assert (b.device_ms, b.exit_ms, b.server_ms, b.bytes, b.exit_rate) == (1.0, 0.25, 3.0, 4096, 0.4)
    assert b.transfer_ms == pytest.approx(transfer)
    assert b.expected_ms == pytest.approx(1.0 + 0.25 + 0.6 * (transfer + 3.0))
    d = b.as_dict()
    assert d["expected_ms"] == pytest.approx(b.expected_ms) and (d["k"], d["r"], d["codec"]) == (2, 0.5, "fp16")


def test_formula_on_measured_rows(host, server):
    lat = {(row["part"], row["k"], row["r"]): row["mean_ms"] for row in host.doc["latency"]}  # the raw rows
    tail = {(row["part"], row["k"], row["r"]): row["mean_ms"] for row in server.doc["latency"]}
    net = Network(25, 2)
    for k, r, codec, p in [(1, 0.3, "int8", 0.7), (3, 0.0, "fp32", 0.0), (4, 0.9, "fp16", 1.0)]:
        b = predict(host, server, net, k, r, codec, p)
        by_hand = lat["head", k, r] + lat["exit", k, r] + (1 - p) * (net.transfer_ms(b.bytes) + tail["tail", k, r])
        assert (b.device_ms, b.server_ms) == (lat["head", k, r], tail["tail", k, r])  # the mean, not the median
        assert b.expected_ms == pytest.approx(by_hand)


def test_ends_of_the_split_range(host, server):
    net = Network(10, 5)
    everything_on_server = predict(host, server, net, 0, 0.7, "int8", None)
    assert everything_on_server.device_ms == 0 and everything_on_server.exit_ms == 0
    assert everything_on_server.bytes == 3 * 32 * 32  # the uint8 image, whatever the codec
    assert everything_on_server.server_ms == server.ms("tail", 0, 0.0)
    everything_on_device = predict(host, server, net, host.K, 0.5, "fp32", None)
    assert (everything_on_device.bytes, everything_on_device.transfer_ms, everything_on_device.server_ms) == (0, 0, 0)
    assert everything_on_device.expected_ms == host.ms("head", host.K, 0.5)


def test_no_exit_costs_nothing_and_never_answers(host, server):
    net = Network(10, 5)
    host = _with(host, "exit", 2, 0.0, 0.25)  # a measured marginal exit can be ~0 ms: give it a visible cost
    without = predict(host, server, net, 2, 0.0, "fp32", None)
    never = predict(host, server, net, 2, 0.0, "fp32", 0.0)
    assert (without.exit_ms, without.exit_rate) == (0.0, 0.0)
    assert never.exit_ms == host.ms("exit", 2, 0.0) == 0.25
    assert never.expected_ms == pytest.approx(without.expected_ms + never.exit_ms)


def test_exit_rate_checks(host, server):
    net = Network(10, 5)
    with pytest.raises(ValueError, match="k=0 has no exit branch"):
        predict(host, server, net, 0, 0.0, "fp32", 0.5)
    with pytest.raises(ValueError, match=r"exit rate must be in \[0, 1\]"):
        predict(host, server, net, 2, 0.0, "fp32", 1.5)


def test_many_exit_rates_at_once(host, server):
    net = Network(5, 10)
    rates = np.linspace(0, 1, 11)
    many = expected_ms_many(host, server, net, 3, 0.2, "fp16", rates)
    one_by_one = [predict(host, server, net, 3, 0.2, "fp16", p).expected_ms for p in rates]
    assert many == pytest.approx(one_by_one)
    assert np.all(np.diff(many) <= 0)  # answering more at the exit never costs more


def test_lower_bound(host, server):
    net = Network(5, 10)
    for k in range(host.K + 1):
        for r in (0.0, 0.5):
            bound = lower_bound_ms(host, server, net, k, r, "fp32")
            rates = [None] if k in (0, host.K) else [None, 0.0, 0.5, 1.0]
            assert all(bound <= predict(host, server, net, k, r, "fp32", p).expected_ms + 1e-12 for p in rates)
    assert lower_bound_ms(host, server, net, 2, 0.0) == pytest.approx(host.ms("head", 2, 0.0) + host.ms("exit", 2, 0.0))


def test_profiles_must_match(host, server):
    net = Network(10, 5)
    with pytest.raises(ValueError, match="needs a server profile"):
        predict(host, host, net, 1, 0.0, "fp32", None)
    with pytest.raises(ValueError, match="differ in model: mobilenet_v2 vs resnet18"):
        predict(load_profile("host", "mobilenet_v2", SIZE), server, net, 1, 0.0, "fp32", None)
    doc = copy.deepcopy(server.doc)  # the same server profiled on a smaller ratio grid
    doc["meta"]["ratios"] = [0.0, 0.5]
    doc["latency"] = [row for row in doc["latency"] if row["r"] in (0.0, 0.5)]
    doc["bytes"] = [row for row in doc["bytes"] if row["r"] in (0.0, 0.5)]
    with pytest.raises(ValueError, match="differ in ratio grid"):
        predict(host, Profile(doc, "small grid"), net, 1, 0.0, "fp32", None)


def test_emulated_device_is_slower_by_its_factor(host, server):
    emu = _cold(load_profile("emulated-10x", MODEL, SIZE))  # as the host fixture: cold rows, no idle curve
    net = Network(10, 5)
    fast, slow = predict(host, server, net, 3, 0.5, "fp32", 0.5), predict(emu, server, net, 3, 0.5, "fp32", 0.5)
    assert slow.device_ms == pytest.approx(10 * fast.device_ms, abs=1e-3)
    assert (slow.transfer_ms, slow.server_ms) == (fast.transfer_ms, fast.server_ms)


def test_predict_all_covers_every_split(host, server):
    table = predict_all(host, server, Network(10, 5), "int8")
    assert len(table) == (host.K + 1) * len(host.ratios)
    assert {"device_ms", "exit_ms", "transfer_ms", "server_ms", "bytes", "exit_rate", "expected_ms"} <= set(table)
    assert isinstance(predict(host, server, Network(1, 0), 1, 0.0, "fp32", None), Breakdown)


def test_prediction_for_known_samples(host, server):
    """A deployment's prediction: exited samples cost head + exit, the others the full path."""
    parts = predict(host, server, Network(10, 5), 2, 0.5, "int8", exit_rate=0.0).as_dict()
    exit_path = parts["device_ms"] + parts["exit_ms"]
    full_path = exit_path + parts["transfer_ms"] + parts["server_ms"]
    exited = np.array([True] * 15 + [False] * 5)
    p = predicted_per_sample(parts, exited)
    assert p["exit_rate"] == 0.75
    assert p["total_ms"] == pytest.approx(0.75 * exit_path + 0.25 * full_path)
    assert p["p95_ms"] == pytest.approx(full_path)  # 5 of 20 take the full path: the p95 is one of them
    assert predicted_per_sample(parts, np.array([True] * 99 + [False]))["p95_ms"] == pytest.approx(exit_path)
    for key in PARTS:
        assert p[key] == pytest.approx(parts[key])
    # per-part means over the samples, as a measured run reports them (0 where a part did not run)
    assert p["mean_device_exit_ms"] == pytest.approx(exit_path)
    assert p["mean_transfer_ms"] == pytest.approx(0.25 * parts["transfer_ms"])
    assert p["mean_server_ms"] == pytest.approx(0.25 * parts["server_ms"])


def _warm(profile: Profile, rows: dict) -> Profile:
    """A copy with round cold and warm times: {(part, k, r): (cold, warm)}."""
    doc = copy.deepcopy(profile.doc)
    for row in doc["latency"]:
        row.pop("warm_ms", None)
        key = (row["part"], row["k"], row["r"])
        if key in rows:
            row["mean_ms"] = row["median_ms"] = row["p10_ms"] = row["p90_ms"] = rows[key][0]
            row["warm_ms"] = rows[key][1]
    return Profile(doc, "edited")


def test_a_request_after_an_on_device_answer_runs_warm(host, server):
    """Hand-checked: head 1.0 cold / 0.6 warm, exit 0.2 / 0.1, so W = 0.5 ms saved after each exit."""
    K = host.K
    dev = _warm(host, {("head", 2, 0.0): (1.0, 0.6), ("exit", 2, 0.0): (0.2, 0.1), ("head", K, 0.0): (4.0, 3.0)})
    srv = _with(server, "tail", 2, 0.0, 2.0)
    net = Network(10, 5)
    b = predict(dev, srv, net, 2, 0.0, "fp32", exit_rate=0.8)
    sent = 5 + 8 * dev.tensor_bytes(2, 0.0, "fp32") / 10e3 + 2.0
    assert b.warm_saving_ms == pytest.approx(0.5)
    assert b.expected_ms == pytest.approx(1.2 - 0.8 * 0.5 + 0.2 * sent)
    # device only: every request follows an on-device answer
    assert predict(dev, srv, net, K, 0.0).expected_ms == pytest.approx(3.0)
    # without an exit every request was sent before: all cold
    assert predict(dev, srv, net, 2, 0.0, "fp32", None).expected_ms == pytest.approx(1.0 + sent)
    # the bound stays below every threshold's latency, warm included
    assert lower_bound_ms(dev, srv, net, 2, 0.0, "fp32") <= min(b.expected_ms, 0.7 + 1e-9)
    # a known sequence: the first and each sample after a send run cold, those after an exit warm
    parts = b.as_dict()
    got = predicted_per_sample(parts, [True, True, False, True])
    assert got["total_ms"] == pytest.approx((1.2 + 0.7 + (0.7 + sent) + 1.2) / 4)
    # the warm share of the device's part (what the profile check scales by the back-to-back drift): the two
    # samples after an exit; device only, every sample
    assert got["mean_device_warm_ms"] == pytest.approx((0.7 + 0.7) / 4)
    only = predicted_per_sample(predict(dev, srv, net, K, 0.0).as_dict(), [False] * 4)
    assert only["mean_device_warm_ms"] == pytest.approx(only["mean_device_exit_ms"]) == pytest.approx(3.0)
    # a profile without warm rows predicts as before (cold for every request)
    cold = _warm(host, {("head", 2, 0.0): (1.0, 1.0), ("exit", 2, 0.0): (0.2, 0.2)})
    assert predict(cold, srv, net, 2, 0.0, "fp32", 0.8).warm_saving_ms == 0.0


def test_cold_parts_slow_down_by_the_idle_curve_at_the_gap_each_side_waits(host, server):
    """Hand-checked: the device waits transfer + tail for each reply, the server the device's cold path and
    the transfer for the next request; each cold part is its row x its side's curve at that gap."""
    dev = _no_idle(_warm(host, {("head", 2, 0.0): (1.0, 0.6), ("exit", 2, 0.0): (0.2, 0.1)}),
                   {"gap_ms": [1.0, 10.0, 40.0], "factor": [1.0, 1.5, 3.0]})
    srv = _no_idle(_with(server, "tail", 2, 0.0, 2.0), {"gap_ms": [1.0, 10.0], "factor": [1.0, 2.0]})
    net = Network(10, 5)
    transfer = 5 + 8 * dev.tensor_bytes(2, 0.0, "fp32") / 10e3
    wait = transfer + 2.0  # 20.1 ms at resnet18 k = 2 fp32: between the curve's 10 and 40 ms points
    f_dev = 1.5 + (wait - 10.0) / 30.0 * 1.5
    b = predict(dev, srv, net, 2, 0.0, "fp32", exit_rate=0.8)
    assert b.device_idle_factor == pytest.approx(f_dev) and b.server_idle_factor == pytest.approx(2.0)
    assert (b.device_ms, b.exit_ms, b.server_ms) == pytest.approx((f_dev, 0.2 * f_dev, 4.0))
    assert b.warm_saving_ms == pytest.approx(1.2 * f_dev - 0.7)  # after an exit: warm, as before
    assert b.expected_ms == pytest.approx(1.2 * f_dev - 0.8 * (1.2 * f_dev - 0.7) + 0.2 * (transfer + 4.0))
    assert lower_bound_ms(dev, srv, net, 2, 0.0, "fp32") <= b.expected_ms
    # a faster link: a shorter wait, a smaller factor; device only never waits
    assert predict(dev, srv, Network(1000, 1), 2, 0.0, "fp32", 0.8).device_idle_factor < f_dev
    assert predict(dev, srv, net, dev.K, 0.0).device_idle_factor == 1.0
    # a noisy dip or a factor below 1 counts as no speed-up; no curve, no slowdown
    dip = _no_idle(dev, {"gap_ms": [1.0, 5.0, 20.0], "factor": [0.9, 2.0, 1.5]})
    assert (dip.idle_factor(0.5), dip.idle_factor(3.0), dip.idle_factor(30.0)) == pytest.approx((1.0, 1.5, 2.0))
    assert predict(_no_idle(dev), _no_idle(srv), net, 2, 0.0, "fp32", 0.8).device_idle_factor == 1.0


def _simulate(exited, cold: float, warm: float, up_ms: float, tail: float, factor) -> np.ndarray:
    """Per-request latency of a sequence, step by step: the device runs cold after a send and warm after an
    answer; the server's wait is the time since its last reply (the way back, every device part since
    then and the way up); its tail runs `factor(wait)` slower."""
    out, waited = [], 0.0
    for i, ex in enumerate(exited):
        dev = warm if i and exited[i - 1] else cold
        waited += dev
        if ex:
            out.append(dev)
            continue
        out.append(dev + up_ms + tail * factor(waited + up_ms))
        waited = 0.0
    return np.array(out)


def test_exits_between_sends_lengthen_the_servers_wait(host, server):
    """The tail is priced at the mean of the server's idle curve over its waits between sent requests; a
    step-by-step simulation (no code shared with the model) gives the same mean at every exit rate."""
    dev = _warm(host, {("head", 2, 0.0): (1.0, 0.6), ("exit", 2, 0.0): (0.2, 0.1)})
    srv = _no_idle(_with(server, "tail", 2, 0.0, 2.0), {"gap_ms": [1.0, 41.0], "factor": [1.0, 3.0]})
    net = Network(1000, 1)
    up = net.transfer_ms(dev.tensor_bytes(2, 0.0, "fp32"))
    b = predict(dev, srv, net, 2, 0.0, "fp32", exit_rate=0.0)
    assert (b.server_gap_ms, b.exit_gap_ms) == pytest.approx((1.2 + up, 0.7))
    assert b.server_idle_factor == pytest.approx(1.0 + (1.2 + up - 1.0) / 20.0)  # every request sent
    rng = np.random.default_rng(0)
    for p in (0.3, 0.8, 0.95):
        exited = rng.random(100_000) < p
        sim = _simulate(exited, 1.2, 0.7, up, 2.0, lambda g: float(np.interp(g, [1.0, 41.0], [1.0, 3.0])))
        assert b.expected_at([p])[0] == pytest.approx(sim.mean(), rel=0.01)
        assert b.with_exit_rate(p).expected_ms == pytest.approx(b.expected_at([p])[0])
        # a known sequence: exact, sample by sample
        assert predicted_per_sample(b.as_dict(), exited)["total_ms"] == pytest.approx(sim.mean(), rel=1e-9)
    # more exits, a colder server: the tail grows with the exit rate, never below the all-sent price
    tails = b.with_exit_rate(0.0).server_ms, b.with_exit_rate(0.5).server_ms, b.with_exit_rate(0.9).server_ms
    assert tails[0] < tails[1] < tails[2] <= 2.0 * 3.0
    assert lower_bound_ms(dev, srv, net, 2, 0.0, "fp32") <= min(b.expected_at(np.linspace(0, 1, 21)))
    # hand-checked: gaps g0, g0 + 0.7, ... ; at p = 0.5 the weights are 1/2, 1/4, ...
    f = [1.0 + (b.server_gap_ms + 0.7 * j - 1.0) / 20.0 for j in range(80)]
    hand = sum(0.5 ** (j + 1) * min(fj, 3.0) for j, fj in enumerate(f))
    assert b.server_factor_at(0.5) == pytest.approx(hand)


@pytest.mark.parametrize("curve, what", [({"gap_ms": [1.0, 5.0]}, "gap_ms and factor"),
                                         ({"gap_ms": [5.0, 1.0], "factor": [1.0, 2.0]}, "increasing"),
                                         ({"gap_ms": [1.0], "factor": [float("nan")]}, "finite"),
                                         ({"gap_ms": [1.0, 2.0], "factor": [1.0]}, "same length")])
def test_a_malformed_idle_curve_is_refused_in_one_line(host, curve, what):
    doc = copy.deepcopy(host.doc)
    doc["meta"]["idle"] = curve
    with pytest.raises(ValueError, match=what):
        Profile(doc, "edited")

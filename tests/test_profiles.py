"""Profiles: a tiny real measurement (resnet18, 32 px, ratios 0 and 0.5, 3 repeats), its format, the
loader's errors, emulation, the network model and the shipped profiles.  No wall-clock assertions."""
from __future__ import annotations

import copy

import json
import math

import pandas as pd
import numpy as np
import pytest

from compress import zoo
from compress.codec import payload_bytes
from profiles import Network, Profile, available_devices, load_profile
from profiles.__main__ import main as cli
from profiles.profile import OVERHEAD_PARTS, overhead_codecs, profile_path, save_json
from profiles.profiler import scaled, summarize
from profiles.profiler import validate as validate_profiles

MODEL, SIZE, K, RATIOS = "resnet18", 32, 6, [0.0, 0.5]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Measure a device and a server profile through the command line, then emulate a 10x device."""
    root = tmp_path_factory.mktemp("profiles")
    common = ["--model", MODEL, "--input-size", str(SIZE), "--ratios", "0,0.5", "--repeats", "3", "--warmup", "1",
              "--min-ms", "0"]
    assert cli(["--root", str(root), "measure", *common, "--device", "dev", "--role", "device", "--threads", "1"]) == 0
    assert cli(["--root", str(root), "measure", *common, "--device", "srv", "--role", "server", "--threads", "2"]) == 0
    assert cli(["--root", str(root), "emulate", "--from", "dev", "--factor", "10", "--name", "dev-10x"]) == 0
    return root


@pytest.fixture(scope="module")
def ov_root(root):
    """The same profiles with their overhead sections: measured for dev and srv (a real, short measurement),
    copied for the emulated dev-10x."""
    quick = ["--model", MODEL, "--input-size", str(SIZE), "--repeats", "10", "--warmup", "2", "--min-ms", "0"]
    for device in ("dev", "srv", "dev-10x"):
        assert cli(["--root", str(root), "overhead", *quick, "--device", device]) == 0
    return root


@pytest.fixture(scope="module")
def dev(root):
    return load_profile("dev", MODEL, SIZE, root=root)


@pytest.fixture(scope="module")
def srv(root):
    return load_profile("srv", MODEL, SIZE, root=root)


def _doc(root, device="dev"):
    return json.loads(profile_path(device, MODEL, SIZE, root).read_text())


def test_device_table_is_complete(dev):
    assert (dev.device, dev.role, dev.K, dev.ratios, dev.model, dev.input_size) == ("dev", "device", K, RATIOS, MODEL, SIZE)
    lat = dev.latency
    heads = lat[lat.part == "head"]
    exits = lat[lat.part == "exit"]
    assert set(lat.part) == {"head", "exit"}
    assert sorted(zip(heads.k, heads.r)) == [(k, r) for k in range(K + 1) for r in RATIOS]
    assert sorted(zip(exits.k, exits.r)) == [(k, r) for k in range(1, K) for r in RATIOS]
    assert (heads[heads.k == 0].median_ms == 0).all() and (heads[heads.k == 0].n == 0).all()
    timed = heads[heads.k > 0]
    assert (timed.n == 3).all() and (timed.median_ms > 0).all()
    assert (timed.p10_ms <= timed.median_ms).all() and (timed.median_ms <= timed.p90_ms).all()
    # an exit row is its marginal cost inside one graph with the head: never negative, and not nothing overall
    rows = [r for r in dev.doc["latency"] if r["part"] == "exit"]
    assert all(r["mean_ms"] >= 0 and r["n"] == 3 for r in rows) and sum(r["mean_ms"] for r in rows) > 0
    assert dev.ms("exit", 0, 0.5) == 0.0 and dev.ms("exit", K, 0.0) == 0.0  # no exit there: nothing runs


def test_server_table_is_complete(srv):
    lat = srv.latency
    assert set(lat.part) == {"tail", "head", "exit"} and srv.threads == 2
    tails = lat[lat.part == "tail"]
    assert sorted(zip(tails.k, tails.r)) == [(k, r) for k in range(K + 1) for r in RATIOS]
    # head and exit rows (what an edge box pays to run an exit) at r = 0 only, where a split has an exit
    for part in ("head", "exit"):
        rows = lat[lat.part == part]
        assert sorted(zip(rows.k, rows.r)) == [(k, 0.0) for k in range(1, K)] and srv.exit_at(1)
        with pytest.raises(ValueError, match="r = 0 only"):
            srv.ms(part, 1, 0.5)
    assert srv.ms("head", 0, 0.0) == 0.0 and all(srv.ms("head", k, 0.0) > 0 for k in range(1, K))
    assert srv.ms("tail", K, 0.5) == 0.0
    assert all(srv.ms("tail", k, r) > 0 for k in range(K) for r in RATIOS)
    # at k = 0 nothing is pruned: the same tail serves every ratio
    assert srv.ms("tail", 0, 0.0) == srv.ms("tail", 0, 0.5)


def test_meta_records_how_it_was_measured(root, dev):
    meta = dev.meta
    assert meta["slowdown"] == 1.0 and meta["emulates"] is None and meta["threads"] == 1
    assert meta["cpu"] and meta["host"] and meta["date"] and meta["seconds"] > 0
    assert {"torch", "torchvision", "torch_pruning", "onnxruntime", "python"} <= set(meta["versions"])
    assert "ONNX Runtime" in meta["method"] and "median" in meta["method"]
    assert (meta["repeats"], meta["warmup"], meta["num_classes"]) == (3, 1, 10)
    # pandas-readable as the contract promises
    assert list(pd.DataFrame(_doc(root)["latency"]).columns) == ["part", "k", "r", "mean_ms", "median_ms", "p10_ms",
                                                                  "p90_ms", "n", "warm_ms"]


def test_bytes_table(dev, srv):
    reference = zoo.split_table(zoo.build(MODEL, 10, SIZE), SIZE)
    for codec in ("fp32", "fp16", "int8"):
        for r in RATIOS:
            assert dev.tensor_bytes(0, r, codec) == 3 * SIZE * SIZE  # the uint8 image whatever the codec
            assert dev.tensor_bytes(K, r, codec) == 0  # the device answers: nothing is sent
        for k in range(1, K):
            assert dev.tensor_bytes(k, 0.0, codec) == reference[k].bytes(codec)
            assert dev.tensor_bytes(k, 0.5, codec) < dev.tensor_bytes(k, 0.0, codec)  # pruning shrinks the split
            numel = math.prod(dev.shape(k, 0.5))
            assert dev.tensor_bytes(k, 0.5, codec) == payload_bytes(numel, codec)
    assert dev.shape(1, 0.0) == (64, 8, 8) and dev.shape(1, 0.5) == (32, 8, 8)
    pd.testing.assert_frame_equal(dev.bytes, srv.bytes)


def test_emulated_profile_is_host_times_factor(root, dev):
    emu = load_profile("dev-10x", MODEL, SIZE, root=root)
    assert (emu.device, emu.slowdown, emu.meta["emulates"], emu.role) == ("dev-10x", 10.0, "dev", "device")
    assert "EMULATED" in emu.meta["method"]
    for part, k, r in zip(dev.latency.part, dev.latency.k, dev.latency.r):
        assert emu.ms(part, k, r) == pytest.approx(10 * dev.ms(part, k, r), abs=1e-3)
    pd.testing.assert_frame_equal(emu.bytes, dev.bytes)
    # emulating an emulation multiplies and still names the measured device
    twice = scaled(_doc(root, "dev-10x"), 2.0, "dev-20x", "dev-10x")["meta"]
    assert (twice["slowdown"], twice["emulates"]) == (20.0, "dev")


def test_available_devices(root):
    assert available_devices(root) == ["dev", "dev-10x", "srv"]
    assert available_devices(root / "nowhere") == []


def test_loader_errors_are_one_line_and_helpful(root, tmp_path):
    with pytest.raises(ValueError, match=r"unknown device 'phone'; available: dev, dev-10x, srv"):
        load_profile("phone", MODEL, SIZE, root=root)
    with pytest.raises(FileNotFoundError, match=r"no profile for mobilenet_v2 at 32px; it has: resnet18-32px"):
        load_profile("dev", "mobilenet_v2", SIZE, root=root)
    with pytest.raises(ValueError, match=r"no profile for resnet18 at 224px; it has: resnet18-32px"):
        load_profile("dev", MODEL, 224, root=root)
    path = str(profile_path("dev", MODEL, SIZE, root))
    assert load_profile(path, MODEL, SIZE).device == "dev"  # a path works too
    with pytest.raises(ValueError, match=r"profiles resnet18 at 32px, not resnet18 at 64px"):
        load_profile(path, MODEL, 64)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_profile(str(tmp_path / "missing.json"), MODEL, SIZE)
    for catch in (FileNotFoundError, ValueError):  # callers catching either one get the missing profile
        with pytest.raises(catch, match="unknown device"):
            load_profile("phone", MODEL, SIZE, root=root)


def _broken(tmp_path, doc, name="broken.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def test_malformed_files_say_what_is_missing(root, tmp_path):
    doc = _doc(root)
    with pytest.raises(ValueError, match=r"missing 'bytes'"):
        load_profile(_broken(tmp_path, {k: v for k, v in doc.items() if k != "bytes"}), MODEL, SIZE)
    meta = {k: v for k, v in doc["meta"].items() if k not in ("threads", "cpu")}
    with pytest.raises(ValueError, match=r"meta lacks cpu, threads"):
        load_profile(_broken(tmp_path, {**doc, "meta": meta}), MODEL, SIZE)
    latency = [row for row in doc["latency"] if not (row["part"] == "exit" and row["k"] == 3 and row["r"] == 0.5)]
    with pytest.raises(ValueError, match=r"incomplete profile, missing rows: exit k=3 r=0.5"):
        load_profile(_broken(tmp_path, {**doc, "latency": latency}), MODEL, SIZE)
    rows = [dict(doc["latency"][0])] + doc["latency"][1:]
    del rows[0]["median_ms"]
    with pytest.raises(ValueError, match=r"latency row 0 lacks median_ms"):
        load_profile(_broken(tmp_path, {**doc, "latency": rows}), MODEL, SIZE)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_profile(str(tmp_path / "bad.json"), MODEL, SIZE)
    with pytest.raises(ValueError, match="incomplete profile"):  # nothing broken reaches disk
        save_json({**doc, "latency": latency}, tmp_path / "never.json")
    assert not (tmp_path / "never.json").exists()


def test_lookups_reject_what_was_not_profiled(dev, srv):
    with pytest.raises(ValueError, match=r"ratio r=0.3 is not in the profiled grid \[0.0, 0.5\]"):
        dev.ms("head", 2, 0.3)
    with pytest.raises(ValueError, match=r"k=7 is outside 0..6"):
        dev.ms("head", 7, 0.0)
    with pytest.raises(ValueError, match="device profile: it has no tail times"):
        dev.ms("tail", 2, 0.0)
    with pytest.raises(ValueError, match="server profile .* head rows at r = 0 only"):
        srv.ms("head", 2, 0.5)  # an edge box times the heads of unpruned candidates only
    with pytest.raises(ValueError, match="unknown codec 'bf16'"):
        dev.tensor_bytes(2, 0.0, "bf16")
    assert dev.ms("head", 2, 0.5000000001) == dev.ms("head", 2, 0.5)  # ratios compare rounded


def test_cli_list_and_errors(root, capsys):
    assert cli(["--root", str(root), "list"]) == 0
    out = capsys.readouterr().out
    assert "dev-10x" in out and "resnet18-32px" in out
    assert cli(["--root", str(root), "emulate", "--from", "phone", "--factor", "2", "--name", "x"]) == 2
    assert "no profiles" in capsys.readouterr().err
    assert cli(["--root", str(root), "validate", "--model", MODEL, "--input-size", "32",
                "--device", "srv", "--server", "srv"]) == 2
    assert "needs a device profile" in capsys.readouterr().err


def test_network_arithmetic():
    net = Network(bandwidth_mbps=10, rtt_ms=5)
    assert net.transfer_ms(0) == 0.0  # nothing sent, nothing paid
    assert net.transfer_ms(1250) == pytest.approx(5 + 1.0)  # 10 000 bits at 10 Mbit/s = 1 ms
    assert net.transfer_ms(3 * 32 * 32) == pytest.approx(5 + 8 * 3072 / 10_000)
    assert Network(100, 0).transfer_ms(125_000) == pytest.approx(10.0)
    assert list(net.transfer_ms_many([0, 1250])) == pytest.approx([0.0, 6.0])
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="bandwidth must be"):
            Network(bad, 1)
    with pytest.raises(ValueError, match="round-trip time must be"):
        Network(10, -1)
    with pytest.raises(ValueError, match="byte count"):
        net.transfer_ms(-1)


def test_validation_summary_arithmetic():
    table = pd.DataFrame({"ape": [10.0, 20.0, 40.0], "device_ape": [1.0, float("nan"), 3.0],
                          "server_ape": [5.0, 5.0, 5.0]})
    assert summarize(table) == {"median_ape": 20.0, "max_ape": 40.0, "median_device_ape": 2.0,
                                "max_device_ape": 3.0, "median_server_ape": 5.0, "max_server_ape": 5.0}


def test_short_parts_are_timed_more_often(tmp_path):
    import torch

    from compress import onnx_io
    from profiles.profiler import time_session

    x = torch.zeros(1, 4, 2, 2)
    sess = onnx_io.session(onnx_io.export(torch.nn.ReLU(), x, tmp_path / "relu.onnx"))
    assert time_session(sess, x.numpy(), repeats=3, warmup=1, min_ms=0)["n"] == 3
    # a ReLU takes microseconds, so 100 ms of timing is far more than 3 runs
    row = time_session(sess, x.numpy(), repeats=3, warmup=1, min_ms=100)
    assert row["n"] > 3 and row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]


@pytest.mark.slow
def test_validate_compares_every_split(dev, srv):
    table = validate_profiles(dev, srv, repeats=3, progress=False)
    assert sorted(zip(table.k, table.r)) == sorted((k, r) for k in range(K + 1) for r in RATIOS)
    # the predictions are the profile's own rows, head + exit on the device and tail on the server
    for row in table.itertuples():
        assert row.pred_device_ms == pytest.approx(dev.ms("head", row.k, row.r) + dev.ms("exit", row.k, row.r))
        assert row.pred_server_ms == pytest.approx(srv.ms("tail", row.k, row.r))
    # and each error is |predicted - measured| / measured, recomputed here
    ape = 100 * (table.pred_ms - table.meas_ms).abs() / table.meas_ms
    assert np.allclose(table.ape, ape, atol=0.01)
    assert table[table.k == 0].device_ape.isna().all() and (table[table.k == 0].meas_device_ms == 0).all()
    assert table[table.k == K].server_ape.isna().all() and (table[table.k > 0].meas_device_ms > 0).all()


@pytest.mark.parametrize("model", ["mobilenet_v2", "resnet18"])
def test_shipped_profiles(model):
    assert {"host", "server", "emulated-10x"} <= set(available_devices())
    host, server, emu = (load_profile(d, model, 32) for d in ("host", "server", "emulated-10x"))
    assert (host.role, host.threads, server.role, server.threads) == ("device", 1, "server", 2)
    assert host.ratios == server.ratios == [round(0.1 * i, 1) for i in range(10)]
    assert emu.slowdown == 10.0 and emu.meta["emulates"] == "host"
    for part, k, r in zip(host.latency.part, host.latency.k, host.latency.r):
        assert emu.ms(part, k, r) == pytest.approx(10 * host.ms(part, k, r), abs=1e-3)
    # 32 px ships with the per-request runtime overhead; emulated devices carry the host's unscaled
    emu50 = load_profile("emulated-50x", model, 32)
    assert emu50.slowdown == 50.0 and emu50.meta["emulates"] == "host"
    assert host.has_overhead and server.has_overhead and emu.has_overhead and emu50.has_overhead
    for k in range(host.K + 1):
        codec = "png" if k == 0 else "int8" if k < host.K else None
        assert emu.overhead(k, 0.3, codec) == emu50.overhead(k, 0.3, codec) == host.overhead(k, 0.3, codec)
        assert server.overhead(k, 0.3, codec)["encode_ms"] == 0.0
        assert (server.overhead(k, 0.3, codec)["link_overhead_ms"] > 0) == (k < host.K)


# -- per-request runtime overhead (profiles.overhead) ------------------------------------------------------

def _ov(root, device):
    return load_profile(device, MODEL, SIZE, root=root)


def test_codec_names_match_compress():
    from compress import codec
    from profiles import profile

    assert profile.CODECS == codec.CODECS and profile.FEATURE_CODECS == codec.FEATURE_CODECS
    assert profile.INPUT_CODECS == codec.INPUT_CODECS and profile.ALL_CODECS == codec.ALL_CODECS
    assert set(profile.VARIABLE) == set(codec.VARIABLE)


def test_profile_without_overhead_loads_with_zeros(root):
    doc = {key: value for key, value in _doc(root).items() if key != "overhead"}
    old = Profile(doc, "old.json")
    assert not old.has_overhead and old.overhead_rows.empty
    for k, codec in ((0, "png"), (0, "fp32"), (2, "int8-zlib"), (3, "fp16"), (K, None)):
        assert old.overhead(k, 0.5, codec) == dict.fromkeys(OVERHEAD_PARTS, 0.0)
    shipped = load_profile("host", MODEL, 224)  # a file written before the section existed
    assert not shipped.has_overhead and shipped.overhead(2, 0.3, "int8") == dict.fromkeys(OVERHEAD_PARTS, 0.0)


def test_overhead_rows_round_trip(ov_root, tmp_path):
    for device, own, other in (("dev", ("device_overhead_ms", "encode_ms"), ("link_overhead_ms", "server_overhead_ms")),
                               ("srv", ("link_overhead_ms", "server_overhead_ms"), ("device_overhead_ms", "encode_ms"))):
        doc = _doc(ov_root, device)
        meta = doc["meta"]["overhead"]
        assert meta["host"] and meta["date"] and meta["seconds"] > 0 and "onnxruntime" in meta["versions"]
        assert "trivial ONNX graphs" in meta["method"] and "half zeros" in meta["method"]
        assert meta["threads"] == (1 if device == "dev" else 2)
        again = Profile(json.loads(save_json(doc, tmp_path / f"{device}.json").read_text()), device)
        assert again.has_overhead
        for row in doc["overhead"]:
            assert set(row) == {"k", "r", "codec", *own, "n"}
            got = again.overhead(row["k"], row["r"], row["codec"])
            assert {key: got[key] for key in own} == {key: row[key] for key in own}
            assert all(got[key] == 0.0 for key in other)  # the other role's parts are not this profile's
        # every split and codec is covered: k = 0 the input codecs, 0 < k < K the feature codecs, k = K one row
        assert {row["codec"] for row in doc["overhead"] if row["k"] == 0} == set(overhead_codecs(0, K))
        assert {row["codec"] for row in doc["overhead"] if row["k"] == 3} == {"fp32", "fp16", "int8", "int8-zlib"}
        assert [row["codec"] for row in doc["overhead"] if row["k"] == K] == [None]


def test_overhead_records_the_frame_header_the_link_carries(ov_root):
    """The server side's section records what a request frame adds to its payload on the wire."""
    import numpy as np

    from runtime import protocol as wire

    x = np.ones((1, 4, 3, 3), np.float32)
    header = len(wire.request(7, x, "fp32")) - x.nbytes
    assert _ov(ov_root, "srv").frame_bytes == header > 0
    assert _ov(ov_root, "dev").frame_bytes == 0  # the device side does not measure the link


def test_measured_overhead_orders_as_the_codecs_work(ov_root):
    dev, srv = _ov(ov_root, "dev"), _ov(ov_root, "srv")
    # zlib after the 8-bit code costs more than a plain cast; an image codec more than sending raw bytes
    assert dev.overhead(1, 0.0, "int8-zlib")["encode_ms"] > dev.overhead(1, 0.0, "fp32")["encode_ms"]
    assert dev.overhead(0, 0.0, "png")["encode_ms"] > dev.overhead(0, 0.0, "raw")["encode_ms"]
    assert srv.overhead(0, 0.0, "png")["server_overhead_ms"] > srv.overhead(0, 0.0, "raw")["server_overhead_ms"]
    assert dev.overhead(K, 0.0, None)["encode_ms"] == 0.0  # nothing is sent at k = K
    assert srv.overhead(K, 0.0, None) == dict.fromkeys(OVERHEAD_PARTS, 0.0)
    assert all(srv.overhead(k, 0.5, "int8")["link_overhead_ms"] > 0 for k in range(1, K))  # a real exchange
    assert all(dev.overhead(k, 0.0, "fp16")["device_overhead_ms"] > 0 for k in range(1, K + 1))


def test_overhead_lookup_rules(ov_root):
    dev = _ov(ov_root, "dev")
    assert dev.overhead(0, 0.5, "fp32") == dev.overhead(0, 0.5, "raw")  # a feature codec at k = 0 sends raw
    assert dev.overhead(K, 0.5, "int8-zlib") == dev.overhead(K, 0.5, None)  # k = K sends nothing
    with pytest.raises(ValueError, match="applies to the input image"):
        dev.overhead(2, 0.0, "jpeg75")
    with pytest.raises(ValueError, match="unknown codec 'bf16'"):
        dev.overhead(2, 0.0, "bf16")
    with pytest.raises(ValueError, match="name its codec"):
        dev.overhead(2, 0.0, None)
    with pytest.raises(ValueError, match="not in the profiled grid"):
        dev.overhead(2, 0.3, "fp32")


def test_overhead_is_interpolated_in_the_number_of_elements(ov_root):
    """A ratio between two measured ones gets the value linear in the split tensor's element count."""
    doc = _doc(ov_root, "dev")
    doc["meta"]["ratios"] = [0.0, 0.25, 0.5]
    doc["latency"] += [{**row, "r": 0.25} for row in doc["latency"] if row["r"] == 0.5]
    for row in [row for row in doc["bytes"] if row["r"] == 0.5]:
        mid = {**row, "r": 0.25}
        if row["k"] == 1:  # 64 channels at r = 0, 32 at r = 0.5: 48 is half-way in elements
            mid["shape"] = [48, 8, 8]
        doc["bytes"].append(mid)
    p = Profile(doc, "mid.json")
    lo, hi, mid = (p.overhead(1, r, "int8-zlib") for r in (0.5, 0.0, 0.25))
    assert lo["encode_ms"] != hi["encode_ms"]
    for key in ("device_overhead_ms", "encode_ms"):
        assert mid[key] == pytest.approx((lo[key] + hi[key]) / 2, abs=2e-4)
    assert p.overhead(2, 0.25, "fp16") == p.overhead(2, 0.5, "fp16")  # the same shape as r = 0.5
    # rows at one ratio only: every ratio gets them
    doc["overhead"] = [row for row in doc["overhead"] if row["r"] == 0.0]
    one = Profile(doc, "one.json")
    assert one.overhead(3, 0.5, "int8") == one.overhead(3, 0.0, "int8")


def test_scaled_keeps_the_overhead(ov_root):
    doc = _doc(ov_root, "dev")
    slow = scaled(doc, 3.0, "dev-3x", "dev")
    assert slow["overhead"] == doc["overhead"]
    assert "unscaled" in slow["meta"]["overhead"]["copied_from"] and "overhead rows" in slow["meta"]["method"]
    fast, emu = Profile(doc, "dev"), Profile(slow, "dev-3x")
    assert emu.ms("head", 3, 0.5) == pytest.approx(3 * fast.ms("head", 3, 0.5), abs=1e-3)
    for k in range(K + 1):
        for codec in ("fp32", "int8-zlib") if 0 < k < K else ("webp75",) if k == 0 else (None,):
            assert emu.overhead(k, 0.5, codec) == fast.overhead(k, 0.5, codec)
    # the command line's copy for an already emulated profile: the source's rows, as they are
    assert _doc(ov_root, "dev-10x")["overhead"] == doc["overhead"]


def test_overhead_is_not_measured_for_an_emulation(ov_root):
    from profiles import overhead

    with pytest.raises(ValueError, match="emulated"):
        overhead.measure(_ov(ov_root, "dev-10x"))


def test_malformed_overhead_sections(ov_root, tmp_path):
    doc = _doc(ov_root, "dev")
    foreign = [{**doc["overhead"][0], "link_overhead_ms": 1.0}] + doc["overhead"][1:]
    with pytest.raises(ValueError, match="cannot hold link_overhead_ms"):
        load_profile(_broken(tmp_path, {**doc, "overhead": foreign}), MODEL, SIZE)
    partial = [row for row in doc["overhead"] if not (row["k"] == 2 and row["codec"] == "int8-zlib")]
    with pytest.raises(ValueError, match="incomplete overhead section, no rows for k=2 int8-zlib"):
        load_profile(_broken(tmp_path, {**doc, "overhead": partial}), MODEL, SIZE)
    wrong = [{**doc["overhead"][0], "codec": "int8"}] + doc["overhead"][1:]  # k = 0 takes input codecs
    with pytest.raises(ValueError, match="k=0 has codec 'int8'"):
        load_profile(_broken(tmp_path, {**doc, "overhead": wrong}), MODEL, SIZE)
    negative = [{**doc["overhead"][0], "encode_ms": -1.0}] + doc["overhead"][1:]
    with pytest.raises(ValueError, match="finite and >= 0"):
        load_profile(_broken(tmp_path, {**doc, "overhead": negative}), MODEL, SIZE)


def test_tensor_bytes_of_raw_and_variable_codecs(dev):
    for r in RATIOS:
        assert dev.tensor_bytes(0, r, "raw") == 3 * SIZE * SIZE == dev.tensor_bytes(0, r, "fp32")
        assert dev.tensor_bytes(K, r, "int8-zlib") == 0 and dev.tensor_bytes(K, r, "png") == 0  # nothing sent
    for codec in ("int8-zlib", "png", "jpeg75", "webp50"):
        with pytest.raises(ValueError, match=f"codec '{codec}' has a variable size.*measured per sample"):
            dev.tensor_bytes(0 if codec != "int8-zlib" else 2, 0.0, codec)
    with pytest.raises(ValueError, match="only at k = 0"):
        dev.tensor_bytes(2, 0.0, "raw")


def test_idle_curve_is_measured_for_a_device_and_copied_for_its_emulation(ov_root):
    """`python -m profiles idle`: a real (short) measurement of the whole model after each idle gap, a
    ratio to the rows' own 1 ms gap; the emulated device keeps its source's curve (its spin scales the
    slow call too); a profile without one predicts no slowdown."""
    for device in ("dev", "dev-10x"):
        assert cli(["--root", str(ov_root), "idle", "--model", MODEL, "--input-size", str(SIZE), "--device", device,
                    "--calls", "3"]) == 0
    dev, emu = (load_profile(d, MODEL, SIZE, root=ov_root) for d in ("dev", "dev-10x"))
    curve = dev.meta["idle"]
    assert curve["gap_ms"] == [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0] and len(curve["factor"]) == 7
    assert all(f > 0 for f in curve["factor"]) and all(m > 0 for m in curve["median_ms"])
    assert curve["factor"] == pytest.approx([m / curve["reference_ms"] for m in curve["median_ms"]], rel=1e-2)
    assert emu.meta["idle"]["factor"] == curve["factor"] and emu.meta["idle"]["copied_from"] == "dev"
    assert dev.idle_factor(0.5) == 1.0 and dev.idle_factor(1e6) == max(1.0, *curve["factor"])
    assert dev.idle_factor(100.0) >= dev.idle_factor(5.0) >= 1.0  # never decreasing in the gap
    assert load_profile("srv", MODEL, SIZE, root=ov_root).idle_factor(50.0) == 1.0  # no curve measured


def test_profiles_from_another_cpu_are_named(dev, srv):
    """A deployment on this machine says which profiles were timed elsewhere (and only those)."""
    from profiles.profile import foreign_profiles
    from profiles.runner import cpu_name

    here = cpu_name()
    assert dev.meta["cpu"] == here and foreign_profiles(dev, srv) is None  # timed here by the fixture
    line = foreign_profiles(dev, srv, cpu="Some Other CPU 9000")
    assert line.startswith("note:") and "\n" not in line
    assert f"{dev.device} ({here}" in line and f"{srv.device} ({here}" in line and "Some Other CPU 9000" in line
    assert f"--input-size {dev.input_size}" in line


def test_drift_times_one_split_against_its_rows(root, dev, srv):
    """The deploy's profile check: one (k, r) re-timed now against its rows.  A profile whose rows claim 5x
    faster parts than this machine runs is reported about 5x further off than the honest profile timed beside
    it; an honest emulation of the same host (rows x 10, slowdown 10) is not; a server-role emulation (an edge
    box) is timed at its slowdown too; a side that runs nothing has no ratio.  Each claim compares two
    timings made side by side, so a machine slower or faster than when the fixture's rows were timed moves
    both alike."""
    from profiles.profiler import drift

    def steady(*args, **kwargs) -> dict:
        """The faster of two timings per side: a busy machine only ever slows one, and a single spike failed
        1 run in 5 with another process on the second core."""
        first, second = drift(*args, **kwargs), drift(*args, **kwargs)
        return {key: min(first[key], second[key]) for key in first}

    plain = steady(dev, srv, 2, 0.5)  # the fixture's own rows: the reference every ratio below is taken against
    doc = scaled(_doc(root), 0.2, "stale", "dev")
    doc["meta"]["slowdown"] = 1.0  # not an emulation: rows that are simply too fast for this machine
    stale = Profile(doc, "stale")
    got = drift(stale, srv, 2, 0.5)
    assert got["pred_device_ms"] == pytest.approx(stale.ms("head", 2, 0.5) + stale.ms("exit", 2, 0.5))
    assert got["pred_server_ms"] == pytest.approx(srv.ms("tail", 2, 0.5))
    assert got["device"] == pytest.approx(got["meas_device_ms"] / got["pred_device_ms"])
    assert got["device"] > 2.5 * plain["device"]  # 5x by construction; the margin absorbs a noisy machine
    # back to back as well (a request after an on-device answer), against the rows' warm_ms
    assert got["pred_device_warm_ms"] == pytest.approx(stale.ms("head", 2, 0.5, warm=True)
                                                       + stale.ms("exit", 2, 0.5, warm=True))
    assert got["device_warm"] == pytest.approx(got["meas_device_warm_ms"] / got["pred_device_warm_ms"])
    assert got["device_warm"] > 2.5 * plain["device_warm"]
    emu = steady(load_profile("dev-10x", MODEL, SIZE, root=root), srv, 2, 0.5)  # upper bounds: steady timings
    assert emu["device"] < 2 * plain["device"] and emu["device_warm"] < 2 * plain["device_warm"]
    edge_box = Profile(scaled(_doc(root, "srv"), 4.0, "srv-4x", "srv"), "srv-4x")  # a server-role emulation
    assert drift(dev, edge_box, 2, 0.5)["server"] > 0.5 * plain["server"]  # x4 rows against x4 the time, not x1
    cloud_only = drift(dev, srv, 0, 0.0)
    assert math.isnan(cloud_only["device"]) and cloud_only["server"] > 0
    # three tiers: the edge box timed on its tail from k (x4 rows, x4 the host's time), the cloud from k2
    three = steady(dev, srv, 2, 0.5, edge=edge_box, k2=4)
    assert "server" not in three and three["pred_edge_ms"] == pytest.approx(edge_box.ms("tail", 2, 0.5))
    assert three["pred_cloud_ms"] == pytest.approx(srv.ms("tail", 4, 0.0)) and three["cloud"] > 0
    assert 0.5 * plain["server"] < three["edge"] < 2 * plain["server"]
    assert math.isnan(drift(dev, srv, 2, 0.5, edge=edge_box, k2=K)["cloud"])  # the edge answers: no cloud
    # the exit run by the edge (k1): the device to k1, the edge's head and exit rows to k, the cloud's tail from k
    placed = drift(dev, srv, 2, 0.0, edge=edge_box, k2=2, k1=1)
    assert placed["pred_device_ms"] == pytest.approx(dev.ms("head", 1, 0.0) + dev.ms("exit", 1, 0.0))
    assert placed["pred_edge_ms"] == pytest.approx(edge_box.ms("head", 2, 0.0) + edge_box.ms("exit", 2, 0.0))
    assert placed["pred_cloud_ms"] == pytest.approx(srv.ms("tail", 2, 0.0)) and placed["edge"] > 0
    assert math.isnan(drift(dev, srv, 2, 0.0, edge=edge_box, k2=2, k1=0)["device"])  # the image sent: no head
    cloud_side = validate_profiles(dev, srv, progress=False, at=(4, 0.0), device_side=False).iloc[0]  # the cloud's
    assert math.isnan(cloud_side.meas_device_ms) and cloud_side.meas_server_ms > 0  # check: the tail alone timed


def test_drift_of_a_device_profiled_under_a_cpu_quota_is_timed_under_it(root, srv):
    """A device profile timed under a CPU quota (meta.cpu_quota) is re-timed under the same quota, in a child
    process.  Back to back (warm) the device's part keeps a CPU busy, so a quarter-CPU quota slows it about
    4x: the fixture's rows labelled as timed at 0.25 CPU read far slower than the same rows timed without a
    quota beside them (a check without the quota would read both alike).  Cold runs idle between runs, below
    the quota's share, which is why a quota emulates a slow device poorly (README: A slow device by CPU quota)."""
    from profiles.profiler import drift

    doc = copy.deepcopy(_doc(root))
    doc["meta"]["min_ms"] = 100.0  # many quota periods (10 ms) per timing: a shorter one fits in one's budget
    plain = drift(Profile(doc, "dev"), srv, 4, 0.0)
    doc["meta"]["cpu_quota"] = {"fraction": 0.25, "period_ms": 10.0, "mechanism": "auto"}
    quarter = drift(Profile(doc, "quota-quarter"), srv, 4, 0.0)
    assert quarter["device_warm"] > 2 * plain["device_warm"]
    assert quarter["pred_device_ms"] == plain["pred_device_ms"]  # the same rows: only the timing differs


def test_drift_line_and_retimed_prediction():
    """The re-timed prediction scales each side's compute by its drift, the transfer not; the warning names
    only the sides more than 20% off."""
    from runtime.deploy import drift_line, retimed_ms

    predicted = {"mean_device_exit_ms": 2.0, "mean_transfer_ms": 0.5, "mean_server_ms": 1.0, "total_ms": 3.5}
    check = {"device": 1.5, "server": 1.05, "pred_device_ms": 1.0, "meas_device_ms": 1.5,
             "pred_server_ms": 2.0, "meas_server_ms": 2.1}
    assert retimed_ms(predicted, check) == pytest.approx(2.0 * 1.5 + 0.5 + 1.0 * 1.05)
    line = drift_line(check, predicted, 4.55 * 1.1)
    assert "device x1.50 (1.500 vs 1.000 ms)" in line and "server x1.05" in line and "+10.0%" in line
    assert "the device part now runs more than 20% off" in line and "server part" not in line
    assert "\n" not in drift_line({**check, "device": 0.95}, predicted, 4.0)  # nothing off: no warning
    nothing_served = {**check, "server": float("nan")}
    assert retimed_ms(predicted, nothing_served) == pytest.approx(2.0 * 1.5 + 0.5 + 1.0)
    assert "server" not in drift_line(nothing_served, predicted, 4.0)
    exit_answers_all = {**predicted, "mean_server_ms": 0.0}  # the tail never runs: its drift changes nothing
    assert "server part" not in drift_line({**check, "server": 1.5}, exit_answers_all, 4.0)
    # the warm share of the device's part (after on-device answers) scaled by the back-to-back drift
    with_warm = {**predicted, "mean_device_warm_ms": 0.5}
    assert retimed_ms(with_warm, {**check, "device_warm": 2.0, "pred_device_warm_ms": 0.2, "meas_device_warm_ms": 0.4}
                      ) == pytest.approx(1.5 * 1.5 + 0.5 * 2.0 + 0.5 + 1.0 * 1.05)
    assert retimed_ms(with_warm, check) == pytest.approx(retimed_ms(predicted, check))  # untimed: the cold ratio
    line = drift_line({**check, "device_warm": 2.0, "pred_device_warm_ms": 0.2, "meas_device_warm_ms": 0.4},
                      with_warm, 4.0)
    assert "device warm x2.00 (0.400 vs 0.200 ms)" in line and "device and device warm parts now run" in line
    # three tiers (runtime.tiers' rows): the edge and the cloud each scaled by their own drift
    tiers = {"device+exit": 2.0, "end-edge transfer": 0.5, "edge": 3.0, "edge-cloud transfer": 0.25, "cloud": 1.0,
             "mean total": 6.75}
    check3 = {"device": 1.0, "edge": 1.3, "cloud": 0.9, "pred_device_ms": 2.0, "meas_device_ms": 2.0,
              "pred_edge_ms": 3.0, "meas_edge_ms": 3.9, "pred_cloud_ms": 1.0, "meas_cloud_ms": 0.9}
    assert retimed_ms(tiers, check3) == pytest.approx(2.0 + 0.5 + 3.0 * 1.3 + 0.25 + 1.0 * 0.9)
    line = drift_line(check3, tiers, 7.0)
    assert "edge x1.30 (3.900 vs 3.000 ms)" in line and "cloud x0.90" in line
    assert "the edge part now runs more than 20% off" in line and "cloud part" not in line
    relayed = {**tiers, "edge": 0.0, "mean total": 3.75}  # the edge only relays: its drift changes nothing
    assert retimed_ms(relayed, check3) == pytest.approx(3.75 + 1.0 * (0.9 - 1))
    assert "edge part" not in drift_line(check3, relayed, 4.0)

"""An early exit placed on the edge (runtime.tiers' k1): the end device runs blocks [0, k1) with no exit and
sends the exact tensor, the edge runs [k1, k) and the candidate's exit at k and answers what the exit is sure
of, the cloud runs [k, K).  Real ONNX Runtime sessions and real sockets on loopback: every answer is the
candidate's evaluated one, the edge exits exactly the samples the evaluation exits, the cloud sees only the
others, and with the cloud down every sample is still answered exactly once, by the edge's exit."""
from __future__ import annotations

import re
import socket

import numpy as np
import pytest

from compress.onnx_io import run, session
from profiles import Network, load_profile
from runtime import manifest as mf
from runtime import protocol as wire
from runtime.client import Client
from runtime.deploy import agreement
from runtime.edge import run_edge
from runtime.link import Link
from runtime.relay import RelayServer, edge_info
from runtime.tiers import (CLOUD, EDGE, END, TIER_ROWS, deploy_three, export_tiers, predicted_tiers, tier_dirs,
                           tiers_line)
from search.latency import Edge, predict
# the fixtures (candidate, pruned, secret_file) and helpers of the three-tier tests, reused as they are
from tests.test_relay import (K_SPLIT, KILL_AFTER, N, RecordingCloud, RecordingRelay, _parts,  # noqa: F401
                              _servers, _stop, _threshold, candidate, pruned, secret_file)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

K1 = 2  # the end device runs blocks 0, 1 (stem, layer1); the edge layer2 and the exit at k = 3


def _evaluated(candidate, t: float, codec: str = "int8"):
    """(exited, answer, exit_pred) of the first N test samples, as the candidate's evaluation has them."""
    test = candidate.evaluations["test"]
    exited, answer = test.answers(t, codec)
    return exited[:N], answer[:N], test.exit_pred[:N]


def _dead_address() -> tuple[str, int]:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()


# -- export -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("k1", [0, K1])
def test_export_places_the_exit_on_the_edge(candidate, digits32, tmp_path, k1):
    """end/ cuts at k1 with no exit (the raw image at k1 = 0, fp32 after), edge/ holds blocks [k1, 3) and the
    exit in one graph whose confidences are the evaluation's, cloud/ blocks [3, 6) under the candidate's codec."""
    t = _threshold(candidate)
    m = export_tiers(candidate, digits32, tmp_path, t, "int8", K_SPLIT, k1=k1)
    end, edge, cloud = m[END], m[EDGE], m[CLOUD]
    assert end["k"] == k1 and not end["exit"] and end["t"] is None and end["tiers"]["k1"] == k1
    assert end["codec"] == ("raw" if k1 == 0 else "fp32") and (end["head"] is None) == (k1 == 0)
    assert edge["tail"]["blocks"] == [k1, K_SPLIT] and edge["tail"]["outputs"] == ["exit", "split"]
    assert edge["tiers"]["exit"]["t"] == t and edge["tiers"]["k2"] == K_SPLIT and edge["tiers"]["k1"] == k1
    assert edge["tiers"]["forward"]["codec"] == "int8" == cloud["codec"]
    assert cloud["k"] == K_SPLIT and cloud["tail"]["blocks"] == [K_SPLIT, 6] and cloud["tiers"]["k1"] == k1
    edge_info(mf.load(tier_dirs(tmp_path)[EDGE]))  # the relay's own check accepts it
    images, _ = digits32.arrays("test")
    x = mf.normalize(images[:N].numpy(), end)
    dirs = tier_dirs(tmp_path)
    sent = run(session(dirs[END] / mf.HEAD), x)[0] if k1 > 0 else x
    exit_logits, at_k = run(session(dirs[EDGE] / "edge.onnx"), sent)
    assert at_k.shape[1:] == tuple(edge["tiers"]["forward"]["shape"])
    z = np.exp(exit_logits - exit_logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose((z / z.sum(axis=1, keepdims=True)).max(axis=1),
                               candidate.evaluations["test"].exit_conf[:N], atol=1e-5)


def test_bad_k1_arguments_are_one_line_errors(candidate, pruned, digits32, tmp_path):
    """Each violation names what is wrong and what is allowed, before anything is written."""
    bad = tmp_path / "bad"
    cases = [
        ((candidate, 0.5, "int8", K_SPLIT, K_SPLIT), r"first cut k1=3 must be an integer with 0 <= k1 < k = 3"),
        ((candidate, 0.5, "int8", K_SPLIT, -1), r"first cut k1=-1 must be an integer with 0 <= k1 < k = 3"),
        ((candidate, 0.5, "int8", K_SPLIT, True), r"first cut k1=True must be an integer"),
        ((candidate, None, "int8", K_SPLIT, K1), r"k1=2 places the exit at k=3 on the edge: it needs a threshold"),
        ((candidate, 1.5, "int8", K_SPLIT, K1), r"k1=2: threshold t must be in \[0, 1\], got 1.5"),
        ((pruned, 0.5, "int8", K_SPLIT, K1), r"split k=3 has no exit branch \(exits exist for 0 < k < 6\)"),
        ((candidate, 0.5, "int8", 4, K1), r"so k2 must be k = 3, got k2=4"),
        ((candidate, 0.5, "int8>4:fp16", K_SPLIT, K1), r"two-link codec 'int8>4:fp16' refused; .* one of: fp32"),
        ((candidate, 0.5, "png", K_SPLIT, K1), r"codec 'png' compresses the input image"),
    ]
    for (cand, t, codec, k2, k1), message in cases:
        with pytest.raises(ValueError, match=message) as e:
            export_tiers(cand, digits32, bad, t, codec, k2, k1=k1)
        assert "\n" not in str(e.value)
        with pytest.raises(ValueError, match=message):
            deploy_three(cand, digits32, bad, t, codec, k2, limit=2, k1=k1)
    assert not bad.exists()


def test_the_edge_refuses_a_malformed_exit(candidate, digits32, tmp_path):
    export_tiers(candidate, digits32, tmp_path, 0.5, "int8", K_SPLIT, k1=K1)
    m = mf.load(tier_dirs(tmp_path)[EDGE])
    for t in (1.5, None, "0.5"):
        with pytest.raises(ValueError, match=r"tiers.exit.t must be a threshold in \[0, 1\]"):
            edge_info({**m, "tiers": {**m["tiers"], "exit": {"t": t}}})
    with pytest.raises(ValueError, match="an exit on the edge needs blocks before it and a cloud after it"):
        edge_info({**m, "tiers": {**m["tiers"], "k2": 6}})
    with pytest.raises(ValueError, match=r"needs a part with outputs \[exit, split\]"):
        edge_info({**m, "tail": {**m["tail"], "outputs": ["split"]}})


def test_tiers_line_names_the_placement():
    assert tiers_line(3, 3, 6, 2) == ("end device blocks 0..1 (no exit), edge blocks 2..2 and the exit at 3, "
                                      "cloud blocks 3..5")
    assert tiers_line(3, 3, 6, 0).startswith("end device sends the image, edge blocks 0..2 and the exit at 3")
    assert tiers_line(3, 3, 6) == "end device blocks 0..2, edge relays the tensor, cloud blocks 3..5"


# -- the wire: the reply's flags --------------------------------------------------------------------

def _parsed(frame: bytes) -> wire.Reply:
    return wire.parse_reply(wire.validate(wire.unpack_header(frame[:wire.HEADER.size]), frame[wire.HEADER.size:]))


def test_reply_flags_roundtrip_from_empty_to_maximal():
    """Flags 0 keep the 28-byte b"TIER" trailer (what an older reader parses); any other value travels in the
    29-byte b"TIEF" one, up to all eight bits, kept as sent; out of range or without tiers is refused."""
    logits = np.array([[0.1, 2.0, -1.0]], dtype=np.float32)
    plain = wire.reply(3, logits, 1.5, (0.5, 0.25, 0.75))
    assert plain == wire.reply(3, logits, 1.5, (0.5, 0.25, 0.75), 0) and plain[-28:-24] == b"TIER"
    r = _parsed(plain)
    assert r.flags == 0 and r.tiers == (0.5, 0.25, 0.75)
    assert _parsed(wire.reply(3, logits, 1.5)).flags == 0  # a cloud's reply: no trailer, no flags
    for flags in (wire.EDGE_EXIT, wire.EXIT_FALLBACK, wire.EDGE_EXIT | wire.EXIT_FALLBACK, wire.MAX_FLAGS):
        flagged = wire.reply(3, logits, 1.5, (0.5, 0.25, 0.75), flags)
        assert len(flagged) == len(plain) + 1 and flagged[-29:-25] == b"TIEF"
        r = _parsed(flagged)
        assert (r.flags, r.tiers, r.server_ms, r.classes.tolist()) == (flags, (0.5, 0.25, 0.75), 1.5, [1])
    assert wire.MAX_FLAGS == 0xFF
    body = plain[wire.HEADER.size:-28]
    explicit_zero = wire.pack(wire.MsgType.REPLY, 3, body + b"TIEF" + bytes(24) + b"\0", wire.DType.FP32, (1, 3))
    assert _parsed(explicit_zero).flags == 0 and _parsed(explicit_zero).tiers == (0.0, 0.0, 0.0)
    for flags in (-1, wire.MAX_FLAGS + 1, 1.0):
        with pytest.raises(ValueError, match=r"reply flags must be an integer in 0..255"):
            wire.reply(3, logits, 1.5, (0.5, 0.25, 0.75), flags)
    with pytest.raises(ValueError, match="give the tiers too"):
        wire.reply(3, logits, 1.5, None, wire.EDGE_EXIT)
    for trailer in (b"TIEF" + bytes(24), b"TIER" + bytes(25), b"TIEX" + bytes(25)):  # a wrong size or magic
        bad = wire.pack(wire.MsgType.REPLY, 3, body + trailer, wire.DType.FP32, (1, 3))
        with pytest.raises(wire.ProtocolError, match="does not fit shape"):
            _parsed(bad)


# -- deployed on loopback ---------------------------------------------------------------------------

@pytest.mark.parametrize("k1", [0, K1])
def test_deploy_with_the_exit_on_the_edge_answers_as_evaluated(candidate, digits32, tmp_path, k1):
    """Every sample answered as the evaluation says; the edge exits exactly the samples its exit answers
    (edge_exited, from the reply's flags), the cloud is asked for the others only, and every sample pays the
    first hop: the end device sends the exact tensor at k1 each time and exits nothing itself."""
    t = _threshold(candidate)
    parts = {**_parts(K_SPLIT, 0.0, "int8", K_SPLIT), "k1": k1, "edge_exit_ms": 0.25}
    df, s = deploy_three(candidate, digits32, tmp_path, t, "int8", K_SPLIT, parts, limit=N, bandwidth=100, rtt=1,
                         edge_cloud_bandwidth=50, edge_cloud_rtt=2, k1=k1)
    exited, answer, _ = _evaluated(candidate, t)
    assert 0 < exited.sum() < N
    np.testing.assert_array_equal(df.pred, answer)
    np.testing.assert_array_equal(df.edge_exited, exited)
    assert not df.exited.any() and not df.fallback.any() and not df.edge_fallback.any()
    assert s["agreement"] == 1.0 == agreement(df, exited, answer) and s["n"] == N
    assert s["edge_exit_rate"] == pytest.approx(exited.mean()) and s["edge_exits"] == exited.sum()
    assert s["exit_rate"] == 0 and s["edge_fallbacks"] == 0
    split = mf.load(tier_dirs(tmp_path)[END])["split"]
    assert (df.bytes_sent == split["bytes"]).all() and split["bytes"] == (3 * 32 * 32 if k1 == 0 else 4 * 64 * 8 * 8)
    at_edge, sent = df[df.edge_exited], df[~df.edge_exited]
    assert (at_edge.cloud_ms == 0).all() and (at_edge.edge_transfer_ms == 0).all() and (at_edge.edge_ms > 0).all()
    assert (sent.cloud_ms > 0).all() and (sent.edge_transfer_ms > 0).all()
    edge, cloud = s["edge_stats"], s["cloud_stats"]
    assert edge["requests"] == N and edge["edge_exits"] == exited.sum() and edge.get("exit_fallbacks", 0) == 0
    assert edge["forwarded"] == cloud["requests"] == (~exited).sum()
    p = s["predicted"]
    assert set(s["tiers"]) == set(TIER_ROWS)
    # paid by every sample, exited or not
    assert p["end-edge transfer"] == pytest.approx(parts["transfer_ms"] + parts["link_overhead_ms"])


def test_the_image_goes_to_the_edge_exit_as_png(candidate, digits32, tmp_path):
    """k1 = 0 with the image sent as PNG (lossless): the edge decodes it and its exit answers exactly as
    evaluated on the raw image, with fewer bytes on the first hop than the raw image's; a lossy image codec
    is refused before anything is written."""
    t = _threshold(candidate)
    df, s = deploy_three(candidate, digits32, tmp_path, t, "int8", K_SPLIT, limit=N, bandwidth=100, rtt=1,
                         edge_cloud_bandwidth=50, edge_cloud_rtt=2, k1=0, up_codec="png")
    exited, answer, _ = _evaluated(candidate, t)
    np.testing.assert_array_equal(df.pred, answer)
    np.testing.assert_array_equal(df.edge_exited, exited)
    assert mf.load(tier_dirs(tmp_path)[END])["codec"] == "png"
    assert 0 < df.bytes_sent.max() < 3 * 32 * 32 and df.bytes_sent.nunique() > 1  # per-sample PNG sizes
    with pytest.raises(ValueError, match="exact tensor, one of raw, png, fp32, not 'jpeg90'"):
        deploy_three(candidate, digits32, tmp_path / "lossy", t, "int8", K_SPLIT, limit=N, k1=0, up_codec="jpeg90")
    assert not (tmp_path / "lossy").exists()


def test_the_cloud_sees_only_what_the_edge_does_not_answer(candidate, digits32, tmp_path):
    """The end device's payloads are the fp32 tensor at k1, every one; the cloud's the int8 tensor at k, only
    for the samples the edge's exit does not answer (the evaluation's non-exited ones, in order)."""
    t = _threshold(candidate)
    export_tiers(candidate, digits32, tmp_path, t, "int8", K_SPLIT, k1=K1)
    dirs = tier_dirs(tmp_path)
    with RecordingCloud(dirs[CLOUD], "127.0.0.1", 0) as cloud, \
            RecordingRelay(dirs[EDGE], ("127.0.0.1", cloud.port), link=Link(50, 1.0), port=0) as relay:
        df = run_edge(dirs[END], ("127.0.0.1", relay.port), bandwidth=100, rtt=1.0, limit=N, data=digits32)
    exited, answer, _ = _evaluated(candidate, t)
    np.testing.assert_array_equal(df.pred, answer)
    assert len(relay.payloads) == N and all(len(p) == 4 * 64 * 8 * 8 for p in relay.payloads)
    assert len(cloud.payloads) == (~exited).sum() and all(len(p) == 128 * 4 * 4 + 8 for p in cloud.payloads)
    assert relay.stats["edge_exits"] == exited.sum() and relay.stats["forwarded"] == (~exited).sum()


def test_a_batch_is_answered_per_sample(candidate, digits32, tmp_path):
    """One request of N samples: the exit answers the ones it is sure of, the cloud the others (one forward of
    just those), merged in order; the flags say the exit answered some."""
    t = _threshold(candidate)
    export_tiers(candidate, digits32, tmp_path, t, "fp32", K_SPLIT, k1=K1)
    dirs = tier_dirs(tmp_path)
    images, _ = digits32.arrays("test")
    end = mf.load(dirs[END])
    feats = run(session(dirs[END] / mf.HEAD), mf.normalize(images[:N].numpy(), end))[0]
    with RecordingCloud(dirs[CLOUD], "127.0.0.1", 0) as cloud, \
            RecordingRelay(dirs[EDGE], ("127.0.0.1", cloud.port), port=0) as relay:
        client = Client("127.0.0.1", relay.port)
        try:
            reply = client.infer(wire.encode(feats, "fp32"))
        finally:
            client.close()
    exited, answer, _ = _evaluated(candidate, t, "fp32")
    np.testing.assert_array_equal(reply.classes, answer)
    assert reply.flags == wire.EDGE_EXIT and reply.tiers[2] > 0
    assert len(cloud.payloads) == 1 and len(cloud.payloads[0]) == 4 * (~exited).sum() * 128 * 4 * 4
    assert relay.stats["edge_exits"] == exited.sum() and relay.stats["forwarded"] == 1


# -- the cloud down while the edge is up ------------------------------------------------------------

def test_cloud_never_up_the_edge_exit_answers_every_sample(candidate, digits32, tmp_path):
    """No cloud at all: the edge's exit answers every sample once: by its threshold where the evaluation
    exits (edge_exited), as the fallback for the failed cloud elsewhere (edge_fallback); the end device never
    falls back on its own, and the relay counts both."""
    t = _threshold(candidate)
    export_tiers(candidate, digits32, tmp_path, t, "int8", K_SPLIT, k1=K1)
    dirs = tier_dirs(tmp_path)
    with RelayServer(dirs[EDGE], _dead_address(), cloud_timeout=1.0, cloud_retries=0, port=0) as relay:
        df = run_edge(dirs[END], ("127.0.0.1", relay.port), limit=N, data=digits32)
    exited, answer, exit_pred = _evaluated(candidate, t)
    assert df["index"].tolist() == list(range(N))
    np.testing.assert_array_equal(df.pred, exit_pred)
    np.testing.assert_array_equal(df.edge_exited, exited)
    np.testing.assert_array_equal(df.edge_fallback, ~exited)
    assert not df.fallback.any() and not df.exited.any() and (df.cloud_ms == 0).all() and (df.error == "").all()
    assert relay.stats["edge_exits"] == exited.sum() and relay.stats["exit_fallbacks"] == (~exited).sum()
    assert relay.stats["cloud_failures"] == (~exited).sum() and relay.stats["forwarded"] == 0
    assert agreement(df, exited, answer) == pytest.approx(1 - ((~exited) & (exit_pred != answer)).mean())


def test_cloud_dies_mid_run_the_edge_exit_takes_over(candidate, digits32, tmp_path, secret_file):
    """Real processes: kill the cloud after sample 9; before it the cloud answers what the exit does not,
    after it the edge's exit does (edge_fallback), every sample exactly once, and the relay says so on exit."""
    t = _threshold(candidate)
    export_tiers(candidate, digits32, tmp_path, t, "int8", K_SPLIT, k1=K1)
    dirs = tier_dirs(tmp_path)
    cloud, relay, relay_at = _servers(dirs, secret_file)
    try:
        def kill(row):
            if row["index"] == KILL_AFTER:
                cloud.kill()
                cloud.wait()

        df = run_edge(dirs[END], relay_at, limit=N, data=digits32, secret=secret_file.read_bytes().strip(),
                      timeout=5.0, on_sample=kill)
    finally:
        relay_out = _stop(relay)
        _stop(cloud)
    exited, answer, exit_pred = _evaluated(candidate, t)
    after = np.arange(N) > KILL_AFTER
    assert df["index"].tolist() == list(range(N))
    np.testing.assert_array_equal(df.edge_exited, exited)
    np.testing.assert_array_equal(df.edge_fallback, after & ~exited)
    assert (after & ~exited).sum() > 0 and not df.fallback.any()
    np.testing.assert_array_equal(df.pred, np.where(after & ~exited, exit_pred, answer))
    stopped = re.search(r"stopped after (\d+) requests \((\d+) forwarded, (\d+) cloud failures\), (\d+) answered by "
                        r"the edge's exit \((\d+) more for a failed cloud\)", relay_out)
    assert stopped is not None, relay_out
    assert tuple(map(int, stopped.groups())) == (N, (~exited & ~after).sum(), (~exited & after).sum(), exited.sum(),
                                                 (~exited & after).sum())


# -- the prediction per tier ------------------------------------------------------------------------

def test_predicted_tiers_with_the_exit_on_the_edge_sum_to_the_total():
    """Every sample pays the first hop and the edge's blocks and exit, the sent ones the way on to the cloud;
    the rows sum to the latency model's total for exactly these samples (search.latency's k1 breakdown)."""
    device, server = load_profile("host", "resnet18", 32), load_profile("server", "resnet18", 32)
    edge = Edge(load_profile("emulated-edge-4x", "resnet18", 32), Network(50, 2))
    try:
        b = predict(device, server, Network(100, 1), K_SPLIT, 0.0, "int8", exit_rate=0.5, edge=edge, k1=K1)
    except TypeError:
        pytest.skip("search.latency.predict does not place an exit on the edge (k1) yet")
    parts = b.as_dict()
    exited = np.array([True, False, False, True, True, False, True, False, False, False])
    rows = predicted_tiers(parts, exited)
    assert sum(rows[row] for row in TIER_ROWS[:5]) == pytest.approx(rows["mean total"])
    assert rows["end-edge transfer"] == pytest.approx(b.transfer_ms + b.link_overhead_ms)
    assert rows["edge"] == pytest.approx(b.edge_ms + b.edge_exit_ms + b.edge_overhead_ms) and b.edge_exit_ms > 0
    assert rows["edge-cloud transfer"] == pytest.approx(0.6 * (b.edge_transfer_ms + b.cloud_link_overhead_ms))
    assert rows["exit_rate"] == pytest.approx(0.4)
    unplaced = predicted_tiers({**parts, "k1": None}, exited)
    assert unplaced["end-edge transfer"] == pytest.approx(0.6 * b.transfer_ms)  # sent samples only, as before


def test_auto_deploys_the_searched_exit_on_the_edge_with_its_own_prediction(candidate, digits32, tmp_path, capsys):
    """auto.py --deploy's three-tier path (deploy_searched) given a search result whose answer runs its exit
    on the edge (the image sent raw): it deploys that placement, and the per-tier prediction is the stored
    one read back (search.latency.predicted_parts), so every sample pays the first hop in it; before the
    placement was stored, the same deployment was predicted as an exit on the device (a fiftieth of it)."""
    from types import SimpleNamespace

    from search.latency import predicted_parts, predicted_per_sample
    from search.space import Config, Problem, breakdown_for, score
    from runtime.tiers import deploy_searched

    device, server = load_profile("host", "resnet18", 32), load_profile("server", "resnet18", 32)
    problem = Problem(device, server, Network(100, 1), A0=0.0, edge=Edge(load_profile("emulated-edge-4x", "resnet18",
                                                                                        32), Network(50, 2)))
    t = _threshold(candidate)
    config = Config(K_SPLIT, 0.0, t, "int8")
    s = score(problem, config, candidate.evaluations)
    b, _ = breakdown_for(problem, config, candidate.evaluations["selection"], K_SPLIT, 0, "raw")
    b = b.with_exit_rate(s.breakdown.exit_rate)
    best = {**s.as_dict(), "k1": 0, "k2": K_SPLIT, "up_codec": "raw", "expected_ms": b.expected_ms}
    result = {"best": best, "predicted": predicted_parts(b)}
    ctx = SimpleNamespace(problem=problem, pool=SimpleNamespace(data=digits32),
                          spec=SimpleNamespace(seed=0, objective="mean"))
    summary = deploy_searched(ctx, candidate, result, tmp_path, limit=N)
    out = capsys.readouterr().out
    assert "edge blocks 0..2 and the exit at 3" in out and summary["k1"] == 0
    exited, answer, _ = _evaluated(candidate, t)
    assert summary["agreement"] == 1.0 and summary["edge_exits"] == exited.sum()
    p = summary["predicted"]
    assert p["mean total"] == pytest.approx(predicted_per_sample(result["predicted"], exited)["total_ms"])
    assert p["end-edge transfer"] == pytest.approx(b.transfer_ms + b.link_overhead_ms)  # every sample's
    assert b.transfer_ms > 1.0  # the rtt alone: an exit on the device would pay it for the sent share only
    assert p["mean total"] > b.always_ms
    assert set(summary["profile_check"]) >= {"edge", "cloud"}  # the edge timed on its own head and exit

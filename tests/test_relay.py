"""Three tiers for real (issue 15): the end device (runtime.edge), the edge server (runtime.relay) and the
cloud (runtime.cloud), each with its own exported part, over real sockets.  The answers equal the
in-process PyTorch ones, a relay forwards the end device's bytes unchanged, the per-tier times come back
in the edge's reply, and when the cloud or the edge dies every sample is still answered exactly once."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from compress import codec as codecs
from compress.candidate import Candidate, add_codecs, build_candidate, evaluate
from compress.prune import prune
from profiles import Network, load_profile
from runtime import manifest as mf
from runtime import protocol as wire
from runtime.cloud import CloudServer
from runtime.edge import run_edge
from runtime.link import Link
from runtime.relay import RelayServer
from runtime.tiers import CLOUD, EDGE, END, TIER_ROWS, deploy_three, export_tiers, format_tiers, tier_dirs
from search.latency import Edge, _via_edge, predict

ROOT = Path(__file__).resolve().parent.parent
N = 30  # test samples per run
K_SPLIT = 3  # resnet18 blocks: stem, layer1, layer2 | layer3, layer4, classifier (K = 6)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def candidate(resnet_base, digits32):
    """k = 3, r = 0 with its exit (the exit's training only; cached, as tests/test_deploy.py's)."""
    return build_candidate(resnet_base, digits32, K_SPLIT, 0.0, progress=False)


@pytest.fixture(scope="module")
def pruned(resnet_base, digits32):
    """k = 3 pruned by half, not fine-tuned (no training): the edge's first block takes the pruned tensor."""
    model = prune(resnet_base.model, K_SPLIT, 0.5, digits32.input_size).eval()
    return Candidate(K_SPLIT, 0.5, model, None, {"test": evaluate(model, None, K_SPLIT, digits32, "test")})


def _threshold(candidate) -> float:
    """About half of the first N test samples answered at the exit."""
    conf = np.sort(candidate.evaluations["test"].exit_conf[:N])
    return float((conf[N // 2 - 1] + conf[N // 2]) / 2)


def _parts(k: int, r: float, codec: str, k2: int) -> dict:
    """The latency model's breakdown of (k, r, codec) with the second cut forced to k2."""
    device, server = load_profile("host", "resnet18", 32), load_profile("server", "resnet18", 32)
    edge = Edge(load_profile("emulated-edge-4x", "resnet18", 32), Network(50, 2))
    b = predict(device, server, Network(100, 1), k, r, codec, exit_rate=0.0)
    return _via_edge(b, device, server, edge, k2).as_dict()


# -- export -----------------------------------------------------------------------------------------

def test_three_parts_compose_to_the_network(pruned, digits32, tmp_path):
    """end/head, edge/edge.onnx = blocks [3, 4), cloud/tail.onnx = [4, 6): each has a manifest, the edge's
    input is the pruned tensor, the cloud's the unpruned one, and ONNX through all three is the network."""
    manifests = export_tiers(pruned, digits32, tmp_path, None, "fp32", 4)
    dirs = tier_dirs(tmp_path)
    for tier in (END, EDGE, CLOUD):
        assert mf.load(dirs[tier])["tiers"]["k2"] == 4
    edge, cloud = manifests[EDGE], manifests[CLOUD]
    assert edge["tail"]["input_shape"] == manifests[END]["split"]["shape"] == [64, 4, 4]  # layer2: 128 halved
    assert cloud["k"] == 4 and cloud["tail"]["input_shape"] == cloud["split"]["shape"] == [256, 2, 2]
    assert edge["tiers"]["forward"]["codec"] == cloud["codec"] == "fp32"
    images, _ = digits32.arrays("test")
    x = digits32.normalize(images[:8])
    from compress.onnx_io import run, session
    feats = run(session(dirs[END] / mf.HEAD), x.numpy())[0]
    mid = run(session(dirs[EDGE] / "edge.onnx"), feats)[0]
    logits = run(session(dirs[CLOUD] / mf.TAIL), mid)[0]
    with torch.no_grad():
        ref = pruned.model(x).numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-3, rtol=1e-3)


def test_relay_and_edge_only_exports(candidate, digits32, tmp_path):
    """k2 = k: the edge has no model and forwards the end's codec; k2 = K: the edge answers, no cloud."""
    m = export_tiers(candidate, digits32, tmp_path / "relay", 0.5, "int8", K_SPLIT)
    assert m[EDGE]["tail"] is None and m[EDGE]["tiers"]["forward"]["codec"] == "int8" == m[CLOUD]["codec"]
    assert m[CLOUD]["split"] == {k: v for k, v in m[END]["split"].items()}
    m = export_tiers(candidate, digits32, tmp_path / "relay", 0.5, "int8", 6)  # over the same directory
    assert CLOUD not in m and not (tier_dirs(tmp_path / "relay")[CLOUD] / mf.NAME).exists()
    assert m[EDGE]["tail"]["output"] == "logits" and m[EDGE]["tiers"]["forward"] is None
    with pytest.raises(ValueError, match="second cut k2=2 must be an integer in k..K = 3..6"):
        export_tiers(candidate, digits32, tmp_path / "bad", 0.5, "int8", 2)


def test_edge_server_refuses_other_manifests(candidate, digits32, tmp_path):
    export_tiers(candidate, digits32, tmp_path, 0.5, "int8", 4)
    with pytest.raises(ValueError, match="not an edge server's"):
        RelayServer(tier_dirs(tmp_path)[END], ("127.0.0.1", 1))
    with pytest.raises(ValueError, match="give its address"):
        RelayServer(tier_dirs(tmp_path)[EDGE], None)


def test_reply_trailer_roundtrip_and_plain_reply_unchanged():
    logits = np.array([[0.1, 2.0, -1.0]], dtype=np.float32)
    plain = wire.reply(3, logits, 1.5)
    tiered = wire.reply(3, logits, 1.5, (0.5, 0.25, 0.75))
    assert len(tiered) == len(plain) + 28
    r = wire.parse_reply(wire.validate(wire.unpack_header(tiered[:wire.HEADER.size]), tiered[wire.HEADER.size:]))
    assert r.tiers == (0.5, 0.25, 0.75) and r.server_ms == 1.5 and r.classes.tolist() == [1]
    r = wire.parse_reply(wire.validate(wire.unpack_header(plain[:wire.HEADER.size]), plain[wire.HEADER.size:]))
    assert r.tiers is None
    bad = wire.pack(wire.MsgType.REPLY, 3, tiered[wire.HEADER.size:-28] + b"XXXX" + bytes(24), wire.DType.FP32, (1, 3))
    with pytest.raises(wire.ProtocolError, match="does not fit shape"):
        wire.parse_reply(wire.validate(wire.unpack_header(bad[:wire.HEADER.size]), bad[wire.HEADER.size:]))


# -- loopback, in-process servers -------------------------------------------------------------------

class Recording:
    """A real server that also keeps every request payload it answers."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.payloads: list[bytes] = []

    def _answer(self, frame):
        if frame.type == wire.MsgType.REQUEST:
            self.payloads.append(bytes(frame.payload))
        return super()._answer(frame)


class RecordingCloud(Recording, CloudServer):
    pass


class RecordingRelay(Recording, RelayServer):
    pass


@pytest.mark.parametrize("k2", [K_SPLIT, 4])
def test_bytes_on_both_links(candidate, digits32, tmp_path, k2):
    """A relay sends the cloud exactly the end device's payloads (int8 as the model priced them); an edge
    that computes sends the fp32 tensor at k2.  The reply's tiers sum to what the device saw as server_ms,
    and both shaped links' rtt shows in their transfer times."""
    t = _threshold(candidate)
    export_tiers(candidate, digits32, tmp_path, t, "int8", k2)
    dirs = tier_dirs(tmp_path)
    with RecordingCloud(dirs[CLOUD], "127.0.0.1", 0) as cloud, \
            RecordingRelay(dirs[EDGE], ("127.0.0.1", cloud.port), link=Link(50, 3.0), port=0) as relay:
        df = run_edge(dirs[END], ("127.0.0.1", relay.port), bandwidth=100, rtt=2.0, limit=N, data=digits32)
    sent = df[df.bytes_sent > 0]
    assert len(sent) == len(relay.payloads) == len(cloud.payloads) == int((~df.exited).sum()) > 0
    assert (sent.bytes_sent == 128 * 4 * 4 + 8).all()  # int8: numel + offset and scale
    if k2 == K_SPLIT:
        assert cloud.payloads == relay.payloads  # forwarded as received, byte for byte
        assert (sent.edge_ms < sent.server_ms).all()
    else:
        assert all(len(p) == 4 * 256 * 2 * 2 for p in cloud.payloads)
        assert (sent.edge_ms > 0).all()
    np.testing.assert_allclose(sent.edge_ms + sent.edge_transfer_ms + sent.cloud_ms, sent.server_ms, rtol=1e-9)
    assert (sent.cloud_ms > 0).all()
    assert (sent.edge_transfer_ms >= 3.0).all() and (sent.transfer_ms >= 2.0).all()  # the shaped rtt of each hop
    assert relay.stats["forwarded"] == len(sent) and relay.stats["cloud_failures"] == 0


@pytest.mark.parametrize("k2", [K_SPLIT, 4, 6])
def test_deploy_three_answers_as_pytorch(candidate, digits32, tmp_path, k2):
    """Relay, three tiers, edge answers: every sample answered as the in-process evaluation says, and the
    per-tier table holds predicted and measured for every tier (the edge's compute only where it runs)."""
    t = _threshold(candidate)
    parts = _parts(K_SPLIT, 0.0, "int8", k2)
    df, s = deploy_three(candidate, digits32, tmp_path, t, "int8", k2, parts, limit=N, bandwidth=100, rtt=1,
                         edge_cloud_bandwidth=50, edge_cloud_rtt=2)
    exited, answer = candidate.evaluations["test"].answers(t, "int8")
    np.testing.assert_array_equal(df.exited, exited[:N])
    np.testing.assert_array_equal(df.pred, answer[:N])
    assert s["agreement"] == 1.0 and s["fallbacks"] == 0 and s["n"] == N
    assert set(s["tiers"]) == set(TIER_ROWS)
    p, m = s["predicted"], s["measured"]
    sent = df[~df.exited]
    assert (sent.cloud_ms > 0).all() if k2 < 6 else (df.cloud_ms == 0).all() and (df.edge_transfer_ms == 0).all()
    if k2 > K_SPLIT:
        assert (sent.edge_ms > 0).all() and p["edge"] > 0
    else:
        assert p["edge"] == 0  # a relay computes nothing in the model
    parts_sum = sum(p[row] for row in TIER_ROWS[:5])
    assert parts_sum == pytest.approx(p["mean total"])
    assert 0 < sum(m[row] for row in TIER_ROWS[:5]) <= m["mean total"]  # disjoint intervals of each sample
    assert s["edge_stats"]["requests"] == len(sent)
    assert "edge-cloud transfer" in format_tiers(s)


def test_deploy_three_runs_the_end_device_under_a_cpu_quota(candidate, digits32, tmp_path):
    """A device profiled under a CPU quota is deployed under it on three tiers too: the end device runs as its
    own process (runtime.deploy.run_end), answers every sample as the evaluation says through the edge and
    the cloud, and the summary names the limiter."""
    t = _threshold(candidate)
    df, s = deploy_three(candidate, digits32, tmp_path, t, "int8", 4, _parts(K_SPLIT, 0.0, "int8", 4), limit=N,
                         bandwidth=None, rtt=0.0, edge_cloud_bandwidth=None, edge_cloud_rtt=0.0, cpu_quota=0.5)
    exited, answer = candidate.evaluations["test"].answers(t, "int8")
    np.testing.assert_array_equal(df.exited, exited[:N])
    np.testing.assert_array_equal(df.pred, answer[:N])
    q = s["cpu_quota"]
    assert q["fraction"] == 0.5 and q["mechanism"] in ("cgroup2", "cgroup1", "sigstop")
    assert s["agreement"] == 1.0 and s["fallbacks"] == 0 and s["n"] == N
    sent = df[~df.exited]
    assert len(sent) and (sent.edge_ms > 0).all() and (sent.cloud_ms > 0).all()  # the tier trailer survived the file
    assert s["edge_stats"]["requests"] == len(sent) and s["cloud_stats"]["requests"] == len(sent)


@pytest.mark.parametrize("second", ["fp16", "int8"])
def test_a_two_link_codec_is_deployed_as_evaluated(candidate, digits32, tmp_path, second):
    """"int8>4:SECOND": the end device sends int8 at k = 3, the edge runs block 3 and sends the tensor at k2 = 4
    (256 x 2 x 2) under SECOND: the cloud receives exactly those bytes (fp16 2 per element, int8 1 + offset
    and scale), every sample is answered as the evaluation of that two-link codec says, and the per-tier
    prediction prices the second link's own bytes."""
    codec = f"int8>4:{second}"
    add_codecs(candidate, digits32, [codec])
    t = _threshold(candidate)
    m = export_tiers(candidate, digits32, tmp_path, t, codec, 4)
    assert m[END]["codec"] == "int8" and m[CLOUD]["codec"] == second and m[EDGE]["tiers"]["forward"]["codec"] == second
    with pytest.raises(ValueError, match="sends on at cut 4, the deployment cuts at k2=5"):
        export_tiers(candidate, digits32, tmp_path / "bad", t, codec, 5)
    dirs = tier_dirs(tmp_path)
    with RecordingCloud(dirs[CLOUD], "127.0.0.1", 0) as cloud, \
            RecordingRelay(dirs[EDGE], ("127.0.0.1", cloud.port), link=Link(50, 1.0), port=0) as relay:
        df = run_edge(dirs[END], ("127.0.0.1", relay.port), bandwidth=100, rtt=1.0, limit=N, data=digits32)
    exited, answer = candidate.evaluations["test"].answers(t, codec)
    np.testing.assert_array_equal(df.exited, exited[:N])
    np.testing.assert_array_equal(df.pred, answer[:N])
    numel = 256 * 2 * 2
    assert cloud.payloads and all(len(p) == codecs.payload_bytes(numel, second) for p in cloud.payloads)
    parts = predict(load_profile("host", "resnet18", 32), load_profile("server", "resnet18", 32), Network(100, 1),
                    K_SPLIT, 0.0, codec, exit_rate=0.0,
                    edge=Edge(load_profile("emulated-edge-4x", "resnet18", 32), Network(50, 1)))
    assert parts.k2 == 4 and parts.edge_bytes == codecs.payload_bytes(numel, second)


def test_deploy_three_refuses_a_prediction_for_another_k2(candidate, digits32, tmp_path):
    with pytest.raises(ValueError, match="the prediction is for k2=4, the deployment for k2=5"):
        deploy_three(candidate, digits32, tmp_path, 0.5, "int8", 5, _parts(K_SPLIT, 0.0, "int8", 4), limit=2)


# -- faults: real processes -------------------------------------------------------------------------

def _start(args: list[str], netns: str | None = None) -> tuple[subprocess.Popen, str]:
    """A server as its own process; (process, HOST:PORT) once it listens."""
    cmd = [sys.executable, "-m", *args]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.match(r"listening on (\S+:\d+)", line)
    if match is None:
        proc.kill()
        raise RuntimeError(f"{args[0]} did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, match.group(1)


def _stop(proc: subprocess.Popen) -> str:
    """SIGTERM, then its last words (the relay prints what it forwarded)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return out


def _servers(dirs, secret_file: Path, netns=(None, None), hosts=("127.0.0.1", "127.0.0.1")):
    cloud, cloud_at = _start(["runtime.cloud", "--model-dir", str(dirs[CLOUD]), "--host", hosts[1], "--port", "0",
                              "--secret-file", str(secret_file)], netns[1])
    try:
        relay, relay_at = _start(["runtime.relay", "--model-dir", str(dirs[EDGE]), "--host", hosts[0], "--port", "0",
                                  "--cloud", cloud_at, "--secret-file", str(secret_file), "--cloud-timeout", "1",
                                  "--cloud-retries", "1"], netns[0])
    except BaseException:
        _stop(cloud)
        raise
    return cloud, relay, relay_at


@pytest.fixture
def secret_file(tmp_path) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(b"three tiers, one secret")
    path.chmod(0o600)
    return path


KILL_AFTER = 9  # the index of the last sample served normally


@pytest.mark.parametrize("victim", ["cloud", "edge"])
def test_a_tier_dies_mid_run(candidate, digits32, tmp_path, secret_file, victim):
    """Kill the cloud (the edge stays up: it answers ERROR, the end device falls back to its exit) or the
    edge (the end device's own fallback) after sample 9: every sample answered exactly once, the samples
    sent afterwards answered by the exit, none before."""
    t = _threshold(candidate)
    export_tiers(candidate, digits32, tmp_path, t, "int8", 4)
    dirs = tier_dirs(tmp_path)
    cloud, relay, relay_at = _servers(dirs, secret_file)
    procs = {"cloud": cloud, "edge": relay}
    try:
        def kill(row):
            if row["index"] == KILL_AFTER:
                procs[victim].kill()
                procs[victim].wait()

        df = run_edge(dirs[END], relay_at, limit=N, data=digits32, secret=secret_file.read_bytes().strip(),
                      timeout=5.0, on_sample=kill)
    finally:
        relay_out = _stop(relay)
        _stop(cloud)
    test = candidate.evaluations["test"]
    exited, answer = test.answers(t, "int8")
    exited, answer = exited[:N], answer[:N]
    assert df["index"].tolist() == list(range(N))  # every sample exactly once
    after = np.arange(N) > KILL_AFTER
    np.testing.assert_array_equal(df.fallback, after & ~exited)
    assert df.fallback.sum() == (after & ~exited).sum() > 0
    np.testing.assert_array_equal(df.pred[~df.fallback], answer[~df.fallback.to_numpy()])
    np.testing.assert_array_equal(df.pred[df.fallback], test.exit_pred[:N][df.fallback.to_numpy()])  # the exit's
    failed = df[df.fallback]
    if victim == "cloud":
        assert failed.error.str.startswith("server error: cloud failed").all()
        assert (failed.attempts == 1).all()  # the edge answered each once: the device does not retry an ERROR
        stopped = re.search(r"stopped after (\d+) requests \((\d+) forwarded, (\d+) cloud failures\)", relay_out)
        assert stopped is not None, relay_out
        assert tuple(map(int, stopped.groups())) == ((~exited).sum(), (~exited & ~after).sum(),
                                                     (~exited & after).sum())
    else:
        assert not failed.error.str.contains("cloud failed").any()


def test_edge_down_the_end_device_goes_to_the_cloud_directly(candidate, digits32, tmp_path, secret_file):
    """With --direct (a cloud server of the end directory's own tail, blocks [k, K)), the samples sent after
    the edge dies are answered by the whole network through the direct server, not by the exit."""
    t = _threshold(candidate)
    export_tiers(candidate, digits32, tmp_path, t, "int8", 4)
    dirs = tier_dirs(tmp_path)
    cloud, relay, relay_at = _servers(dirs, secret_file)
    direct, direct_at = _start(["runtime.cloud", "--model-dir", str(dirs[END]), "--host", "127.0.0.1", "--port", "0",
                                "--secret-file", str(secret_file)])
    try:
        def kill(row):
            if row["index"] == KILL_AFTER:
                relay.kill()
                relay.wait()

        df = run_edge(dirs[END], relay_at, limit=N, data=digits32, secret=secret_file.read_bytes().strip(),
                      timeout=5.0, retries=0, on_sample=kill, direct=direct_at)
    finally:
        for proc in (relay, cloud, direct):
            _stop(proc)
    test = candidate.evaluations["test"]
    exited, answer = (a[:N] for a in test.answers(t, "int8"))
    after = np.arange(N) > KILL_AFTER
    assert df["index"].tolist() == list(range(N))
    assert not df.fallback.any()
    np.testing.assert_array_equal(df.direct, after & ~exited)
    assert df.direct.sum() > 0
    np.testing.assert_array_equal(df.pred, answer)  # the direct server's answers are the network's own
    assert (df.edge_ms[df.direct] == 0).all() and (df.server_ms[df.direct] > 0).all()


# -- two network namespaces, two tc-shaped links ----------------------------------------------------

def _netns_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs the {tool} command (iproute2)"
    probe = f"splitopt-probe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _sh(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


SHAPES = {"end-edge": (2.0, 2.0), "edge-cloud": (1.0, 5.0)}  # (Mbit/s, one-way delay ms) of each hop
TBF_BURST = 1600  # bytes: at least one 1514-byte frame, as tbf needs


def _shape(ns: str | None, dev: str, mbps: float, delay_ms: float) -> tuple[str, float, int]:
    """netem (rate and delay) where the kernel has it, else tbf (rate only: no delay, a burst of TBF_BURST);
    (qdisc, delay ms, burst bytes) as applied."""
    prefix = ["ip", "netns", "exec", ns] if ns else []
    try:
        _sh(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", f"{delay_ms}ms", "rate", f"{mbps}mbit")
        return "netem", delay_ms, 0
    except RuntimeError:
        _sh(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{mbps}mbit", "burst", str(TBF_BURST),
            "limit", "200000")
        return "tbf", 0.0, TBF_BURST


@pytest.fixture
def two_links():
    """The end device in this namespace, the edge and the cloud each in their own, joined by two veth
    pairs shaped by tc at the sender of each direction (SHAPES; netem, else tbf without the delay)."""
    if (why := _netns_problem()) is not None:
        pytest.skip(why)
    tag = os.getpid() % 100000
    edge_ns, cloud_ns = f"so-edge-{tag}", f"so-cloud-{tag}"
    a, b, c, d = (f"so{x}{tag}" for x in "abcd")  # interface names: at most 15 characters
    try:
        _sh("ip", "netns", "add", edge_ns)
        _sh("ip", "netns", "add", cloud_ns)
        _sh("ip", "link", "add", a, "type", "veth", "peer", "name", b, "netns", edge_ns)
        _sh("ip", "link", "add", c, "netns", edge_ns, "type", "veth", "peer", "name", d, "netns", cloud_ns)
        _sh("ip", "addr", "add", "10.231.1.1/24", "dev", a)
        _sh("ip", "link", "set", a, "up")
        for ns, dev, addr in ((edge_ns, b, "10.231.1.2/24"), (edge_ns, c, "10.231.2.1/24"),
                              (cloud_ns, d, "10.231.2.2/24")):
            _sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
        try:
            links = {}
            for hop, (ns_out, dev_out, ns_back, dev_back) in {"end-edge": (None, a, edge_ns, b),
                                                              "edge-cloud": (edge_ns, c, cloud_ns, d)}.items():
                mbps, delay = SHAPES[hop]
                qdisc, applied, burst = _shape(ns_out, dev_out, mbps, delay)
                _shape(ns_back, dev_back, mbps, delay)  # the replies: the same delay back
                links[hop] = {"qdisc": qdisc, "mbps": mbps, "rtt_ms": 2 * applied, "burst": burst}
        except RuntimeError as e:
            pytest.skip(f"tc can shape neither with netem nor with tbf: {e}")
        yield {"edge_ns": edge_ns, "cloud_ns": cloud_ns, "edge_ip": "10.231.1.2", "cloud_ip": "10.231.2.2",
               "links": links}
    finally:
        subprocess.run(["ip", "link", "del", a], capture_output=True)
        for ns in (edge_ns, cloud_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _least_ms(link: dict, frame_bytes: int) -> float:
    """The least time a frame can take on a shaped hop: its rtt and the bytes beyond the burst at the rate."""
    return link["rtt_ms"] + 8 * max(frame_bytes - link["burst"], 0) / (link["mbps"] * 1e3)


def test_three_tiers_over_two_namespaces(candidate, digits32, tmp_path, secret_file, two_links):
    """The same split across real network hops: the edge in one namespace, the cloud in another, both links
    shaped by tc (the runtime shapes nothing): answers as evaluated, and each hop's transfer time at least
    what its shaping allows for the frames it carries (fp32 both ways: 8 KiB to the edge, 4 KiB on)."""
    t = _threshold(candidate)
    export_tiers(candidate, digits32, tmp_path, t, "fp32", 4)
    dirs = tier_dirs(tmp_path)
    cloud, relay, relay_at = _servers(dirs, secret_file, (two_links["edge_ns"], two_links["cloud_ns"]),
                                      (two_links["edge_ip"], two_links["cloud_ip"]))
    try:
        df = run_edge(dirs[END], relay_at, limit=N, data=digits32, secret=secret_file.read_bytes().strip())
    finally:
        relay_out = _stop(relay)
        _stop(cloud)
    exited, answer = candidate.evaluations["test"].answers(t, "fp32")
    np.testing.assert_array_equal(df.pred, answer[:N])
    assert not df.fallback.any()
    sent = df[~df.exited]
    assert len(sent) > 0 and re.search(rf"\({len(sent)} forwarded, 0 cloud failures\)", relay_out), relay_out
    framing = wire.HEADER.size + wire.TAG_BYTES
    links = two_links["links"]
    assert (sent.bytes_sent == 4 * 128 * 4 * 4).all()
    assert (sent.transfer_ms >= _least_ms(links["end-edge"], 4 * 128 * 4 * 4 + framing)).all()
    assert (sent.edge_transfer_ms >= _least_ms(links["edge-cloud"], 4 * 256 * 2 * 2 + framing)).all()
    assert (sent.edge_ms > 0).all() and (sent.cloud_ms > 0).all()

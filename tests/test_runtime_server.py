"""Cloud server + edge client over real loopback sockets and real ONNX Runtime sessions.

Answers must match PyTorch; auth and TLS refuse who they should; a server that dies, hangs or garbles
mid-run makes the edge fall back, and every sample is answered exactly once.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from compress.candidate import Candidate, ExitBranch
from runtime import protocol as wire
from runtime.cloud import CloudServer
from runtime.deploy import deploy
from runtime.client import AuthError, Client
from runtime.edge import COLUMNS, main as edge_main, run_edge, summarize
from runtime.export import export_split
from runtime.protocol import MsgType

ROOT = Path(__file__).resolve().parent.parent
N = 40  # test samples per edge run


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(random_resnet18):
    return random_resnet18


@pytest.fixture(scope="module")
def split(model, digits32, tmp_path_factory):
    """k = 3 with an exit whose threshold sends about half the samples to the server.

    Returns the model dir and PyTorch's per-sample reference: exit taken, exit and final predictions.
    """
    k = 3
    torch.manual_seed(1)
    exit_branch = ExitBranch(128, 10).eval()
    images, labels = digits32.arrays("test")
    with torch.no_grad():
        feats = model.head(k).eval()(digits32.normalize(images[:N]))
        conf, exit_pred = F.softmax(exit_branch(feats), dim=1).max(dim=1)
        final = model.tail(k).eval()(feats).argmax(1)
    c = np.sort(conf.numpy())
    t = float((c[N // 2 - 1] + c[N // 2]) / 2)  # halfway between two samples: no sample sits on the boundary
    out = tmp_path_factory.mktemp("k3")
    export_split(Candidate(k, 0.0, model, exit_branch, {}, {}), digits32, out, threshold=t, codec="fp32",
                 predicted={"total_ms": 1.0})
    exited = conf.numpy() >= t
    ref = {"exited": exited, "exit_pred": exit_pred.numpy(), "final": final.numpy(), "labels": labels[:N].numpy(),
           "pred": np.where(exited, exit_pred.numpy(), final.numpy())}
    return out, ref


@pytest.fixture
def server(split):
    with CloudServer(split[0]) as s:
        yield s
    assert s.stats["internal_errors"] == 0


def _check_once(df, n=N):
    assert list(df["index"]) == list(range(n))  # every sample answered, exactly once, in order


def test_edge_and_server_match_pytorch(split, server, digits32):
    out, ref = split
    df = run_edge(out, ("127.0.0.1", server.port), data=digits32, limit=N)
    _check_once(df)
    assert list(df.columns) == COLUMNS
    assert not df.fallback.any() and (df.error == "").all()
    assert (df.steal_ms >= 0).all()  # counted on Linux (NaN fails this), in whole ticks
    np.testing.assert_array_equal(df.exited, ref["exited"])
    np.testing.assert_array_equal(df.pred, ref["pred"])
    np.testing.assert_array_equal(df.correct, ref["pred"] == ref["labels"])
    sent = df[~df.exited]
    assert (sent.bytes_sent == 128 * 4 * 4 * 4).all() and (df[df.exited].bytes_sent == 0).all()
    assert (sent.server_ms > 0).all() and (df[df.exited].server_ms == 0).all()
    assert server.stats["requests"] == len(sent)
    s = summarize(df)
    assert s["exit_rate"] == pytest.approx(ref["exited"].mean())
    assert s["accuracy"] == pytest.approx((ref["pred"] == ref["labels"]).mean())
    assert s["bytes_per_request"] == 8192 and s["failed"] == 0 and s["predicted"] == {"total_ms": 1.0}
    # the summary is the per-sample table's own statistics, recomputed here
    assert s["mean_ms"] == pytest.approx(df.total_ms.mean()) and s["p50_ms"] == pytest.approx(df.total_ms.median())
    assert s["p95_ms"] == pytest.approx(df.total_ms.quantile(0.95))
    for part in ("device_ms", "exit_ms", "transfer_ms", "server_ms"):
        assert s[part] == pytest.approx(df[part].mean())
    # a request's total holds its parts (transfer = the exchange minus the server's own time)
    assert (df.total_ms >= df.device_ms + df.exit_ms + df.transfer_ms - 1e-6).all()
    assert (sent.total_ms >= sent.device_ms + sent.transfer_ms + sent.server_ms - 1e-3).all()
    assert (df[df.exited].transfer_ms == 0).all()


def test_k0_and_kK(model, digits32, tmp_path):
    images, _ = digits32.arrays("test")
    with torch.no_grad():
        want = model.eval()(digits32.normalize(images[:10])).argmax(1).numpy()
    for k in (0, model.K):
        out = tmp_path / f"k{k}"
        export_split(Candidate(k, 0.0, model, None, {}, {}), digits32, out, threshold=None, codec="int8", samples=4)
        df, s = deploy(out, digits32, bandwidth=None, rtt=0.0, limit=10)
        _check_once(df, 10)
        np.testing.assert_array_equal(df.pred, want)
        assert not df.fallback.any()
        assert s["bytes_per_request"] == (3 * 32 * 32 if k == 0 else 0)


def test_deploy_with_shaping_and_emulation(split, digits32, tmp_path):
    df, s = deploy(split[0], digits32, bandwidth=50.0, rtt=1.0, slowdown=2.0, limit=8, csv=tmp_path / "d.csv")
    _check_once(df, 8)
    assert len(pd.read_csv(tmp_path / "d.csv")) == 8
    assert (s["bandwidth_mbps"], s["rtt_ms"], s["slowdown"]) == (50.0, 1.0, 2.0)
    # the shaped link cannot be faster than its round trip and (half of, for the pacer's catch-up) the
    # serialisation of what was sent: sleeps only ever last longer
    sent = df[~df.exited]
    assert len(sent) and (sent.transfer_ms >= 1.0 + 0.5 * 8 * sent.bytes_sent / (1000 * 50.0)).all()
    assert (df[df.exited].transfer_ms == 0).all()
    assert s["server_stats"]["requests"] == (~df.exited).sum()


def test_bandwidth_auto_measures_the_link(split, server, digits32):
    df = run_edge(split[0], f"127.0.0.1:{server.port}", data=digits32, limit=3, bandwidth="auto")
    assert df.attrs["bandwidth_measured"] and df.attrs["bandwidth_mbps"] > 0 and df.attrs["measured_rtt_ms"] >= 0
    assert not df.fallback.any()


def test_shared_secret(split, digits32):
    with CloudServer(split[0], secret=b"right key") as s:
        df = run_edge(split[0], ("127.0.0.1", s.port), data=digits32, limit=6, secret=b"right key")
        assert not df.fallback.any()
        for key in (None, b"wrong key"):
            with pytest.raises(AuthError, match="secret" if key is None else "authentication failed"):
                run_edge(split[0], ("127.0.0.1", s.port), data=digits32, limit=2, secret=key)
        # (the keyless edge gave up by itself;) a raw client that skips AUTH gets an ERROR frame, then a closed connection
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as raw:
            hello = wire.read_frame(raw)
            assert hello.type == MsgType.HELLO and len(hello.payload) == wire.NONCE_BYTES
            raw.sendall(wire.request(1, np.zeros((1, 128, 4, 4), np.float32), "fp32"))
            answer = wire.read_frame(raw)
            assert answer.type == MsgType.ERROR and "authentication required" in wire.error_message(answer)
            assert wire.read_frame(raw) is None
        assert s.stats["refused_auth"] == 2 and s.stats["requests"] == (~df.exited).sum()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI to make a self-signed cert")
def test_tls(split, digits32, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    with CloudServer(split[0], tls_cert=str(cert), tls_key=str(key), secret=b"k") as s:
        df = run_edge(split[0], ("127.0.0.1", s.port), data=digits32, limit=6, tls_ca=str(cert), secret=b"k")
        assert not df.fallback.any()
        # a plaintext client cannot talk to it: every request falls back, none is lost
        df = run_edge(split[0], ("127.0.0.1", s.port), data=digits32, limit=6, secret=b"k", timeout=0.2,
                      retries=0)
        _check_once(df, 6)
        assert df[~df.exited].fallback.all()
        assert s.stats["internal_errors"] == 0


def test_server_stopped_mid_run_then_restarted(split, digits32):
    out, ref = split
    s = CloudServer(out).start()
    port = s.port
    state = {"server": s}

    def chaos(row):
        if row["index"] == 12:
            state["server"].stop()  # drops every connection, refuses new ones
        if row["index"] == 25:
            state["server"] = CloudServer(out, port=port).start()
        if row["index"] >= 25:
            time.sleep(0.01)  # longer than max_backoff: the edge probes the restarted server again

    try:
        df = run_edge(out, ("127.0.0.1", port), data=digits32, limit=N, retries=1, backoff=0.001,
                      max_backoff=0.005, on_sample=chaos)
    finally:
        state["server"].stop()
    _check_once(df)
    sent = df[~df.exited]
    assert not sent[sent["index"] <= 12].fallback.any()
    down = sent[(sent["index"] > 12) & (sent["index"] <= 25)]
    assert len(down) and down.fallback.all()
    assert not sent[sent["index"] > 26].fallback.any()  # reconnected
    # the device answered the fallbacks with its exit, which PyTorch agrees on
    np.testing.assert_array_equal(down.pred, ref["exit_pred"][down["index"]])
    np.testing.assert_array_equal(df.exited, ref["exited"])
    assert (down.bytes_sent == 0).all() and (down.server_ms == 0).all()


def test_server_process_killed_mid_run(split, digits32):
    out, _ = split
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cloud", "--model-dir", str(out), "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        port = int(line.split()[2].rsplit(":", 1)[1])

        def kill(row):
            if row["index"] == 10:
                proc.send_signal(signal.SIGKILL)
                proc.wait()

        df = run_edge(out, ("127.0.0.1", port), data=digits32, limit=N, retries=1, backoff=0.001, on_sample=kill)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    _check_once(df)
    sent = df[~df.exited]
    assert not sent[sent["index"] <= 10].fallback.any()
    assert sent[sent["index"] > 10].fallback.all()


def test_sigterm_is_a_clean_shutdown(split):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cloud", "--model-dir", str(split[0]), "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        port = int(proc.stdout.readline().split()[2].rsplit(":", 1)[1])
        client = Client("127.0.0.1", port)
        client.ping()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read().startswith("stopped after")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_slow_server_times_out_into_fallback(split, digits32):
    out, ref = split
    with CloudServer(out, delay=1.0) as s:
        df = run_edge(out, ("127.0.0.1", s.port), data=digits32, limit=8, timeout=0.1, retries=1, backoff=0.01)
    _check_once(df, 8)
    sent = df[~df.exited]
    assert len(sent) and sent.fallback.all()
    assert sent.error.str.contains("timed out|backing off").all()
    np.testing.assert_array_equal(sent.pred, ref["exit_pred"][sent["index"]])


class FakeServer:
    """A misbehaving server: after the handshake, `behaviour(sock, frame)` answers each request."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.listener.settimeout(0.1)
        while self.listener.fileno() >= 0:
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                try:
                    conn.sendall(wire.pack(MsgType.HELLO))
                    auth = wire.read_frame(conn)  # the keyless handshake: an empty AUTH, then AUTH_OK
                    if auth is None or auth.type != MsgType.AUTH:
                        continue
                    conn.sendall(wire.pack(MsgType.AUTH_OK, auth.request_id))
                    while (frame := wire.read_frame(conn)) is not None:
                        self.requests += 1
                        if not self.behaviour(conn, frame):
                            break
                except OSError:
                    pass

    def close(self):
        self.listener.close()
        self.thread.join()


@pytest.mark.parametrize("name, behaviour", [
    ("wrong reply id", lambda conn, f: conn.sendall(wire.reply(f.request_id + 1000, np.zeros((1, 10)), 1.0)) or True),
    ("drop mid-request", lambda conn, f: False),
    ("garbage", lambda conn, f: conn.sendall(b"\x00" * 60) or True),
])
def test_misbehaving_server_never_gives_an_answer(split, digits32, name, behaviour):
    out, ref = split
    fake = FakeServer(behaviour)
    try:
        df = run_edge(out, ("127.0.0.1", fake.port), data=digits32, limit=10, timeout=2, retries=1, backoff=0.001,
                      max_backoff=0.001)
    finally:
        fake.close()
    _check_once(df, 10)
    sent = df[~df.exited]
    assert len(sent) and sent.fallback.all() and (sent.pred == ref["exit_pred"][sent["index"]]).all()
    assert sent.attempts.isin([0, 2]).all()  # one retry (0: skipped while backing off)
    assert fake.requests == sent.attempts.sum()


def test_no_exit_fallback_is_marked_failed(model, digits32, tmp_path):
    out = tmp_path / "noexit"
    export_split(Candidate(2, 0.0, model, None, {}, {}), digits32, out, threshold=None, codec="fp16", samples=4)
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    df = run_edge(out, ("127.0.0.1", port), data=digits32, limit=5, retries=0)
    _check_once(df, 5)
    assert df.fallback.all() and (df.pred == -1).all() and not df.correct.any()
    assert summarize(df)["failed"] == 5


def test_edge_cli_writes_csv_and_summary(split, tmp_path, capsys):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    with CloudServer(split[0], secret=b"s3cret") as server:
        code = edge_main(["--model-dir", str(split[0]), "--server", f"127.0.0.1:{server.port}", "--limit", "5",
                          "--csv", str(tmp_path / "rows.csv"), "--bandwidth", "100", "--rtt", "0.5",
                          "--secret-file", str(secret)])
    assert code == 0 and server.stats["internal_errors"] == 0
    printed = capsys.readouterr().out
    assert "latency ms: mean" in printed and "accuracy" in printed and "bytes per request" in printed
    import pandas as pd
    rows = pd.read_csv(tmp_path / "rows.csv")
    assert list(rows.columns) == COLUMNS and list(rows["index"]) == list(range(5))
    assert edge_main(["--model-dir", str(split[0]), "--server", "nope", "--limit", "1"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_cloud_refuses_bad_configuration(split, model, digits32, tmp_path):
    export_split(Candidate(model.K, 0.0, model, None, {}, {}), digits32, tmp_path, threshold=None, codec="fp32",
                 samples=2)
    with pytest.raises(ValueError, match="no tail to serve"):
        CloudServer(tmp_path)
    with pytest.raises(ValueError, match="both --tls-cert and --tls-key"):
        CloudServer(split[0], tls_cert="c.pem")


def test_many_edges_at_once(split, server, digits32):
    out, ref = split
    results: dict[int, object] = {}

    def edge(i: int) -> None:
        results[i] = run_edge(out, ("127.0.0.1", server.port), data=digits32, limit=N)

    threads = [threading.Thread(target=edge, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    for df in results.values():
        _check_once(df)
        assert not df.fallback.any()
        np.testing.assert_array_equal(df.pred, ref["pred"])


def test_batched_request(split, server):
    from compress import onnx_io
    x = np.random.default_rng(1).standard_normal((3, 128, 4, 4)).astype(np.float32)
    want = onnx_io.run(onnx_io.session(split[0] / "tail.onnx"), x)[0]
    client = Client("127.0.0.1", server.port)
    try:
        reply = client.infer(wire.encode(x, "fp32"))
    finally:
        client.close()
    np.testing.assert_allclose(reply.logits, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(reply.classes, want.argmax(1))
    assert reply.server_ms > 0


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("tc")),
                    reason="needs root with the ip and tc tools (network namespace + tbf qdisc)")
def test_real_shaped_link_in_a_network_namespace(split, digits32):
    """The server in its own network namespace behind a veth pair shaped by tc tbf at 10 Mbit/s:
    `--bandwidth auto` must see the shaping, and the edge runs over it unshaped by itself."""
    from runtime import link as links

    tag = os.getpid() % 10000
    ns, veth, peer, net = f"splt{tag}", f"splt{tag}a", f"splt{tag}b", f"10.254.{tag % 250}"
    try:
        try:
            _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
            _sh("ip", "link", "set", peer, "netns", ns)
            _sh("ip", "addr", "add", f"{net}.1/30", "dev", veth)
            _sh("ip", "link", "set", veth, "up")
            _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{net}.2/30", "dev", peer)
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", peer, "up")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            _sh("tc", "qdisc", "add", "dev", veth, "root", "tbf", "rate", "10mbit", "burst", "16kb", "latency", "400ms")
        except subprocess.CalledProcessError as e:
            pytest.skip(f"cannot build a shaped namespace here: {' '.join(e.cmd)}: {e.stderr.strip()}")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "runtime.cloud", "--model-dir",
                                 str(split[0]), "--host", f"{net}.2", "--port", "0"],
                                stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        try:
            port = int(proc.stdout.readline().split()[2].rsplit(":", 1)[1])
            client = Client(f"{net}.2", port)
            client.connect()
            mbps, _ = links.measure(client, nbytes=512 << 10)
            client.close()
            assert 5 < mbps < 15, mbps  # the tbf rate, not the loopback's gigabits
            df = run_edge(split[0], (f"{net}.2", port), data=digits32, limit=10)
            _check_once(df, 10)
            assert not df.fallback.any()
        finally:
            proc.kill()
            proc.wait()
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", veth], capture_output=True)


def test_a_stalled_sample_is_counted_and_named_beside_the_mean():
    """One sample 1000x the median decides the mean of 100; the summary counts it and gives the mean
    without it, and a merely slow one (5x the median) is no stall."""
    from runtime.edge import stall_line

    rows = [{"total_ms": 4.0, "bytes_sent": 0, "exited": True, "fallback": False, "pred": 1, "correct": True,
             "device_ms": 4.0, "exit_ms": 0.0, "transfer_ms": 0.0, "server_ms": 0.0} for _ in range(100)]
    rows[7] = {**rows[7], "total_ms": 20.0}
    assert summarize(rows)["stalls"] == 0 and stall_line(summarize(rows), 4.0) is None
    rows[50] = {**rows[50], "total_ms": 4000.0}
    s = summarize(rows)
    assert s["stalls"] == 1 and s["longest_ms"] == 4000.0
    assert s["mean_ms"] == pytest.approx((98 * 4 + 20 + 4000) / 100)
    assert s["mean_ms_without_stalls"] == pytest.approx((98 * 4 + 20) / 99)
    line = stall_line(s, 4.0)
    assert "1 sample(s) stalled (longest 4000 ms" in line and "+4.0% against the prediction" in line
    assert "steal time is not counted" in line  # rows without a steal count say so, not "0 ms stolen"
    rows = [{**row, "steal_ms": 10.0 * (i == 3)} for i, row in enumerate(rows)]
    rows[50]["steal_ms"] = 3900.0
    s = summarize(rows)
    assert s["steal_ms"] == 3910.0 and s["stall_steal_ms"] == 3900.0 and s["stall_wall_ms"] == 4000.0
    assert "the hypervisor stole 3900 ms of CPU time during them (4000 ms wall)" in stall_line(s, 4.0)
    # on an emulated device, a hiccup inside the host's own model call is multiplied with it: named
    rows[50]["head_ms"] = 79.0
    s = summarize(rows, {"slowdown": 50.0})
    assert s["stall_head_ms"] == 79.0
    assert ("this host's own head.onnx runs took 79.0 ms of it, which the emulated slowdown multiplied by 50 to "
            "3950 ms") in stall_line(s, 4.0)
    assert "head.onnx" not in stall_line(summarize(rows, {"slowdown": 1.0}), 4.0)


def test_steal_time_is_the_eighth_field_of_the_cpu_line_in_ticks():
    """/proc/stat's "cpu" line: user nice system idle iowait irq softirq steal ...; anything else is NaN."""
    from runtime.edge import stolen_ms

    tick = 1e3 / os.sysconf("SC_CLK_TCK")
    assert stolen_ms("cpu  14069 0 5501 24955 560 0 57 6 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n") == 6 * tick
    assert math.isnan(stolen_ms("cpu0 1 2 3 4 5 6 7 8 9 10")) and math.isnan(stolen_ms("cpu 1 2 3"))
    before = stolen_ms()
    assert before >= 0 and stolen_ms() >= before  # this machine's own count only grows

"""The cloud server against hostile clients, and the clients against hostile servers.

1. connections that never authenticate (idle, half a header, a byte at a time) cannot take client
   slots, and the handshake and every frame have absolute deadlines;
2. mutual authentication: a client with a secret refuses a server that does not prove it, and a
   relay that forwards a handshake cannot inject frames;
3. a memory budget bounds the payloads held at once, however many connections announce large frames;
4. the fair scheduler: a small request is not queued behind a big batch's remaining chunks;
5. numeric arguments out of range are one-line errors, not a server that refuses everyone or an edge
   that never tries;
6. a manifest cannot name files outside its model directory.

No test bounds a wall-clock time: deadlines are checked with margins of several times their length.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from compress import onnx_io, zoo
from compress.candidate import Candidate
from runtime import cloud
from runtime import protocol as wire
from runtime import scheduler
from runtime.client import AuthError, Client
from runtime.cloud import CloudServer
from runtime.edge import main as edge_main
from runtime.edge import run_edge
from runtime.export import export_split
from runtime.protocol import DType, MsgType

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"hardening secret"
SHAPE = (1, 128, 4, 4)  # resnet18 at 32 px after layer2
PROOF_BYTES, TAG_BYTES = 32, 16  # as in runtime.protocol (literal here: the fakes below also ran against v1)


@pytest.fixture(scope="module")
def model_dir(digits32, tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = zoo.build("resnet18", 10, 32).eval()
        out = tmp_path_factory.mktemp("hardening")
        export_split(Candidate(3, 0.0, model, None, {}, {}), digits32, out, threshold=None, codec="fp32", samples=4)
    finally:
        torch.set_num_threads(before)
    return out


def _until(condition, what: str, limit: float = 20.0) -> None:
    """Wait for a condition the server reaches by itself (a generous limit: this is no timing assertion)."""
    end = time.monotonic() + limit
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    hello = wire.read_frame(s)
    assert hello is not None and hello.type == MsgType.HELLO
    return s


def _authenticate(s: socket.socket) -> None:
    """The keyless handshake, on a socket whose HELLO was read."""
    s.sendall(wire.pack(MsgType.AUTH, 1))
    ok = wire.read_frame(s)
    assert ok is not None and ok.type == MsgType.AUTH_OK, ok


def _frames_until_closed(s: socket.socket) -> list[wire.Frame]:
    """Every frame until the server closes (or 10 s of silence: the test then fails on what it got)."""
    frames = []
    s.settimeout(10)
    try:
        while (frame := wire.read_frame(s)) is not None:
            frames.append(frame)
    except (ConnectionError, TimeoutError):
        pass
    return frames


def _drip(s: socket.socket, data: bytes, gap: float = 0.05) -> int:
    """Send `data` a byte per `gap` seconds until the server answers or closes; the bytes sent."""
    for i, byte in enumerate(data):
        if select.select([s], [], [], gap)[0]:
            return i
        try:
            s.sendall(bytes([byte]))
        except OSError:
            return i
    return len(data)


def _auth_frame(secret: bytes | None) -> bytes:
    payload = wire.nonce() + bytes(PROOF_BYTES) if secret else b""
    assert (wire.PROOF_BYTES, wire.TAG_BYTES) == (PROOF_BYTES, TAG_BYTES)
    return wire.pack(MsgType.AUTH, 1, payload)


# -- 1. connections that never authenticate ---------------------------------------------------------

@pytest.mark.parametrize("secret", [None, SECRET])
def test_unauthenticated_connections_do_not_take_client_slots(model_dir, secret):
    """The issue's attack: idle connections filled --max-clients and every client was refused."""
    with CloudServer(model_dir, max_clients=2, secret=secret) as s:
        hostile = []
        try:
            for i in range(24):
                h = _connect(s.port)  # each gets its HELLO: none is refused as "busy"
                if i % 3 == 1:
                    h.sendall(_auth_frame(secret)[:20])  # half a header
                elif i % 3 == 2:
                    h.sendall(b"S")  # the start of a drip
                hostile.append(h)
            for _ in range(3):  # each time a new connection: served, not "server busy"
                client = Client("127.0.0.1", s.port, secret=secret, timeout=10)
                try:
                    assert client.ping() >= 0
                    # this client holds a slot (the previous one's may not be reaped yet: at most 2)
                    assert 1 <= s.client_count <= 2
                finally:
                    client.close()
            assert s.stats["refused_busy"] == 0 and s.pending_count == 24
        finally:
            for h in hostile:
                h.close()
    assert s.stats["internal_errors"] == 0


@pytest.mark.parametrize("secret", [None, SECRET])
def test_handshake_deadline_is_absolute(model_dir, secret):
    """A byte every 0.05 s would take over 2 s to finish AUTH: the 0.5 s deadline is not reset by it."""
    with CloudServer(model_dir, secret=secret, handshake_timeout=0.5) as s:
        with _connect(s.port) as h:
            auth = _auth_frame(secret)
            sent = _drip(h, auth)
            assert sent < len(auth) // 2
            frames = _frames_until_closed(h)
        assert [f.type for f in frames] == [MsgType.ERROR]
        assert "handshake not completed within 0.5 s" in wire.error_message(frames[0])
        assert s.stats["handshake_timeouts"] == 1 and s.pending_count == 0


def test_a_silent_connection_is_closed_at_the_handshake_deadline(model_dir):
    with CloudServer(model_dir, handshake_timeout=0.3) as s:
        with _connect(s.port) as h:
            frames = _frames_until_closed(h)
        assert "handshake not completed" in wire.error_message(frames[0])
        _until(lambda: s.pending_count == 0, "the pending connection dropped")


def test_the_oldest_pending_connection_makes_way(model_dir):
    with CloudServer(model_dir, max_pending=3, handshake_timeout=60) as s:
        old = [_connect(s.port) for _ in range(3)]
        try:
            _until(lambda: s.pending_count == 3, "3 pending handshakes")
            client = Client("127.0.0.1", s.port, timeout=10)
            assert client.ping() >= 0
            client.close()
            frames = _frames_until_closed(old[0])
            assert "more than 3 connections" in wire.error_message(frames[0])
            assert s.stats["evicted_pending"] == 1
            _authenticate(old[1])  # the others are still in their handshake, and can finish it
        finally:
            for h in old:
                h.close()


@pytest.mark.parametrize("how", ["half a payload", "a header dripped"])
def test_a_frame_must_be_complete_by_its_deadline(model_dir, how):
    with CloudServer(model_dir, frame_timeout=0.5) as s:
        with _connect(s.port) as h:
            _authenticate(h)
            frame = wire.pack(MsgType.SINK, 7, bytes(1000))
            if how == "half a payload":
                h.sendall(frame[:544])
            else:
                assert _drip(h, frame[:44]) < 22  # 2.2 s of drip against a 0.5 s deadline
            frames = _frames_until_closed(h)
        assert [f.type for f in frames] == [MsgType.ERROR]
        assert "frame not received within 0.5 s" in wire.error_message(frames[0])
        assert frames[0].request_id == (7 if how == "half a payload" else 0)
        assert s.stats["frame_timeouts"] == 1


def test_idle_authenticated_connection_is_closed(model_dir):
    with CloudServer(model_dir, idle_timeout=0.2) as s:
        with _connect(s.port) as h:
            _authenticate(h)
            assert _frames_until_closed(h) == []
        _until(lambda: s.stats["idle_closed"] == 1, "the idle close counted")


def test_cli_sets_the_deadlines_and_limits():
    args = cloud.parser().parse_args(["--model-dir", "d", "--handshake-timeout", "2", "--idle-timeout", "30",
                                      "--frame-timeout", "9", "--max-pending", "12", "--memory-budget", "99999999",
                                      "--scheduler", "lock", "--workers", "3", "--batch-samples", "8"])
    assert (args.handshake_timeout, args.idle_timeout, args.frame_timeout, args.max_pending) == (2, 30, 9, 12)
    assert (args.memory_budget, args.scheduler, args.workers, args.batch_samples) == (99999999, "lock", 3, 8)
    assert "256 MiB" in cloud.parser().format_help()  # the budget's default is stated


# -- 2. mutual authentication -----------------------------------------------------------------------

class OneShotServer:
    """Accepts one connection and runs `script(conn)`; `received` holds what it read after the script's part."""

    def __init__(self, script):
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.after: list[wire.Frame] = []  # frames the client sent after the script was done with it
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.listener.settimeout(10)
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            try:
                self.script(conn)
                while (frame := wire.read_frame(conn)) is not None:
                    self.after.append(frame)
                    if frame.type == MsgType.REQUEST:  # a fabricated answer, if the client asks anything
                        conn.sendall(wire.reply(frame.request_id, np.eye(1, 10, 3, dtype=np.float32), 1.0))
            except (OSError, wire.ProtocolError):
                pass

    def close(self):
        self.listener.close()
        self.thread.join(timeout=20)


def _infer_through(port: int, secret: bytes | None):
    client = Client("127.0.0.1", port, secret=secret, timeout=5)
    try:
        return client.infer(wire.encode(np.zeros(SHAPE, np.float32), "fp32"))
    finally:
        client.close()


def test_client_with_a_secret_refuses_a_hello_without_a_challenge():
    """The downgrade: an impostor that skips the challenge must not get a request, nor give an answer."""
    fake = OneShotServer(lambda conn: conn.sendall(wire.pack(MsgType.HELLO)))
    try:
        with pytest.raises(AuthError, match="did not challenge us"):
            _infer_through(fake.port, SECRET)
    finally:
        fake.close()
    assert fake.after == []  # not even an AUTH


@pytest.mark.parametrize("answer", ["empty", "random", "reflected", "wrong secret"])
def test_client_refuses_a_server_that_cannot_prove_the_secret(answer):
    def script(conn):
        challenge = wire.nonce()
        conn.sendall(wire.pack(MsgType.HELLO, 0, challenge))
        auth = wire.read_frame(conn)
        client_nonce, client_proof = auth.payload[:wire.NONCE_BYTES], auth.payload[wire.NONCE_BYTES:]
        proof = {"empty": lambda: b"", "random": lambda: os.urandom(PROOF_BYTES), "reflected": lambda: client_proof,
                 "wrong secret": lambda: wire.server_proof(b"guess", challenge, client_nonce)}[answer]()
        conn.sendall(wire.pack(MsgType.AUTH_OK, auth.request_id, proof))

    fake = OneShotServer(script)
    try:
        with pytest.raises(AuthError, match="failed to prove the shared secret"):
            _infer_through(fake.port, SECRET)
    finally:
        fake.close()
    assert fake.after == []  # the client sent nothing after its AUTH


def test_a_relay_cannot_use_a_forwarded_handshake(model_dir):
    """The issue's relay: it forwards the server's nonce to a real client and the client's answer back,
    then sends its own request on the authenticated connection.  The server must not serve it."""
    x = np.zeros(SHAPE, np.float32)
    seen: dict[str, object] = {}
    with CloudServer(model_dir, secret=SECRET) as server:
        listener = socket.create_server(("127.0.0.1", 0))

        def relay():
            conn, _ = listener.accept()
            with conn, socket.create_connection(("127.0.0.1", server.port), timeout=10) as up:
                conn.settimeout(10)
                conn.sendall(wire.pack(MsgType.HELLO, 0, wire.read_frame(up).payload))  # forward HELLO
                auth = wire.read_frame(conn)
                up.sendall(wire.pack(MsgType.AUTH, auth.request_id, auth.payload))  # forward AUTH
                ok = wire.read_frame(up)
                seen["handshake"] = ok.type
                conn.sendall(wire.pack(MsgType.AUTH_OK, ok.request_id, ok.payload))  # forward AUTH_OK
                up.sendall(wire.request(99, x, "fp32") + bytes(TAG_BYTES))  # a tag it cannot compute
                seen["answers"] = _frames_until_closed(up)

        t = threading.Thread(target=relay, daemon=True)
        t.start()
        client = Client("127.0.0.1", listener.getsockname()[1], secret=SECRET, timeout=10)
        client.connect()  # the relay forwarded faithfully: the client cannot tell, and need not
        client.close()
        t.join(timeout=20)
        listener.close()
    assert seen["handshake"] == MsgType.AUTH_OK
    answers = seen["answers"]
    assert len(answers) == 1 and answers[0].type == MsgType.ERROR  # type: ignore[arg-type,index]
    assert "frame authentication failed" in wire.error_message(answers[0])  # type: ignore[index]
    assert server.stats["requests"] == 0 and server.stats["bad_tags"] == 1


def test_tagged_session_serves_and_counts_nothing_bad(model_dir):
    with CloudServer(model_dir, secret=SECRET) as server:
        client = Client("127.0.0.1", server.port, secret=SECRET, timeout=10)
        x = np.random.default_rng(0).standard_normal((3, 128, 4, 4)).astype(np.float32)
        for _ in range(3):
            reply = client.infer(wire.encode(x, "fp32"))
        client.sink(100_000)
        client.close()
    want = onnx_io.run(onnx_io.session(model_dir / "tail.onnx"), x)[0]
    np.testing.assert_allclose(reply.logits, want, rtol=1e-5, atol=1e-5)
    assert server.stats["requests"] == 3 and server.stats["bad_tags"] == 0 and server.stats["internal_errors"] == 0


# -- 3. memory budget -------------------------------------------------------------------------------

def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    raise AssertionError("no VmRSS")


class _Sender:
    """An authenticated connection that sends a frame of `size` announced bytes but all of them but one."""

    def __init__(self, port: int, size: int, body: memoryview):
        self.sock = _connect(port)
        _authenticate(self.sock)
        self.sock.settimeout(None)
        header = wire.HEADER.pack(wire.MAGIC, wire.VERSION, int(MsgType.SINK), 0, 0, 5, *(0,) * 6, size)
        self.done = False
        self.thread = threading.Thread(target=self._send, args=(header, body[:size - 1]), daemon=True)
        self.thread.start()

    def _send(self, header: bytes, body: memoryview) -> None:
        try:
            self.sock.sendall(header)
            self.sock.sendall(body)  # blocks while the server does not read: it waits for budget
            self.done = True
        except OSError:
            pass

    def close(self) -> None:
        _shutdown_quietly(self.sock)
        self.thread.join(timeout=20)


def _shutdown_quietly(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_memory_budget_bounds_what_maximal_frames_hold(model_dir):
    """32 connections each hold 8 MiB (less a byte) of an 8 MiB frame: the old server read them all
    (256 MiB); with a 32 MiB budget four are read and the rest wait, unread."""
    frame, budget, n = 8 << 20, 32 << 20, 32
    body = memoryview(bytes(frame))  # one buffer for every sender: the client side costs nothing per connection
    with CloudServer(model_dir, max_frame=frame, memory_budget=budget) as s:
        before = _rss()
        senders = [_Sender(s.port, frame, body) for _ in range(n)]
        try:
            # a reservation allocates its frame's buffer at once: with the budget taken, the memory is there
            _until(lambda: s.budget.used == budget and s.budget.waiting == n - budget // frame,
                   "four frames reserved and the others waiting")
            grown = _rss() - before
            assert s.budget.used == s.budget.peak == budget
            assert grown < budget + (32 << 20), f"RSS grew {grown >> 20} MiB for a {budget >> 20} MiB budget"
        finally:
            for x in senders:
                x.close()
        _until(lambda: s.budget.used == 0, "every reservation returned")
    assert s.budget.peak <= budget and s.stats["internal_errors"] == 0


def test_a_frame_that_cannot_get_budget_in_time_is_refused(model_dir):
    """A 1-sample request (8 KiB payload + 8 KiB decoded) holds the whole 16 KiB budget for the server's
    2 s fault-injection delay; another frame waits for budget until its 0.5 s deadline, then is refused."""
    with CloudServer(model_dir, max_frame=16 << 10, memory_budget=16 << 10, frame_timeout=0.5, delay=2.0) as s:
        holder = threading.Thread(target=_infer_through, args=(s.port, None))
        holder.start()
        try:
            _until(lambda: s.budget.used == 16 << 10, "the request holding the budget")
            with _connect(s.port) as h:
                _authenticate(h)
                h.sendall(wire.HEADER.pack(wire.MAGIC, wire.VERSION, int(MsgType.SINK), 0, 0, 6, *(0,) * 6, 100))
                frames = _frames_until_closed(h)
            assert [f.type for f in frames] == [MsgType.ERROR] and frames[0].request_id == 6
            assert "server busy: its memory budget (16384 bytes) stayed in use" in wire.error_message(frames[0])
            assert s.stats["refused_memory"] == 1
        finally:
            holder.join(timeout=30)
        assert s.stats["requests"] == 1 and s.budget.peak == 16 << 10


def test_request_cost_counts_the_decoded_tensor(model_dir):
    """A 2-sample fp32 request is 16 KiB of payload and 16 KiB of decoded tensor: more than a 16 KiB budget."""
    with CloudServer(model_dir, max_frame=16 << 10, memory_budget=16 << 10) as s:
        client = Client("127.0.0.1", s.port, timeout=10)
        try:
            assert client.infer(wire.encode(np.zeros(SHAPE, np.float32), "fp32")).logits.shape == (1, 10)
            with pytest.raises(wire.RemoteError, match="needs 32768 bytes of the server's 16384-byte memory budget"):
                client.infer(wire.encode(np.zeros((2, 128, 4, 4), np.float32), "fp32"))
        finally:
            client.close()
        assert s.budget.peak == 16 << 10


# -- 4. fair scheduling -----------------------------------------------------------------------------

NAMES: dict[object, str] = {}


def _pieces(batch) -> list[tuple[str, int, int]]:
    return [(NAMES[job], start, count) for job, start, count in batch.pieces]


def _submit(s: "scheduler.FairScheduler", name: str, n: int):
    job = s.submit(np.full((n, 2), len(name), np.float32))
    NAMES[job] = name
    return job


def _finish(s: "scheduler.FairScheduler", batch) -> None:
    s.finish(batch, batch.inputs() * 10)


def test_a_small_request_is_served_before_a_big_batchs_remaining_chunks():
    s = scheduler.FairScheduler(run=None, batch_samples=32, workers=1)  # type: ignore[arg-type]
    big = _submit(s, "big", 256)
    first = s.take()
    assert _pieces(first) == [("big", 0, 32)] and first.bulk
    small = _submit(s, "small", 1)
    assert s.take() is None  # the one worker is busy
    _finish(s, first)
    second = s.take()
    assert _pieces(second) == [("small", 0, 1), ("big", 32, 31)]  # the small request rides in the next batch
    assert not second.bulk  # so it runs at normal priority
    _finish(s, second)
    assert small.finished and not big.finished and big.done == 63
    np.testing.assert_array_equal(small.logits, np.full((1, 2), 50.0))
    while (batch := s.take()) is not None:
        _finish(s, batch)
    assert big.finished and big.logits.shape == (256, 2) and (big.logits == 30.0).all()
    assert s.batches == 2 + 193 // 32 + 1


def test_a_worker_stays_free_for_requests_that_fit_one_batch():
    s = scheduler.FairScheduler(run=None, batch_samples=32, workers=2)  # type: ignore[arg-type]
    _submit(s, "bulk1", 256)
    _submit(s, "bulk2", 256)
    bulk = s.take()
    assert _pieces(bulk) == [("bulk1", 0, 16), ("bulk2", 0, 16)]  # shared evenly
    assert s.take() is None  # the last free worker does not take bulk work
    _submit(s, "small", 3)
    assert _pieces(s.take()) == [("small", 0, 3)]
    assert s.take() is None  # both workers busy


def test_many_small_requests_are_batched_together_fairly():
    s = scheduler.FairScheduler(run=None, batch_samples=8, workers=1)  # type: ignore[arg-type]
    for i in range(12):
        _submit(s, f"c{i:02d}", 1)
    _submit(s, "big", 40)
    first = s.take()
    assert _pieces(first) == [(f"c{i:02d}", 0, 1) for i in range(8)]  # arrival order among equals
    _finish(s, first)
    assert _pieces(s.take()) == [(f"c{i:02d}", 0, 1) for i in range(8, 12)] + [("big", 0, 4)]


def test_a_failed_batch_fails_its_jobs_only():
    s = scheduler.FairScheduler(run=None, batch_samples=4, workers=1)  # type: ignore[arg-type]
    a, b = _submit(s, "a", 2), _submit(s, "b", 6)
    batch = s.take()
    s.finish(batch, error=RuntimeError("boom"))
    assert a.finished and isinstance(a.error, RuntimeError) and b.finished and b.error is not None
    c = _submit(s, "c", 1)
    _finish(s, s.take())
    assert c.finished and c.error is None


def test_scheduler_threads_run_the_batches_themselves():
    """Callers run batches with a small request in them; bulk-only batches go to the low-priority runner."""
    runs = []

    def run(x):
        runs.append((len(x), threading.current_thread().name))
        return x[:, :1] * 2

    s = scheduler.FairScheduler(run, batch_samples=4, workers=2)
    out = {}

    def ask(i, n):
        out[i] = s.infer(np.full((n, 3), i, np.float32))

    threads = [threading.Thread(target=ask, args=(i, n)) for i, n in enumerate([1, 9, 2, 5, 1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    for i, n in enumerate([1, 9, 2, 5, 1]):
        np.testing.assert_array_equal(out[i], np.full((n, 1), 2 * i, np.float32))
    assert sum(n for n, _ in runs) == 18 and max(n for n, _ in runs) <= 4
    assert any(name == "cloud-bulk" for _, name in runs)  # the 9-sample request's last chunks at least
    s.close()


@pytest.mark.parametrize("scheduler", ["fair", "lock"])
def test_concurrent_clients_each_get_their_own_logits(model_dir, scheduler):
    """Batches mix samples of several connections: every reply must still be its own request's."""
    sess = onnx_io.session(model_dir / "tail.onnx")
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((n, 128, 4, 4)).astype(np.float32) for n in (1, 3, 40, 1, 7, 2, 1, 64)]
    wants = [onnx_io.run(sess, x)[0] for x in inputs]
    failures: list[str] = []
    with CloudServer(model_dir, scheduler=scheduler, workers=2, batch_samples=16) as server:
        def client(i):
            c = Client("127.0.0.1", server.port, timeout=30)
            try:
                for _ in range(4):
                    reply = c.infer(wire.encode(inputs[i], "fp32"))
                    np.testing.assert_allclose(reply.logits, wants[i], rtol=1e-4, atol=1e-4)
            except Exception as e:  # noqa: BLE001 - asserted below
                failures.append(f"{i}: {type(e).__name__}: {e}")
            finally:
                c.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not failures, failures
    assert server.stats["requests"] == 4 * len(inputs) and server.stats["internal_errors"] == 0


# -- 5. numeric arguments ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-1"])
def test_cloud_cli_refuses_max_clients_below_one(model_dir, value):
    """The old server started with --max-clients 0 and refused everyone: now a one-line usage error."""
    proc = subprocess.run([sys.executable, "-m", "runtime.cloud", "--model-dir", str(model_dir), "--port", "0",
                           "--max-clients", value], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1].endswith(f"error: --max-clients must be >= 1, got {value}")


@pytest.mark.parametrize("flag, value, message", [
    ("--max-pending", "0", "--max-pending must be >= 1"),
    ("--threads", "0", "--threads must be >= 1"),
    ("--workers", "0", "--workers must be >= 1"),
    ("--port", "70000", "--port must be in 0..65535"),
    ("--handshake-timeout", "0", "--handshake-timeout must be a positive number of seconds"),
    ("--frame-timeout", "-1", "--frame-timeout must be a positive number of seconds"),
    ("--idle-timeout", "nan", "--idle-timeout must be a positive number of seconds"),
    ("--memory-budget", "1000", "--memory-budget (1000 bytes) must be at least --max-frame"),
    ("--batch-samples", "0", "--batch-samples must be in 1..256"),
    ("--max-frame", "0", "--max-frame must be in 1.."),
])
def test_cloud_cli_refuses_out_of_range_numbers(flag, value, message, capsys):
    with pytest.raises(SystemExit) as e:
        cloud.main(["--model-dir", "unused", flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("python -m runtime.cloud: error:")


def test_cloud_server_refuses_out_of_range_numbers(model_dir):
    for kwargs, message in [({"max_clients": 0}, "--max-clients"), ({"max_pending": -1}, "--max-pending"),
                            ({"handshake_timeout": 0}, "--handshake-timeout"), ({"workers": 0}, "--workers"),
                            ({"memory_budget": 10, "max_frame": 100}, "--memory-budget")]:
        with pytest.raises(ValueError, match=message):
            CloudServer(model_dir, **kwargs)


@pytest.mark.parametrize("flag, value, message", [
    ("--retries", "-1", "--retries must be >= 0, got -1"),
    ("--timeout", "0", "--timeout must be a positive number of seconds, got 0.0"),
    ("--timeout", "-2", "--timeout must be a positive number of seconds"),
    ("--limit", "-1", "--limit must be >= 0"),
    ("--slowdown", "0.5", "--slowdown must be >= 1"),
    ("--rtt", "-1", "--rtt must be >= 0 ms"),
])
def test_edge_cli_refuses_out_of_range_numbers(model_dir, flag, value, message, capsys):
    """The old edge made 0 attempts (--retries -1) or used non-blocking sockets (--timeout 0), fell back on
    every sample and exited 0."""
    with pytest.raises(SystemExit) as e:
        edge_main(["--model-dir", str(model_dir), "--server", "127.0.0.1:9", "--limit", "2", flag, value])
    assert e.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_edge_api_refuses_out_of_range_numbers(model_dir, digits32):
    with pytest.raises(ValueError, match="retries must be an integer >= 0"):
        run_edge(model_dir, "127.0.0.1:9", data=digits32, limit=1, retries=-1)
    with pytest.raises(ValueError, match="timeout must be a positive"):
        run_edge(model_dir, "127.0.0.1:9", data=digits32, limit=1, timeout=0)
    with pytest.raises(ValueError, match="timeout must be a positive"):
        Client("127.0.0.1", 9, timeout=0)


# -- 6. manifest paths ------------------------------------------------------------------------------

def _with_tail(model_dir: Path, tmp_path: Path, name: str) -> Path:
    """A copy of the export whose manifest names `name` as its tail file."""
    out = tmp_path / "export"
    shutil.copytree(model_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["tail"]["file"] = name
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize("where", ["dot-dot", "absolute", "symlink out", "nested dot-dot", "not a string"])
def test_manifest_cannot_name_files_outside_its_directory(model_dir, tmp_path, where):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(model_dir / "tail.onnx", outside / "tail.onnx")  # a real model: only the path is wrong
    name = {"dot-dot": "../elsewhere/tail.onnx", "absolute": str(outside / "tail.onnx"), "symlink out": "link.onnx",
            "nested dot-dot": "sub/../../elsewhere/tail.onnx", "not a string": 7}[where]
    out = _with_tail(model_dir, tmp_path, name)  # type: ignore[arg-type]
    (out / "sub").mkdir()
    if where == "symlink out":
        (out / "link.onnx").symlink_to(outside / "tail.onnx")
    with pytest.raises(ValueError, match="outside the model directory|relative path inside|must be a file name"):
        CloudServer(out)


def test_manifest_may_name_a_file_in_a_subdirectory_or_a_symlink_inside(model_dir, tmp_path):
    out = _with_tail(model_dir, tmp_path, "parts/tail.onnx")
    (out / "parts").mkdir()
    (out / "tail.onnx").rename(out / "parts" / "tail.onnx")
    with CloudServer(out) as s:
        client = Client("127.0.0.1", s.port, timeout=10)
        assert client.ping() >= 0
        client.close()
    (out / "inside.onnx").symlink_to(out / "parts" / "tail.onnx")
    m = json.loads((out / "manifest.json").read_text())
    m["tail"]["file"] = "inside.onnx"
    (out / "manifest.json").write_text(json.dumps(m))
    CloudServer(out).stop()

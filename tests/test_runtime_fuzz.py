"""Fuzzing the cloud server with hypothesis: malformed, truncated, oversized and random frames.

Each bad connection must end with an ERROR frame or a closed connection, never a REPLY or a
malformed answer, while a well-behaved client on its own connection keeps getting correct logits.
The variable-size codecs (int8-zlib at a middle split, png at k = 0) get their own servers: payloads
that pass the header check but do not decode are answered with an ERROR and the connection goes on.
"""
from __future__ import annotations

import contextlib
import re
import socket
import threading
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from compress import codec as codecs
from compress import onnx_io, zoo
from compress.candidate import Candidate
from runtime import manifest as mf
from runtime import protocol as wire
from runtime.cloud import CloudServer
from runtime.client import Client
from runtime.export import export_split
from runtime.protocol import DType, MsgType

MAX_FRAME = 64 << 10  # small, so oversized frames are cheap to make
SHAPE = (1, 128, 4, 4)  # resnet18 at 32 px after layer2
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def served(digits32, tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = zoo.build("resnet18", 10, 32).eval()
    out = tmp_path_factory.mktemp("fuzz")
    export_split(Candidate(3, 0.0, model, None, {}, {}), digits32, out, threshold=None, codec="fp32", samples=4)
    torch.set_num_threads(before)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    expected = onnx_io.run(onnx_io.session(out / "tail.onnx"), x)[0]
    with CloudServer(out, max_frame=MAX_FRAME) as server:
        yield server, x, expected
    assert server.stats["internal_errors"] == 0


class GoodClient:
    """Keeps sending valid requests on one connection for as long as the fuzzing runs."""

    def __init__(self, port: int, x: np.ndarray, expected: np.ndarray, codec: str = "fp32",
                 secret: bytes | None = None):
        self.client = Client("127.0.0.1", port, secret=secret, timeout=30)
        self.tensor = wire.encode(x, codec)
        self.expected = expected
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            try:
                reply = self.client.infer(self.tensor)
                np.testing.assert_allclose(reply.logits, self.expected, rtol=1e-5, atol=1e-5)
                assert reply.classes[0] == self.expected.argmax()
                self.ok += 1
            except Exception as e:  # noqa: BLE001 - recorded and asserted on by the test
                self.failures.append(f"{type(e).__name__}: {e}")
                return

    def __enter__(self) -> "GoodClient":
        self.client.connect()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()
        assert not self.failures, self.failures
        assert self.ok > 0


def handshake(s: socket.socket) -> None:
    """The keyless handshake (runtime.protocol): HELLO, an empty AUTH, AUTH_OK."""
    hello = wire.read_frame(s)
    assert hello is not None and hello.type == MsgType.HELLO and hello.payload == b""
    s.sendall(wire.pack(MsgType.AUTH, 1))
    ok = wire.read_frame(s)
    assert ok is not None and ok.type == MsgType.AUTH_OK and ok.request_id == 1, ok


def talk(port: int, data: bytes) -> tuple[list[wire.Frame], str]:
    """Send `data` on a fresh connection after the handshake, half-close, and read every answer until the
    server closes."""
    frames: list[wire.Frame] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        handshake(s)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server already gave up on us (broken pipe, reset, not connected)
        while True:
            try:
                frame = wire.read_frame(s, max_frame=1 << 20)  # a ProtocolError here is a malformed answer: fail
            except (ConnectionResetError, ConnectionError):
                return frames, "reset"
            if frame is None:
                return frames, "closed"
            frames.append(frame)


def _valid() -> bytes:
    return wire.pack(MsgType.REQUEST, 77, np.ones(SHAPE, "<f4").tobytes(), DType.FP32, SHAPE)


def _with(header_fields: dict, payload: bytes | None = None) -> bytes:
    """The valid request with some header fields replaced (and optionally another payload)."""
    fields = dict(magic=wire.MAGIC, version=wire.VERSION, type=int(MsgType.REQUEST), dtype=int(DType.FP32), ndim=4,
                  rid=77, dims=SHAPE + (0, 0), length=None)
    fields.update(header_fields)
    body = np.ones(SHAPE, "<f4").tobytes() if payload is None else payload
    length = len(body) if fields["length"] is None else fields["length"]
    return wire.HEADER.pack(fields["magic"], fields["version"], fields["type"], fields["dtype"], fields["ndim"],
                            fields["rid"], *fields["dims"], length) + body


CLIENT_OK_TYPES = {MsgType.REQUEST, MsgType.PING, MsgType.SINK}  # answered without an ERROR (AUTH: only once)


@st.composite
def malformed(draw) -> tuple[str, bytes, bool]:
    """(what, bytes, an ERROR frame is required) for one complete but invalid frame, or a fatal header."""
    kind = draw(st.sampled_from(["magic", "version", "type", "dtype", "ndim", "shape", "length", "oversize",
                                 "nan", "dims_past_ndim"]))
    if kind == "magic":
        magic = draw(st.binary(min_size=4, max_size=4).filter(lambda m: m != wire.MAGIC))
        return kind, _with({"magic": magic}), False  # fatal: closing without reading on may reset the socket
    if kind == "version":
        return kind, _with({"version": draw(st.integers(0, 255).filter(lambda v: v != wire.VERSION))}), False
    if kind == "type":
        t = draw(st.integers(0, 255).filter(lambda v: v not in {int(m) for m in CLIENT_OK_TYPES}))
        return kind, _with({"type": t}), True
    if kind == "dtype":
        return kind, _with({"dtype": draw(st.integers(0, 255).filter(lambda v: v != DType.FP32))}), True
    if kind == "ndim":
        return kind, _with({"ndim": draw(st.integers(0, 255).filter(lambda v: v != 4))}), True
    if kind == "dims_past_ndim":
        extra = draw(st.tuples(st.integers(0, 2 ** 32 - 1), st.integers(1, 2 ** 32 - 1)))
        return kind, _with({"dims": SHAPE + extra}), True
    if kind == "shape":
        shape = draw(st.tuples(*[st.integers(1, 8)] * 4))  # 16 KiB at most: under MAX_FRAME
        assume(shape[1:] != SHAPE[1:])
        return kind, _with({"dims": shape + (0, 0)}, bytes(4 * int(np.prod(shape)))), True
    if kind == "length":
        n = draw(st.integers(0, MAX_FRAME).filter(lambda v: v != 4 * 2048))
        return kind, _with({}, draw(st.binary(min_size=min(n, 64), max_size=min(n, 64))) + bytes(max(n - 64, 0))), True
    if kind == "oversize":
        n = draw(st.integers(MAX_FRAME + 1, 2 ** 32 - 1))
        return kind, _with({"length": n}, b""), False
    # nan / inf in an otherwise valid tensor
    values = np.ones(SHAPE, "<f4")
    values.flat[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return kind, _with({}, values.tobytes()), True


@settings(FUZZ, max_examples=900)
@given(case=malformed())
def _fuzz_malformed(port, case):
    what, data, must_error = case
    frames, end = talk(port, data)
    assert all(f.type == MsgType.ERROR for f in frames), (what, frames)
    assert len(frames) <= 1
    if must_error:
        assert frames and frames[0].request_id == 77, (what, end)
    assert frames or end in ("closed", "reset")


def test_malformed_frames(served):
    server, x, expected = served
    with GoodClient(server.port, x, expected) as good:
        _fuzz_malformed(server.port)
    assert server.stats["bad_frames"] + server.stats["bad_requests"] > 0 and good.ok > 0


@settings(FUZZ, max_examples=500)
@given(data=st.one_of(
    st.binary(max_size=300),  # random bytes
    st.tuples(st.integers(0, 44 + 8192 - 1)).map(lambda c: _valid()[:c[0]]),  # truncated valid request
    st.binary(min_size=40, max_size=40).map(lambda b: wire.MAGIC + b),  # a plausible start, then garbage
))
def _fuzz_bytes(port, data):
    frames, end = talk(port, data)
    assert all(f.type == MsgType.ERROR for f in frames), frames
    assert end in ("closed", "reset")


def test_random_and_truncated_bytes(served):
    server, x, expected = served
    with GoodClient(server.port, x, expected):
        _fuzz_bytes(server.port)


@settings(FUZZ, max_examples=200)
@given(pings=st.integers(0, 3), bad=malformed(), after=st.booleans())
def _fuzz_sequences(port, pings, bad, after):
    """Valid frames around a bad one: each valid one is answered in order until the bad one."""
    what, data, must_error = bad
    ping = wire.pack(MsgType.PING, 5)
    frames, end = talk(port, ping * pings + data + (ping if after else b""))
    types = [f.type for f in frames]
    assert types[:pings] == [MsgType.PONG] * pings, (what, types)
    rest = types[pings:]
    if must_error:  # non-fatal: the stream stays in sync and the trailing PING is still answered
        assert rest == [MsgType.ERROR] + ([MsgType.PONG] if after else []), (what, types)
    else:
        assert rest in ([], [MsgType.ERROR]), (what, types)


def test_frame_sequences(served):
    server, x, expected = served
    with GoodClient(server.port, x, expected):
        _fuzz_sequences(server.port)


def test_oversized_frame_is_refused_before_its_payload(served):
    """The size check happens on the header: the server answers without waiting for 1 GiB."""
    server = served[0]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        handshake(s)
        s.sendall(_with({"length": 1 << 30}, b""))  # no shutdown: a server waiting for the payload would hang
        frame = wire.read_frame(s)
        assert frame.type == MsgType.ERROR and "exceeds the maximum" in wire.error_message(frame)
        assert wire.read_frame(s) is None


def test_too_many_clients_get_busy(served):
    """Only authenticated connections count against max_clients (tests/test_runtime_hardening.py: the others)."""
    with CloudServer(served[0].model_dir, max_clients=1) as busy:
        first = socket.create_connection(("127.0.0.1", busy.port), timeout=30)
        handshake(first)
        with socket.create_connection(("127.0.0.1", busy.port), timeout=30) as second:
            frame = wire.read_frame(second)
            assert frame.type == MsgType.ERROR and "server busy" in wire.error_message(frame)
        with pytest.raises(wire.RemoteError, match="server busy"):
            Client("127.0.0.1", busy.port).connect()
        first.close()


def _auth(payload: bytes, rid: int = 1, type_: int = int(MsgType.AUTH), length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return wire.HEADER.pack(wire.MAGIC, wire.VERSION, type_, 0, 0, rid, *(0,) * 6, n) + payload


@settings(FUZZ, max_examples=300)
@given(data=st.one_of(
    st.binary(max_size=200),  # random bytes
    st.binary(min_size=64, max_size=64).map(_auth),  # a well-formed AUTH with a made-up nonce and proof
    st.binary(max_size=120).map(_auth),  # AUTH payloads of the wrong size
    st.tuples(st.integers(0, 255), st.binary(max_size=64)).map(lambda t: _auth(t[1], type_=t[0])),  # other types
    st.integers(65, 2 ** 32 - 1).map(lambda n: _auth(b"", length=n)),  # announcing more than an AUTH
    st.integers(1, 107).map(lambda c: _auth(bytes(64))[:c]),  # cut short
))
def _fuzz_handshake(port, data):
    """Before the handshake only AUTH is read, at most 64 bytes of it: anything else is an ERROR or a close."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        hello = wire.read_frame(s)
        assert hello is not None and hello.type == MsgType.HELLO and len(hello.payload) == wire.NONCE_BYTES
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        frames = []
        try:
            while (frame := wire.read_frame(s, max_frame=1 << 20)) is not None:
                frames.append(frame)
        except ConnectionError:
            pass
    assert len(frames) <= 1 and all(f.type == MsgType.ERROR for f in frames), frames
    assert all(wire.error_message(f).startswith("authentication") for f in frames), frames


def test_fuzzed_handshakes(served):
    """A server with a secret: no made-up AUTH is accepted, and a client with the secret keeps being served."""
    server, x, expected = served
    with CloudServer(server.model_dir, secret=b"fuzz secret", max_frame=MAX_FRAME) as guarded:
        with GoodClient(guarded.port, x, expected, secret=b"fuzz secret"):
            _fuzz_handshake(guarded.port)
        assert guarded.stats["refused_auth"] > 0 and guarded.client_count <= 1
    assert guarded.stats["internal_errors"] == 0 and guarded.pending_count == 0


def test_header_bytes_follow_the_documented_layout():
    """A frame read back byte by byte at the offsets the protocol docstring gives (not through its struct):
    magic 0:4, version 4, type 5, dtype 6, ndim 7, request id 8:16, six uint32 dims 16:40, length 40:44."""
    payload = bytes(range(24))
    frame = wire.pack(MsgType.REQUEST, 0x0102030405060708, payload, wire.DType.FP16, (2, 3, 2))
    le = lambda b: int.from_bytes(b, "little")  # noqa: E731
    assert frame[:4] == b"SPLT" and frame[4] == wire.VERSION and frame[5] == int(MsgType.REQUEST)
    assert frame[6] == int(wire.DType.FP16) and frame[7] == 3 and le(frame[8:16]) == 0x0102030405060708
    assert [le(frame[16 + 4 * i:20 + 4 * i]) for i in range(6)] == [2, 3, 2, 0, 0, 0]
    assert le(frame[40:44]) == len(payload) and frame[44:] == payload and len(frame) == 44 + len(payload)


# -- variable-size codecs ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def variable_served(digits32, tmp_path_factory):
    """Servers for int8-zlib at k = 3 and png at k = 0: codec -> (server, valid input, expected logits)."""
    images, _ = digits32.arrays("test")
    inputs = {"int8-zlib": (3, np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)),
              "png": (0, images[:1].numpy())}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = zoo.build("resnet18", 10, 32).eval()
        exports = {}
        for codec, (k, x) in inputs.items():
            out = tmp_path_factory.mktemp(codec)
            exports[codec] = out, export_split(Candidate(k, 0.0, model, None, {}, {}), digits32, out,
                                               threshold=None, codec=codec, samples=4)
    finally:
        torch.set_num_threads(before)
    served = {}
    with contextlib.ExitStack() as stack:
        for codec, (out, m) in exports.items():
            x = inputs[codec][1]
            sent = codecs.decode(codecs.encode(x, codec), codec, x.shape)  # what the server will decode
            tail_input = mf.normalize(sent, m) if m["k"] == 0 else sent
            expected = onnx_io.run(onnx_io.session(out / "tail.onnx"), tail_input)[0]
            served[codec] = stack.enter_context(CloudServer(out)), x, expected
        yield served
    assert all(server.stats["internal_errors"] == 0 for server, _, _ in served.values())


def _bad_payloads(codec: str, x: np.ndarray) -> list[tuple[str, bytes, tuple[int, ...], str]]:
    """(what, payload, shape, expected message) of requests the server must refuse but survive."""
    good = codecs.encode(x, codec)
    most = codecs.max_payload_bytes(x.size, codec)
    cases = [("empty", b"", x.shape, f"needs 1 to {most} payload bytes, got 0"),
             ("past the bound", bytes(most + 1), x.shape, f"needs 1 to {most} payload bytes, got {most + 1}"),
             ("garbage", b"\x78\x9c garbage" * 3, x.shape, "does not decode"),
             ("truncated", good[:len(good) // 2], x.shape, "does not decode")]
    if codec == "int8-zlib":
        bomb = zlib.compress(bytes(2 << 20), 9)  # 2 MiB of zeros under the 2140-byte bound: inflating is capped
        assert len(bomb) <= most
        cases += [("zlib bomb", bomb, x.shape, r"inflates to 2057\+ bytes, expected 2056"),
                  ("another shape", codecs.encode(x[:, :64], codec), x.shape, "inflates to 1032 bytes, expected 2056")]
    else:
        other = np.ascontiguousarray(x[..., :31])
        cases += [("another size", codecs.encode(other, "png"), x.shape, "png image is 31x32, expected 32x32"),
                  ("another format", codecs.encode(x, "jpeg90"), x.shape, "not a valid PNG image")]
    return cases


def _expect(frame: wire.Frame | None, rid: int, message: str) -> None:
    assert frame is not None and frame.type == MsgType.ERROR and frame.request_id == rid, frame
    assert re.search(message, wire.error_message(frame)), wire.error_message(frame)


@pytest.mark.parametrize("codec", ["int8-zlib", "png"])
def test_variable_payload_faults_keep_the_connection(variable_served, codec):
    server, x, expected = variable_served[codec]
    dtype = wire.CODEC_DTYPES[codec]
    bad_before = server.stats["bad_requests"] + server.stats["bad_frames"]
    cases = _bad_payloads(codec, x)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        handshake(s)
        for rid, (what, payload, shape, message) in enumerate(cases, start=100):
            s.sendall(wire.pack(MsgType.REQUEST, rid, payload, dtype, shape))
            _expect(wire.read_frame(s), rid, message)
            s.sendall(wire.encode(x, codec).frame(rid + 1000))  # the same connection still serves
            reply = wire.parse_reply(wire.read_frame(s))
            assert reply.request_id == rid + 1000, what
            np.testing.assert_allclose(reply.logits, expected, rtol=1e-5, atol=1e-5)
    assert server.stats["bad_requests"] + server.stats["bad_frames"] - bad_before == len(cases)


@st.composite
def variable_payloads(draw, good: bytes, most: int) -> bytes:
    """Random bytes, or the valid payload cut, or with a few bytes changed: within the length bound."""
    kind = draw(st.sampled_from(["random", "cut", "flip"]))
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=min(most, 400)))
    if kind == "cut":
        return good[:draw(st.integers(1, len(good) - 1))]
    data = bytearray(good)
    for i, v in draw(st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)), min_size=1, max_size=4)):
        data[i] = v
    return bytes(data)


def _fuzz_variable(port: int, codec: str, x: np.ndarray):
    good = codecs.encode(x, codec)
    dtype, most = wire.CODEC_DTYPES[codec], codecs.max_payload_bytes(x.size, codec)

    @settings(FUZZ, max_examples=150)
    @given(payload=variable_payloads(good, most))
    def run(payload):
        """One answer for the request (an ERROR, or a REPLY where a changed byte still decodes), then a PONG."""
        frames, end = talk(port, wire.pack(MsgType.REQUEST, 77, payload, dtype, x.shape) + wire.pack(MsgType.PING, 78))
        assert [f.request_id for f in frames] == [77, 78] and end == "closed", (frames, end)
        assert frames[0].type in (MsgType.ERROR, MsgType.REPLY) and frames[1].type == MsgType.PONG
        if frames[0].type == MsgType.REPLY:
            assert wire.parse_reply(frames[0]).logits.shape == (1, 10)

    run()


@pytest.mark.parametrize("codec", ["int8-zlib", "png"])
def test_fuzzed_variable_payloads(variable_served, codec):
    server, x, expected = variable_served[codec]
    with GoodClient(server.port, x, expected, codec) as good:
        _fuzz_variable(server.port, codec, x)
    assert good.ok > 0 and server.stats["bad_requests"] > 0

"""runtime.protocol: frames round-trip, codecs stay within compress.codec.max_error, faults are caught."""
from __future__ import annotations

import socket
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from compress import codec as codecs
from runtime import protocol as wire
from runtime.protocol import DType, MsgType, ProtocolError


def _through_socket(data: bytes, max_frame: int = wire.DEFAULT_MAX_FRAME, session: wire.Session | None = None):
    a, b = socket.socketpair()
    try:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        return wire.read_frame(b, max_frame, session=session)
    finally:
        a.close()
        b.close()


shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)
floats = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=150, deadline=None)
@given(codec=st.sampled_from(codecs.CODECS), x=hnp.arrays(np.float32, shapes, elements=floats))
def test_every_codec_roundtrips_within_max_error(codec, x):
    frame = _through_socket(wire.request(7, x, codec))
    assert (frame.type, frame.request_id, frame.dtype, frame.shape) == (MsgType.REQUEST, 7, wire.CODEC_DTYPES[codec],
                                                                        x.shape)
    assert len(frame.payload) == codecs.payload_bytes(x.size, codec)
    got = wire.tensor(frame)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert float(np.max(np.abs(got - x))) <= codecs.max_error(x, codec)


@settings(max_examples=50, deadline=None)
@given(x=hnp.arrays(np.uint8, shapes))
def test_uint8_images_are_sent_raw(x):
    frame = _through_socket(wire.request(1, x, None))
    assert frame.dtype == DType.UINT8 and len(frame.payload) == x.size
    np.testing.assert_array_equal(wire.tensor(frame), x)


def test_every_codec_has_one_dtype_and_every_dtype_one_decoder():
    assert set(wire.CODEC_DTYPES) == set(codecs.ALL_CODECS)
    assert set(wire.DTYPE_CODECS) == set(DType) - {DType.NONE}
    assert {wire.CODEC_DTYPES[c] for c in ("jpeg90", "jpeg75", "jpeg50")} == {DType.JPEG}  # quality: encoder only
    assert wire.VARIABLE_DTYPES == {DType.INT8_ZLIB, DType.PNG, DType.JPEG, DType.WEBP}
    assert [int(d) for d in DType][:5] == [0, 1, 2, 3, 4]  # the codes already on the wire keep their numbers
    assert wire.payload_limits(DType.INT8, (2, 3)) == (14, 14)
    assert wire.payload_limits(DType.INT8_ZLIB, (2, 3)) == (1, codecs.max_payload_bytes(6, "int8-zlib"))
    with pytest.raises(ValueError, match="variable size"):
        wire.payload_size(DType.PNG, (1, 3, 4, 4))


@settings(max_examples=100, deadline=None)
@given(x=hnp.arrays(np.float32, shapes, elements=floats))
def test_int8_zlib_roundtrips_like_int8(x):
    enc = wire.encode(x, "int8-zlib")
    frame = _through_socket(enc.frame(3))
    assert (frame.dtype, frame.shape, frame.payload) == (DType.INT8_ZLIB, x.shape, enc.payload)
    assert 1 <= len(frame.payload) <= codecs.max_payload_bytes(x.size, "int8-zlib")
    got = wire.tensor(frame)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(got, wire.tensor(_through_socket(wire.request(3, x, "int8"))))


images = st.tuples(st.sampled_from([1, 3]), st.integers(1, 20), st.integers(1, 20)).flatmap(
    lambda s: hnp.arrays(np.uint8, (1,) + s))


@settings(max_examples=60, deadline=None)
@given(img=images, codec=st.sampled_from(codecs.INPUT_CODECS))
def test_input_codecs_roundtrip_to_the_uint8_image(img, codec):
    frame = _through_socket(wire.request(4, img, codec))
    assert (frame.type, frame.request_id, frame.dtype, frame.shape) == (MsgType.REQUEST, 4, wire.CODEC_DTYPES[codec],
                                                                        img.shape)
    got = wire.tensor(frame)
    assert got.dtype == np.uint8 and got.shape == img.shape
    if codec in ("raw", "png"):
        np.testing.assert_array_equal(got, img)  # lossless
    if codec == "raw":
        assert wire.encode(img, "raw") == wire.encode(img, None)


@settings(max_examples=100, deadline=None)
@given(type_=st.sampled_from(list(MsgType)), rid=st.integers(0, 2 ** 64 - 1),
       shape=st.lists(st.integers(0, 2 ** 32 - 1), max_size=wire.MAX_DIMS).map(tuple), payload=st.binary(max_size=64))
def test_header_roundtrip(type_, rid, shape, payload):
    if type_ == MsgType.REQUEST:
        type_ = MsgType.PING  # a REQUEST's payload must fit its shape; that is tested above
    frame = _through_socket(wire.pack(type_, rid, payload, DType.FP32, shape))
    assert (frame.type, frame.request_id, frame.dtype, frame.shape, frame.payload) == (type_, rid, DType.FP32,
                                                                                       shape, payload)


def test_reply_roundtrip():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]], dtype=np.float32)
    reply = wire.parse_reply(_through_socket(wire.reply(9, logits, 1.25)))
    assert reply.request_id == 9 and reply.server_ms == 1.25
    np.testing.assert_array_equal(reply.logits, logits)
    np.testing.assert_array_equal(reply.classes, [1, 0])


def test_error_frame_is_one_line_and_raises_remote_error():
    frame = _through_socket(wire.error(3, "bad\nthing " + "x" * 5000))
    assert frame.type == MsgType.ERROR
    message = wire.error_message(frame)
    assert "\n" not in message and len(message) == wire.MAX_ERROR_CHARS and message.startswith("bad thing")
    with pytest.raises(wire.RemoteError, match="bad thing"):
        wire.parse_reply(frame)


def _header(magic=wire.MAGIC, version=wire.VERSION, type_=MsgType.REQUEST, dtype=DType.FP32, ndim=1,
            rid=5, dims=(4, 0, 0, 0, 0, 0), length=16) -> bytes:
    return wire.HEADER.pack(magic, version, int(type_), int(dtype), ndim, rid, *dims, length)


@pytest.mark.parametrize("header, message", [
    (_header(magic=b"HTTP"), "bad magic"),
    (_header(version=1), "unsupported protocol version 1"),
    (_header(length=1 << 20), "exceeds the maximum"),
])
def test_fatal_header_faults(header, message):
    # only the header is sent: the size check must not wait for a payload that never comes
    with pytest.raises(ProtocolError, match=message) as e:
        _through_socket(header, max_frame=1 << 16)
    assert e.value.fatal


@pytest.mark.parametrize("header, payload, message", [
    (_header(type_=99), bytes(16), "unknown message type 99"),
    (_header(dtype=42), bytes(16), "unknown dtype code 42"),
    (_header(ndim=7), bytes(16), "ndim 7 exceeds"),
    (_header(dims=(4, 0, 3, 0, 0, 0)), bytes(16), "non-zero dims past ndim"),
    (_header(length=12), bytes(12), "needs 16 payload bytes, got 12"),
    (_header(dtype=DType.NONE), bytes(16), "must carry a tensor"),
    (_header(ndim=0, dims=(0,) * 6, length=0), b"", "non-empty shape"),
    (_header(dtype=DType.INT8, length=4), bytes(4), "needs 12 payload bytes"),
])
def test_non_fatal_faults_keep_the_stream(header, payload, message):
    with pytest.raises(ProtocolError, match=message) as e:
        _through_socket(header + payload)
    assert not e.value.fatal and e.value.request_id == 5


ZLIB_MAX = codecs.max_payload_bytes(4, "int8-zlib")
PNG_SHAPE = (1, 3, 8, 8)
PNG_MAX = codecs.max_payload_bytes(192, "png")


@pytest.mark.parametrize("dtype, dims, length, message", [
    (DType.INT8_ZLIB, (4, 0, 0, 0, 0, 0), 0, rf"INT8_ZLIB tensor of shape \(4,\) needs 1 to {ZLIB_MAX} payload bytes"),
    (DType.INT8_ZLIB, (4, 0, 0, 0, 0, 0), ZLIB_MAX + 1, f"needs 1 to {ZLIB_MAX} payload bytes, got {ZLIB_MAX + 1}"),
    (DType.PNG, PNG_SHAPE + (0, 0), 0, f"PNG tensor of shape .* needs 1 to {PNG_MAX} payload bytes, got 0"),
    (DType.PNG, PNG_SHAPE + (0, 0), PNG_MAX + 1, f"needs 1 to {PNG_MAX} payload bytes, got {PNG_MAX + 1}"),
    (DType.WEBP, PNG_SHAPE + (0, 0), PNG_MAX + 1, f"needs 1 to {PNG_MAX} payload bytes, got {PNG_MAX + 1}"),
])
def test_variable_payloads_empty_or_past_their_bound_are_refused(dtype, dims, length, message):
    ndim = sum(1 for d in dims if d)
    with pytest.raises(ProtocolError, match=message) as e:
        _through_socket(_header(dtype=dtype, ndim=ndim, dims=dims, length=length) + bytes(length))
    assert not e.value.fatal and e.value.request_id == 5


def _frame(dtype: DType, shape: tuple[int, ...], payload: bytes) -> wire.Frame:
    return _through_socket(wire.pack(MsgType.REQUEST, 9, payload, dtype, shape))  # passes validate


def _png(shape=PNG_SHAPE) -> bytes:
    return codecs.encode(np.arange(int(np.prod(shape)), dtype=np.uint8).reshape(shape), "png")


@pytest.mark.parametrize("dtype, shape, payload, message", [
    (DType.INT8_ZLIB, (4,), b"not zlib", r"INT8_ZLIB payload of shape \(4,\) does not decode: .*not a zlib stream"),
    (DType.INT8_ZLIB, (4,), codecs.encode(np.ones(4, np.float32), "int8-zlib")[:-2], "inflates to"),
    (DType.INT8_ZLIB, (4,), codecs.encode(np.ones(3, np.float32), "int8-zlib"), "inflates to 11 bytes, expected 12"),
    (DType.PNG, PNG_SHAPE, b"\x89PNG garbage", "PNG payload .* does not decode: .*not a valid PNG image"),
    (DType.PNG, PNG_SHAPE, _png()[:40], "not a valid PNG image"),
    (DType.PNG, PNG_SHAPE, _png((1, 3, 8, 9)), "png image is 9x8, expected 8x8"),
    (DType.JPEG, PNG_SHAPE, _png(), "not a valid JPEG image"),
    (DType.PNG, (2, 3, 8, 8), _png(), r"needs a \(1, C, H, W\) or \(C, H, W\) shape"),
])
def test_payloads_that_do_not_decode_are_non_fatal(dtype, shape, payload, message):
    frame = _frame(dtype, shape, payload)
    with pytest.raises(ProtocolError, match=message) as e:
        wire.tensor(frame)
    assert not e.value.fatal and e.value.request_id == 9


def zlib_bomb(inflated: int) -> bytes:
    """`inflated` zero bytes as one zlib stream, built a MiB at a time (the test never holds them)."""
    z, chunk = zlib.compressobj(9), bytes(1 << 20)
    return b"".join(z.compress(chunk) for _ in range(inflated >> 20)) + z.flush()


def test_zlib_bomb_is_refused_without_inflating_it():
    shape = (1, 64, 32, 32)  # int8-zlib accepts up to ~66 KB: a 64 MiB bomb fits
    bomb = zlib_bomb(64 << 20)
    assert len(bomb) <= codecs.max_payload_bytes(65536, "int8-zlib")
    frame = _frame(DType.INT8_ZLIB, shape, bomb)
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match=r"inflates to 65545\+ bytes, expected 65544") as e:
            wire.tensor(frame)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not e.value.fatal
    assert peak < 1 << 20, f"decoding the bomb allocated {peak} bytes"  # inflating it would take 64 MiB


def test_huge_shape_does_not_allocate():
    header = _header(ndim=6, dims=(2 ** 32 - 1,) * 6, length=8)
    with pytest.raises(ProtocolError, match="payload bytes"):
        _through_socket(header + bytes(8))


def test_truncation_and_clean_eof():
    data = wire.request(1, np.zeros((1, 4), np.float32), "fp32")
    assert _through_socket(b"") is None
    with pytest.raises(ConnectionError):
        _through_socket(data[:10])
    with pytest.raises(ConnectionError):
        _through_socket(data[:-1])


def test_header_layout_is_fixed():
    assert wire.HEADER.size == 44
    raw = wire.pack(MsgType.PING, 0x0102030405060708)
    assert raw[:4] == b"SPLT" and struct.unpack_from("<Q", raw, 8)[0] == 0x0102030405060708


def test_mutual_proofs_are_bound_to_both_nonces_and_a_direction():
    ns, nc = wire.nonce(), wire.nonce()
    assert len(ns) == wire.NONCE_BYTES and ns != nc
    proof = wire.client_proof(b"key", ns, nc)
    assert len(proof) == wire.PROOF_BYTES and wire.same(proof, wire.client_proof(b"key", ns, nc))
    assert not wire.same(proof, wire.client_proof(b"other", ns, nc))
    assert not wire.same(proof, wire.client_proof(b"key", wire.nonce(), nc))  # another server challenge
    assert not wire.same(proof, wire.client_proof(b"key", ns, wire.nonce()))  # another client nonce
    assert not wire.same(proof, wire.server_proof(b"key", ns, nc))  # a reflected client proof is no server proof
    assert not wire.same(proof, proof[:-1])
    with pytest.raises(ValueError, match="nonces"):
        wire.client_proof(b"key", ns[:-1], nc)


def _session_pair(secret: bytes = b"key") -> tuple[wire.Session, wire.Session]:
    ns, nc = wire.nonce(), wire.nonce()
    return wire.Session.client(secret, ns, nc), wire.Session.server(secret, ns, nc)


def test_session_tags_frames_per_direction():
    client, server = _session_pair()
    frames = [wire.pack(MsgType.PING, i) for i in range(3)]
    sealed = [client.seal(f) for f in frames]
    for f, s in zip(frames, sealed):
        assert len(s) == len(f) + wire.TAG_BYTES
        got = _through_socket(s, session=server)
        assert got.type == MsgType.PING
    reply = server.seal(wire.pack(MsgType.PONG, 0))
    assert _through_socket(reply, session=client).type == MsgType.PONG


@pytest.mark.parametrize("attack", ["untagged", "altered", "replayed", "reordered", "reflected", "other key"])
def test_session_refuses_frames_it_did_not_get_from_its_peer(attack):
    client, server = _session_pair()
    first, second = client.seal(wire.pack(MsgType.PING, 1)), client.seal(wire.pack(MsgType.PING, 2))
    if attack == "untagged":
        data = wire.pack(MsgType.PING, 1) + bytes(wire.TAG_BYTES)
    elif attack == "altered":
        data = first[:8] + b"\x09" + first[9:]  # the request id
    elif attack == "replayed":
        _through_socket(first, session=server)
        data = first
    elif attack == "reordered":
        data = second
    elif attack == "reflected":  # the server's own frame sent back to it
        data = server.seal(wire.pack(MsgType.PING, 1))
    else:
        data = _session_pair(b"not the key")[0].seal(wire.pack(MsgType.PING, 1))
    with pytest.raises(wire.TagError, match="frame authentication failed") as e:
        _through_socket(data, session=server)
    assert e.value.fatal


def test_reads_have_an_absolute_deadline():
    """A peer that trickles bytes cannot stretch a read past its deadline."""
    import threading
    import time

    a, b = socket.socketpair()
    data = wire.pack(MsgType.PING, 1)
    stop = threading.Event()

    def drip():
        for byte in data:
            if stop.wait(0.05):
                return
            try:
                a.sendall(bytes([byte]))
            except OSError:
                return

    t = threading.Thread(target=drip)
    t.start()
    try:
        with pytest.raises(TimeoutError):
            wire.read_frame(b, deadline=time.monotonic() + 0.3)  # the drip takes 2.2 s, each gap only 0.05 s
    finally:
        stop.set()
        t.join()
        a.close()
        b.close()


def test_secret_file(tmp_path):
    (tmp_path / "s").write_bytes(b"  s3cret\n")
    assert wire.read_secret(str(tmp_path / "s")) == b"s3cret"
    (tmp_path / "e").write_bytes(b"\n")
    with pytest.raises(ValueError, match="is empty"):
        wire.read_secret(str(tmp_path / "e"))

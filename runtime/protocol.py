"""The wire protocol between edge and cloud: fixed binary header, raw little-endian payload, no pickle.

Every message is one frame::

    header  <4s B B B B Q 6I I>  (44 bytes, little-endian)
            magic b"SPLT", version, message type, dtype code, ndim, request id,
            shape (6 x uint32; dims past ndim are 0), payload length
    payload `length` raw bytes

A connection opens with a handshake, which the server must see completed within its handshake
deadline (an absolute one: trickling bytes does not extend it):

1. server -> HELLO: a 32-byte server nonce Ns when a shared secret is required, else empty;
2. client -> AUTH: with a secret, a 32-byte client nonce Nc and the client proof
   HMAC-SHA256(secret, "splitopt/2 client proof" | Ns | Nc); without one, empty;
3. server -> AUTH_OK: with a secret, the server proof
   HMAC-SHA256(secret, "splitopt/2 server proof" | Ns | Nc), else empty; or an ERROR and a closed
   connection.

So each side proves the secret over both nonces, under its own label: an answer cannot be reflected
back or replayed.  A client with a secret refuses a HELLO without a nonce (a downgrade) and an
AUTH_OK whose proof is wrong, before it sends anything else.  With a secret, every later frame in
either direction is followed by a tag, HMAC-SHA256(key, frame counter | header | payload) cut to
TAG_BYTES = 16 bytes, under a per-direction key HMAC-SHA256(secret, "splitopt/2 <direction> frames" | Ns | Nc):
a relay that forwarded the handshake can neither inject, alter, reorder nor replay frames.  (TLS
adds confidentiality; the secret and TLS are independent options.)  Then the client sends REQUESTs
(one tensor each) and gets one REPLY or ERROR per request, with the same request id.

Payloads by message type:

- REQUEST: the tensor, encoded by its dtype (each dtype names the one `compress.codec` decoder):

  =========  ====  =============================================  ======================
  dtype      code  payload                                        length
  =========  ====  =============================================  ======================
  UINT8      1     raw image bytes (k = 0, codec "raw")           numel
  FP32/FP16  2, 3  plain little-endian casts                      4 / 2 x numel
  INT8       4     float32 offset and scale, then uint8 codes     numel + 8
  INT8_ZLIB  5     the INT8 payload through zlib                  1 .. max_payload_bytes
  PNG        6     a PNG image (k = 0; grey sent as one channel)  1 .. max_payload_bytes
  JPEG       7     a JPEG image (k = 0; any quality)              1 .. max_payload_bytes
  WEBP       8     a WebP image (k = 0; any quality)              1 .. max_payload_bytes
  =========  ====  =============================================  ======================

  Variable lengths are checked against `compress.codec.max_payload_bytes` with the header; a payload
  that then fails to decode (bad zlib or image, wrong decoded size, a zlib bomb: inflating is capped
  at the expected size) is a non-fatal error of that request.
- REPLY: dtype FP32, shape (n, classes); payload = float64 server compute ms, n int64 classes,
  then the float32 logits.  An edge server (runtime.relay) appends a 28-byte trailer: b"TIER" and three
  float64, its own ms, the edge-to-cloud transfer ms and the cloud's ms (which sum to the server ms).
  A cloud server never sends it, so a two-tier reply is unchanged.  When the edge's own exit gave
  answers (an exit placed on the edge), the trailer is b"TIEF", the same three float64 and one uint8 of
  flags (29 bytes): EDGE_EXIT (1), the exit answered by its threshold and the cloud was not asked;
  EXIT_FALLBACK (2), the exit answered because the cloud failed.  For a request of n > 1 samples a flag
  says that some of its answers came so.  Flags 0 are sent as a b"TIER" trailer, so a reply without
  them stays readable by a reader of the 28-byte trailer only; a reader keeps bits it does not know.
- ERROR: a utf-8 message.  HELLO, AUTH, AUTH_OK: as above.  PING/PONG: empty.
  SINK: any bytes (for measuring the uplink); the server answers SINK_ACK once it has read them.

Header faults that lose the frame boundary (magic, version, a length above the maximum frame) and a
wrong tag are fatal: the peer gets an ERROR and the connection closes.  Anything else is reported for
that request id and the connection stays in sync.
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import math
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from compress import codec as codecs

MAGIC = b"SPLT"
VERSION = 2  # 2: mutual authentication and frame tags (1 had a one-way challenge)
MAX_DIMS = 6
HEADER = struct.Struct("<4sBBBBQ6II")
DEFAULT_MAX_FRAME = 64 << 20  # 64 MiB: a 224 px fp32 feature map of any zoo model fits many times over
NONCE_BYTES = 32
PROOF_BYTES = 32  # HMAC-SHA256
TAG_BYTES = 16  # frame tags: HMAC-SHA256 cut to 128 bits
MAX_ERROR_CHARS = 1000
_REPLY_PREFIX = struct.Struct("<d")
_TIERS = struct.Struct("<4sddd")  # an edge's REPLY trailer: magic, edge ms, edge-to-cloud ms, cloud ms
TIERS_MAGIC = b"TIER"
_FLAGGED_TIERS = struct.Struct("<4sdddB")  # the same and a flags byte: how the edge answered
FLAGGED_TIERS_MAGIC = b"TIEF"
EDGE_EXIT = 1  # answered by the edge's exit (confidence >= t): the cloud was not asked
EXIT_FALLBACK = 2  # answered by the edge's exit because the cloud failed
MAX_FLAGS = 0xFF


class MsgType(enum.IntEnum):
    HELLO = 1
    AUTH = 2
    AUTH_OK = 3
    REQUEST = 4
    REPLY = 5
    ERROR = 6
    PING = 7
    PONG = 8
    SINK = 9
    SINK_ACK = 10


class DType(enum.IntEnum):
    NONE = 0
    UINT8 = 1
    FP32 = 2
    FP16 = 3
    INT8 = 4  # compress.codec's affine 8-bit code: float32 offset and scale, then uint8 codes
    INT8_ZLIB = 5  # the INT8 payload through zlib: variable size
    PNG = 6  # image codecs (k = 0): variable size, decoded to the uint8 image
    JPEG = 7  # one code per format: the quality is the encoder's choice, the decoder does not need it
    WEBP = 8


# every codec name -> the dtype that carries it; "raw" (and None in `encode`) is the uint8 image
CODEC_DTYPES = {"fp32": DType.FP32, "fp16": DType.FP16, "int8": DType.INT8, "int8-zlib": DType.INT8_ZLIB,
                "raw": DType.UINT8, **{c: DType[fmt] for c, (fmt, _) in codecs.IMAGE_FORMATS.items()}}
# dtype -> the codec name whose decoder reads it (for JPEG and WebP any quality decodes alike)
DTYPE_CODECS = {dt: next(c for c, d in CODEC_DTYPES.items() if d == dt) for dt in dict.fromkeys(CODEC_DTYPES.values())}
VARIABLE_DTYPES = frozenset(dt for dt, c in DTYPE_CODECS.items() if codecs.is_variable(c))


class ProtocolError(ValueError):
    """A malformed frame; `fatal` when the frame boundary is lost and the connection must close."""

    def __init__(self, message: str, request_id: int = 0, fatal: bool = False):
        super().__init__(message)
        self.request_id = request_id
        self.fatal = fatal


class TagError(ProtocolError):
    """A frame whose tag is wrong: not from the authenticated peer, altered, replayed or out of order."""

    def __init__(self, message: str, request_id: int = 0):
        super().__init__(message, request_id, fatal=True)


class RemoteError(RuntimeError):
    """The peer answered with an ERROR frame."""

    def __init__(self, message: str, request_id: int = 0):
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True)
class Frame:
    type: MsgType
    request_id: int
    dtype: DType
    shape: tuple[int, ...]
    payload: bytes


@dataclass(frozen=True)
class Reply:
    request_id: int
    logits: np.ndarray  # (n, classes) float32
    classes: np.ndarray  # (n,) int64
    server_ms: float
    tiers: tuple[float, float, float] | None = None  # from an edge server: (edge, edge-to-cloud, cloud) ms
    flags: int = 0  # from an edge server: EDGE_EXIT, EXIT_FALLBACK (0 for a reply without them)


def payload_limits(dtype: DType, shape: tuple[int, ...]) -> tuple[int, int]:
    """(least, most) payload bytes of a tensor frame of this dtype and shape; equal for fixed-size dtypes."""
    if dtype not in DTYPE_CODECS:
        raise ValueError(f"dtype {dtype!r} carries no tensor")
    numel, codec = math.prod(shape), DTYPE_CODECS[dtype]
    if dtype in VARIABLE_DTYPES:
        return 1, codecs.max_payload_bytes(numel, codec)
    size = codecs.payload_bytes(numel, codec)
    return size, size


def payload_size(dtype: DType, shape: tuple[int, ...]) -> int:
    """Payload bytes of a fixed-size tensor frame of this dtype and shape."""
    least, most = payload_limits(dtype, shape)
    if least != most:
        raise ValueError(f"dtype {dtype.name} has a variable size (up to {most} bytes for shape {shape})")
    return least


def pack(type: MsgType, request_id: int = 0, payload: bytes = b"", dtype: DType = DType.NONE,
         shape: tuple[int, ...] = ()) -> bytes:
    """One frame as bytes (header and payload)."""
    if len(shape) > MAX_DIMS:
        raise ValueError(f"a frame carries at most {MAX_DIMS} dims, got {len(shape)}")
    dims = tuple(int(d) for d in shape) + (0,) * (MAX_DIMS - len(shape))
    return HEADER.pack(MAGIC, VERSION, int(type), int(dtype), len(shape), int(request_id), *dims,
                       len(payload)) + bytes(payload)


class Header(NamedTuple):
    type: int
    request_id: int
    dtype: int
    ndim: int
    dims: tuple[int, ...]  # all MAX_DIMS of them
    length: int


def unpack_header(buf: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> Header:
    """Parse a header; only the fatal faults raise here.

    The other checks wait until the payload is read (`validate`), so the stream stays in sync.
    """
    magic, version, type_, dtype, ndim, rid, *rest = HEADER.unpack(buf)
    header = Header(type_, rid, dtype, ndim, tuple(rest[:MAX_DIMS]), rest[MAX_DIMS])
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r} (expected {MAGIC!r})", rid, fatal=True)
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (this side speaks {VERSION})", rid, fatal=True)
    if header.length > max_frame:
        raise ProtocolError(f"frame payload of {header.length} bytes exceeds the maximum of {max_frame}", rid,
                            fatal=True)
    return header


def validate(header: Header, payload: bytes) -> Frame:
    """Check the non-fatal header fields against the payload and build the Frame."""
    rid, ndim, dims = header.request_id, header.ndim, header.dims
    try:
        mtype = MsgType(header.type)
    except ValueError:
        raise ProtocolError(f"unknown message type {header.type}", rid) from None
    try:
        dt = DType(header.dtype)
    except ValueError:
        raise ProtocolError(f"unknown dtype code {header.dtype}", rid) from None
    if ndim > MAX_DIMS:
        raise ProtocolError(f"ndim {ndim} exceeds the maximum of {MAX_DIMS}", rid)
    if any(dims[ndim:]):
        raise ProtocolError(f"shape has non-zero dims past ndim={ndim}: {dims}", rid)
    shape = tuple(dims[:ndim])
    if mtype == MsgType.REQUEST:
        if dt == DType.NONE:
            raise ProtocolError("a REQUEST must carry a tensor (dtype NONE given)", rid)
        if ndim == 0 or 0 in shape:
            raise ProtocolError(f"a REQUEST tensor needs a non-empty shape, got {shape}", rid)
        least, most = payload_limits(dt, shape)
        if not least <= len(payload) <= most:
            needs = f"{least}" if least == most else f"{least} to {most}"
            raise ProtocolError(f"{dt.name} tensor of shape {shape} needs {needs} payload bytes, "
                                f"got {len(payload)}", rid)
    return Frame(mtype, rid, dt, shape, payload)


def recv_exact(sock: socket.socket, n: int, deadline: float | None = None,
               preallocate: bool = False) -> bytes | bytearray | None:
    """Exactly n bytes; None on EOF before the first byte; ConnectionError on EOF inside.

    `deadline` (time.monotonic) bounds the whole read, not each recv: a peer that trickles a byte at a
    time cannot stretch it (TimeoutError).  Without `preallocate` the buffer grows with what arrives,
    not with what a header claims, so a peer that announces a large frame and sends nothing costs no
    memory; the server preallocates only bytes it has reserved from its memory budget, and reads
    into them in place (no growth, no copy).
    """
    buf = bytearray(n) if preallocate else bytearray()
    view = memoryview(buf) if preallocate else None
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out after {got} of {n} bytes")
            sock.settimeout(left)
        if view is not None:
            k = sock.recv_into(view[got:], min(n - got, 1 << 20))
        else:
            chunk = sock.recv(min(n - got, 1 << 20))
            buf += chunk
            k = len(chunk)
        if not k:
            if not got:
                return None
            raise ConnectionError(f"connection closed after {got} of {n} bytes")
        got += k
    return buf if preallocate else bytes(buf)


def read_frame(sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME, deadline: float | None = None,
               session: "Session | None" = None) -> Frame | None:
    """The next frame; None on a clean EOF between frames.  Raises ProtocolError, ConnectionError or
    TimeoutError (past `deadline`, see recv_exact).  With a `session` the frame's tag is read and
    checked: a wrong one is a fatal ProtocolError."""
    head = recv_exact(sock, HEADER.size, deadline)
    if head is None:
        return None
    header = unpack_header(head, max_frame)  # the size limit is checked before reading the payload
    payload = recv_all(sock, header.length, deadline) if header.length else b""
    if session is not None:
        session.check(head, payload, recv_all(sock, TAG_BYTES, deadline), header.request_id)
    return validate(header, payload)


def recv_all(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    """The rest of a frame: exactly n bytes, where EOF before the first is a ConnectionError too."""
    data = recv_exact(sock, n, deadline)
    if data is None:
        raise ConnectionError(f"connection closed before the rest of a frame ({n} bytes)")
    return data  # type: ignore[return-value]


# -- typed messages ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Encoded:
    """A tensor ready for the wire: encoded once, framed per attempt with a fresh request id."""

    payload: bytes
    dtype: DType
    shape: tuple[int, ...]

    def frame(self, request_id: int) -> bytes:
        return pack(MsgType.REQUEST, request_id, self.payload, self.dtype, self.shape)


def encode(x: np.ndarray, codec: str | None) -> Encoded:
    """`x` under `codec`: None or "raw" send a uint8 tensor as it is (k = 0), an image codec a uint8
    (1, C, H, W) image, a feature codec a float tensor (0 < k < K)."""
    if codec is None or codec == "raw":  # any shape: the raw path predates the image codecs' (C, H, W) rule
        x = np.ascontiguousarray(x, dtype=np.uint8)
        return Encoded(x.tobytes(), DType.UINT8, x.shape)
    return Encoded(codecs.encode(x, codec), CODEC_DTYPES[codecs.check(codec, codecs.ALL_CODECS)],
                   tuple(np.shape(x)))


def request(request_id: int, x: np.ndarray, codec: str | None) -> bytes:
    """A REQUEST frame of `x` (see `encode`)."""
    return encode(x, codec).frame(request_id)


def tensor(frame: Frame) -> np.ndarray:
    """Decode the tensor of a (validated) REQUEST frame: uint8 for UINT8 and the image dtypes, float32
    otherwise.  A payload that does not decode to its shape raises a non-fatal ProtocolError."""
    if frame.dtype == DType.UINT8:
        return np.frombuffer(frame.payload, dtype=np.uint8).reshape(frame.shape)
    if frame.dtype not in DTYPE_CODECS:
        raise ProtocolError(f"dtype {frame.dtype.name} carries no tensor", frame.request_id)
    try:
        return codecs.decode(frame.payload, DTYPE_CODECS[frame.dtype], frame.shape)
    except Exception as e:  # noqa: BLE001 - hostile bytes: Pillow's decoders raise more than ValueError
        raise ProtocolError(f"{frame.dtype.name} payload of shape {frame.shape} does not decode: "
                            f"{type(e).__name__}: {e}", frame.request_id) from None


def reply(request_id: int, logits: np.ndarray, server_ms: float,
          tiers: tuple[float, float, float] | None = None, flags: int = 0) -> bytes:
    """A REPLY frame; `tiers` (an edge server's own, edge-to-cloud and cloud ms) adds the trailer, and
    non-zero `flags` (EDGE_EXIT, EXIT_FALLBACK) make it the flagged one."""
    logits = np.ascontiguousarray(logits, dtype="<f4")
    if logits.ndim != 2:
        raise ValueError(f"logits must be (n, classes), got shape {logits.shape}")
    if not (isinstance(flags, int) and 0 <= flags <= MAX_FLAGS):
        raise ValueError(f"reply flags must be an integer in 0..{MAX_FLAGS}, got {flags!r}")
    if flags and tiers is None:
        raise ValueError("reply flags travel in the tier trailer: give the tiers too")
    classes = logits.argmax(axis=1).astype("<i8")
    payload = _REPLY_PREFIX.pack(float(server_ms)) + classes.tobytes() + logits.tobytes()
    if tiers is not None and flags:
        payload += _FLAGGED_TIERS.pack(FLAGGED_TIERS_MAGIC, *(float(t) for t in tiers), flags)
    elif tiers is not None:
        payload += _TIERS.pack(TIERS_MAGIC, *(float(t) for t in tiers))
    return pack(MsgType.REPLY, request_id, payload, DType.FP32, logits.shape)


def _trailer(rest: bytes) -> tuple[tuple[float, float, float] | None, int] | None:
    """(tiers, flags) of a REPLY's bytes after its logits; None if they are no trailer this side knows."""
    if not rest:
        return None, 0
    for layout, magic in ((_TIERS, TIERS_MAGIC), (_FLAGGED_TIERS, FLAGGED_TIERS_MAGIC)):
        if len(rest) == layout.size and rest[:len(magic)] == magic:
            _, *times = layout.unpack(rest)
            flags = times.pop() if layout is _FLAGGED_TIERS else 0
            return tuple(float(t) for t in times), int(flags)  # type: ignore[return-value]
    return None


def parse_reply(frame: Frame) -> Reply:
    if frame.type == MsgType.ERROR:
        raise RemoteError(error_message(frame), frame.request_id)
    if frame.type != MsgType.REPLY or frame.dtype != DType.FP32 or len(frame.shape) != 2:
        raise ProtocolError(f"expected a REPLY with (n, classes) float32 logits, got {frame.type.name} "
                            f"{frame.dtype.name} {frame.shape}", frame.request_id)
    n, c = frame.shape
    size = _REPLY_PREFIX.size + 8 * n + 4 * n * c
    trailer = _trailer(frame.payload[size:]) if len(frame.payload) >= size else None
    if trailer is None:
        raise ProtocolError(f"REPLY payload of {len(frame.payload)} bytes does not fit shape {frame.shape}",
                            frame.request_id)
    tiers, flags = trailer
    (server_ms,) = _REPLY_PREFIX.unpack_from(frame.payload)
    classes = np.frombuffer(frame.payload, dtype="<i8", count=n, offset=_REPLY_PREFIX.size).astype(np.int64)
    logits = np.frombuffer(frame.payload, dtype="<f4", count=n * c, offset=_REPLY_PREFIX.size + 8 * n).reshape(n, c)
    return Reply(frame.request_id, logits.astype(np.float32), classes, float(server_ms), tiers, flags)


def error(request_id: int, message: str) -> bytes:
    """An ERROR frame; the message is cut to one line of at most MAX_ERROR_CHARS characters."""
    line = " ".join(str(message).split())[:MAX_ERROR_CHARS]
    return pack(MsgType.ERROR, request_id, line.encode("utf-8"))


def error_message(frame: Frame) -> str:
    return frame.payload.decode("utf-8", errors="replace")


# -- authentication ---------------------------------------------------------------------------------

# Domain separation: each HMAC below has its own label, so no value one side computes is ever valid
# as another (a client proof is not a server proof, a handshake proof is not a frame key).
_CLIENT_PROOF, _SERVER_PROOF = b"splitopt/2 client proof", b"splitopt/2 server proof"
_CLIENT_FRAMES, _SERVER_FRAMES = b"splitopt/2 client->server frames", b"splitopt/2 server->client frames"


def nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def _mac(secret: bytes, label: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    if len(server_nonce) != NONCE_BYTES or len(client_nonce) != NONCE_BYTES:
        raise ValueError(f"nonces must be {NONCE_BYTES} bytes")  # fixed lengths keep the concatenation unambiguous
    return hmac.new(secret, label + b"\0" + server_nonce + client_nonce, hashlib.sha256).digest()


def client_proof(secret: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """What the client sends in AUTH after its nonce: it knows the secret."""
    return _mac(secret, _CLIENT_PROOF, server_nonce, client_nonce)


def server_proof(secret: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """What the server sends in AUTH_OK: it knows the secret too (checked by the client before anything else)."""
    return _mac(secret, _SERVER_PROOF, server_nonce, client_nonce)


def same(expected: bytes, got: bytes) -> bool:
    """Constant-time comparison of a proof or tag."""
    return hmac.compare_digest(expected, got)


class Session:
    """Frame tags after a handshake with a secret (see the module doc): one side's view of a connection.

    Each direction has its own key and frame counter, so a frame cannot be reflected, replayed or
    reordered, and one without the key (a relay's) fails its tag.  Not thread-safe: one reader and one
    writer per connection, as the client and the server use it.
    """

    def __init__(self, send_key: bytes, recv_key: bytes):
        self._send_key, self._recv_key = send_key, recv_key
        self._sent = self._received = 0

    @classmethod
    def client(cls, secret: bytes, server_nonce: bytes, client_nonce: bytes) -> "Session":
        return cls(_mac(secret, _CLIENT_FRAMES, server_nonce, client_nonce),
                   _mac(secret, _SERVER_FRAMES, server_nonce, client_nonce))

    @classmethod
    def server(cls, secret: bytes, server_nonce: bytes, client_nonce: bytes) -> "Session":
        return cls(_mac(secret, _SERVER_FRAMES, server_nonce, client_nonce),
                   _mac(secret, _CLIENT_FRAMES, server_nonce, client_nonce))

    @staticmethod
    def _tag(key: bytes, counter: int, head: bytes, payload: bytes = b"") -> bytes:
        mac = hmac.new(key, counter.to_bytes(8, "little"), hashlib.sha256)
        mac.update(head)
        mac.update(payload)
        return mac.digest()[:TAG_BYTES]

    def seal(self, frame: bytes) -> bytes:
        """A packed frame (header and payload) followed by its tag."""
        tag = self._tag(self._send_key, self._sent, frame)
        self._sent += 1
        return frame + tag

    def check(self, head: bytes, payload: bytes, tag: bytes, request_id: int = 0) -> None:
        """Raise TagError (a fatal ProtocolError) unless `tag` is the next received frame's."""
        expected = self._tag(self._recv_key, self._received, head, payload)
        self._received += 1
        if not same(expected, tag):
            raise TagError("frame authentication failed: wrong tag (not from the authenticated peer, altered, "
                           "replayed or out of order)", request_id)


def read_secret(path: str) -> bytes:
    """A shared secret from a file (surrounding whitespace ignored); refuses an empty one."""
    with open(path, "rb") as f:
        secret = f.read().strip()
    if not secret:
        raise ValueError(f"secret file {path!r} is empty")
    return secret

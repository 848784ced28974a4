"""The edge's connection to the cloud: handshake, one request at a time through the emulated link,
retries with exponential back-off, and a fallback signal instead of an exception.

A request that times out, or whose connection fails, is retried (`retries` times, a fresh request id
each, the old connection closed so a late reply can never be taken for a new one).  After a request
has exhausted its retries, later ones skip the network until a back-off (doubling up to
`max_backoff`) has passed and then probe the server again: a dead server costs each sample little
and a restarted one is found again.
"""
from __future__ import annotations

import math
import socket
import ssl
import time

from runtime import link as links
from runtime import protocol as wire
from runtime.protocol import MsgType, ProtocolError, RemoteError


class AuthError(RemoteError):
    """The server refused our credentials, or could not prove its own: a configuration (or security)
    error, not a network fault."""


class Client:
    """One connection to the cloud server, (re)opened on demand, through an emulated `Link`.

    `timeout` bounds connecting, the whole handshake's replies, and each request's whole reply (from
    the frame being sent), however the server trickles its bytes.
    """

    def __init__(self, host: str, port: int, secret: bytes | None = None, tls_ca: str | None = None,
                 timeout: float = 5.0, link: links.Link | None = None, max_frame: int = wire.DEFAULT_MAX_FRAME):
        if not 0 < timeout < math.inf:  # 0 would make the socket non-blocking, None wait forever
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
        self.host, self.port = host, int(port)
        self.secret = secret or None
        self.timeout = timeout
        self.link = link or links.Link()
        self.max_frame = max_frame
        self._tls = ssl.create_default_context(cafile=tls_ca) if tls_ca else None
        self.sock: socket.socket | None = None
        self.session: wire.Session | None = None  # frame tags, after a handshake with a secret
        self._next_id = 1

    def new_id(self) -> int:
        rid, self._next_id = self._next_id, self._next_id + 1
        return rid

    def connect(self) -> None:
        self.close()
        deadline = time.monotonic() + self.timeout
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small frames must not wait for Nagle
            sock = self._tls.wrap_socket(raw, server_hostname=self.host) if self._tls else raw
            self.session = self._handshake(sock, deadline)
        except BaseException:
            self.session = None
            raw.close()
            raise
        self.sock = sock

    def _handshake(self, sock: socket.socket, deadline: float) -> wire.Session | None:
        """HELLO, AUTH, AUTH_OK (runtime.protocol); with a secret the server must prove it before we go on."""
        hello = self._read(sock, deadline)
        if hello.type == MsgType.ERROR:
            raise RemoteError(wire.error_message(hello))  # e.g. server busy
        if hello.type != MsgType.HELLO:
            raise ProtocolError(f"expected HELLO from the server, got {hello.type.name}")
        rid = self.new_id()
        if self.secret is None:
            if hello.payload:
                raise AuthError("the server requires a shared secret (--secret-file)")
            client_nonce = b""
            sock.sendall(wire.pack(MsgType.AUTH, rid))
        else:
            if len(hello.payload) != wire.NONCE_BYTES:  # a downgrade: without our challenge it proves nothing
                raise AuthError("the server did not challenge us, so it cannot prove the shared secret: refusing it "
                                "(a server without --secret-file, or an impostor)")
            client_nonce = wire.nonce()
            sock.sendall(wire.pack(MsgType.AUTH, rid, client_nonce +
                                   wire.client_proof(self.secret, hello.payload, client_nonce)))
        answer = self._read(sock, deadline)
        if answer.type == MsgType.ERROR:
            message = wire.error_message(answer)
            raise AuthError(message) if message.startswith("authentication") else RemoteError(message)
        if answer.type != MsgType.AUTH_OK or answer.request_id != rid:
            raise ProtocolError(f"expected AUTH_OK from the server, got {answer.type.name}")
        if self.secret is None:
            return None
        if not wire.same(wire.server_proof(self.secret, hello.payload, client_nonce), answer.payload):
            raise AuthError("the server failed to prove the shared secret: refusing it (a wrong secret, or an "
                            "impostor)")
        return wire.Session.client(self.secret, hello.payload, client_nonce)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        self.session = None

    def _read(self, sock: socket.socket, deadline: float) -> wire.Frame:
        frame = wire.read_frame(sock, self.max_frame, deadline, self.session)
        if frame is None:
            raise ConnectionError("the server closed the connection")
        return frame

    def exchange(self, data: bytes, rid: int) -> wire.Frame:
        """Send one frame through the link and read the answer with the same request id."""
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        if self.session is not None:
            data = self.session.seal(data)
        self.sock.settimeout(self.timeout)  # reads leave a deadline's remainder behind
        self.link.send(self.sock, data)
        frame = self._read(self.sock, time.monotonic() + self.timeout)
        self.link.received()
        if frame.request_id != rid:
            raise ProtocolError(f"reply for request {frame.request_id} while waiting for {rid}")
        return frame

    def infer(self, tensor: wire.Encoded) -> wire.Reply:
        rid = self.new_id()
        return wire.parse_reply(self.exchange(tensor.frame(rid), rid))

    def ping(self) -> float:
        rid = self.new_id()
        start = time.perf_counter()
        self._expect(self.exchange(wire.pack(MsgType.PING, rid), rid), MsgType.PONG)
        return time.perf_counter() - start

    def sink(self, nbytes: int) -> float:
        rid = self.new_id()
        data = wire.pack(MsgType.SINK, rid, bytes(nbytes))
        start = time.perf_counter()
        self._expect(self.exchange(data, rid), MsgType.SINK_ACK)
        return time.perf_counter() - start

    @staticmethod
    def _expect(frame: wire.Frame, kind: MsgType) -> None:
        if frame.type == MsgType.ERROR:
            raise RemoteError(wire.error_message(frame), frame.request_id)
        if frame.type != kind:
            raise ProtocolError(f"expected {kind.name}, got {frame.type.name}")


class Remote:
    """Requests with retries, exponential back-off and a fallback signal (None) instead of an exception."""

    def __init__(self, client: Client, retries: int = 2, backoff: float = 0.05, max_backoff: float = 2.0):
        if not (isinstance(retries, int) and retries >= 0):  # -1 would make no attempt at all
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        if not (0 <= backoff < math.inf and 0 <= max_backoff < math.inf):
            raise ValueError(f"backoff and max_backoff must be >= 0 seconds, got {backoff} and {max_backoff}")
        self.client = client
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._failures = 0  # consecutive requests that exhausted their retries
        self._next_try = 0.0

    def infer(self, tensor: wire.Encoded) -> tuple[wire.Reply | None, int, str]:
        """(reply or None, attempts made, last error)."""
        if time.monotonic() < self._next_try:
            return None, 0, "server unavailable: backing off"
        error = ""
        for attempt in range(self.retries + 1):
            try:
                reply = self.client.infer(tensor)
                self._failures = 0
                return reply, attempt + 1, ""
            except AuthError:
                self.client.close()
                raise
            except RemoteError as e:  # the server understood and refused this request: retrying cannot help
                self.client.close()
                return None, attempt + 1, f"server error: {e}"
            except (OSError, ProtocolError) as e:  # refused, reset, timed out, garbled: a new connection may work
                self.client.close()
                error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                if attempt < self.retries:
                    time.sleep(self.backoff * 2 ** attempt)
        self._failures += 1
        self._next_try = time.monotonic() + min(self.backoff * 2 ** (self.retries + self._failures - 1),
                                                self.max_backoff)
        return None, self.retries + 1, error


def parse_address(server: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(server, tuple):
        return server[0], int(server[1])
    host, sep, port = server.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"server address must be HOST:PORT, got {server!r}")
    return host.strip("[]") or "127.0.0.1", int(port)

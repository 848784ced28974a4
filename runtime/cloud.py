"""The cloud server: runs tail.onnx for many edge clients over TCP (optionally TLS and a shared secret).

    python -m runtime.cloud --model-dir DIR --host 0.0.0.0 --port 9000 [--threads N]
        [--secret-file F] [--tls-cert C --tls-key K] [--max-frame BYTES] [--max-clients N]
        [--max-pending N] [--handshake-timeout S] [--frame-timeout S] [--idle-timeout S]
        [--memory-budget BYTES] [--scheduler fair|lock] [--workers N] [--batch-samples N]

Connections: until its handshake (runtime.protocol) is complete a connection is *pending*.  One
selector thread serves all pending connections without a thread each; each must complete its
handshake (TLS included) within --handshake-timeout of being accepted, an absolute deadline that
trickled bytes do not extend; at most --max-pending wait at once (a newcomer closes the oldest); and
they do not count against --max-clients.  So connections that never authenticate cannot lock clients
out.  An authenticated connection gets a thread; it is closed after --idle-timeout without a frame,
and a frame, once its first byte is in, must be complete within --frame-timeout.

Memory: before reading a frame's payload the connection reserves the frame's cost (its payload, plus
the decoded float32 tensor of a request this split can run) from --memory-budget, waiting for it
until the frame's deadline, else it gets a "server busy" ERROR.  So the payloads and tensors held at
once never exceed the budget, however many connections announce maximal frames.  On top come the
model's activations (one batch of at most --batch-samples per worker) and decoding temporaries.

Scheduling (--scheduler fair, the default): requests from all connections meet in one queue.  A free
worker runs one batch of at most --batch-samples samples, shared max-min fairly among the waiting
requests: a big request is cut into chunks and a small one rides in the next batch, and requests of
many clients are batched together.  A request larger than one batch never takes the last free
worker, which stays free for requests that fit one batch.  Up to --workers batches run at once
(default: cores // --threads, so runs do not oversubscribe the cores; the profile's T_C is one run on
--threads threads).  The connections' own threads run the batches, so a lone request is not handed
to another thread; batches of bulk chunks only run on a thread at nice +10 (Linux), so they yield the
cores to small requests' runs (and to anything else on the machine).  --scheduler lock is the old
behaviour: each request runs alone under one lock, taken by whichever thread gets it first.

The reported server time runs from the whole request frame being read to the reply being ready
(decode, queueing for a worker, inference).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import selectors
import signal
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress.onnx_io import session, warm_up
from runtime import manifest as mf
from runtime import protocol as wire
from runtime.protocol import Frame, MsgType, ProtocolError
from runtime.scheduler import FairScheduler, MemoryBudget

log = logging.getLogger("runtime.cloud")
MAX_BATCH = 256  # with the frame limit, bounds the memory one request can make the server allocate
DEFAULT_MEMORY_BUDGET = 256 << 20  # 256 MiB: four maximal (64 MiB) frames at once
SCHEDULERS = ("fair", "lock")
AUTH_MAX = wire.NONCE_BYTES + wire.PROOF_BYTES  # the largest frame a pending connection may send


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_settings(*, port: int = 0, threads: int = 1, max_frame: int = wire.DEFAULT_MAX_FRAME,
                   max_clients: int = 64, max_pending: int = 256, idle_timeout: float = 300.0,
                   handshake_timeout: float = 5.0, frame_timeout: float = 60.0,
                   memory_budget: int = DEFAULT_MEMORY_BUDGET, scheduler: str = "fair", workers: int | None = None,
                   batch_samples: int = 32, delay: float = 0.0) -> None:
    """Raise a one-line ValueError naming the CLI flag of the first setting out of range."""
    def at_least(flag: str, value: float, least: float) -> None:
        if not value >= least:
            raise ValueError(f"{flag} must be >= {least}, got {value}")

    def positive(flag: str, value: float) -> None:
        if not 0 < value < math.inf:
            raise ValueError(f"{flag} must be a positive number of seconds, got {value}")

    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    at_least("--threads", threads, 1)
    if not 0 < max_frame < 2 ** 32:
        raise ValueError(f"--max-frame must be in 1..{2 ** 32 - 1} bytes, got {max_frame}")
    at_least("--max-clients", max_clients, 1)
    at_least("--max-pending", max_pending, 1)
    positive("--idle-timeout", idle_timeout)
    positive("--handshake-timeout", handshake_timeout)
    positive("--frame-timeout", frame_timeout)
    if not memory_budget >= max_frame:
        raise ValueError(f"--memory-budget ({memory_budget} bytes) must be at least --max-frame ({max_frame} bytes): "
                         f"a frame of the maximum size could never be read")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    if workers is not None:
        at_least("--workers", workers, 1)
    if not 1 <= batch_samples <= MAX_BATCH:
        raise ValueError(f"--batch-samples must be in 1..{MAX_BATCH}, got {batch_samples}")
    at_least("delay", delay, 0.0)


# -- the server -------------------------------------------------------------------------------------

@dataclass(eq=False)
class _Pending:
    """A connection in its handshake, driven by the selector thread."""

    sock: socket.socket  # the accepted socket, or its TLS wrapper (non-blocking)
    peer: Any
    deadline: float  # time.monotonic: the whole handshake, TLS included
    challenge: bytes
    tls_done: bool
    out: bytes = b""  # still to send: the HELLO
    buf: bytearray = field(default_factory=bytearray)  # the AUTH frame so far
    need: int = wire.HEADER.size
    header: wire.Header | None = None
    events: int = 0


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    session: wire.Session | None


class CloudServer:
    """Serve an exported split's tail.  `port=0` binds an ephemeral port (see `.port` after start())."""

    def __init__(self, model_dir: str | Path, host: str = "127.0.0.1", port: int = 0, threads: int = 1,
                 secret: bytes | None = None, tls_cert: str | None = None, tls_key: str | None = None,
                 max_frame: int = wire.DEFAULT_MAX_FRAME, max_clients: int = 64, idle_timeout: float = 300.0,
                 delay: float = 0.0, *, handshake_timeout: float = 5.0, frame_timeout: float = 60.0,
                 max_pending: int = 256, memory_budget: int = DEFAULT_MEMORY_BUDGET, scheduler: str = "fair",
                 workers: int | None = None, batch_samples: int = 32):
        check_settings(port=port, threads=threads, max_frame=max_frame, max_clients=max_clients,
                       max_pending=max_pending, idle_timeout=idle_timeout, handshake_timeout=handshake_timeout,
                       frame_timeout=frame_timeout, memory_budget=memory_budget, scheduler=scheduler,
                       workers=workers, batch_samples=batch_samples, delay=delay)
        self.model_dir = Path(model_dir)
        self.manifest = mf.load(model_dir)
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        self.host, self.requested_port = host, port
        self.secret = secret or None
        self.max_frame = max_frame
        self.max_clients = max_clients
        self.max_pending = max_pending
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.frame_timeout = frame_timeout
        self.delay = delay  # seconds added before each reply: fault injection for tests only
        self.session = self._load_model(threads)
        # k = 0: UINT8 or an image dtype; else the feature codec's (a manifest's fp32 at k = 0 means raw)
        self.wire_dtype = wire.CODEC_DTYPES[mf.manifest_codec(self.manifest)]
        self.wire_shape = tuple(self.manifest["split"]["shape"])
        self._tls = None
        if tls_cert:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(tls_cert, tls_key)
        self.budget = MemoryBudget(memory_budget)
        self.scheduler_name = scheduler
        self.workers = workers or max(1, cores() // threads)
        self.scheduler = FairScheduler(self._run, batch_samples, self.workers) if scheduler == "fair" else None
        self._run_lock = threading.Lock()
        self._pending: dict[_Pending, None] = {}  # accept order: the oldest first (earliest deadline too)
        self._clients: set[socket.socket] = set()  # authenticated: these count against max_clients
        self._conns_lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._acceptor: threading.Thread | None = None
        self.stats: Counter[str] = Counter()  # requests, errors, refused_*, handshake_timeouts, internal_errors, ...

    # -- lifecycle ------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("server not started")
        return self._listener.getsockname()[1]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def start(self) -> "CloudServer":
        # a deep backlog: a burst of hostile connects must not make a client's SYN wait for a retransmit
        listener = socket.create_server((self.host, self.requested_port), reuse_port=False, backlog=1024)
        listener.setblocking(False)
        self._listener = listener
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._acceptor = threading.Thread(target=self._handshake_loop, name="cloud-accept", daemon=True)
        self._acceptor.start()
        log.info("listening on %s", self.address)
        return self

    def stop(self) -> None:
        """Stop accepting, drop every connection (clients see it as a server failure), join threads."""
        self._stop.set()
        if self._acceptor is not None:
            self._acceptor.join()
        if self._listener is not None:
            self._listener.close()
        if self.scheduler is not None:
            self.scheduler.close()
        self.budget.close()
        with self._conns_lock:
            conns = list(self._clients)
        for conn in conns:
            _shutdown(conn)
        for t in list(self._threads):
            t.join(timeout=5)

    def __enter__(self) -> "CloudServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- pending connections: one selector thread ---------------------------------------------------

    def _handshake_loop(self) -> None:
        sel = self._selector
        assert sel is not None
        try:
            while not self._stop.is_set():
                timeout = 0.1  # lets the loop notice stop() promptly
                if self._pending:
                    timeout = min(timeout, max(next(iter(self._pending)).deadline - time.monotonic(), 0.0))
                ready = sel.select(timeout)
                for key, _ in ready:  # handshakes first: an accept may evict the oldest pending connection
                    if key.data is not None and key.data in self._pending:  # (not dropped in this round)
                        self._advance(key.data)
                if any(key.data is None for key, _ in ready):
                    self._accept_some()
                self._expire()
        finally:
            for p in list(self._pending):
                self._drop(p)
            sel.close()

    def _accept_some(self) -> None:
        assert self._listener is not None
        for _ in range(64):  # a bounded burst, then the pending connections get their turn
            try:
                conn, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of file descriptors: do not spin on a listener that stays readable
                self.stats["accept_errors"] += 1
                time.sleep(0.01)
                return
            conn.setblocking(False)
            if self.client_count >= self.max_clients:
                self.stats["refused_busy"] += 1
                if self._tls is None:  # (a TLS client could not read a plaintext frame: it just sees the close)
                    _send_now(conn, wire.error(0, f"server busy: {self.max_clients} clients connected"))
                _shutdown(conn)
                continue
            if len(self._pending) >= self.max_pending:  # the oldest has had the longest to finish
                self.stats["evicted_pending"] += 1
                self._drop(next(iter(self._pending)),
                           f"handshake not completed: more than {self.max_pending} connections are in theirs")
            self._open(conn, peer)

    def _open(self, conn: socket.socket, peer: Any) -> None:
        self.stats["connections"] += 1
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            challenge = wire.nonce() if self.secret else b""
            hello = wire.pack(MsgType.HELLO, 0, challenge)
            if self._tls is not None:  # the TLS handshake runs here too, under the same deadline
                sock = self._tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                p = _Pending(sock, peer, time.monotonic() + self.handshake_timeout, challenge, False)
            else:
                p = _Pending(conn, peer, time.monotonic() + self.handshake_timeout, challenge, True, hello)
            self._selector.register(p.sock, selectors.EVENT_READ, p)  # type: ignore[union-attr]
        except (OSError, ValueError):
            _shutdown(conn)
            return
        p.events = selectors.EVENT_READ
        self._pending[p] = None
        self._advance(p)

    def _want(self, p: _Pending, events: int) -> None:
        if p.events != events:
            self._selector.modify(p.sock, events, p)  # type: ignore[union-attr]
            p.events = events

    def _advance(self, p: _Pending) -> None:
        """Move a handshake on as far as the socket allows without blocking."""
        try:
            if not p.tls_done:
                try:
                    p.sock.do_handshake()  # type: ignore[attr-defined]
                except ssl.SSLWantReadError:
                    return self._want(p, selectors.EVENT_READ)
                except ssl.SSLWantWriteError:
                    return self._want(p, selectors.EVENT_WRITE)
                p.tls_done, p.out = True, wire.pack(MsgType.HELLO, 0, p.challenge)
            while p.out:
                try:
                    p.out = p.out[p.sock.send(p.out):]
                except (BlockingIOError, ssl.SSLWantWriteError):
                    return self._want(p, selectors.EVENT_WRITE)
                except ssl.SSLWantReadError:
                    return self._want(p, selectors.EVENT_READ)
            while len(p.buf) < p.need:
                try:
                    chunk = p.sock.recv(p.need - len(p.buf))  # never past the AUTH frame: the rest is the thread's
                except (BlockingIOError, ssl.SSLWantReadError):
                    return self._want(p, selectors.EVENT_READ)
                except ssl.SSLWantWriteError:
                    return self._want(p, selectors.EVENT_WRITE)
                if not chunk:
                    return self._drop(p)  # the peer gave up
                p.buf += chunk
                if p.header is None and len(p.buf) == wire.HEADER.size:
                    p.header = wire.unpack_header(bytes(p.buf), AUTH_MAX)
                    p.need += p.header.length
            self._authenticate(p)
        except ProtocolError as e:
            self._refuse(p, e.request_id, f"{self._auth_hint()}: {e}")
        except (OSError, ValueError):  # reset, TLS failure (ssl.SSLError is an OSError), closed
            self._drop(p)

    def _auth_hint(self) -> str:
        if self.secret:
            return "authentication required: answer HELLO with AUTH = client nonce and HMAC proof"
        return "handshake required: answer HELLO with an empty AUTH"

    def _authenticate(self, p: _Pending) -> None:
        assert p.header is not None
        frame = wire.validate(p.header, bytes(p.buf[wire.HEADER.size:]))
        rid = frame.request_id
        if frame.type != MsgType.AUTH:
            return self._refuse(p, rid, self._auth_hint())
        conn_session, proof = None, b""
        if self.secret:
            if len(frame.payload) != AUTH_MAX:
                return self._refuse(p, rid, f"authentication failed: AUTH must carry a {wire.NONCE_BYTES}-byte nonce "
                                            f"and a {wire.PROOF_BYTES}-byte proof, got {len(frame.payload)} bytes")
            client_nonce, got = frame.payload[:wire.NONCE_BYTES], frame.payload[wire.NONCE_BYTES:]
            if not wire.same(wire.client_proof(self.secret, p.challenge, client_nonce), got):
                return self._refuse(p, rid, "authentication failed: wrong shared secret")
            conn_session = wire.Session.server(self.secret, p.challenge, client_nonce)
            proof = wire.server_proof(self.secret, p.challenge, client_nonce)
        elif frame.payload:
            return self._refuse(p, rid, "authentication failed: this server has no shared secret and cannot prove "
                                        "one (start it with --secret-file, or connect without a secret)")
        self._unregister(p)
        with self._conns_lock:
            busy = len(self._clients) >= self.max_clients
            if not busy:
                self._clients.add(p.sock)
        if busy:
            self.stats["refused_busy"] += 1
            _send_now(p.sock, wire.error(rid, f"server busy: {self.max_clients} clients connected"))
            _shutdown(p.sock)
            return
        conn = _Conn(p.sock, conn_session)
        t = threading.Thread(target=self._serve, args=(conn, p.peer, wire.pack(MsgType.AUTH_OK, rid, proof)),
                             name=f"cloud-{p.peer}", daemon=True)
        self._threads.add(t)
        t.start()

    def _refuse(self, p: _Pending, rid: int, message: str) -> None:
        self.stats["refused_auth"] += 1
        self._drop(p, message, rid)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._pending:
            p = next(iter(self._pending))
            if p.deadline > now:
                return
            self.stats["handshake_timeouts"] += 1
            self._drop(p, f"handshake not completed within {self.handshake_timeout:g} s")

    def _unregister(self, p: _Pending) -> None:
        self._pending.pop(p, None)
        try:
            self._selector.unregister(p.sock)  # type: ignore[union-attr]
        except (KeyError, ValueError):
            pass

    def _drop(self, p: _Pending, message: str | None = None, rid: int = 0) -> None:
        """Close a pending connection, telling it why when there is something to tell (best effort)."""
        self._unregister(p)
        if message is not None and p.tls_done and not p.out:  # not inside the TLS handshake or our HELLO
            _send_now(p.sock, wire.error(rid, message))
        _shutdown(p.sock)

    # -- one authenticated connection -----------------------------------------------------------------

    def _serve(self, conn: _Conn, peer, auth_ok: bytes) -> None:
        sock = conn.sock
        try:
            sock.settimeout(self.frame_timeout)
            sock.sendall(auth_ok)  # the last handshake frame: untagged, the session starts after it
            self._loop(conn)
        except (OSError, ConnectionError):
            pass  # the peer went away or timed out: nothing to answer
        except Exception:  # never let one client take the server down, but count it: tests assert zero
            if not self._stop.is_set():  # (stopping fails the requests still queued: not an internal error)
                self.stats["internal_errors"] += 1
                log.exception("internal error serving %s", peer)
            self._send_last(conn, wire.error(0, "internal server error"))
        finally:
            with self._conns_lock:
                self._clients.discard(sock)
            _shutdown(sock)
            self._threads.discard(threading.current_thread())

    def _send(self, conn: _Conn, data: bytes) -> None:
        conn.sock.settimeout(self.frame_timeout)  # a client that never reads its replies cannot hold a thread
        conn.sock.sendall(conn.session.seal(data) if conn.session is not None else data)

    def _send_last(self, conn: _Conn, data: bytes) -> None:
        """A fatal ERROR before closing: best effort, briefly."""
        try:
            conn.sock.settimeout(1.0)
            conn.sock.sendall(conn.session.seal(data) if conn.session is not None else data)
        except (OSError, ValueError):
            pass

    def _loop(self, conn: _Conn) -> None:
        sock = conn.sock
        while not self._stop.is_set():
            sock.settimeout(self.idle_timeout)  # waiting for the next frame's first bytes
            try:
                head = sock.recv(wire.HEADER.size)
            except TimeoutError:
                self.stats["idle_closed"] += 1
                return
            if not head:
                return
            deadline = time.monotonic() + self.frame_timeout  # the whole frame, however it trickles in
            rid = 0
            try:
                if len(head) < wire.HEADER.size:
                    head += wire.recv_all(sock, wire.HEADER.size - len(head), deadline)
                header = wire.unpack_header(head, self.max_frame)
                rid = header.request_id
                answer = self._read_and_answer(conn, head, header, deadline)
            except ProtocolError as e:  # fatal: the frame boundary is lost, or the tag is wrong
                self.stats["bad_tags" if isinstance(e, wire.TagError) else "bad_frames"] += 1
                self._send_last(conn, wire.error(e.request_id, str(e)))
                return
            except TimeoutError:
                self.stats["frame_timeouts"] += 1
                self._send_last(conn, wire.error(rid, f"frame not received within {self.frame_timeout:g} s"))
                return
            except _Busy as e:
                self.stats["refused_memory"] += 1
                self._send_last(conn, wire.error(rid, str(e)))
                return
            self._send(conn, answer)

    def _read_and_answer(self, conn: _Conn, head: bytes, header: wire.Header, deadline: float) -> bytes:
        """Reserve the frame's memory, read its payload (and tag), answer it; the answer's bytes."""
        cost = self._cost(header)
        if cost > self.budget.limit:
            raise _Busy(f"this frame needs {cost} bytes of the server's {self.budget.limit}-byte memory budget")
        if not self.budget.reserve(cost, deadline):
            raise _Busy(f"server busy: its memory budget ({self.budget.limit} bytes) stayed in use; retry later")
        try:
            payload = wire.recv_exact(conn.sock, header.length, deadline, preallocate=True) if header.length else b""
            if payload is None:
                raise ConnectionError("connection closed before the payload")
            if conn.session is not None:
                conn.session.check(head, payload, wire.recv_all(conn.sock, wire.TAG_BYTES, deadline),
                                   header.request_id)
            try:
                frame = wire.validate(header, payload)
            except ProtocolError as e:  # non-fatal: the stream is still in sync
                self.stats["bad_frames"] += 1
                return wire.error(e.request_id, str(e))
            del payload
            return self._answer(frame)
        finally:
            self.budget.release(cost)

    def _cost(self, header: wire.Header) -> int:
        """Budget bytes of a frame: its payload, plus the decoded float32 tensor of a request this split
        would run (it waits in the scheduler with the payload)."""
        cost = header.length
        shape = tuple(header.dims[:header.ndim])
        if header.type == MsgType.REQUEST and header.dtype == self.wire_dtype and shape[1:] == self.wire_shape \
                and len(shape) == 1 + len(self.wire_shape) and 1 <= shape[0] <= MAX_BATCH:
            cost += 4 * math.prod(shape)
        return cost

    def _answer(self, frame: Frame) -> bytes:
        if frame.type == MsgType.REQUEST:
            return self._infer(frame)
        if frame.type == MsgType.PING:
            return wire.pack(MsgType.PONG, frame.request_id)
        if frame.type == MsgType.SINK:
            return wire.pack(MsgType.SINK_ACK, frame.request_id)
        self.stats["bad_frames"] += 1
        return wire.error(frame.request_id, f"unexpected message type {frame.type.name} from a client")

    def _load_model(self, threads: int):
        """The ONNX Runtime session of the part this server runs, warmed up (runtime.relay overrides it:
        a relay runs no model)."""
        if self.manifest["tail"] is None:
            raise ValueError(f"k = K = {self.manifest['K']}: the device runs the whole model, there is no tail to serve")
        sess = session(mf.part_path(self.model_dir, self.manifest, "tail"), threads=threads)
        self.input_name = sess.get_inputs()[0].name
        warm_up(sess, (1, *self.manifest["tail"]["input_shape"]))  # as the profile: keep it out of request times
        return sess

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def _check_request(self, frame: Frame) -> bytes | None:
        """An ERROR frame if the request's dtype or shape is not this split's, else None (nothing decoded)."""
        rid = frame.request_id
        if frame.dtype != self.wire_dtype:
            self.stats["bad_requests"] += 1
            return wire.error(rid, f"this split expects {self.wire_dtype.name} tensors, got {frame.dtype.name}")
        if len(frame.shape) != 1 + len(self.wire_shape) or tuple(frame.shape[1:]) != self.wire_shape \
                or not 1 <= frame.shape[0] <= MAX_BATCH:
            self.stats["bad_requests"] += 1
            return wire.error(rid, f"this split expects tensors of shape (n, {', '.join(map(str, self.wire_shape))}) "
                                   f"with 1 <= n <= {MAX_BATCH}, got {frame.shape}")
        return None

    def _infer(self, frame: Frame) -> bytes:
        start = time.perf_counter()
        rid = frame.request_id
        refused = self._check_request(frame)
        if refused is not None:
            return refused
        try:
            x = wire.tensor(frame)  # variable-size payloads can still fail here (bad zlib or image)
        except ProtocolError as e:
            self.stats["bad_requests"] += 1
            return wire.error(rid, str(e))
        if x.dtype == np.uint8:
            x = mf.normalize(x, self.manifest)  # k = 0: the server does what the device would have done
        if not np.isfinite(x).all():
            self.stats["bad_requests"] += 1
            return wire.error(rid, "tensor contains NaN or infinity")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.scheduler is not None:
            logits = self.scheduler.infer(x)
        else:
            with self._run_lock:
                logits = self._run(x)
        if self.delay:
            time.sleep(self.delay)
        self.stats["requests"] += 1
        return self._reply(rid, logits, start)

    def _reply(self, rid: int, output: np.ndarray, start: float) -> bytes:
        """The answer to a request whose part has run (runtime.relay overrides it to forward `output`)."""
        return wire.reply(rid, output, (time.perf_counter() - start) * 1e3)


class _Busy(Exception):
    """No memory budget for a frame: a fatal ERROR (its payload is unread, so the stream is out of sync)."""


def _send_now(sock: socket.socket, data: bytes) -> None:
    """One non-blocking send of a short frame into a fresh socket's empty buffer: best effort."""
    try:
        sock.send(data)
    except (OSError, ValueError):
        pass


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass
    try:
        sock.close()
    except OSError:
        pass


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.cloud", description="Serve an exported split's tail.onnx.")
    p.add_argument("--model-dir", required=True, help="directory with manifest.json and tail.onnx")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=9000, help="TCP port (0 = any free port, printed at start)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for the tail")
    p.add_argument("--secret-file", help="file with a shared secret: clients and server prove it to each other")
    p.add_argument("--tls-cert", help="PEM certificate: serve over TLS (with --tls-key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--max-frame", type=int, default=wire.DEFAULT_MAX_FRAME, help="largest accepted payload in bytes")
    p.add_argument("--max-clients", type=int, default=64,
                   help="authenticated connections served at once; more get 'server busy' (default 64)")
    p.add_argument("--max-pending", type=int, default=256,
                   help="connections in their handshake at once, not counted in --max-clients; "
                        "a new one closes the oldest (default 256)")
    p.add_argument("--handshake-timeout", type=float, default=5.0,
                   help="seconds from accept to a completed handshake (TLS included), however bytes trickle "
                        "(default 5)")
    p.add_argument("--frame-timeout", type=float, default=60.0,
                   help="seconds from a frame's first byte to its last (default 60)")
    p.add_argument("--idle-timeout", type=float, default=300.0,
                   help="seconds an authenticated connection may wait between frames (default 300)")
    p.add_argument("--memory-budget", type=int, default=DEFAULT_MEMORY_BUDGET,
                   help="bytes of request payloads and decoded tensors held at once, over all connections; a "
                        "frame waits for its share until its deadline, then gets 'server busy' (default 256 MiB; "
                        "at least --max-frame)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="fair",
                   help="fair: batches shared fairly across connections (default); lock: one request at a time "
                        "under a lock (the old behaviour)")
    p.add_argument("--workers", type=int, default=None,
                   help="batches run at once with --scheduler fair (default: cores // --threads)")
    p.add_argument("--batch-samples", type=int, default=32,
                   help=f"most samples in one run with --scheduler fair; bigger requests are chunked (1..{MAX_BATCH}, "
                        f"default 32)")
    return p


SERVER_FLAGS = ("host", "port", "threads", "tls_cert", "tls_key", "max_frame", "max_clients", "idle_timeout",
                "handshake_timeout", "frame_timeout", "max_pending", "memory_budget", "scheduler", "workers",
                "batch_samples")


def server_options(p, args) -> dict[str, Any]:
    """CloudServer's keyword arguments from the parsed command line, checked (runtime.relay shares them);
    exits with the parser's usage on a bad value."""
    options = {name: getattr(args, name) for name in SERVER_FLAGS}
    try:
        check_settings(**{k: v for k, v in options.items() if k not in ("host", "tls_cert", "tls_key")})
    except ValueError as e:
        p.error(str(e))
    return options


def serve_until_signalled(server: "CloudServer") -> None:
    """Serve until SIGINT or SIGTERM, then stop the server."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(0.5):
        pass
    server.stop()


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    options = server_options(p, args)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        secret = wire.read_secret(args.secret_file) if args.secret_file else None
        server = CloudServer(args.model_dir, secret=secret, **options).start()
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = server.manifest
    print(f"listening on {server.address} ({m['model']['arch']} k={m['k']}/{m['K']} r={m['r']} "
          f"{'tls' if args.tls_cert else 'plain'}{', auth' if secret else ''}; scheduler {args.scheduler}"
          f"{f' x{server.workers}' if args.scheduler == 'fair' else ''}, memory budget {server.budget.limit} bytes)",
          flush=True)
    serve_until_signalled(server)
    print(f"stopped after {server.stats['requests']} requests", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

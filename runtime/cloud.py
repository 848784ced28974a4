"""The cloud server: runs tail.onnx for many edge clients over TCP (optionally TLS and a shared secret).

    python -m runtime.cloud --model-dir DIR --host 0.0.0.0 --port 9000 [--threads N]
        [--secret-file F] [--tls-cert C --tls-key K] [--max-frame BYTES] [--max-clients N]

One thread per connection and one ONNX Runtime session.  Inference is serialised by a lock: the
profile's T_C was measured one request at a time with a fixed intra-op thread count, and concurrent
runs on the same cores would only oversubscribe them.  The reported server time runs from the whole
request frame being read to the reply being ready (decode, queueing for the session, inference).
"""
from __future__ import annotations

import argparse
import logging
import signal
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from compress.onnx_io import session
from runtime import manifest as mf
from runtime import protocol as wire
from runtime.protocol import Frame, MsgType, ProtocolError

log = logging.getLogger("runtime.cloud")
MAX_BATCH = 256  # with the frame limit, bounds the memory one request can make the server allocate


class CloudServer:
    """Serve an exported split's tail.  `port=0` binds an ephemeral port (see `.port` after start())."""

    def __init__(self, model_dir: str | Path, host: str = "127.0.0.1", port: int = 0, threads: int = 1,
                 secret: bytes | None = None, tls_cert: str | None = None, tls_key: str | None = None,
                 max_frame: int = wire.DEFAULT_MAX_FRAME, max_clients: int = 64, idle_timeout: float = 300.0,
                 delay: float = 0.0):
        self.model_dir = Path(model_dir)
        self.manifest = mf.load(model_dir)
        if self.manifest["tail"] is None:
            raise ValueError(f"k = K = {self.manifest['K']}: the device runs the whole model, there is no tail to serve")
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if not 0 < max_frame < 2 ** 32:
            raise ValueError(f"max frame must be in 1..{2 ** 32 - 1} bytes, got {max_frame}")
        self.host, self.requested_port = host, port
        self.secret = secret or None
        self.max_frame = max_frame
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.delay = delay  # seconds added before each reply: fault injection for tests only
        self.session = session(Path(model_dir) / self.manifest["tail"]["file"], threads=threads)
        self.input_name = self.session.get_inputs()[0].name
        warm = np.zeros((1, *self.manifest["tail"]["input_shape"]), dtype=np.float32)
        self.session.run(None, {self.input_name: warm})  # first run allocates: keep it out of request times
        # k = 0: UINT8 or an image dtype; else the feature codec's (a manifest's fp32 at k = 0 means raw)
        self.wire_dtype = wire.CODEC_DTYPES[mf.manifest_codec(self.manifest)]
        self.wire_shape = tuple(self.manifest["split"]["shape"])
        self._tls = None
        if tls_cert:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(tls_cert, tls_key)
        self._run_lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.stats: Counter[str] = Counter()  # requests, errors, refused, internal_errors, ...

    # -- lifecycle ------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("server not started")
        return self._listener.getsockname()[1]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "CloudServer":
        listener = socket.create_server((self.host, self.requested_port), reuse_port=False, backlog=128)
        listener.settimeout(0.1)  # lets the accept loop notice stop() promptly
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, name="cloud-accept", daemon=True)
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
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            _shutdown(conn)
        for t in list(self._threads):
            t.join(timeout=5)

    def __enter__(self) -> "CloudServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.01)  # e.g. out of file descriptors: do not spin
                continue
            with self._conns_lock:
                busy = len(self._conns) >= self.max_clients
                if not busy:
                    self._conns.add(conn)
            if busy:
                self.stats["refused_busy"] += 1
                _try_send(conn, wire.error(0, f"server busy: {self.max_clients} clients connected"))
                _shutdown(conn)
                continue
            t = threading.Thread(target=self._serve, args=(conn, peer), name=f"cloud-{peer}", daemon=True)
            self._threads.add(t)
            t.start()

    # -- one connection -------------------------------------------------------------------------------

    def _serve(self, conn: socket.socket, peer) -> None:
        sock = conn
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(self.idle_timeout)
            if self._tls is not None:
                sock = self._tls.wrap_socket(conn, server_side=True)  # handshake here, not in the accept loop
                with self._conns_lock:
                    self._conns.discard(conn)
                    self._conns.add(sock)
            self.stats["connections"] += 1
            if self._handshake(sock):
                self._loop(sock)
        except (OSError, ConnectionError, ssl.SSLError):
            pass  # the peer went away or timed out: nothing to answer
        except Exception:  # never let one client take the server down, but count it: tests assert zero
            self.stats["internal_errors"] += 1
            log.exception("internal error serving %s", peer)
            _try_send(sock, wire.error(0, "internal server error"))
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
                self._conns.discard(sock)
            _shutdown(sock)
            self._threads.discard(threading.current_thread())

    def _handshake(self, sock: socket.socket) -> bool:
        """HELLO (with a nonce when a secret is set), then the client's AUTH; False when refused."""
        challenge = wire.nonce() if self.secret else b""
        sock.sendall(wire.pack(MsgType.HELLO, 0, challenge))
        if not self.secret:
            return True
        try:
            frame = wire.read_frame(sock, max_frame=wire.NONCE_BYTES)
        except ProtocolError as e:
            self._refuse(sock, e.request_id, f"authentication required: {e}")
            return False
        if frame is None:
            return False
        if frame.type != MsgType.AUTH:
            self._refuse(sock, frame.request_id, "authentication required: send AUTH = HMAC-SHA256(secret, nonce)")
            return False
        if not wire.verify(self.secret, challenge, frame.payload):
            self._refuse(sock, frame.request_id, "authentication failed: wrong shared secret")
            return False
        sock.sendall(wire.pack(MsgType.AUTH_OK, frame.request_id))
        return True

    def _refuse(self, sock: socket.socket, rid: int, message: str) -> None:
        self.stats["refused_auth"] += 1
        _try_send(sock, wire.error(rid, message))

    def _loop(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                frame = wire.read_frame(sock, self.max_frame)
            except ProtocolError as e:
                self.stats["bad_frames"] += 1
                sock.sendall(wire.error(e.request_id, str(e)))
                if e.fatal:
                    return  # the frame boundary is lost: nothing after this can be trusted
                continue
            if frame is None:
                return
            sock.sendall(self._answer(frame))

    def _answer(self, frame: Frame) -> bytes:
        if frame.type == MsgType.REQUEST:
            return self._infer(frame)
        if frame.type == MsgType.PING:
            return wire.pack(MsgType.PONG, frame.request_id)
        if frame.type == MsgType.SINK:
            return wire.pack(MsgType.SINK_ACK, frame.request_id)
        if frame.type == MsgType.AUTH:
            return wire.pack(MsgType.AUTH_OK, frame.request_id)  # harmless: the client has a key we do not need
        self.stats["bad_frames"] += 1
        return wire.error(frame.request_id, f"unexpected message type {frame.type.name} from a client")

    def _infer(self, frame: Frame) -> bytes:
        start = time.perf_counter()
        rid = frame.request_id
        if frame.dtype != self.wire_dtype:
            self.stats["bad_requests"] += 1
            return wire.error(rid, f"this split expects {self.wire_dtype.name} tensors, got {frame.dtype.name}")
        if len(frame.shape) != 1 + len(self.wire_shape) or tuple(frame.shape[1:]) != self.wire_shape \
                or not 1 <= frame.shape[0] <= MAX_BATCH:
            self.stats["bad_requests"] += 1
            return wire.error(rid, f"this split expects tensors of shape (n, {', '.join(map(str, self.wire_shape))}) "
                                   f"with 1 <= n <= {MAX_BATCH}, got {frame.shape}")
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
        with self._run_lock:
            logits = self.session.run(None, {self.input_name: x})[0]
        if self.delay:
            time.sleep(self.delay)
        self.stats["requests"] += 1
        return wire.reply(rid, logits, (time.perf_counter() - start) * 1e3)


def _try_send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.settimeout(1.0)
        sock.sendall(data)
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
    p.add_argument("--secret-file", help="file with a shared secret: clients must answer its HMAC challenge")
    p.add_argument("--tls-cert", help="PEM certificate: serve over TLS (with --tls-key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--max-frame", type=int, default=wire.DEFAULT_MAX_FRAME, help="largest accepted payload in bytes")
    p.add_argument("--max-clients", type=int, default=64, help="connections served at once; more get 'busy'")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        secret = wire.read_secret(args.secret_file) if args.secret_file else None
        server = CloudServer(args.model_dir, args.host, args.port, args.threads, secret, args.tls_cert,
                             args.tls_key, args.max_frame, args.max_clients).start()
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    m = server.manifest
    print(f"listening on {server.address} ({m['model']['arch']} k={m['k']}/{m['K']} r={m['r']} "
          f"{'tls' if args.tls_cert else 'plain'}{', auth' if secret else ''})", flush=True)
    while not done.wait(0.5):
        pass
    server.stop()
    print(f"stopped after {server.stats['requests']} requests", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

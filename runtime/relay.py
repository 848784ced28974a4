"""The edge server of a three-tier split: runs blocks [k, k2) for the end device and forwards to the cloud.

    python -m runtime.relay --model-dir DIR/edge --cloud HOST:PORT [--host H] [--port P] [--threads N]
        [--slowdown F] [--secret-file F] [--cloud-secret-file F] [--cloud-tls-ca C]
        [--cloud-bandwidth MBPS] [--cloud-rtt MS] [--cloud-timeout S] [--cloud-retries N]
        [every runtime.cloud flag: --tls-cert/--tls-key, --max-clients, --memory-budget, --scheduler, ...]

It is a runtime.cloud.CloudServer (the same authenticated protocol, limits and scheduler towards the end
device) whose part is the edge's, written by runtime.tiers.export_tiers into DIR/edge:

- k2 = k (a relay): no model; a request's payload is checked (dtype, shape) and forwarded to the cloud as
  it came, so both links carry the bytes the latency model priced (bytes(k, r) under the end's codec);
- k < k2 < K: runs edge.onnx (blocks [k, k2) of the pruned candidate) and forwards the tensor at k2 under
  the manifest's forward codec (fp32, or fp16/int8 where the search chose a two-link codec);
- k2 = K: edge.onnx is the whole rest of the network: the edge answers, there is no cloud;
- an exit placed on the edge (the manifest's tiers.exit; runtime.tiers' k1): the end device ran blocks
  [0, k1) and sent the exact tensor, edge.onnx is blocks [k1, k) fused with the candidate's exit at k
  (outputs: the exit's logits and the tensor at k; the manifest's k is k1, its tiers.k2 the candidate's k).
  A sample whose exit confidence is >= t (computed as the end device does: runtime.edge.exit_confidence)
  is answered with the exit's logits and the cloud is not asked; any other is forwarded at k under the
  forward codec, and the cloud runs [k, K).

Forwarding uses runtime.client (Client/Remote: the shared secret, retries and back-off) through an
emulated runtime.link.Link (--cloud-bandwidth/--cloud-rtt).  Forwards take turns on that one link, as
frames on one real link would.  If the cloud cannot answer, an edge with an exit answers the sample with
its exit's logits (issue 15's rule: every sample answered exactly once); one without an exit sends the
end device an ERROR naming the cause ("cloud failed: ..."), and the end device falls back to its own
exit (runtime.edge).  stats counts "edge_exits" and "exit_fallbacks" (samples), "forwarded" and
"cloud_failures" (requests).

The REPLY carries the protocol's tier trailer (runtime.protocol): the edge's own ms (decode, the middle
part, encoding for the cloud), the edge-to-cloud transfer ms (the forward's wall time minus the cloud's
reported ms; the failed attempts' wall time for an exit fallback) and the cloud's ms; they sum to the
reply's server ms.  Its flags say when the edge's exit answered (EDGE_EXIT, EXIT_FALLBACK).  --slowdown F
emulates a slower edge box (a profile made by `python -m profiles emulate --factor F`) by spinning
(F - 1) x its model compute (the exit branch included), as runtime.edge does for the end device.
"""
from __future__ import annotations

import logging
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime import link as links
from runtime import manifest as mf
from runtime import protocol as wire
from runtime.client import AuthError, Client, Remote, parse_address
from runtime.cloud import CloudServer, serve_until_signalled, server_options
from runtime.cloud import parser as cloud_parser
from runtime.edge import _slow, exit_confidence
from runtime.protocol import Frame

log = logging.getLogger("runtime.relay")


def edge_info(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's "tiers" entry of an edge directory; ValueError (one line) for any other manifest."""
    tiers = manifest.get("tiers")
    if not isinstance(tiers, dict) or tiers.get("role") != "edge":
        raise ValueError("this manifest is not an edge server's (no tiers.role = 'edge'): export the three parts "
                         "with runtime.tiers.export_tiers and serve its edge directory")
    k, k2, K = manifest["k"], tiers.get("k2"), manifest["K"]
    if not isinstance(k2, int) or not k <= k2 <= K:
        raise ValueError(f"edge manifest: tiers.k2 must be an integer in {k}..{K}, got {k2!r}")
    exit_ = tiers.get("exit")
    if exit_ is not None:
        t = exit_.get("t") if isinstance(exit_, dict) else None
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1:
            raise ValueError(f"edge manifest: tiers.exit.t must be a threshold in [0, 1], got {t!r}")
        if not k < k2 < K:
            raise ValueError(f"edge manifest: an exit on the edge needs blocks before it and a cloud after it "
                             f"(k < k2 < K), got k={k}, k2={k2}, K={K}")
        outputs = (manifest.get("tail") or {}).get("outputs")
        if not (isinstance(outputs, list) and len(outputs) == 2):
            raise ValueError(f"edge manifest: an exit on the edge needs a part with outputs [exit, split], "
                             f"got {outputs!r}")
    return tiers


class RelayServer(CloudServer):
    """The edge tier: a CloudServer that runs blocks [k, k2) (or none, or those and an exit at k2) and
    forwards to the cloud what it does not answer.

    `cloud` is the cloud server's address (not needed when k2 = K); `link` shapes the edge-to-cloud link;
    `cloud_secret` defaults to `secret` (one secret for both links).  Takes CloudServer's other arguments.
    """

    def __init__(self, model_dir: str | Path, cloud: str | tuple[str, int] | None = None, *,
                 link: links.Link | None = None, slowdown: float = 1.0, cloud_secret: bytes | None = None,
                 cloud_tls_ca: str | None = None, cloud_timeout: float = 2.0, cloud_retries: int = 1,
                 cloud_backoff: float = 0.05, cloud_max_backoff: float = 1.0, **kwargs):
        if not 1.0 <= slowdown < math.inf:
            raise ValueError(f"--slowdown must be >= 1 (a factor on this host's compute), got {slowdown}")
        manifest = mf.load(model_dir)
        self.tiers = edge_info(manifest)
        self.k, self.k2, self.K = manifest["k"], self.tiers["k2"], manifest["K"]
        self.relay = self.k2 == self.k  # no model: the payload goes on as it came
        self.answers = self.k2 == self.K  # no cloud: the edge's part ends with the logits
        self.forward_codec = (self.tiers.get("forward") or {}).get("codec") or "fp32"
        self.exit = self.tiers.get("exit")  # an exit placed on the edge: it answers what it is sure of
        self.t = None if self.exit is None else float(self.exit["t"])
        self.outputs = manifest["tail"]["outputs"] if self.exit is not None else None
        self.slowdown = float(slowdown)
        self.remote: Remote | None = None
        if not self.answers:
            if cloud is None:
                raise ValueError(f"k2 = {self.k2} < K = {self.K}: the edge forwards to a cloud server, give its "
                                 f"address (--cloud HOST:PORT)")
            host, port = parse_address(cloud)
            secret = kwargs.get("secret") if cloud_secret is None else cloud_secret
            client = Client(host, port, secret, cloud_tls_ca, cloud_timeout, link or links.Link())
            self.remote = Remote(client, cloud_retries, cloud_backoff, cloud_max_backoff)
        self._forward_lock = threading.Lock()  # one link to the cloud: forwards take turns on it
        super().__init__(model_dir, **kwargs)

    @property
    def cloud_address(self) -> str | None:
        return None if self.remote is None else f"{self.remote.client.host}:{self.remote.client.port}"

    def _load_model(self, threads: int):
        return None if self.relay else super()._load_model(threads)

    def start(self) -> "RelayServer":
        if self.remote is not None:
            try:  # connect up front, so the first request does not pay the cloud's handshake
                self.remote.client.connect()
            except AuthError:
                raise
            except (OSError, wire.ProtocolError, wire.RemoteError) as e:  # requests retry on their own
                log.warning("cloud %s not reachable yet: %s", self.cloud_address, e)
                self.remote.client.close()
        super().start()
        return self

    def stop(self) -> None:
        super().stop()
        if self.remote is not None:
            with self._forward_lock:
                self.remote.client.close()

    def _run(self, x: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self._part(x)
        _slow(time.perf_counter() - start, self.slowdown, rerun=lambda: self._part(x))  # slower at its model only
        return out

    def _part(self, x: np.ndarray) -> np.ndarray:
        """One run of edge.onnx.  With an exit: (exit logits | flattened tensor at k) as one row per sample, so
        the batching scheduler hands it back like logits (_split undoes it)."""
        if self.exit is None:
            return super()._run(x)
        exit_logits, at_k = self.session.run(self.outputs, {self.input_name: x})
        return np.concatenate([exit_logits, at_k.reshape(len(at_k), -1)], axis=1)

    def _split(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(exit logits, tensor at k) of a _part row block."""
        shape = tuple(self.tiers["forward"]["shape"])
        classes = output.shape[1] - int(np.prod(shape))
        return output[:, :classes], output[:, classes:].reshape(len(output), *shape)

    def _infer(self, frame: Frame) -> bytes:
        if not self.relay:
            return super()._infer(frame)  # decode, run blocks [k, k2), then _reply forwards (or answers)
        start = time.perf_counter()
        refused = self._check_request(frame)  # a relay checks what it forwards but decodes nothing
        if refused is not None:
            return refused
        self.stats["requests"] += 1
        return self._forward(frame.request_id, wire.Encoded(frame.payload, frame.dtype, frame.shape), start)

    def _reply(self, rid: int, output: np.ndarray, start: float) -> bytes:
        if self.answers:  # k2 = K: the edge's part ends with the logits
            ms = (time.perf_counter() - start) * 1e3
            return wire.reply(rid, output, ms, (ms, 0.0, 0.0))
        if self.exit is not None:
            return self._exit_or_forward(rid, output, start)
        return self._forward(rid, _encode(output, self.forward_codec), start)

    def _exit_or_forward(self, rid: int, output: np.ndarray, start: float) -> bytes:
        """The edge's exit answers each sample it is sure of (as the end device's would); the rest go on."""
        exit_logits, at_k = self._split(output)
        exited = np.array([exit_confidence(row) >= self.t for row in exit_logits])
        self.stats["edge_exits"] += int(exited.sum())
        if exited.all():
            ms = (time.perf_counter() - start) * 1e3
            return wire.reply(rid, exit_logits, ms, (ms, 0.0, 0.0), wire.EDGE_EXIT)
        return self._forward(rid, _encode(at_k[~exited], self.forward_codec), start, exit_logits, exited)

    def _forward(self, rid: int, tensor: wire.Encoded, start: float, exit_logits: np.ndarray | None = None,
                 exited: np.ndarray | None = None) -> bytes:
        """Send `tensor` on to the cloud; the end device's REPLY (with the tier trailer) or an ERROR.

        With an exit on the edge, `tensor` holds the samples it did not answer (`exited` False) and
        `exit_logits` every sample's: the cloud's answers fill those in, or, if the cloud fails, the exit's
        stand (an EXIT_FALLBACK)."""
        assert self.remote is not None
        with self._forward_lock:
            sent = time.perf_counter()
            try:
                reply, _, error = self.remote.infer(tensor)
            except AuthError as e:  # a configuration error: every request would fail alike
                reply, error = None, f"edge-to-cloud authentication failed: {e}"
            back = time.perf_counter()
        forward = (back - sent) * 1e3
        if reply is None:
            self.stats["cloud_failures"] += 1
            if exit_logits is None:
                return wire.error(rid, f"cloud failed: {error}")
            self.stats["exit_fallbacks"] += int((~exited).sum())
            total = (time.perf_counter() - start) * 1e3
            flags = wire.EXIT_FALLBACK | (wire.EDGE_EXIT if exited.any() else 0)
            return wire.reply(rid, exit_logits, total, (total - forward, forward, 0.0), flags)
        self.stats["forwarded"] += 1
        logits, flags = reply.logits, 0
        if exit_logits is not None:  # a batch the exit answered in part: the cloud's answers fill in the rest
            logits = exit_logits.copy()
            logits[~exited] = reply.logits
            flags = wire.EDGE_EXIT if exited.any() else 0
        total = (time.perf_counter() - start) * 1e3
        cloud = reply.server_ms
        tiers = (total - forward, max(forward - cloud, 0.0), cloud)  # edge, edge-to-cloud, cloud
        return wire.reply(rid, logits, total, tiers, flags)


def _encode(x: np.ndarray, codec: str) -> wire.Encoded:
    """The tensor the edge sends on, under its forward codec."""
    return wire.encode(np.ascontiguousarray(x, dtype=np.float32), codec)


def parser():
    p = cloud_parser()
    p.prog = "python -m runtime.relay"
    p.description = ("The edge server of a three-tier split: runs blocks [k, k2) of the edge directory written by "
                     "runtime.tiers.export_tiers and forwards to the cloud server.")
    g = p.add_argument_group("edge to cloud")
    g.add_argument("--cloud", default=None, help="the cloud server HOST:PORT (not needed when k2 = K)")
    g.add_argument("--cloud-bandwidth", type=float, default=None,
                   help="edge-to-cloud link shaping in Mbit/s (default: unshaped)")
    g.add_argument("--cloud-rtt", type=float, default=0.0, help="emulated edge-to-cloud round-trip time in ms")
    g.add_argument("--cloud-timeout", type=float, default=2.0,
                   help="seconds to wait on the cloud per attempt; keep (retries + 1) x this below the end "
                        "device's --timeout, so the edge answers (with an ERROR) before the device gives up")
    g.add_argument("--cloud-retries", type=int, default=1, help="retries per forward before answering ERROR")
    g.add_argument("--cloud-secret-file", default=None, help="the cloud's shared secret (default: --secret-file)")
    g.add_argument("--cloud-tls-ca", default=None, help="CA certificate of the cloud server: connect over TLS")
    g.add_argument("--slowdown", type=float, default=1.0,
                   help="emulated edge box: its model runs this many times slower (an emulated profile's factor)")
    return p


def check_args(args) -> str | None:
    """The first out-of-range relay argument as a one-line message, or None."""
    if args.cloud_bandwidth is not None and not 0 < args.cloud_bandwidth < math.inf:
        return f"--cloud-bandwidth must be > 0 Mbit/s, got {args.cloud_bandwidth}"
    if not 0 <= args.cloud_rtt < math.inf:
        return f"--cloud-rtt must be >= 0 ms, got {args.cloud_rtt}"
    if not 0 < args.cloud_timeout < math.inf:
        return f"--cloud-timeout must be a positive number of seconds, got {args.cloud_timeout}"
    if args.cloud_retries < 0:
        return f"--cloud-retries must be >= 0, got {args.cloud_retries}"
    if not 1 <= args.slowdown < math.inf:
        return f"--slowdown must be >= 1, got {args.slowdown}"
    if args.cloud is not None:
        try:
            parse_address(args.cloud)
        except ValueError as e:
            return f"--cloud: {e}"
    return None


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    options = server_options(p, args)
    if (problem := check_args(args)) is not None:
        p.error(problem)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        secret = wire.read_secret(args.secret_file) if args.secret_file else None
        cloud_secret = wire.read_secret(args.cloud_secret_file) if args.cloud_secret_file else None
        server = RelayServer(args.model_dir, args.cloud, link=links.Link(args.cloud_bandwidth, args.cloud_rtt),
                             slowdown=args.slowdown, cloud_secret=cloud_secret, cloud_tls_ca=args.cloud_tls_ca,
                             cloud_timeout=args.cloud_timeout, cloud_retries=args.cloud_retries, secret=secret,
                             **options).start()
    except (ValueError, OSError, AuthError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = server.manifest
    role = ("relays k={k} unchanged" if server.relay else "runs blocks {k}..{last}").format(k=m["k"], last=server.k2 - 1)
    if server.exit is not None:
        role += f" and the exit at {server.k2} (t={server.t:g})"
    where = "and answers (no cloud)" if server.answers else f"-> cloud {server.cloud_address}"
    print(f"listening on {server.address} ({m['model']['arch']} edge: {role} {where}; "
          f"{'tls' if args.tls_cert else 'plain'}{', auth' if secret else ''})", flush=True)
    serve_until_signalled(server)
    exits = (f", {server.stats['edge_exits']} answered by the edge's exit ({server.stats['exit_fallbacks']} more "
             f"for a failed cloud)" if server.exit is not None else "")
    print(f"stopped after {server.stats['requests']} requests ({server.stats['forwarded']} forwarded, "
          f"{server.stats['cloud_failures']} cloud failures){exits}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

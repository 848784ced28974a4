"""The latency model: end-to-end latency of a candidate (k, r, codec, exit rate) from profiles.

    exit path  E = T_D(head k, r) + T_D(exit k, r) + O_D - p_exit * W     (every request)
    sent part  S = encode + T_N(bytes) + link + T_C(tail k, r) + O_C        (only the requests sent)
    mean       T = E + (1 - p_exit) * S
    quantile q T_q = E if the share sent (1 - p_exit) <= 1 - q, else the q-quantile of E + S over the sent

Requests come back to back (the next starts when the previous is answered), as a deployment runs them.
The device's T_D rows are cold (each run after other work and an idle wait: the device waited for the
reply of a sent request); a request that follows one the device answered itself runs warm, W ms faster
(W = cold - warm head and exit, the profile's warm_ms; 0 without warm rows).  Samples exit independently,
so a share p_exit of requests follows an on-device answer; at k = K every request does (warm rows).
A cold part also pays for the length of the wait before it (`Profile.idle_factor`, the profile's measured
idle curve): the device's head and exit x f_D(S - encode), the time it waits for a reply; the server's
tail x F_C(p_exit), the mean of f_C over the server's waits from its reply to the next sent request.
That wait is g0 = E_cold + encode + the way up after j = 0 exits in between, and each exited request
adds its warm exit path w; samples exit independently, so j is geometric:

    F_C(p) = sum_j (1 - p) p^j f_C(g0 + j w)          (f_C is flat beyond its last gap: a finite sum)

The mean latency is therefore not linear in p_exit; it is never below the line through F_C(0) = f_C(g0),
which is what `lower_bound_ms` uses.  With an edge tier, its blocks are priced the same way on the edge
profile's curve (F_E), from its wait between the end of its own compute and the next sent request.

With an edge tier (`Edge`: a server-role profile of the edge box and its link to the cloud), a sent request
goes to the edge, which runs blocks [k, k2) and sends on to the cloud, which runs the rest:

    sent part  S = encode + T_N1(bytes k) + link + T_E(k..k2) + O_E + T_N2(bytes k2) + T_C(tail k2) + O_C

with k2 chosen per candidate, the fastest once every part is priced (it changes no answer: the edge's blocks
are the network's own and the second link carries fp32): k2 = k relays the tensor as is (end to cloud through the edge), k2 = K answers at the
edge (no cloud).  A two-link codec (compress.codec.via, e.g. "int8>3:fp16") fixes k < k2 < K instead and
sends bytes(k2) under its second codec: it changes answers, so the search takes it only where evaluated.
T_E(k..k2) = T_E(tail k, r) - T_E(tail k2, 0), both measured on the edge profile: the pruning of the end
part trims only the input of block k, so the blocks from k2 > k on are unpruned.

An exit on the edge (`k1`, `edge_exit_cuts`): an unpruned candidate (k, 0) whose exit the edge runs.  The end
device runs [0, k1) and sends the exact tensor (UP_CODECS: the image raw or as PNG at k1 = 0, fp32 after), so
the exit sees what it was evaluated on and every answer stays the candidate's:

    exit path  E = T_D(head k1) + O_D + encode + T_N1(up) + link + T_E(head k) - T_E(head k1) + T_E(exit k) + O_E
    sent part  S = T_N2(bytes k) + link2 + T_C(tail k, 0) + O_C                 (the share the exit leaves)

with T_E from the edge profile's head and exit rows at r = 0.  The device waits for every reply (no warm
saving); the edge's part is priced at its wait with every request sent on, a fixed factor.  Like k2, it
changes no answer, so it is a placement the objective picks (search.space.placements), not a parameter.

O_D, encode, link and O_C are the per-request runtime overheads measured beside the model's compute
(`Profile.overhead`; 0 for a profile measured without them).  T_N counts the request's frame header with
its payload (the server profile's `frame_bytes`: a shaped link serialises both); `bytes` is the payload.  Every number comes from a measured (or
named-emulated) profile and a Network; a result is a Breakdown, never a bare number.
`exit_rate=None` means the candidate has no exit branch at all ("no exit" is its own value): the exit
costs nothing and never answers.  Codecs whose size depends on the sample (int8-zlib, PNG, JPEG, WebP)
take the mean of their measured per-sample bytes (and the sizes themselves for a quantile).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from compress.codec import is_variable, split_via
from profiles.network import Network
from profiles.profile import Profile, check_pair, has_exit, rkey

OBJECTIVES = {"mean": None, "p95": 0.95, "p99": 0.99}
OVERHEADS = ("device_overhead_ms", "encode_ms", "link_overhead_ms", "server_overhead_ms")


def check_objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    return objective


@dataclass(frozen=True)
class Breakdown:
    device_ms: float  # head on the end device
    exit_ms: float  # exit branch on the end device (0 without an exit)
    transfer_ms: float  # rtt + 8 bytes / bandwidth, 0 when nothing is sent (k = K)
    server_ms: float  # tail on the server
    bytes: float  # payload at the split under the codec (mean per request for a variable-size codec)
    exit_rate: float  # fraction answered at the exit (the promised, bounded one in a search result)
    k: int | None = None
    r: float | None = None
    codec: str | None = None
    device_overhead_ms: float = 0.0  # runtime outside the model on the device, every request
    encode_ms: float = 0.0  # encoding and framing on the device, sent requests only
    link_overhead_ms: float = 0.0  # socket and framing cost beyond rtt + 8 b / B, sent requests only
    server_overhead_ms: float = 0.0  # read, decode and reply on the server, sent requests only
    k2: int | None = None  # with an edge tier: the edge runs blocks [k, k2), the cloud the rest (k2 = K: no cloud)
    edge_ms: float = 0.0  # blocks [k, k2) on the edge
    edge_overhead_ms: float = 0.0  # the edge's own read, decode and reply when it computes
    edge_transfer_ms: float = 0.0  # edge to cloud: rtt + 8 bytes / bandwidth (0 when k2 = K)
    edge_bytes: float = 0.0  # what the edge sends on
    warm_saving_ms: float = 0.0  # head + exit time saved after an on-device answer (run back to back, warm)
    device_idle_factor: float = 1.0  # device_ms and exit_ms are the cold rows x this (the device idled for the reply)
    server_idle_factor: float = 1.0  # server_ms is the tail's row x this, F_C at exit_rate (the server idled)
    server_gap_ms: float = 0.0  # g0: the server's wait for a sent request that follows a sent one
    exit_gap_ms: float = 0.0  # w: what each exited request in between adds to that wait (its warm exit path)
    server_idle_curve: tuple = ()  # the server profile's idle curve ((gap ms, factor), ...); () without one
    edge_idle_factor: float = 1.0  # edge_ms is blocks [k, k2) on the edge x this, F_E at exit_rate
    edge_gap_ms: float = 0.0  # the edge's g0: from the end of its compute to the next sent request
    edge_idle_curve: tuple = ()  # the edge profile's idle curve; () without one (or when the edge only relays)
    k1: int | None = None  # an exit on the edge: the end device runs [0, k1) and the edge [k1, k) with the exit
    edge_exit_ms: float = 0.0  # with k1: the exit branch at k on the edge (every request)
    cloud_link_overhead_ms: float = 0.0  # with k1: the edge-to-cloud link's framing (sent requests only)
    up_codec: str | None = None  # with k1: what the end device sends the edge (raw or png image, fp32 features)

    @property
    def always_ms(self) -> float:
        """With an exit on the edge (k1), what every request pays beyond the device before the exit decides:
        encoding, the first link, the edge's blocks, its exit and runtime; 0 otherwise."""
        if self.k1 is None:
            return 0.0
        return (self.encode_ms + self.transfer_ms + self.link_overhead_ms + self.edge_ms + self.edge_exit_ms
                + self.edge_overhead_ms)

    @property
    def exit_path_ms(self) -> float:
        return float(self.exit_path_at(self.exit_rate))

    def exit_path_at(self, exit_rates) -> np.ndarray:
        """The device's part of every request at these exit rates: a share p_exit of requests follow an
        on-device answer and run warm."""
        return (self.device_ms + self.exit_ms + self.device_overhead_ms + self.always_ms
                - np.asarray(exit_rates, float) * self.warm_saving_ms)

    @property
    def sent_ms(self) -> float:
        """What a sent request adds to the exit path (the server priced at this breakdown's exit rate)."""
        if self.k1 is not None:  # the exit decided on the edge: only the way on to the cloud is left
            return self.edge_transfer_ms + self.cloud_link_overhead_ms + self.server_ms + self.server_overhead_ms
        return (self.encode_ms + self.transfer_ms + self.link_overhead_ms + self.edge_ms + self.edge_overhead_ms
                + self.edge_transfer_ms + self.server_ms + self.server_overhead_ms)

    @property
    def server_row_ms(self) -> float:
        """The tail's profile row, before the server's idle factor."""
        return self.server_ms / self.server_idle_factor

    @property
    def edge_row_ms(self) -> float:
        """Blocks [k, k2) from the edge profile's rows, before the edge's idle factor."""
        return self.edge_ms / self.edge_idle_factor

    def server_factor_at(self, exit_rates) -> np.ndarray:
        """F_C: the mean idle factor of the server's tail at these exit rates (the module docstring)."""
        return _factor_at(self.server_idle_curve, self.server_idle_factor, self.server_gap_ms, self.exit_gap_ms,
                          exit_rates)

    def edge_factor_at(self, exit_rates) -> np.ndarray:
        """F_E: the same for the edge's blocks, on the edge profile's curve."""
        return _factor_at(self.edge_idle_curve, self.edge_idle_factor, self.edge_gap_ms, self.exit_gap_ms, exit_rates)

    def sent_at(self, exit_rates) -> np.ndarray:
        """What a sent request adds to the exit path at these exit rates (more exits: a colder server)."""
        return (self.sent_ms + self.server_row_ms * self.server_factor_at(exit_rates) - self.server_ms
                + self.edge_row_ms * self.edge_factor_at(exit_rates) - self.edge_ms)

    @property
    def expected_ms(self) -> float:
        return self.exit_path_ms + (1.0 - self.exit_rate) * self.sent_ms

    def expected_at(self, exit_rates) -> np.ndarray:
        """Expected latency for many exit rates at once (same split, same costs)."""
        p = np.asarray(exit_rates, dtype=float)
        return self.exit_path_at(p) + (1.0 - p) * self.sent_at(p)

    def quantile_at(self, q: float, exit_rates, sent_extra_ms=None) -> np.ndarray:
        """The q-quantile of per-request latency for many exit rates: the exit path while the share sent
        is at most 1 - q, else the sent path (at the matching quantile of `sent_extra_ms`, the per-sample
        deviations of a variable-size codec's transfer from its mean, if given)."""
        sent = 1.0 - np.asarray(exit_rates, dtype=float)
        path = self.exit_path_at(1.0 - sent)  # averaged over what came before (warm or cold)
        full = path + self.sent_at(1.0 - sent)
        if sent_extra_ms is not None and len(sent_extra_ms):
            level = np.clip((q - (1.0 - sent)) / np.maximum(sent, 1e-12), 0.0, 1.0)
            full = full + np.quantile(np.asarray(sent_extra_ms, dtype=float), level, method="inverted_cdf")
        return np.where(sent <= 1.0 - q + 1e-12, path, full)

    def objective_at(self, objective: str, exit_rates, sent_extra_ms=None) -> np.ndarray:
        q = OBJECTIVES[check_objective(objective)]
        return self.expected_at(exit_rates) if q is None else self.quantile_at(q, exit_rates, sent_extra_ms)

    def with_exit_rate(self, exit_rate: float) -> "Breakdown":
        """This breakdown at another exit rate: the server's tail repriced for its longer or shorter waits."""
        f, e = float(self.server_factor_at(exit_rate)), float(self.edge_factor_at(exit_rate))
        return replace(self, exit_rate=float(exit_rate), server_ms=self.server_row_ms * f, server_idle_factor=f,
                       edge_ms=self.edge_row_ms * e, edge_idle_factor=e)

    def as_dict(self) -> dict:
        return {**asdict(self), "expected_ms": self.expected_ms}


PARTS = ("device_ms", "exit_ms", "transfer_ms", "server_ms") + OVERHEADS + (
    "edge_ms", "edge_overhead_ms", "edge_transfer_ms", "warm_saving_ms", "edge_exit_ms", "cloud_link_overhead_ms")
# what reprices a breakdown at another exit rate (with the server's and edge's curves)
PRICING = ("exit_rate", "server_idle_factor", "server_gap_ms", "exit_gap_ms", "edge_idle_factor", "edge_gap_ms")
CURVES = ("server_idle_curve", "edge_idle_curve")
EDGE_PARTS = ("k2", "edge_ms", "edge_overhead_ms", "edge_transfer_ms", "edge_bytes", "k1", "edge_exit_ms",
              "cloud_link_overhead_ms", "up_codec")  # a 3-tier breakdown's own
TIERS = ("all", "relay", "edge")  # every k2; k2 = k only (end and cloud); k2 = K only (end and edge)


def _factor_at(curve, fixed: float, gap_ms: float, step_ms: float, exit_rates) -> np.ndarray:
    """A tier's mean idle factor at these exit rates: `fixed` without a curve, else `mean_idle_factor`."""
    p = np.asarray(exit_rates, dtype=float)
    if not curve:
        return np.full(p.shape, fixed)
    return mean_idle_factor(curve, gap_ms, step_ms, p)


def mean_idle_factor(curve, gap_ms: float, step_ms: float, exit_rates) -> np.ndarray:
    """F(p) = sum_j (1 - p) p^j f(gap_ms + j step_ms), f piecewise linear through `curve` ((gap, factor)
    knots, flat beyond both ends): the mean factor over the waits before a sent request when each request
    exits with probability p, independently (at p = 1 nothing is sent: the last knot's factor)."""
    p = np.clip(np.asarray(exit_rates, dtype=float), 0.0, 1.0)
    xs, ys = (np.asarray(v, dtype=float) for v in zip(*curve))
    if step_ms <= 0:
        return np.full(p.shape, float(np.interp(gap_ms, xs, ys)))
    n = max(int(np.ceil((xs[-1] - gap_ms) / step_ms)), 0) + 1  # waits before the curve goes flat
    f = np.interp(gap_ms + np.arange(n) * step_ms, xs, ys)
    # a polynomial in p (Horner): no (rates x waits) matrix, thousands of thresholds at a time
    return (1.0 - p) * np.polyval(f[::-1], p) + p ** n * ys[-1]


@dataclass(frozen=True)
class Edge:
    """A middle tier: the edge box's profile (server role: tail rows) and its link to the cloud.
    `tiers` restricts the second cut (TIERS), which is how a 2-tier baseline is priced on a 3-tier scene."""

    profile: Profile
    network: Network
    tiers: str = "all"

    def __post_init__(self) -> None:
        if self.tiers not in TIERS:
            raise ValueError(f"unknown tiers {self.tiers!r}; choose one of: {', '.join(TIERS)}")
        if self.profile.role != "server":
            raise ValueError(f"the edge profile {self.profile.source} is a {self.profile.role} profile; an edge "
                             "runs the middle of the network, so it needs a server-role profile (tail rows)")

    def only(self, tiers: str) -> "Edge":
        return Edge(self.profile, self.network, tiers)

    def second_cuts(self, k: int, K: int) -> list[int]:
        return {"all": list(range(k, K + 1)), "relay": [k], "edge": [K]}[self.tiers]


def breakdown_from(parts: dict) -> Breakdown:
    """A Breakdown back from its parts (a result file's `predicted`, a benchmark row); missing pricing keys
    (files from before the server's idle curve) leave the server priced as stored."""
    defaults = {"exit_rate": 0.0, "server_idle_factor": 1.0, "server_gap_ms": 0.0, "exit_gap_ms": 0.0,
                "edge_idle_factor": 1.0, "edge_gap_ms": 0.0}
    k1 = parts.get("k1")
    return Breakdown(**{p: float(parts.get(p, 0.0)) for p in PARTS}, bytes=float(parts.get("bytes", 0.0)),
                     k1=None if k1 is None else int(k1), up_codec=parts.get("up_codec"),
                     **{p: float(parts.get(p, defaults[p])) for p in PRICING},
                     **{c: tuple(tuple(map(float, knot)) for knot in parts.get(c, ())) for c in CURVES})


def predicted_parts(b: Breakdown) -> dict:
    """What a result stores as its prediction (best.json's `predicted`): every part, the pricing, the idle
    curves and the placement, enough for `breakdown_from` to price it again at any exit rate."""
    d = b.as_dict()
    return {**{p: d[p] for p in PARTS + PRICING + CURVES}, "bytes": b.bytes, "k1": b.k1, "up_codec": b.up_codec,
            "expected_ms": b.expected_ms}


def predicted_at(parts: dict, exit_rate: float) -> dict[str, float]:
    """The predicted parts with their expected total at another exit rate (a deployment's test split)."""
    b = breakdown_from(parts).with_exit_rate(exit_rate)
    return {**{p: getattr(b, p) for p in PARTS + PRICING}, "total_ms": b.expected_ms}


def predicted_per_sample(parts: dict, exited) -> dict[str, float]:
    """The prediction for a known sequence of samples (a deployment's, in the order sent): each sample
    costs the exit path (head + exit + device overhead; warm after a sample the device answered, cold
    otherwise) and, unless the exit answers it, the sent part. Gives the parts, the total, the p95, and the
    mean of each side over the samples (`mean_*`, what a measured run's per-part means compare with:
    device+exit holds what the edge measures as device time, encoding included)."""
    exited = np.asarray(exited, dtype=bool)
    out = predicted_at(parts, float(exited.mean()) if exited.size else 0.0)
    b = breakdown_from({**parts, **out})
    after_answer = np.concatenate([[False], exited[:-1]]) if exited.size else exited
    path = b.exit_path_at(after_answer.astype(float))
    # the server's and edge's blocks after the exits since the last send (the first request: after none)
    run = np.zeros(exited.size)
    for i in range(1, exited.size):
        run[i] = run[i - 1] + 1 if exited[i - 1] else 0

    def after_wait(curve, priced_ms, row_ms, gap_ms):
        if not curve or not exited.size:
            return np.full(exited.shape, priced_ms)
        xs, ys = zip(*curve)
        return row_ms * np.interp(gap_ms + run * b.exit_gap_ms, xs, ys)

    server = after_wait(b.server_idle_curve, b.server_ms, b.server_row_ms, b.server_gap_ms)
    edge = after_wait(b.edge_idle_curve, b.edge_ms, b.edge_row_ms, b.edge_gap_ms)
    per_sample = np.where(exited, path, path + b.sent_ms - b.server_ms + server - b.edge_ms + edge)
    if exited.size:
        out["total_ms"] = float(per_sample.mean())
    out["p95_ms"] = float(np.quantile(per_sample, 0.95)) if exited.size else float("nan")
    sent = 1.0 - out["exit_rate"]
    mean_server = float(np.where(exited, 0.0, server).mean()) if exited.size else sent * b.server_ms
    mean_edge = float(np.where(exited, 0.0, edge).mean()) if exited.size else sent * b.edge_ms
    # the share of the device's part run back to back (after an on-device answer), which drifts on its own;
    # with nothing sent (k = K, the only split with no bytes) every request follows an on-device answer
    device = (float(path.mean()) if exited.size else b.exit_path_ms) - b.always_ms
    if b.k1 is not None:  # the device never answers itself: every request sends, cold
        out.update(mean_device_exit_ms=device + b.encode_ms, mean_device_warm_ms=0.0,
                   mean_transfer_ms=b.transfer_ms + b.link_overhead_ms, mean_server_ms=mean_server
                   + sent * b.server_overhead_ms, mean_edge_ms=b.edge_ms + b.edge_exit_ms + b.edge_overhead_ms)
        return out
    if b.bytes == 0:
        warm = device
    elif exited.size:
        warm = float(np.where(after_answer, path, 0.0).mean())
    else:
        warm = out["exit_rate"] * float(b.exit_path_at(1.0))
    out.update(mean_device_exit_ms=device + sent * b.encode_ms,
               mean_device_warm_ms=warm,
               mean_transfer_ms=sent * (b.transfer_ms + b.link_overhead_ms),
               mean_server_ms=mean_server + sent * b.server_overhead_ms,
               mean_edge_ms=mean_edge + sent * b.edge_overhead_ms)
    return out


def _check_rate(exit_rate: float | None, k: int, K: int) -> float:
    if exit_rate is None:
        return 0.0
    if not 0.0 <= exit_rate <= 1.0:
        raise ValueError(f"exit rate must be in [0, 1], got {exit_rate}")
    if exit_rate > 0 and not has_exit(k, K):
        raise ValueError(f"split k={k} has no exit branch (exits exist for 0 < k < {K}), so its exit rate is 0")
    return float(exit_rate)


def _overheads(device: Profile, server: Profile, k: int, r: float, codec: str) -> dict[str, float]:
    dev, srv = device.overhead(k, r, codec), server.overhead(k, r, codec)  # each holds its own side's parts
    out = {"device_overhead_ms": dev["device_overhead_ms"], "encode_ms": dev["encode_ms"],
           "link_overhead_ms": srv["link_overhead_ms"], "server_overhead_ms": srv["server_overhead_ms"]}
    if k == device.K:  # nothing is sent: the device overhead alone
        out.update(encode_ms=0.0, link_overhead_ms=0.0, server_overhead_ms=0.0)
    return out


def edge_exit_cuts(device: Profile, edge: Edge | None, k: int, r: float, codec: str, with_exit: bool) -> list[int]:
    """The first cuts k1 from which (k, r)'s exit may run on the edge (none where it may not).

    Only an unpruned candidate's, with one codec (to the cloud) and an edge profile with exit rows: the end
    device sends the exact tensor at k1 (raw image or fp32), so the edge computes the candidate's own exit
    and every answer stays the evaluated one; a pruned head's blocks [k1, k) have no rows of their own."""
    if (edge is None or edge.tiers != "all" or not with_exit or rkey(r) != 0.0 or not 0 < k < device.K
            or split_via(codec)[1] is not None or not edge.profile.exit_at(k)):
        return []
    return list(range(k))


def predict(device: Profile, server: Profile, network: Network, k: int, r: float, codec: str = "fp32",
            exit_rate: float | None = None, n_bytes: float | None = None, edge: Edge | None = None,
            k2: int | None = None, k1: int | None = None, up_codec: str | None = None,
            up_bytes: float | None = None) -> Breakdown:
    """Breakdown of the latency of (k, r) under `codec` with a measured exit rate.

    `n_bytes` gives the (mean) payload of a variable-size codec, measured per sample; fixed-size codecs
    take the profile's bytes table.  With an `edge`, the second cut is `k2`, else the one with the lowest
    mean latency at this exit rate once every part is priced (idle curves included) among those its tiers
    allow; a two-link codec fixes it.  `k1` places the exit on the edge (`edge_exit_cuts`): the end device
    runs [0, k1), the edge [k1, k) and the exit, the cloud the rest (k2 = k); it sends the edge `up_codec`
    (UP_CODECS: png, of `up_bytes` mean bytes measured per sample, or the raw image at k1 = 0; fp32 features).
    """
    check_pair(device, server)
    rate = _check_rate(exit_rate, k, device.K)
    first, fixed, second = split_via(codec)  # a two-link codec fixes the edge's cut and its codec to the cloud
    if fixed is not None and (edge is None or fixed not in edge.second_cuts(k, device.K) or not k < fixed < device.K):
        raise ValueError(f"codec {codec} sends on from an edge at cut {fixed}: that needs an edge tier whose "
                         f"second cuts include it, between k={k} and K={device.K}")
    if k2 is not None and (edge is None or k2 not in edge.second_cuts(k, device.K) or fixed not in (None, k2)):
        raise ValueError(f"second cut k2={k2} is not one this scene allows at k={k} under codec {codec}")
    k2 = fixed if fixed is not None else k2
    if n_bytes is None:
        n_bytes = device.tensor_bytes(k, r, "fp32" if k == 0 and first == "raw" else first)
    if k == device.K:
        n_bytes = 0
    if k1 is not None:
        if k1 not in edge_exit_cuts(device, edge, k, r, codec, exit_rate is not None) or k2 not in (None, k):
            raise ValueError(f"an exit at k={k} (r={r}, {codec}) cannot run on the edge from k1={k1}: that needs an "
                             f"edge with exit rows, an unpruned candidate with an exit, one codec and 0 <= k1 < k")
        up_codec = up_codec or ("raw" if k1 == 0 else "fp32")
        if up_codec not in UP_CODECS[k1 == 0] or (is_variable(up_codec) and up_bytes is None):
            raise ValueError(f"the end device sends the edge an exact tensor: at k1={k1} one of "
                             f"{', '.join(UP_CODECS[k1 == 0])} (png with its measured bytes), not {up_codec}")
        return _edge_exit(device, server, network, edge, k, codec, rate, float(n_bytes), k1, up_codec, up_bytes)
    exit_ms = device.ms("exit", k, r) if exit_rate is not None else 0.0
    head_ms = device.ms("head", k, r, warm=k == device.K)  # k = K: every request back to back
    frame = server.frame_bytes  # the request's header, serialised with the payload
    b = Breakdown(device_ms=head_ms, exit_ms=exit_ms, transfer_ms=network.transfer_ms(n_bytes + frame if n_bytes else 0),
                  server_ms=server.ms("tail", k, r), bytes=float(n_bytes), exit_rate=rate, k=k, r=r, codec=codec,
                  **_overheads(device, server, k, r, first))
    if k == device.K:
        return b
    with_exit = exit_rate is not None and 0 < k
    warm = device.ms("head", k, r, warm=True) + device.ms("exit", k, r, warm=True) if with_exit else None
    if edge is None:
        return _after_idle(b, device, server, warm)
    cuts = [k2] if k2 is not None else edge.second_cuts(k, device.K)
    return min((_after_idle(_via_edge(b, device, server, edge, cut, second), device, server, warm) for cut in cuts),
               key=lambda x: x.expected_ms)


UP_CODECS = {True: ("raw", "png"), False: ("fp32",)}  # lossless: at k1 = 0 (the image) and after it


def _edge_exit(device: Profile, server: Profile, network: Network, edge: Edge, k: int, codec: str, rate: float,
               n_bytes: float, k1: int, up_codec: str, up_bytes: float | None) -> Breakdown:
    """The unpruned candidate (k, 0) with its exit on the edge: every request pays the device's [0, k1), the
    exact tensor up (the raw image at k1 = 0), the edge's [k1, k), its exit and runtime; the share not
    answered there pays the way on to the cloud (n_bytes under `codec`) and the cloud's tail k."""
    e = edge.profile
    check_pair(device, e)
    up = device.tensor_bytes(k1, 0.0, "fp32") if up_bytes is None else up_bytes  # the uint8 image at k1 = 0
    dev, at_edge, at_cloud = device.overhead(k1, 0.0, up_codec), e.overhead(k1, 0.0, up_codec), server.overhead(k, 0.0, codec)
    frame = server.frame_bytes
    b = Breakdown(device_ms=device.ms("head", k1, 0.0), exit_ms=0.0, transfer_ms=network.transfer_ms(up + frame),
                  server_ms=server.ms("tail", k, 0.0), bytes=float(up), exit_rate=rate, k=k, r=0.0, codec=codec,
                  device_overhead_ms=dev["device_overhead_ms"], encode_ms=dev["encode_ms"],
                  link_overhead_ms=at_edge["link_overhead_ms"], server_overhead_ms=at_cloud["server_overhead_ms"],
                  k2=k, k1=k1, edge_ms=max(e.ms("head", k, 0.0) - e.ms("head", k1, 0.0), 0.0),
                  edge_exit_ms=e.ms("exit", k, 0.0), edge_overhead_ms=at_edge["server_overhead_ms"],
                  edge_transfer_ms=edge.network.transfer_ms(n_bytes + frame), edge_bytes=n_bytes,
                  cloud_link_overhead_ms=at_cloud["link_overhead_ms"], up_codec=up_codec)
    b = _after_idle(b, device, server, None)
    # the edge computes every request: it waits from its reply to the next one (priced with every request
    # sent on, the longest wait), a fixed factor at any exit rate
    f = e.idle_factor(b.device_ms + b.device_overhead_ms + b.encode_ms + b.transfer_ms + b.link_overhead_ms
                      + b.sent_ms)
    return replace(b, edge_ms=b.edge_ms * f, edge_exit_ms=b.edge_exit_ms * f, edge_idle_factor=f)


def _after_idle(b: Breakdown, device: Profile, server: Profile, warm_ms: float | None) -> Breakdown:
    """`b` with its cold parts priced after the idle gap each side really waits (Profile.idle_factor).

    The device waits for the reply of a sent request (the sent part, its own encoding aside) before its
    next head; the server, from its reply to the next sent request: g0 (the device's path and the way up)
    plus the warm exit path of each exited request in between, priced at `b.exit_rate` (F_C).  `warm_ms`
    (head + exit back to back, with an exit) gives the saving of a request after an on-device answer."""
    f_dev = device.idle_factor(b.always_ms + b.sent_ms - b.encode_ms)
    cold = (b.device_ms + b.exit_ms) * f_dev
    gap = cold + b.device_overhead_ms + b.always_ms + b.sent_ms - b.server_ms - b.server_overhead_ms
    f_srv = server.idle_factor(gap)
    edge_gap = cold + b.device_overhead_ms + b.sent_ms - b.edge_ms - b.edge_overhead_ms  # F_E: with_exit_rate
    saving = max(cold - warm_ms, 0.0) if warm_ms is not None else 0.0
    exits = warm_ms is not None or b.k1 is not None
    step = cold + b.device_overhead_ms + b.always_ms - saving if exits else 0.0  # an exited request (warm)
    out = replace(b, device_ms=b.device_ms * f_dev, exit_ms=b.exit_ms * f_dev, server_ms=b.server_ms * f_srv,
                  warm_saving_ms=saving, device_idle_factor=f_dev, server_idle_factor=f_srv, server_gap_ms=gap,
                  exit_gap_ms=step, server_idle_curve=server.idle_curve(),
                  edge_gap_ms=edge_gap if b.edge_idle_curve else 0.0)
    return out.with_exit_rate(out.exit_rate)


def _via_edge(b: Breakdown, device: Profile, server: Profile, edge: Edge, k2: int, second: str = "fp32") -> Breakdown:
    """`b` (2-tier) with the edge between: it runs [k, k2) and sends the rest on to the cloud under `second`."""
    K, k, r, e = device.K, b.k, b.r, edge.profile
    first = split_via(b.codec)[0]
    check_pair(device, e)
    to_edge = e.overhead(k, r, first)["link_overhead_ms"]  # the link's framing cost, measured beside the edge
    if k2 == k:  # a relay: the tensor goes on as it came, the cloud runs the (pruned) tail
        return replace(b, link_overhead_ms=to_edge + b.link_overhead_ms, k2=k, edge_bytes=b.bytes,
                       edge_transfer_ms=edge.network.transfer_ms(b.bytes + server.frame_bytes if b.bytes else 0))
    mid = max(e.ms("tail", k, r) - (e.ms("tail", k2, 0.0) if k2 < K else 0.0), 0.0)
    on = device.tensor_bytes(k2, 0.0, second) if k2 < K else 0
    srv = server.overhead(k2, 0.0, second) if k2 < K else {"link_overhead_ms": 0.0, "server_overhead_ms": 0.0}
    return replace(b, link_overhead_ms=to_edge + srv["link_overhead_ms"], k2=k2, edge_ms=mid,
                   edge_idle_curve=e.idle_curve() if mid > 0 else (),
                   edge_overhead_ms=e.overhead(k, r, first)["server_overhead_ms"], edge_bytes=float(on),
                   edge_transfer_ms=edge.network.transfer_ms(on + server.frame_bytes if on else 0), server_ms=server.ms("tail", k2, 0.0) if k2 < K else 0.0,
                   server_overhead_ms=srv["server_overhead_ms"])


def expected_ms_many(device: Profile, server: Profile, network: Network, k: int, r: float, codec: str,
                     exit_rates, n_bytes: float | None = None, edge: Edge | None = None) -> np.ndarray:
    """Expected latency of (k, r, codec) with an exit, for an array of exit rates (one per threshold)."""
    rates = np.asarray(exit_rates, dtype=float)
    if rates.size and (rates.min() < 0 or rates.max() > 1):
        raise ValueError("exit rates must be in [0, 1]")
    return predict(device, server, network, k, r, codec, exit_rate=0.0 if device.exit_at(k) else None,
                   n_bytes=n_bytes, edge=edge).expected_at(rates)


def lower_bound_ms(device: Profile, server: Profile, network: Network, k: int, r: float,
                   codec: str = "fp32", edge: Edge | None = None, up_codecs: tuple[str, ...] = ("raw",)) -> float:
    """The lowest latency (k, r, codec) can reach over every threshold and objective, "no exit" included.

    With an exit, the best case answers every sample there (exit rate 1): the exit path; without one (or
    when sending is cheaper than the exit itself) the full path.  A variable-size codec is bounded by
    sending nothing at all (its bytes are not known before it is evaluated).  A candidate whose bound
    is already worse than the best feasible one found can be skipped without evaluating its accuracy.
    """
    none = predict(device, server, network, k, r, codec, exit_rate=None, n_bytes=0 if is_variable(codec) else None,
                   edge=edge)
    if not device.exit_at(k):
        return none.expected_ms
    # never below the line through p = 0 and p = 1 (F_C grows with p): its least is all warm or without an exit
    all_warm = none.device_overhead_ms + device.ms("head", k, r, warm=True) + device.ms("exit", k, r, warm=True)
    # an exit on the edge answering every request: its rows before any idle factor (each factor is >= 1); the
    # image under a variable-size codec (`up_codecs` at k1 = 0) bounded by sending nothing
    ways = [(k1, c) for k1 in edge_exit_cuts(device, edge, k, r, codec, True)
            for c in (up_codecs if k1 == 0 else UP_CODECS[False]) if c in UP_CODECS[k1 == 0]]
    at_edge = [b.device_ms / b.device_idle_factor + b.device_overhead_ms + b.always_ms - b.edge_ms - b.edge_exit_ms
               + (b.edge_ms + b.edge_exit_ms) / b.edge_idle_factor
               for b in (predict(device, server, network, k, r, codec, 1.0, 0 if is_variable(codec) else None, edge,
                                 k1=k1, up_codec=c, up_bytes=0 if is_variable(c) else None) for k1, c in ways)]
    return min([all_warm, none.expected_ms, *at_edge])


def predict_all(device: Profile, server: Profile, network: Network, codec: str = "fp32") -> pd.DataFrame:
    """Breakdowns of every (k, r) without an exit (exit rate 0): the reference table of a search."""
    check_pair(device, server)
    rows = [predict(device, server, network, k, r, codec).as_dict()
            for k in range(device.K + 1) for r in device.ratios]
    return pd.DataFrame(rows)

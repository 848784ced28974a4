"""An exhaustive reference written from the raw inputs, sharing no code with search/ nor profiles/.

It reads profile JSON documents and per-sample arrays, and applies the contract of docs/DESIGN (the
latency formula with the measured runtime overheads, warm device times after an on-device answer and the
measured idle curves, Wilson bounds, the fixed-sequence threshold test,
the Bonferroni share over the candidates) by itself, so a bug in the product's latency model or bounds
moves the product's answer and not this one.  Scope: the mean objective, fixed-size codecs (fp32, fp16,
int8, raw) and the variable ones through their per-sample bytes.

    candidates: {(k, r): {"selection": arrays, "test": arrays}}
    arrays:     {"label", "final": {codec: pred}, optional "exit_conf", "exit_pred", "nbytes": {codec: bytes}}
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np


def wilson(p: float, n: int, confidence: float, upper: bool = False) -> float:
    if confidence == 0:
        return p
    z = NormalDist().inv_cdf(confidence)
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, max(0.0, (centre + (spread if upper else -spread)) / (1 + z * z / n)))


class Tables:
    """The rows of a device and a server profile, looked up as written."""

    def __init__(self, device: dict, server: dict):
        self.K = int(device["meta"]["K"])
        self.ms = {}
        # the device's head and exit, the server's tail (an edge box's server profile may time heads too)
        for doc, parts in ((device, ("head", "exit")), (server, ("tail",))):
            for row in doc["latency"]:
                if row["part"] in parts:
                    key = (row["part"], int(row["k"]), round(float(row["r"]), 4))
                    self.ms[key] = float(row.get("mean_ms", row["median_ms"]))
        # an edge box's own head and exit rows (unpruned, r = 0): what it pays to run an exit itself
        self.own = {(row["part"], int(row["k"])): float(row.get("mean_ms", row["median_ms"]))
                    for row in server["latency"] if row["part"] in ("head", "exit") and float(row["r"]) == 0.0}
        # back to back (warm) device times where measured, else the cold ones
        self.warm = {(row["part"], int(row["k"]), round(float(row["r"]), 4)): float(row.get("warm_ms", row.get("mean_ms", row["median_ms"])))
                     for row in device["latency"]}
        self.bytes = {(int(b["k"]), round(float(b["r"]), 4), b["codec"]): int(b["bytes"]) for b in device["bytes"]}
        self.numel = {(int(b["k"]), round(float(b["r"]), 4)): math.prod(b["shape"]) for b in device["bytes"]}
        self.over = {}
        for doc in (device, server):
            for row in doc.get("overhead") or []:
                key = (int(row["k"]), row["codec"])
                for part in ("device_overhead_ms", "encode_ms", "link_overhead_ms", "server_overhead_ms"):
                    if part in row:
                        self.over.setdefault((key, part), []).append((self.numel[(key[0], round(float(row["r"]), 4))],
                                                                      float(row[part])))
        self.exits = any(row["part"] == "exit" for row in device["latency"])
        # a request's header on the wire beyond its payload, as the server's overhead section measured it
        self.frame = int((server["meta"].get("overhead") or {}).get("frame_bytes", 0))
        self.idle = {"device": device["meta"].get("idle"), "server": server["meta"].get("idle")}

    def slower(self, side: str, gap_ms: float) -> float:
        """The measured idle curve of `side` at `gap_ms`: 1 up to the rows' own 1 ms gap, a running
        maximum of the measured factors (at least 1) between the points, the last one beyond."""
        curve = self.idle[side]
        if not curve:
            return 1.0
        points = [(1.0, 1.0)]
        for g, f in sorted(zip(curve["gap_ms"], curve["factor"])):
            if g > 1.0:
                points.append((float(g), max(points[-1][1], float(f))))
        xs, ys = zip(*points)
        return float(np.interp(gap_ms, xs, ys))

    def slower_between_sends(self, gap_ms: float, step_ms: float, sent_share: float) -> float:
        """The server's mean slow-down over the waits before a sent request: `gap_ms` after a send, plus
        `step_ms` for each request answered on the device in between (the j-th with chance s (1 - s)^j)."""
        curve = self.idle["server"]
        flat = max([1.0, *curve["gap_ms"]]) if curve else 0.0
        total, left, j = 0.0, 1.0, 0
        while True:
            g = gap_ms + j * step_ms
            if g >= flat or step_ms <= 0 or left < 1e-15:
                return total + left * self.slower("server", g)
            total += left * sent_share * self.slower("server", g)
            left *= 1.0 - sent_share
            j += 1

    def overhead(self, part: str, k: int, r: float, codec: str | None) -> float:
        """Measured at some ratios, linear in the split tensor's element count between them, flat outside."""
        codec = None if k == self.K else ("raw" if k == 0 and codec not in (
            "png", "jpeg90", "jpeg75", "jpeg50", "webp90", "webp75", "webp50") else codec)
        points = sorted(self.over.get(((k, codec), part), []))
        if not points:
            return 0.0
        xs = sorted({x for x, _ in points})
        ys = [float(np.mean([y for x2, y in points if x2 == x])) for x in xs]
        return round(float(np.interp(self.numel[(k, r)], xs, ys)), 4)


def _send(n_bytes: float, bandwidth: float, rtt: float, frame: int = 0) -> float:
    return rtt + 8.0 * (n_bytes + frame) / (1000.0 * bandwidth) if n_bytes > 0 else 0.0


def latency(t: Tables, k: int, r: float, codec: str, with_exit: bool, sent_share: float,
            bandwidth: float, rtt: float, mean_bytes: float | None, edge: tuple | None = None,
            png_bytes: float | None = None) -> float:
    """Mean per-request latency (ms) of one deployment, the share of requests sent being `sent_share`.

    `edge` = (Tables of the device and the edge profile, edge-to-cloud bandwidth, rtt): the sent request
    goes to the edge, which relays it, runs some blocks and sends on, or runs the rest, whichever is fastest
    once every part is priced (idle curves included) at this share sent; and, for an unpruned candidate
    with an exit and an edge profile with head and exit rows, the edge running that exit (`_exit_on_edge`),
    the image sent raw or, given its mean PNG bytes `png_bytes`, as PNG.
    Cold device parts are slowed by the device's idle curve at the time it waits for a reply, the cloud's
    tail by the server's, averaged over the times from its reply to the next sent request; the edge's blocks
    by the edge's, over the times from the end of its blocks to the next sent request."""
    K = t.K
    # a two-link codec "FIRST>K2:SECOND": FIRST to the edge, which runs [k, K2) and sends SECOND on
    codec, _, second_link = codec.partition(">")
    fixed, _, second = second_link.partition(":")
    second = second or "fp32"  # what an edge that computes sends on
    head = t.ms.get(("head", k, r), 0.0)
    exit_ms = t.ms[("exit", k, r)] if with_exit else 0.0
    dev_over = t.overhead("device_overhead_ms", k, r, codec)
    if k == K:  # every request follows one the device answered: warm
        return t.warm[("head", k, r)] + dev_over
    if mean_bytes is None:
        mean_bytes = t.bytes[(k, r, "fp32" if codec == "raw" else codec)]
    encode = t.overhead("encode_ms", k, r, codec)
    # each way of serving a sent request: (the links there and back, the edge's blocks, the edge's runtime,
    # the cloud's runtime, the cloud's tail)
    cloud = (t.overhead("server_overhead_ms", k, r, codec), t.ms[("tail", k, r)])
    link = t.overhead("link_overhead_ms", k, r, codec)
    if edge is None:
        ways = [(_send(mean_bytes, bandwidth, rtt, t.frame) + link, 0.0, 0.0, *cloud)]
    else:
        e, bw2, rtt2 = edge
        up = _send(mean_bytes, bandwidth, rtt, t.frame) + e.overhead("link_overhead_ms", k, r, codec)
        ways = [(up + _send(mean_bytes, bw2, rtt2, t.frame) + link, 0.0, 0.0, *cloud)]  # relayed as it came
        if fixed:
            ways = []  # only the named cut, and no relay
        for k2 in ([int(fixed)] if fixed else range(k + 1, K + 1)):
            mid = max(e.ms[("tail", k, r)] - (e.ms[("tail", k2, 0.0)] if k2 < K else 0.0), 0.0)
            mid_runtime = e.overhead("server_overhead_ms", k, r, codec)
            if k2 == K:
                ways.append((up, mid, mid_runtime, 0.0, 0.0))
            else:
                ways.append((up + _send(t.bytes[(k2, 0.0, second)], bw2, rtt2, t.frame)
                             + t.overhead("link_overhead_ms", k2, 0.0, second), mid, mid_runtime,
                             t.overhead("server_overhead_ms", k2, 0.0, second), t.ms[("tail", k2, 0.0)]))
    priced = [_priced(t, w, head, exit_ms, dev_over, encode, with_exit, k, r, sent_share,
                      None if edge is None else edge[0]) for w in ways]
    if edge is not None and with_exit and r == 0.0 and not fixed and ("exit", k) in edge[0].own:
        ups = [(k1, up, None) for k1 in range(k) for up in (("raw",) if k1 == 0 else ("fp32",))]
        ups += [(0, "png", png_bytes)] if png_bytes is not None else []
        priced += [_exit_on_edge(t, edge, k, k1, codec, sent_share, bandwidth, rtt, mean_bytes, up, size)
                   for k1, up, size in ups]
    return min(priced)  # the fastest way once priced


def _exit_on_edge(t: Tables, edge: tuple, k: int, k1: int, codec: str, sent_share: float, bandwidth: float,
                  rtt: float, on_bytes: float, up_codec: str, up_bytes: float | None) -> float:
    """The unpruned (k, 0)'s exit run by the edge: the device runs [0, k1) and sends the exact tensor (the
    raw image at k1 = 0) to the edge, which runs [k1, k) and the exit on every request and sends the
    unanswered share on under `codec` to the cloud's tail k.  The device waits for every reply (cold, priced
    at the longest wait: every request sent on); the cloud's tail as in `_priced`; the edge's part after
    its wait from the end of that part to the next request, priced with every request sent on."""
    e, bw2, rtt2 = edge
    head = t.ms.get(("head", k1, 0.0), 0.0)
    dev_over, encode = t.overhead("device_overhead_ms", k1, 0.0, up_codec), t.overhead("encode_ms", k1, 0.0, up_codec)
    size = t.bytes[(k1, 0.0, "fp32")] if up_bytes is None else up_bytes
    up = _send(size, bandwidth, rtt, t.frame) + e.overhead("link_overhead_ms", k1, 0.0, up_codec)
    own = max(e.own.get(("head", k), 0.0) - e.own.get(("head", k1), 0.0), 0.0) + e.own[("exit", k)]
    own_runtime = e.overhead("server_overhead_ms", k1, 0.0, up_codec)
    on = _send(on_bytes, bw2, rtt2, t.frame) + t.overhead("link_overhead_ms", k, 0.0, codec)
    cloud_runtime, tail = t.overhead("server_overhead_ms", k, 0.0, codec), t.ms[("tail", k, 0.0)]
    cold = head * t.slower("device", up + own + own_runtime + on + cloud_runtime + tail)
    to_exit = encode + up + own + own_runtime  # every request, after the device's part
    after_send = cold + dev_over + to_exit + on  # the cloud's wait when the next request is sent on too
    own *= e.slower("server", cold + dev_over + encode + up + on + cloud_runtime + tail * t.slower("server", after_send))
    return (cold + dev_over + encode + up + own + own_runtime
            + sent_share * (on + cloud_runtime + tail * t.slower_between_sends(after_send, cold + dev_over + to_exit,
                                                                                sent_share)))


def _priced(t: Tables, way: tuple, head: float, exit_ms: float, dev_over: float, encode: float, with_exit: bool,
            k: int, r: float, sent_share: float, e: Tables | None) -> float:
    links, mid, mid_runtime, cloud_runtime, cloud_tail = way
    way = links + mid + mid_runtime
    cold = (head + exit_ms) * t.slower("device", way + cloud_runtime + cloud_tail)
    warm = min(cold, t.warm[("head", k, r)] + t.warm[("exit", k, r)]) if with_exit else cold
    step = warm + dev_over if with_exit else 0.0
    # exited requests (each after another answer: warm) lengthen the server's wait for the next sent one;
    # the edge's wait runs from the end of its blocks (the cloud's part and the reply included)
    edge_gap = cold + dev_over + encode + links + cloud_runtime + cloud_tail
    cloud_tail *= t.slower_between_sends(cold + dev_over + encode + way, step, sent_share)
    if mid > 0:
        mid *= e.slower_between_sends(edge_gap, step, sent_share)
    path = cold + dev_over
    if with_exit:  # a request after an exited one (share 1 - sent) runs warm
        path -= (1.0 - sent_share) * (cold - warm)
    return path + sent_share * (encode + links + mid + mid_runtime + cloud_runtime + cloud_tail)


def optimum(device: dict, server: dict, candidates: dict, A0: float, bandwidth: float, rtt: float,
            confidence: float = 0.95, families: int | None = None, codecs: dict[int, list[str]] | None = None,
            metric_top5: bool = False, edge: dict | None = None, edge_bandwidth: float = 100.0,
            edge_rtt: float = 10.0) -> dict | None:
    """The fastest (k, r, codec, t) whose bounded selection accuracy reaches A0, by brute force.

    `codecs` maps each k to the codecs it may use (default: the codecs its arrays hold); `families` the
    number of (k, r, codec) the bound is shared among (default: all of them here).  `edge`: an edge
    profile document, a third tier linked to the cloud at `edge_bandwidth` Mbit/s and `edge_rtt` ms.
    """
    t = Tables(device, server)
    tiers = None if edge is None else (Tables(device, edge), edge_bandwidth, edge_rtt)
    image = candidates.get((0, 0.0), {}).get("selection", {}).get("nbytes", {}).get("png")
    png_bytes = float(np.mean(image)) if image is not None and "png" in (codecs or {}).get(0, ["png"]) else None
    options = []
    for (k, r), splits in candidates.items():
        sel = splits["selection"]
        for codec in (codecs or {}).get(k, list(sel["final"])):
            if codec in sel["final"]:
                options.append((k, r, codec))
    M = families or len(options)
    each = 0.0 if confidence == 0 else 1 - (1 - confidence) / M
    best = None
    for k, r, codec in options:
        sel = candidates[(k, r)]["selection"]
        n = len(sel["label"])
        final_ok = sel["final"][codec] == sel["label"]
        nb = sel.get("nbytes", {}).get(codec)
        mean_bytes = float(np.mean(nb)) if nb is not None else None
        settings = [(None, float(final_ok.mean()), 0.0)]
        if t.exits and 0 < k < t.K and sel.get("exit_conf") is not None:
            conf, exit_ok = sel["exit_conf"], sel["exit_pred"] == sel["label"]
            running = 1.0
            for th in sorted(set(conf.tolist()), reverse=True):  # fixed sequence: from the fewest exits down
                at = conf >= th
                acc = float(np.where(at, exit_ok, final_ok).mean())
                running = min(running, wilson(acc, n, each))
                settings.append((th, running, float(at.mean())))
        for th, acc_or_bound, rate in settings:
            bound = wilson(acc_or_bound, n, each) if th is None else acc_or_bound
            if bound < A0:
                continue
            share = 0.0 if k == t.K else (wilson(1 - rate, n, each, upper=True) if th is not None else 1.0)
            ms = latency(t, k, r, codec, th is not None, share, bandwidth, rtt, mean_bytes, tiers, png_bytes)
            if best is None or ms < best["latency_ms"]:
                best = {"k": k, "r": r, "codec": codec, "t": th, "latency_ms": ms, "acc_bound": bound}
    return best

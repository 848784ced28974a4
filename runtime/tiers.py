"""Three tiers deployed for real: the end device, the edge server (runtime.relay) and the cloud server.

A candidate (k, r) with an exit threshold t, a codec and a second cut k2 (search.latency picks it) is
exported as three directories, each with its own manifest.json (runtime.manifest's format):

- end/:   head.onnx (+ exit), as runtime.export.export_split writes it (its tail.onnx, blocks [k, K), stays
          beside it: the same directory deploys as a two-tier split);
- edge/:  edge.onnx = blocks [k, k2) of the pruned candidate (none when k2 = k: the edge relays; the rest of
          the network when k2 = K: the edge answers), its input the end device's tensor under the codec;
- cloud/: tail.onnx = blocks [k2, K), its input the tensor at k2 under the second link's codec (fp32 unless
          a two-link codec names another; the end's codec when k2 = k); absent
          when k2 = K.  The blocks from k2 > k on are unpruned in shape (pruning trims only block k's input)
          but are the candidate's own, fine-tuned weights.

Edge exit placement (`k1`, 0 <= k1 < k; the cloud runs [k, K), so k2 = k): the candidate's own network,
exit and threshold, placed differently.  The end device runs blocks [0, k1) with no exit and sends the exact
tensor (the uint8 image at k1 = 0, raw or PNG, lossless; fp32 features otherwise); the edge runs blocks [k1, k) and the exit
at k as one graph and answers a sample itself when the exit's confidence is >= t, else sends the tensor at
k under the candidate's codec to the cloud, which runs [k, K):

- end/:   head.onnx = blocks [0, k1) (none at k1 = 0), no exit, as export_split writes the candidate viewed
          at k1 (its tail.onnx, blocks [k1, K) without the exit, stays beside it); tiers.k1 = k1;
- edge/:  edge.onnx = blocks [k1, k) fused with the exit (outputs "exit", "split"); tiers.exit = {k, t};
- cloud/: tail.onnx = blocks [k, K), its input the tensor at k under the candidate's codec.

So the candidate's evaluated answers still predict every sample: the ones its exit answers are answered
at the edge (runtime.edge's edge_exited), and if the cloud fails the edge's exit answers the rest.

Every part is run by ONNX Runtime and compared with PyTorch (runtime.export.check_close).  `deploy_three`
starts the cloud and the edge server on loopback, shapes both links (runtime.link, at the sender of each
hop), runs the end device over the test split (runtime.edge) and compares the prediction with the
measurement per tier: device (head + exit + encoding), end-to-edge transfer, edge compute, edge-to-cloud
transfer, cloud compute, and the total (mean and p95).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from compress import codec as codecs
from compress.candidate import HeadWithExit
from profiles.profile import foreign_profiles
from runtime import link as links
from runtime import manifest as mf
from runtime.cloud import CloudServer
from runtime.deploy import agreement, drift_line, evaluated_answers, profile_check, quota_line, retimed_ms, run_end
from runtime.edge import stall_line
from runtime.export import ATOL, RTOL, SAMPLES, export_checked, export_split
from runtime.relay import RelayServer
from search.latency import UP_CODECS, predicted_per_sample

END, EDGE, CLOUD = "end", "edge", "cloud"  # the three directories under the export directory
EDGE_ONNX = "edge.onnx"
TIER_ROWS = ("device+exit", "end-edge transfer", "edge", "edge-cloud transfer", "cloud", "mean total", "p95 total")


def tier_dirs(out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    return {END: out / END, EDGE: out / EDGE, CLOUD: out / CLOUD}


def export_tiers(candidate, data, out_dir: str | Path, threshold: float | None, codec: str, k2: int,
                 predicted: dict[str, Any] | None = None, seed: int = 0, samples: int = SAMPLES,
                 atol: float = ATOL, rtol: float = RTOL, k1: int | None = None,
                 up_codec: str | None = None) -> dict[str, dict[str, Any]]:
    """Write end/, edge/ and cloud/ under `out_dir` (see the module doc); returns their manifests.

    Each part is checked against PyTorch on `samples` test images (ValueError beyond the tolerance).
    k = K sends nothing: only end/ is written (the device answers every sample).  `k1` places the
    candidate's exit on the edge (the module doc; check_k1 says what it needs), the end device sending
    `up_codec` (raw or png at k1 = 0, fp32 after; default the uncompressed tensor).
    """
    k, model = candidate.k, candidate.model
    K = model.K
    if not (isinstance(k2, int) and k <= k2 <= K):
        raise ValueError(f"second cut k2={k2!r} must be an integer in k..K = {k}..{K}")
    if k1 is not None:
        check_k1(candidate, threshold, codec, k2, k1, up_codec)
    codec, fixed, second = codecs.split_via(codec)  # a two-link codec: the edge sends on under `second`
    if fixed is not None and (fixed != k2 or not k < k2 < K):
        raise ValueError(f"codec {codec}>{fixed}:{second} sends on at cut {fixed}, the deployment cuts at k2={k2}")
    first = k if k1 is None else k1  # where the end device cuts
    if k1 is not None:  # the end device sends the exact tensor, the edge the candidate's codec
        codec, second = up_codec or "fp32", codec
    dirs = tier_dirs(out_dir)
    end_part = candidate if k1 is None else dataclasses.replace(candidate, k=k1, exit=None)  # the candidate at k1
    end = export_split(end_part, data, dirs[END], threshold if k1 is None else None, codec, predicted=predicted,
                       seed=seed, samples=samples, atol=atol, rtol=rtol)
    end["tiers"] = {"role": END, "k": first, "k2": k2, "K": K, "k1": k1}
    mf.save(end, dirs[END])
    out = {END: end}
    for stale in (EDGE, CLOUD):  # a previous export with another k2 must not linger
        for name in (mf.NAME, EDGE_ONNX, mf.TAIL):
            (dirs[stale] / name).unlink(missing_ok=True)
    if first < K:
        dirs[EDGE].mkdir(parents=True, exist_ok=True)
    if first == K:
        return out

    exit_branch = candidate.exit if k1 is not None else None
    modes = [(m, m.training) for m in (model, exit_branch) if m is not None]
    try:
        images, _ = data.arrays("test")
        x = data.normalize(images[:samples])
        with torch.no_grad():
            # what the edge decodes (fp32 here: codecs are checked apart)
            at_first = model.head(first).eval()(x) if first > 0 else x
            at_k2 = model.blocks(first, k2).eval()(at_first)
            logits = model.blocks(k2, K).eval()(at_k2)
            exit_logits = exit_branch.eval()(at_k2) if exit_branch is not None else None
        diffs: dict[str, float] = {}
        edge_part = None
        if k2 > first:
            blocks = model.blocks(first, k2)
            if exit_branch is None:
                names = ("logits",) if k2 == K else ("split",)
                module, refs = blocks, (at_k2,)
            else:  # the exit at k2 = k in the same graph
                names = ("exit", "split")
                module, refs = HeadWithExit(blocks, exit_branch), (exit_logits, at_k2)
            diffs.update(export_checked(module, at_first, dirs[EDGE] / EDGE_ONNX, names, refs, atol, rtol))
            edge_part = {"file": EDGE_ONNX, "input": "input", "input_shape": list(at_first.shape[1:]),
                         "output": names[-1], "blocks": [first, k2]}
            if exit_branch is not None:
                edge_part["outputs"] = list(names)
        forward = None
        if k2 < K:  # what the edge sends on: the end's payload as it came (a relay), else the tensor at k2
            sent = mf.wire_codec(k2, K, end["codec"] if k2 == first else second)
            forward = _split_entry(at_k2, sent)
        placed = {"k1": k1}
        edge_placed = {**placed, "exit": None if k1 is None else {"k": k2, "t": float(threshold),
                                                                   "classes": int(logits.shape[1])}}
        out[EDGE] = _tier_manifest(end, EDGE, k2, at_first, edge_part, forward, predicted, diffs, atol, rtol,
                                   edge_placed)
        mf.save(out[EDGE], dirs[EDGE])
        if k2 < K:
            dirs[CLOUD].mkdir(parents=True, exist_ok=True)
            cloud_diffs = export_checked(model.blocks(k2, K), at_k2, dirs[CLOUD] / mf.TAIL, ("logits",), (logits,),
                                         atol, rtol, where="cloud ")
            tail = {"file": mf.TAIL, "input": "input", "input_shape": list(at_k2.shape[1:]), "output": "logits",
                    "blocks": [k2, K]}
            cloud = _tier_manifest(end, CLOUD, k2, at_k2, tail, None, predicted, cloud_diffs, atol, rtol, placed)
            cloud.update(k=k2, codec=forward["codec"])  # the cloud's split is k2, under what the edge sends
            cloud["split"] = {kk: v for kk, v in forward.items() if kk != "codec"}
            mf.save(cloud, dirs[CLOUD])
            out[CLOUD] = cloud
    finally:
        for m, training in modes:
            m.train(training)
    return out


def check_k1(candidate, threshold: float | None, codec: str, k2: int, k1: Any, up_codec: str | None = None) -> None:
    """ValueError (one line) unless `k1` can place the candidate's exit on the edge: 0 <= k1 < k, a
    threshold and an exit branch at k, k2 = k (the cloud runs [k, K)), a one-link codec at k, and a lossless
    `up_codec` to the edge (search.latency.UP_CODECS: raw or png at k1 = 0, fp32 after; None: uncompressed)."""
    k, K = candidate.k, candidate.model.K
    if isinstance(k1, bool) or not isinstance(k1, int) or not 0 <= k1 < k:
        raise ValueError(f"first cut k1={k1!r} must be an integer with 0 <= k1 < k = {k} (the end device's blocks "
                         f"before the exit at k)")
    if threshold is None:
        raise ValueError(f"k1={k1} places the exit at k={k} on the edge: it needs a threshold t in [0, 1], got None")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"k1={k1}: threshold t must be in [0, 1], got {threshold}")
    if candidate.exit is None:
        raise ValueError(f"k1={k1} places the exit at k={k} on the edge, but split k={k} has no exit branch "
                         f"(exits exist for 0 < k < {K})")
    if k2 != k:
        raise ValueError(f"k1={k1}: the edge runs blocks [k1, k) and the exit, the cloud [k, K), so k2 must be "
                         f"k = {k}, got k2={k2}")
    if codecs.split_via(codec)[1] is not None:
        raise ValueError(f"k1={k1}: two-link codec {codec!r} refused; with an exit on the edge the end device sends "
                         f"the exact tensor and the edge one of: {', '.join(codecs.FEATURE_CODECS)}")
    mf.wire_codec(k, K, codec)  # a feature codec at k (an image codec is refused here)
    lossless = UP_CODECS[k1 == 0] + (("fp32",) if k1 == 0 else ())  # fp32 at k1 = 0 means the raw image
    if up_codec is not None and up_codec not in lossless:
        raise ValueError(f"k1={k1}: the end device sends the edge the exact tensor, one of {', '.join(lossless)}, "
                         f"not {up_codec!r} (the edge's exit must see what it was evaluated on)")


def _split_entry(tensor: torch.Tensor, sent: str) -> dict[str, Any]:
    """The manifest's "split" entry of a tensor sent under `sent` (as export_split writes it), plus its codec."""
    numel = int(np.prod(tensor.shape[1:]))
    most = codecs.max_payload_bytes(numel, sent)
    return {"shape": list(tensor.shape[1:]), "wire_dtype": "uint8" if sent == "raw" else sent,
            "bytes": None if codecs.is_variable(sent) else most, "max_bytes": most, "codec": sent}


def _tier_manifest(end: dict[str, Any], role: str, k2: int, received: torch.Tensor, part: dict | None,
                   forward: dict | None, predicted: dict | None, diffs: dict[str, float], atol: float,
                   rtol: float, placed: dict[str, Any] | None = None) -> dict[str, Any]:
    """A server tier's manifest: the end's, with this tier's part as the served "tail" and no head or exit
    (an exit placed on the edge is its tiers.exit, which `placed` adds with k1)."""
    return {**{key: end[key] for key in ("format", "model", "k", "r", "K", "codec", "data", "input", "split",
                                         "versions")},
            "t": None, "exit": False, "head": None, "tail": part,
            "tiers": {"role": role, "k": end["k"], "k2": k2, "K": end["K"], "forward": forward, **(placed or {})},
            "predicted": predicted,
            "tolerance": {"atol": atol, "rtol": rtol, "samples": int(received.shape[0]), "max_abs_diff": diffs},
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


# -- predicted and measured, per tier -------------------------------------------------------------------

def predicted_tiers(parts: dict[str, Any], exited, end_edge_link_ms: float = 0.0) -> dict[str, float]:
    """The latency model's per-tier means for exactly these samples (exit decisions `exited`): each sent
    sample pays every tier, an exited one the device only.  `end_edge_link_ms` is the share of the
    prediction's link_overhead_ms on the first hop (the edge profile's link overhead at (k, r, codec));
    the rest is the edge-to-cloud hop's framing.  The tiers sum to the total.

    With an exit placed on the edge (`parts["k1"]` not None) every sample crosses the first hop and runs
    the edge's blocks and exit (`edge_exit_ms`); only the samples the exit does not answer go on.  The
    breakdown then holds each hop's framing apart (search.latency: link_overhead_ms the first hop's,
    cloud_link_overhead_ms the second's), so `end_edge_link_ms` is not needed."""
    p = predicted_per_sample(parts, exited)
    sent = 1.0 - p["exit_rate"]
    first = min(float(end_edge_link_ms), p["link_overhead_ms"])
    tiers = {"device+exit": p["mean_device_exit_ms"], "device warm": p["mean_device_warm_ms"],  # a share of it
             "end-edge transfer": sent * (p["transfer_ms"] + first),
             "edge": p["mean_edge_ms"],  # each sent sample priced after its own wait, as the cloud
             "edge-cloud transfer": sent * (p["edge_transfer_ms"] + p["link_overhead_ms"] - first),
             "cloud": p["mean_server_ms"],  # each sent sample priced after its own wait
             "mean total": p["total_ms"], "p95 total": p["p95_ms"]}
    if parts.get("k1") is not None:  # every sample reaches the edge; the sent ones go on
        tiers.update({"end-edge transfer": p["transfer_ms"] + p["link_overhead_ms"],
                      "edge": p["edge_ms"] + p.get("edge_exit_ms", 0.0) + p["edge_overhead_ms"],
                      "edge-cloud transfer": sent * (p["edge_transfer_ms"] + p.get("cloud_link_overhead_ms", 0.0))})
    return {**tiers, "exit_rate": p["exit_rate"]}


def measured_tiers(df: pd.DataFrame) -> dict[str, float]:
    """Per-tier means over all samples (0 where a tier did not run), from runtime.edge's rows with the
    edge server's reply trailer; edge + edge-cloud + cloud is what the end device saw as server_ms."""
    if not len(df):
        return dict.fromkeys(TIER_ROWS, float("nan"))
    return {"device+exit": float((df.device_ms + df.exit_ms).mean()),
            "end-edge transfer": float(df.transfer_ms.mean()),
            "edge": float(df.edge_ms.mean()), "edge-cloud transfer": float(df.edge_transfer_ms.mean()),
            "cloud": float(df.cloud_ms.mean()),
            "mean total": float(df.total_ms.mean()), "p95 total": float(np.percentile(df.total_ms, 95))}


def deploy_three(candidate, data, out_dir: str | Path, threshold: float | None, codec: str, k2: int,
                 parts: dict[str, Any] | None = None, *, seed: int = 0, limit: int | None = None,
                 bandwidth: float | None = 10.0, rtt: float = 5.0, edge_cloud_bandwidth: float | None = 100.0,
                 edge_cloud_rtt: float = 10.0, slowdown: float = 1.0, edge_slowdown: float = 1.0,
                 edge_threads: int = 1, server_threads: int = 1, end_edge_link_ms: float = 0.0,
                 secret: bytes | None = None, cloud_timeout: float = 2.0, cloud_retries: int = 1,
                 csv: str | Path | None = None, progress: bool = False, cpu_quota: float | None = None,
                 quota_period_ms: float | None = None, k1: int | None = None,
                 up_codec: str | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Export the three parts of (candidate, t, codec, k2), serve the cloud and the edge on 127.0.0.1, run the
    end device over the first `limit` test samples; (per-sample rows, summary).  `k1` places the exit on the
    edge (export_tiers; k2 = k then): the edge answers the samples the exit answers, the cloud the others.

    `bandwidth`/`rtt` shape the end-to-edge link (at the end device), `edge_cloud_bandwidth`/`edge_cloud_rtt`
    the edge-to-cloud link (at the edge); `slowdown` and `edge_slowdown` emulate the end device and the
    edge box (their profiles' factors); `cpu_quota` runs the end device under that CPU quota instead
    (runtime.deploy.run_end), as a device profiled under one was measured.  With `parts` (a Breakdown's dict for this k2), the summary holds
    `tiers`: {row: {"predicted", "measured"}} for the rows of TIER_ROWS, the prediction made for exactly
    the samples sent, and `agreement`, the share of samples answered as the candidate's evaluation says
    (an exit at the edge counting as the exit).  The summary also holds runtime.edge.summarize's keys
    (edge_exit_rate among them) and both servers' stats.
    """
    if k1 is not None:
        check_k1(candidate, threshold, codec, k2, k1, up_codec)
    evaluated = evaluated_answers(candidate, threshold, codec, limit)
    predicted = None
    if evaluated is not None and parts is not None:
        if parts.get("k2") not in (None, k2):
            raise ValueError(f"the prediction is for k2={parts['k2']}, the deployment for k2={k2}")
        if "k1" in parts and parts["k1"] != k1:
            raise ValueError(f"the prediction is for k1={parts['k1']}, the deployment for k1={k1}")
        exited, answer, label = evaluated
        predicted = {**predicted_tiers(parts, exited, end_edge_link_ms), "accuracy": float((answer == label).mean())}
    manifests = export_tiers(candidate, data, out_dir, threshold, codec, k2, predicted=predicted, seed=seed, k1=k1,
                             up_codec=up_codec)
    dirs = tier_dirs(out_dir)
    k, K = candidate.k, candidate.model.K
    # the end device must outwait the edge's attempts on the cloud, so the edge's ERROR reaches it
    timeout = max(5.0, (cloud_retries + 1) * cloud_timeout + 2.0)
    with ExitStack() as stack:
        cloud = relay = None
        server = None
        if k < K:
            if CLOUD in manifests:
                cloud = stack.enter_context(CloudServer(dirs[CLOUD], "127.0.0.1", 0, threads=server_threads,
                                                        secret=secret))
            relay = stack.enter_context(RelayServer(
                dirs[EDGE], None if cloud is None else ("127.0.0.1", cloud.port),
                link=links.Link(edge_cloud_bandwidth, edge_cloud_rtt), slowdown=edge_slowdown,
                cloud_timeout=cloud_timeout, cloud_retries=cloud_retries, host="127.0.0.1", port=0,
                threads=edge_threads, secret=secret))
            server = ("127.0.0.1", relay.port)
        df, summary = run_end(dirs[END], server, data, cpu_quota=cpu_quota, quota_period_ms=quota_period_ms,
                              bandwidth=bandwidth, rtt=rtt, slowdown=slowdown, limit=limit, csv=csv, secret=secret,
                              timeout=timeout, progress=progress)
        summary["edge_stats"] = dict(relay.stats) if relay is not None else None
        summary["cloud_stats"] = dict(cloud.stats) if cloud is not None else None
    summary.update(k1=k1, k2=k2, edge_cloud_bandwidth_mbps=edge_cloud_bandwidth, edge_cloud_rtt_ms=edge_cloud_rtt,
                   edge_slowdown=edge_slowdown, fallbacks=int(df.fallback.sum()),
                   edge_exits=int(df.edge_exited.sum()), edge_fallbacks=int(df.edge_fallback.sum()),
                   measured=measured_tiers(df))
    if predicted is not None:
        summary["predicted"] = predicted
        summary["tiers"] = {row: {"predicted": predicted[row], "measured": summary["measured"][row]}
                            for row in TIER_ROWS}
    if evaluated is not None:
        summary["agreement"] = agreement(df, *evaluated[:2])
    return df, summary


def format_tiers(summary: dict[str, Any], promised: dict[str, float] | None = None) -> str:
    """The per-tier table of a deploy_three summary: promised (if given), predicted, measured, difference."""
    promised = promised or {}
    lines = [f"{'ms per request':<20}{'promised':>10}{'predicted':>10}{'measured':>10}{'vs pred':>9}"]
    for row in TIER_ROWS:
        cell = summary.get("tiers", {}).get(row, {"predicted": float("nan"), "measured": summary["measured"][row]})
        p, m, pr = cell["predicted"], cell["measured"], promised.get(row)
        vs = f"{100 * (m / p - 1):>+8.1f}%" if p and p > 0.05 else f"{'':>9}"  # no ratio of a tier the model calls ~0
        lines.append(f"{row:<20}{(f'{pr:.3f}' if pr is not None else ''):>10}{p:>10.3f}{m:>10.3f}{vs}")
    return "\n".join(lines)


def tiers_line(k: int, k2: int | None, K: int, k1: int | None = None) -> str:
    """Which tier runs which blocks (as results.report prints it); `k1`: the exit at k placed on the edge."""
    if k == K or k2 is None:
        return f"end device blocks 0..{K - 1} (nothing sent)"
    if k1 is not None:
        end = f"end device blocks 0..{k1 - 1} (no exit)" if k1 > 0 else "end device sends the image"
        return f"{end}, edge blocks {k1}..{k - 1} and the exit at {k}, cloud blocks {k}..{K - 1}"
    edge = ("relays the tensor" if k2 == k else f"runs blocks {k}..{k2 - 1}" + (" and answers" if k2 == K else ""))
    end = f"end device blocks 0..{k - 1}" if k > 0 else "end device sends the image"
    return f"{end}, edge {edge}" + ("" if k2 == K else f", cloud blocks {k2}..{K - 1}")


def deploy_searched(ctx, cand, result: dict, out: Path, limit: int | None, progress: bool = False) -> dict[str, Any]:
    """`auto.py --deploy --edge_device ...`: deploy the search's answer on three tiers and print the table
    (with best["k1"] not None: the exit placed on the edge, k2 = k)."""
    import json

    problem, best = ctx.problem, result["best"]
    k, r, K = int(best["k"]), float(best["r"]), problem.device.K
    k1 = None if best.get("k1") is None else int(best["k1"])
    k2 = K if k == K else k if k1 is not None else int(best["k2"])
    edge = problem.edge
    parts = {**result["predicted"], "k2": k2}
    quota = problem.device.meta.get("cpu_quota") or {}  # the end device runs under the quota it was profiled under
    check = profile_check(problem.device, problem.server, k, r, edge=edge.profile, k2=k2, k1=k1)  # timed right before
    _, summary = deploy_three(
        cand, ctx.pool.data, out, best["t"], best["codec"], k2, parts, seed=ctx.spec.seed, limit=limit,
        bandwidth=problem.network.bandwidth_mbps, rtt=problem.network.rtt_ms,
        edge_cloud_bandwidth=edge.network.bandwidth_mbps, edge_cloud_rtt=edge.network.rtt_ms,
        slowdown=float(problem.device.meta.get("slowdown", 1.0)),
        edge_slowdown=float(edge.profile.meta.get("slowdown", 1.0)),
        edge_threads=int(edge.profile.meta.get("threads", 1)),
        server_threads=int(problem.server.meta.get("threads", 1)),
        end_edge_link_ms=edge.profile.overhead(k, r, codecs.first(best["codec"]))["link_overhead_ms"]
        if k < K and k1 is None else 0.0,  # with k1 the breakdown holds each hop's framing apart
        csv=out / "end.csv", progress=progress, cpu_quota=quota.get("fraction"), quota_period_ms=quota.get("period_ms"),
        k1=k1, up_codec=best.get("up_codec"))
    print(f"\n== deployed on three tiers over loopback (end-edge {problem.network}, edge-cloud {edge.network}, "
          f"edge {edge.profile.device}), {summary['n']} test samples")
    print(f"tiers: {tiers_line(k, k2, K, k1)}")
    if summary.get("cpu_quota"):
        print(quota_line(summary))
    foreign = foreign_profiles(problem.device, edge.profile, problem.server)
    if foreign:
        print(foreign)
    print("predicted: the latency model for exactly these samples' exit decisions; promised: the search's, "
          "from the selection split")
    promised = {"mean total": best["expected_ms"]}  # at the promised (bounded) exit rate
    if ctx.spec.objective == "p95":
        promised["p95 total"] = best["latency_ms"]
    print(format_tiers(summary, promised))
    p = summary.get("predicted", {})
    at_edge = f", {summary['edge_fallbacks']} answered by the edge's exit for a failed cloud" if k1 is not None else ""
    print(f"accuracy {summary['accuracy']:.4f} (predicted {p.get('accuracy', float('nan')):.4f}, promised >= "
          f"{best['acc_bound']:.4f}); exit rate {summary['exit_rate'] + summary['edge_exit_rate']:.3f}"
          f"{' (at the edge)' if k1 is not None else ''} (predicted "
          f"{p.get('exit_rate', float('nan')):.3f}); {summary.get('agreement', float('nan')):.1%} of samples answered "
          f"as evaluated; {summary['fallbacks']} fallbacks{at_edge}; {summary['bytes_per_request']:.0f} bytes per "
          "request")
    within = abs(summary["mean_ms"] / p["mean total"] - 1) <= 0.10 if p else None
    kept = summary["mean_ms"] <= 1.10 * best["expected_ms"]
    print(f"mean within 10% of the prediction: {'yes' if within else 'NO'}; "
          f"not above the promise by more than 10%: {'yes' if kept else 'NO'}")
    if p:
        print(drift_line(check, p, summary["mean_ms"]))
    stalls = stall_line(summary, p["mean total"]) if p else None
    if stalls:
        print(stalls)
    summary.update(promised_mean_ms=best["expected_ms"], within_10pct_of_prediction=within,
                   within_10pct_of_promise=kept, foreign_profiles=foreign, profile_check=check,
                   retimed_ms=retimed_ms(p, check) if p else None)
    (out / "deploy.json").write_text(json.dumps({"predicted": p, "measured": summary}, indent=2, default=str))
    return summary

"""Would an exit at the edge pay?  An optimistic bound from measured per-sample arrays, before building one.

(It was then built for one exit, the candidate's own run by the edge: search.latency's `k1`, priced and
searched by the product and measured in docs/tiers.md.  This bound also covers two exits, device and edge.)

An edge exit at k2 answers a sent sample on the edge after blocks [k, k2) when its confidence reaches t2,
saving the edge-to-cloud transfer and the cloud's part.  For an unpruned head (r = 0) the edge sees the
unpruned network's tensor at k2, so the measured candidate (k2, 0)'s exit branch *is* that edge exit: its
per-sample arrays give the accuracy of every (end threshold t1, edge threshold t2) exactly.

The latency is bounded from below with bench/oracle.py (no code shared with search/): the three-tier
latency with the second cut fixed at k2 (both links, overheads, idle curves), minus, for each sample the
edge answers, the whole edge-to-cloud send, the cloud's runtime and its tail at the server's slowest idle
factor; the edge exit's own cost is taken as 0, and each (t1, t2) is bounded at the Bonferroni share
without the fixed-sequence test.  Every simplification favours the edge exit, so where even this bound
is not below the best answer without one, an edge exit cannot pay on that scene, within what is covered:
unpruned heads (a pruned head's fine-tune changes the tensor at k2, so no measured exit matches), lossless
first links (the edge exit's answers are measured on the exact tensor only: raw or png images, fp32
features) and thresholds on a grid of 41 quantiles of each exit's confidence.

    python bench/edge_exit.py --measured docs/benchmarks/landscapes/resnet18-fashion-3r/measurements.csv \
        --report docs/edge_exit.md
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench import oracle  # noqa: E402
from bench.landscapes import load_doc, measured, regrid  # noqa: E402
from bench.search_efficiency import families  # noqa: E402
from bench.tables import markdown  # noqa: E402
from bench.tiers import NO_EDGE_EXIT, scene_arguments  # noqa: E402

LOSSLESS = ("raw", "png", "fp32")
LEVELS = np.linspace(0.0, 1.0, 41)  # threshold grid: quantiles of each exit's confidence


def _thresholds(conf: np.ndarray) -> list[float | None]:
    return [None, *sorted(set(np.quantile(conf, LEVELS).tolist()))]


def edge_exit_bounds(land, edge_doc: dict, A0: float, up: float, on: float, rtt: float, M: int
                     ) -> dict[str, dict | None]:
    """In one pass over (k, r = 0, lossless codec, t1, k2, t2), the fastest reaching A0 (None: none does):
    "bound", the lowest latency bound with an edge exit allowed; "priced", the same with the edge exit's own
    cost added (an estimate, no longer a bound); "same", the same space's best without an edge exit (t2
    never set, every way of serving priced as bench/oracle prices it: relayed, the edge answering, or any
    second cut)."""
    # the edge's tail rows only: with its head and exit rows the oracle would also price the exit the product
    # now runs on the edge (its `_exit_on_edge`), which this bound is the reference for
    tails = {**edge_doc, "latency": [row for row in edge_doc["latency"] if row["part"] == "tail"]}
    t, e = oracle.Tables(land.device, land.server), oracle.Tables(land.device, tails)
    K, each = t.K, 1 - 0.05 / M
    # the exit branch on the edge: the device's row at (k2, 0) brought back to the host, at the edge's slowdown
    # (both are emulations of this project's host); "priced" adds it to every sample the edge receives
    per_host = float(edge_doc["meta"].get("slowdown", 1.0)) / float(land.device["meta"].get("slowdown", 1.0))
    idle = land.server["meta"].get("idle")
    slowest = max([1.0, *idle["factor"]]) if idle else 1.0
    best: dict[str, dict | None] = {"bound": None, "priced": None, "same": None}
    for k in range(K):
        sel = land.arrays[(k, 0.0)]["selection"]
        n, label = len(sel["label"]), sel["label"]
        t1s = _thresholds(sel["exit_conf"]) if 0 < k < K and sel.get("exit_conf") is not None else [None]
        for codec in (c for c in land.codecs_at(k) if c in LOSSLESS and c in sel["final"]):
            final_ok = sel["final"][codec] == label
            nb = sel.get("nbytes", {}).get(codec)
            mean_bytes = float(np.mean(nb)) if nb is not None else None
            for k2 in [None, *range(k + 1, K)]:  # None: no edge exit
                conf2, ok2 = np.zeros(n), final_ok  # no edge exit
                if k2 is not None:
                    mid = land.arrays[(k2, 0.0)]["selection"]
                    conf2, ok2 = mid["exit_conf"], mid["exit_pred"] == label
                saved = 0.0 if k2 is None else (oracle._send(t.bytes[(k2, 0.0, "fp32")], on, rtt, t.frame)
                         + t.overhead("link_overhead_ms", k2, 0.0, "fp32") + t.overhead("server_overhead_ms", k2, 0.0, "fp32")
                         + t.ms[("tail", k2, 0.0)] * slowest)
                for t1 in t1s:
                    e1 = sel["exit_conf"] >= t1 if t1 is not None else np.zeros(n, bool)
                    ok1 = sel["exit_pred"] == label if t1 is not None else final_ok
                    share = oracle.wilson(float(1 - e1.mean()), n, each, upper=True)
                    way = codec if k2 is None else f"{codec}>{k2}:fp32"
                    fixed = oracle.latency(t, k, 0.0, way, t1 is not None, share, up, rtt, mean_bytes, (e, on, rtt))
                    for t2 in _thresholds(conf2[~e1]) if k2 is not None and (~e1).any() else [None]:
                        e2 = (conf2 >= t2) & ~e1 if t2 is not None else np.zeros(n, bool)
                        acc = float(np.where(e1, ok1, np.where(e2, ok2, final_ok)).mean())
                        bound = oracle.wilson(acc, n, each)
                        if bound < A0:
                            continue
                        q = float(e2.sum() / max((~e1).sum(), 1))
                        ms = fixed - share * q * saved
                        exit_ms = share * t.ms[("exit", k2, 0.0)] * per_host if t2 is not None else 0.0
                        for name, value in (("bound", ms), ("priced", ms + exit_ms),
                                            *((("same", ms),) if k2 is None else ())):
                            if best[name] is None or value < best[name]["latency_ms"]:
                                best[name] = {"k": k, "codec": codec, "t1": t1, "k2": k2, "t2": t2,
                                              "latency_ms": value, "acc_bound": bound, "edge_exit_share": q}
    return best


def _where(b: dict | None) -> str | None:
    if b is None:
        return None
    def th(x):
        return "-" if x is None else f"{x:.3f}"
    return (f"k={b['k']} {b['codec']} t1={th(b['t1'])} k2={b['k2']} t2={th(b['t2'])} "
            f"(edge answers {b['edge_exit_share']:.0%} of sent)")


def scenes(args) -> pd.DataFrame:
    """Per scene: the bound, the same space without an edge exit, and the tiers bench's best answers."""
    table = pd.read_csv(args.table)
    rows = []
    for device in args.devices.split(","):
        land = measured(Path(args.measured), args.model, device)
        edge_doc = regrid(load_doc(args.edge, args.model, int(land.device["meta"]["input_size"])),
                          sorted({r for _, r in land.arrays}), keep_exits=True)
        sel = land.arrays[(land.K, 0.0)]["selection"]
        base = float(np.mean(sel["final"]["fp32"] == sel["label"]))
        M = families(land)
        for drop in map(float, args.drops.split(",")):
            A0 = round(base - drop, 4)
            for up in map(float, args.end_edge.split(",")):
                for on in map(float, args.edge_cloud.split(",")):
                    at = table[(table.device == device) & np.isclose(table.A0, A0) & (table.end_edge_mbps == up)
                               & (table.edge_cloud_mbps == on)].set_index("method").latency_ms
                    found = edge_exit_bounds(land, edge_doc, A0, up, on, args.rtt, M)
                    bound = found["bound"]
                    ms = {name: np.nan if b is None else b["latency_ms"] for name, b in found.items()}
                    joint = at.get(NO_EDGE_EXIT, at.get("3-tier joint", np.nan))  # older tables: no such row
                    best = float(np.nanmin([at.get("2-tier direct (no edge)", np.nan), joint]))
                    rows.append({"device": device, "A0": A0, "end_edge_mbps": up, "edge_cloud_mbps": on,
                                 "2-tier direct": at.get("2-tier direct (no edge)", np.nan),
                                 "3-tier joint": joint,
                                 "3-tier r=0 lossless, no edge exit": ms["same"], "edge exit bound": ms["bound"],
                                 "bound vs best without": ms["bound"] / best,
                                 "bound vs same space": ms["bound"] / ms["same"], "bound at": _where(bound),
                                 "edge exit priced": ms["priced"], "priced vs best without": ms["priced"] / best})
                    print(f"{device} A0 {A0} {up:g}:{on:g} best without {best:.3f} same space {ms['same']:.3f} "
                          f"bound {ms['bound']:.3f}", flush=True)
    return pd.DataFrame(rows)


def report(df: pd.DataFrame, command: str, seconds: float, table: str) -> str:
    pays = df[df["bound vs best without"] < 1]
    helps = df[df["bound vs same space"] < 1]
    lines = ["# Would an exit at the edge pay?", "",
             f"Written by `{command}` ({seconds / 60:.1f} min). " + __doc__.split("\n\n")[1].replace("\n", " ") + " "
             + __doc__.split("\n\n")[2].replace("\n", " "), "",
             "Latencies are predictions (ms, mean per request) from the shipped profiles; `best without` is the "
             "faster of 2-tier direct and the 3-tier joint optimum (every candidate, codec and threshold, no edge exit) "
             f"as bench/tiers.py found them (`{table}`).",
             "", markdown(df.round(4)), "",
             f"- The edge-exit bound is below the best answer without an edge exit in {len(pays)} of {len(df)} scenes"
             + (f" (by at most {100 * (1 - pays['bound vs best without'].min()):.1f}%)" if len(pays) else "") + ".",
             f"- With the edge exit's own cost added (the device's exit row at (k2, 0) brought to the edge's "
             f"slowdown; an estimate), it is below in {int((df['priced vs best without'] < 1).sum())} of {len(df)}"
             + (f", by at most {100 * (1 - df['priced vs best without'].min()):.1f}%" if (df['priced vs best without'] < 1).any() else "")
             + ".",
             f"- Within the same space (r = 0, lossless first link) it is below the 3-tier answer without an edge "
             f"exit in {len(helps)} of {len(df)} scenes"
             + (f", by a median {100 * (1 - helps['bound vs same space'].median()):.1f}%" if len(helps) else "") + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measured", required=True, help="a measurements.csv with per-sample arrays (bench/measure_grid.py)")
    ap.add_argument("--table", default="docs/benchmarks/csv/tiers.csv",
                    help="bench/tiers.py's rows for the same landscape and scenes: the best answers without an edge exit")
    scene_arguments(ap, drops="0.025,0.05")  # the scenes of docs/tiers.md
    ap.add_argument("--out", default="runs/bench/edge_exit.csv")
    ap.add_argument("--report", default=None)
    args = ap.parse_args()
    started = time.perf_counter()
    df = scenes(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    if args.report:
        Path(args.report).write_text(report(df, " ".join(["python", *sys.argv]), time.perf_counter() - started, args.table))


if __name__ == "__main__":
    main()

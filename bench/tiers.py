"""Where the third tier pays: end, edge and cloud against the best 2-tier answers, on a measured landscape.

For each end device, end-to-edge and edge-to-cloud bandwidth and A0, the exhaustive best of each method
over the same measured candidates (replayed from a measurements file, every threshold and codec):

- 3-tier joint: the product's space (two cuts, pruning, exit, codecs), k2 chosen per candidate, and an
  unpruned candidate's exit run by the edge where the edge profile has head and exit rows (k1);
- 3-tier joint, no exit on the edge: the same without those rows;
- CNNPC-like 3-tier: two cuts with pruning, no exits;
- best 2-tier end + edge (the edge answers) and best 2-tier end + cloud (relayed through the edge);
- 2-tier direct: no edge at all, the end device's link goes straight to the cloud (today's scene);
- ours: the product's search (auto.py's Objective and planner, 40 trials) on the 3-tier scene.

Latencies in that table are predictions of the latency model from the shipped (measured, or
named-emulated) profiles.  With --deploy, a few scenes are then run through the product itself
(auto.py --edge_device ... --measurements ... --exhaustive --deploy: the search over the measured landscape, the
baselines, and the answer deployed on three tiers over loopback with both links shaped), and the per-tier
predicted and measured latencies are reported beside the promise.

    python bench/measure_grid.py --model resnet18 --ratios 0,0.3,0.6 --out runs/landscapes/resnet18-fashion-3r
    python bench/tiers.py --measured runs/landscapes/resnet18-fashion-3r/measurements.csv \
        --deploy 1:10,20:10,100:1,100:100 --report docs/tiers.md
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from bench.landscapes import load_doc, measured, regrid, synthetic, to_csv  # noqa: E402
from bench.machine import profiles_now  # noqa: E402
from bench.search_efficiency import BUDGET, families, problem_for, run_ours  # noqa: E402
from bench.tables import markdown  # noqa: E402
from compress import measurements  # noqa: E402
from profiles import Network  # noqa: E402
from profiles.profile import Profile  # noqa: E402
from search.latency import Edge  # noqa: E402
from search.pool import MeasuredPool  # noqa: E402
from search.reference import METHODS, best_of  # noqa: E402

NO_EDGE_EXIT = "3-tier joint, no exit on the edge"  # the same space with the edge unable to run an exit
SHOWN = {"joint optimum (exhaustive)": "3-tier joint", "split + pruning (CNNPC-like)": "CNNPC-like 3-tier",
         "best 2-tier: end + edge": "2-tier end+edge", "best 2-tier: end + cloud": "2-tier end+cloud (relayed)"}


def scene_rows(land, rows: dict, edge_doc: dict, A0: float, up: float, on: float, rtt: float, seed: int) -> list[dict]:
    problem = problem_for(land, A0, up, rtt)
    problem.families = families(land)
    image = land.arrays[(0, 0.0)]  # the images' PNG sizes, for an exit on the edge fed the image losslessly
    problem.image_bytes = {role: {"png": image[role]["nbytes"]["png"]} for role in ("selection", "test")
                           if "png" in image[role].get("nbytes", {})}
    pool = MeasuredPool(rows, None)
    direct = best_of(problem, pool, next(m for m in METHODS if m.name == "joint optimum (exhaustive)"))[0]
    problem.edge = Edge(Profile(edge_doc, "edge"), Network(on, rtt))
    out = [{"method": "2-tier direct (no edge)", "score": direct}]
    out += [{"method": SHOWN[m.name], "score": best_of(problem, pool, m)[0]} for m in METHODS if m.name in SHOWN]
    no_edge_exit = {**edge_doc, "latency": [row for row in edge_doc["latency"] if row["part"] == "tail"]}
    problem.edge = Edge(Profile(no_edge_exit, "edge without exit rows"), Network(on, rtt))
    joint_method = next(m for m in METHODS if m.name == "joint optimum (exhaustive)")
    out.append({"method": NO_EDGE_EXIT, "score": best_of(problem, pool, joint_method)[0]})
    problem.edge = Edge(Profile(edge_doc, "edge"), Network(on, rtt))
    _, answer = run_ours(problem, rows, BUDGET, seed)
    rows_out = []
    joint = next(o["score"] for o in out if o["method"] == "3-tier joint")
    for o in out:
        s = o["score"]
        ok = s is not None and s.feasible(problem)
        rows_out.append({"method": o["method"], "feasible": ok, "latency_ms": s.latency_ms if ok else np.nan,
                         "tiers": _tiers(s, problem.space.K) if ok else None,
                         "k": s.config.k if ok else None, "r": s.config.r if ok else None,
                         "k2": s.breakdown.k2 if ok else None, "k1": s.breakdown.k1 if ok else None,
                         "exit": ok and s.config.t is not None,
                         "vs_joint": (s.latency_ms / joint.latency_ms) if ok and joint.feasible(problem) else np.nan})
    rows_out.append({"method": "ours (search, 40 trials)", "feasible": answer is not None,
                     "latency_ms": np.nan if answer is None else answer,
                     "vs_joint": np.nan if answer is None else answer / joint.latency_ms})
    return rows_out


def _tiers(s, K: int) -> str:
    k, k2, k1 = s.config.k, s.breakdown.k2, s.breakdown.k1
    if k1 is not None:  # the exit at k run by the edge
        return ("end+" if k1 > 0 else f"{s.breakdown.up_codec} image to ") + "edge (exit)+cloud"
    if k2 is None:
        return "device only" if k == K else "end+cloud (direct)"
    if k2 == k:
        return "end+cloud (relayed)" if k > 0 else "cloud only (relayed)"
    if k2 == K:
        return "end+edge" if k > 0 else "edge only"
    return "end+edge+cloud" if k > 0 else "edge+cloud"


def scene_arguments(ap: argparse.ArgumentParser, drops: str) -> None:
    """The scenes of a three-tier bench: model, end devices, edge box, both links' bandwidths, A0 drops, rtt."""
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--devices", default="emulated-10x,emulated-50x")
    ap.add_argument("--edge", default="emulated-edge-4x")
    ap.add_argument("--end-edge", default="1,20,100", help="end-to-edge bandwidths, Mbit/s (CNNPC fixes 20)")
    ap.add_argument("--edge-cloud", default="1,10,100", help="edge-to-cloud bandwidths, Mbit/s")
    ap.add_argument("--drops", default=drops, help="A0 = the unpruned accuracy minus each of these")
    ap.add_argument("--rtt", type=float, default=5.0, help="round-trip time of each link, ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measured", default=None, help="a measurements.csv written by bench/measure_grid.py")
    ap.add_argument("--synthetic", type=int, default=0, metavar="SEEDS",
                    help="also this many synthetic landscapes per device (bench/landscapes.py: no exits, 10 ratios)")
    scene_arguments(ap, drops="0.05,0.1")
    ap.add_argument("--input-size", type=int, default=32, help="input size of the synthetic landscapes' profiles")
    ap.add_argument("--out", default="runs/bench/tiers.csv")
    ap.add_argument("--report", default=None)
    ap.add_argument("--deploy", default="", metavar="UP:ON,...",
                    help="deploy the product's answer for these (end-edge:edge-cloud Mbit/s) scenes of the measured "
                         "landscape, on every device at the first drop")
    ap.add_argument("--dataset", default="fashion-mnist", help="the measured landscape's data set (for --deploy)")
    ap.add_argument("--deploy-limit", type=int, default=1000, help="test samples per deployment")
    ap.add_argument("--deploy-dir", default="runs/bench/tiers-deploy")
    ap.add_argument("--from-csv", action="store_true", help="only rewrite --report from --out and its -deployed.csv")
    ap.add_argument("--profiles-now", action="store_true",
                    help="deploy with host and server profiles timed on this machine now (and the emulations made "
                         "from them as the shipped ones are), so the deployed check compares like with like")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    if args.from_csv:
        out = Path(args.out)
        deployed_csv = out.with_name(out.stem + "-deployed.csv")
        dep = pd.read_csv(deployed_csv) if deployed_csv.is_file() else None
        Path(args.report).write_text(report(pd.read_csv(out), " ".join(["python", *sys.argv]), 0.0, dep))
        return
    records, deploy_at = [], None
    work = Path(tempfile.mkdtemp(prefix="tiers-"))
    for device in args.devices.split(","):
        lands = [measured(Path(args.measured), args.model, device)] if args.measured else []
        lands += [synthetic(args.model, seed, 10, device=device, size=args.input_size) for seed in range(args.synthetic)]
        for land in lands:
            csv = land.csv or to_csv(land, work / f"{abs(hash(land.name))}.csv")
            rows = measurements.load(csv, land.K, land.ratios, need_n=True)
            edge_doc = regrid(load_doc(args.edge, args.model, int(land.device["meta"]["input_size"])), land.ratios,
                              keep_exits=True)
            sel = land.arrays[(land.K, 0.0)]["selection"]
            base = float(np.mean(sel["final"]["fp32"] == sel["label"]))
            if land.kind == "measured" and deploy_at is None:  # --deploy: at the first drop
                deploy_at = (round(base - float(args.drops.split(",")[0]), 4), sorted({r for _, r in land.arrays}),
                             int(land.device["meta"]["input_size"]))
            for drop in map(float, args.drops.split(",")):
                for up in map(float, args.end_edge.split(",")):
                    for on in map(float, args.edge_cloud.split(",")):
                        A0 = round(base - drop, 4)
                        for r in scene_rows(land, rows, edge_doc, A0, up, on, args.rtt, 0):
                            size = land.device["meta"]["input_size"]
                            records.append({"landscape": f"{land.kind} {size}px", "device": device, "A0": A0,
                                            "end_edge_mbps": up, "edge_cloud_mbps": on, **r})
            print(f"{land.name}: {len(records)} rows", flush=True)
    df = pd.DataFrame(records)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(df.to_string(index=False))
    dep = None
    if args.deploy and args.measured:
        A0, ratios, size = deploy_at
        paths = profiles_now(args.model, size, ratios, Path(args.deploy_dir) / "profiles") if args.profiles_now else {}
        dep = pd.DataFrame([deployed(args, device, A0, *map(float, scene.split(":")), ratios, paths)
                            for device in args.devices.split(",") for scene in args.deploy.split(",")])
        dep.to_csv(out.with_name(out.stem + "-deployed.csv"), index=False)
        print(dep.to_string(index=False))
    if args.report:
        Path(args.report).write_text(report(df, " ".join(["python", *sys.argv]), time.perf_counter() - started, dep))


DEPLOY_ROWS = ("device+exit", "end-edge transfer", "edge", "edge-cloud transfer", "cloud", "mean total")


def deployed(args, device: str, A0: float, up: float, on: float, ratios: list[float],
             paths: dict[str, str] | None = None) -> dict:
    """One scene through auto.py (a separate process, as a user runs it): its answer, its baselines and its
    three-tier deployment.  The search reads the measured landscape (--measurements: no fine-tune), so only
    the answer's candidate is built for its export (taken from the cache where measure_grid left it).
    `paths` maps profile names to the files to use instead of the shipped ones."""
    paths = paths or {}
    run_dir = Path(args.deploy_dir) / f"{args.model}-{device}-{up:g}-{on:g}-A0{A0:g}"
    argv = [sys.executable, str(Path(__file__).resolve().parent.parent / "auto.py"), "--model", args.model,
            "--dataset", args.dataset, "--end_device", paths.get(device, device), "--server",
            paths.get("server", "server"), "--edge_device", paths.get(args.edge, args.edge), "--bandwidth", f"{up:g}",
            "--rtt", f"{args.rtt:g}", "--edge_cloud_bandwidth", f"{on:g}", "--edge_cloud_rtt", f"{args.rtt:g}",
            "--A0", f"{A0:g}", "--ratios", ",".join(f"{r:g}" for r in ratios), "--exhaustive", "--no-progress",
            "--measurements", str(Path(args.measured).resolve()), "--deploy", "--deploy-limit", str(args.deploy_limit),
            "--run-dir", str(run_dir)]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "stdout.txt").write_text(proc.stdout + proc.stderr)
    row: dict = {"device": device + (" (timed now)" if device in paths else ""), "A0": A0, "end_edge_mbps": up, "edge_cloud_mbps": on, "exit_code": proc.returncode,
                 "seconds": round(time.perf_counter() - started, 1)}
    if proc.returncode != 0:
        print(f"scene {up:g}:{on:g} failed ({proc.returncode}); see {run_dir / 'stdout.txt'}", flush=True)
        return row
    best = json.loads((run_dir / "best.json").read_text())
    b = best["best"]
    row.update(k=b["k"], r=b["r"], k2=b.get("k2"), k1=b.get("k1"), t=b["t"], codec=b["codec"], exit_rate=b["exit_rate"],
               promised_ms=b["expected_ms"], acc_bound=b["acc_bound"])
    for base in best["baselines"]:
        if base["method"] in ("best 2-tier: end + edge", "best 2-tier: end + cloud", "split + pruning (CNNPC-like)"):
            row[base["method"]] = base["latency_ms"] if base.get("feasible") else np.nan
    measured = json.loads((run_dir / "deploy" / "deploy.json").read_text())["measured"]
    for name in DEPLOY_ROWS:
        cell = measured.get("tiers", {}).get(name, {})
        row[f"{name} predicted"], row[f"{name} measured"] = cell.get("predicted"), cell.get("measured")
    row.update(n=measured["n"], test_acc=measured["accuracy"], agreement=measured.get("agreement"),
               fallbacks=measured.get("fallbacks"),
               vs_prediction=measured["mean_ms"] / row["mean total predicted"] - 1,
               vs_promise=measured["mean_ms"] / b["expected_ms"] - 1)
    check = measured.get("profile_check") or {}  # each tier's parts timed right before deploying (auto.py)
    row.update({f"{side} drift": check.get(side, np.nan) for side in ("device", "edge", "cloud")})
    row["vs_retimed"] = measured["mean_ms"] / measured["retimed_ms"] - 1 if measured.get("retimed_ms") else np.nan
    print(f"scene {up:g}:{on:g}: k={row['k']} r={row['r']} k2={row['k2']}, measured {measured['mean_ms']:.3f} ms, "
          f"predicted {row['mean total predicted']:.3f}, promised {b['expected_ms']:.3f}", flush=True)
    return row


def report(df: pd.DataFrame, command: str, seconds: float, dep: pd.DataFrame | None = None) -> str:
    from datetime import datetime, timezone

    joint = df[df.method == "3-tier joint"]
    uses = joint.tiers
    piv = df.pivot_table(index=["landscape", "device", "A0", "end_edge_mbps", "edge_cloud_mbps"], columns="method",
                         values="latency_ms").reset_index()
    lines = ["# Three tiers: where the edge pays", "",
             f"Written by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC ({seconds / 60:.1f} min). "
             + __doc__.split("\n\n")[1].replace("\n", " ") + " " + __doc__.split("\n\n")[2].replace("\n", " "), "",
             "Promised latency (ms, mean per request) of each method's best answer:", "",
             markdown(piv, 4), "",
             "What the 3-tier joint optimum uses: " + ", ".join(f"{k} {v}" for k, v in uses.value_counts().items())
             + f" (of {len(joint)} scenes).", ""]
    two = piv[["2-tier end+edge", "2-tier end+cloud (relayed)"]].min(axis=1)
    gain = 1 - piv["3-tier joint"] / two
    lines.append(f"The 3-tier joint optimum is below the best 2-tier answer (end+edge or end+cloud relayed, whichever "
                 f"is faster) in {(gain > 1e-9).sum()} of {len(piv)} scenes" + (f", by up to {100 * gain.max():.1f}%"
                                                                               if (gain > 1e-9).any() else "") + ".")
    if NO_EDGE_EXIT in piv:
        placed = joint[joint.k1.notna()] if "k1" in joint else joint.iloc[:0]
        gain = 1 - piv["3-tier joint"] / piv[NO_EDGE_EXIT]
        lines.append(f"The 3-tier joint optimum runs its exit on the edge (an unpruned candidate's own exit, the end "
                     f"device sending the exact tensor) in {len(placed)} of {len(joint)} scenes; there it is below the "
                     f"same space without an exit on the edge by up to {100 * gain.max():.1f}% (median "
                     f"{100 * gain[gain > 1e-9].median():.1f}% where it is below)." if len(placed) else
                     f"The 3-tier joint optimum runs its exit on the edge in none of the {len(joint)} scenes.")
    lines.append("")
    for name in ("2-tier end+edge", "2-tier end+cloud (relayed)", "2-tier direct (no edge)", "CNNPC-like 3-tier",
                 NO_EDGE_EXIT, "ours (search, 40 trials)"):
        g = df[df.method == name].vs_joint
        if len(g):
            lines.append(f"- {name}: median {g.median():.3g}x the 3-tier joint optimum's latency, worst "
                         f"{g.max():.3g}x; better than it in {(g < 1 - 1e-9).sum()} scenes, infeasible in "
                         f"{g.isna().sum()}")
    if dep is not None and len(dep):
        lines += ["", "## Deployed on three tiers", "",
                  "auto.py's own answer per scene (its search and baselines over the measured landscape, the "
                  "answer's candidate built for the export), deployed over loopback with both links shaped; ms "
                  "per request, predicted for exactly the test samples sent, measured by the end device (the edge "
                  "and cloud parts from the reply's tier trailer):", "",
                  markdown(dep.drop(columns=["exit_code"], errors="ignore"), 4), ""]
        ok = dep.dropna(subset=["vs_prediction"])
        if len(ok):
            computes = ok[ok["edge predicted"] > 0]  # where the edge runs blocks (not where it only relays)
            edge = (f"the edge tier measured/predicted where it runs blocks ({len(computes)} scenes): median "
                    f"{(computes['edge measured'] / computes['edge predicted']).median():.2f}x" if len(computes)
                    else "the edge only relays in every scene")
            lines.append(f"Deployed mean against the prediction: median {100 * ok.vs_prediction.median():+.1f}%, worst "
                         f"{100 * ok.vs_prediction.abs().max():.1f}% off; against the promise: median "
                         f"{100 * ok.vs_promise.median():+.1f}%; {edge}; summed over the scenes, measured/predicted "
                         + ", ".join(f"{row} {ok[f'{row} measured'].sum() / ok[f'{row} predicted'].sum():.2f}x"
                                     for row in DEPLOY_ROWS if ok[f"{row} predicted"].sum() > 0) + ".")
            if "vs_retimed" in ok and ok.vs_retimed.notna().any():
                runs = {"device": "device+exit predicted", "edge": "edge predicted", "cloud": "cloud predicted"}
                lines.append("")
                lines.append(f"Against the prediction re-timed by each deployment's profile check (each tier's parts "
                             f"timed right before deploying, `profile check` in auto.py's output): median "
                             f"{100 * ok.vs_retimed.median():+.1f}%, worst {100 * ok.vs_retimed.abs().max():.1f}% off; "
                             "median drift of the tiers that compute: " + ", ".join(
                                 f"{side} x{ok.loc[ok[col] > 0, f'{side} drift'].median():.2f}"
                                 for side, col in runs.items() if (ok[col] > 0).any()) + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

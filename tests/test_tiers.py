"""Three tiers (end device, edge, cloud): the latency model's second cut, the baselines and the search."""
from __future__ import annotations

import copy
from pathlib import Path
from dataclasses import replace

import numpy as np

import optuna
import pytest

import auto
from bench.landscapes import Landscape
from profiles import Network
from profiles.profile import Profile
from search.latency import Edge, predict
from search.pool import MeasuredPool
from search.reference import best_of, methods
from search.space import Problem, SearchSpace
from tests.test_plan import _arrays, _doc, _rows


def _scene(edge_per_block: float = 1.0, small_at_2: bool = True):
    """K = 3 hand-made profiles: device head 2 ms per block (half at r = 0.5), server tail 0.1 ms per block,
    an edge box at `edge_per_block` ms per block; the tensor after block 2 is only 64 bytes."""
    ratios = (0.0, 0.5)
    dev, srv = _doc("device", 3, ratios), _doc("server", 3, ratios)
    edge = copy.deepcopy(srv)
    edge["meta"]["device"] = "hand-edge"
    for row in edge["latency"]:
        row["mean_ms"] = row["median_ms"] = edge_per_block * (3 - row["k"])
    if small_at_2:
        for doc in (dev, srv, edge):
            for b in doc["bytes"]:
                if b["k"] == 2 and b["codec"] == "fp32":
                    b["bytes"] = 64
    return Profile(dev, "d"), Profile(srv, "s"), Profile(edge, "e")


def test_the_second_cut_is_the_fastest_the_tiers_allow_by_hand():
    """k = 1, r = 0.5, fp32, no exit; end-edge 1 Mbit/s rtt 5 ms, edge-cloud 1 Mbit/s rtt 0.1 ms.
    device 2 * 0.5 = 1; to the edge 5 + 8 * 2048 / 1000 = 21.384.  Then:
    relay (k2 = 1): 0.1 + 8 * 2048 / 1000 + cloud tail(1) 0.2 = 16.684;
    k2 = 2: edge blocks [1, 2) 2 - 1 = 1 + 0.1 + 8 * 64 / 1000 + cloud tail(2) 0.1 = 1.712;
    k2 = 3 (the edge answers): edge blocks [1, 3) = 2."""
    d, s, e = _scene()
    link, edge = Network(1.0, 5.0), Edge(e, Network(1.0, 0.1))
    b = predict(d, s, link, 1, 0.5, "fp32", edge=edge)
    assert b.k2 == 2 and b.edge_ms == pytest.approx(1.0) and b.edge_bytes == 64
    assert b.expected_ms == pytest.approx(1 + 21.384 + 1.712)
    assert predict(d, s, link, 1, 0.5, "fp32", edge=edge.only("relay")).expected_ms == pytest.approx(
        1 + 21.384 + 16.684)
    only_edge = predict(d, s, link, 1, 0.5, "fp32", edge=edge.only("edge"))
    assert only_edge.k2 == 3 and only_edge.expected_ms == pytest.approx(1 + 21.384 + 2.0)
    assert only_edge.server_ms == 0 and only_edge.edge_transfer_ms == 0
    # a fast cloud link makes the relay win: 0.1 + 8 * 2048 / 1e6 + 0.2
    relay = predict(d, s, link, 1, 0.5, "fp32", edge=Edge(e, Network(1000.0, 0.1)))
    assert relay.k2 == 1 and relay.sent_ms == pytest.approx(21.384 + 0.1 + 0.016384 + 0.2)
    # without an edge nothing changes: the 2-tier model
    assert predict(d, s, link, 1, 0.5, "fp32").expected_ms == pytest.approx(1 + 21.384 + 0.2)
    # device only sends nothing, so no edge is involved
    assert predict(d, s, link, 3, 0.0, "fp32", edge=edge).k2 is None


def test_the_edge_blocks_slow_down_by_the_edge_curve_at_the_edge_wait():
    """The edge idles from the end of its blocks to the next sent request: with the case of the test above
    (the edge answers: blocks [1, 3) = 2 ms) that is the device's 1 ms and the way up, 21.384 ms, and
    with an idle curve 1 at 1 ms to 3 at 41 ms the blocks run x (1 + 2 * 21.384 / 40)."""
    d, s, e = _scene()
    doc = copy.deepcopy(e.doc)
    doc["meta"]["idle"] = {"gap_ms": [1.0, 41.0], "factor": [1.0, 3.0]}
    link, edge = Network(1.0, 5.0), Edge(Profile(doc, "e"), Network(1.0, 0.1), "edge")
    b = predict(d, s, link, 1, 0.5, "fp32", edge=edge)
    f = 1 + 2 * 21.384 / 40
    assert b.edge_gap_ms == pytest.approx(22.384) and b.edge_idle_factor == pytest.approx(f)
    assert b.edge_ms == pytest.approx(2.0 * f) and b.expected_ms == pytest.approx(1 + 21.384 + 2.0 * f)
    assert predict(d, s, link, 1, 0.5, "fp32", edge=edge.only("edge")).edge_ms == pytest.approx(2.0 * f)
    # the edge's own curve only: the same scene without it prices the blocks as their rows
    assert predict(d, s, link, 1, 0.5, "fp32", edge=Edge(e, Network(1.0, 0.1), "edge")).edge_ms == pytest.approx(2.0)
    # a relay computes nothing at the edge, so its curve changes nothing
    relay = predict(d, s, link, 1, 0.5, "fp32", edge=edge.only("relay"))
    assert relay.edge_ms == 0 and relay.edge_idle_curve == ()
    # each exited request in between (5 ms each here) lengthens the wait: at p = 0.5 the mean over j exits,
    # chance 0.5^(j + 1), of the curve at 22.384 + 5 j (3 from 41 ms on)
    spaced = replace(b, exit_gap_ms=5.0)
    by_hand = sum(0.5 ** (j + 1) * min(1 + (22.384 + 5 * j - 1) / 20, 3.0) for j in range(60))
    assert by_hand == pytest.approx(2.29925, abs=1e-4)
    assert spaced.with_exit_rate(0.5).edge_idle_factor == pytest.approx(by_hand)
    assert spaced.with_exit_rate(0.5).edge_ms == pytest.approx(2.0 * by_hand)
    assert spaced.with_exit_rate(0.0).edge_ms == pytest.approx(2.0 * f)


def test_the_second_cut_is_chosen_once_every_part_is_priced():
    """Edge-to-cloud 10 Mbit/s, rtt 0.1 ms, an edge that runs 3x slower after its wait (idle curve flat at 3).
    Unpriced, k2 = 2 is the fastest way on (1 + 0.1 + 0.0512 + 0.1 = 1.2512 against the relay's
    0.1 + 1.6384 + 0.2 = 1.9384), but its edge block costs 3 x 1 ms once priced: 3.2512.  The relay computes
    nothing at the edge, so it is the fastest way: 1 + 21.384 + 1.9384 (before this, the model kept k2 = 2)."""
    d, s, e = _scene()
    doc = copy.deepcopy(e.doc)
    doc["meta"]["idle"] = {"gap_ms": [1.0, 2.0], "factor": [3.0, 3.0]}
    link, edge = Network(1.0, 5.0), Edge(Profile(doc, "e"), Network(10.0, 0.1))
    b = predict(d, s, link, 1, 0.5, "fp32", edge=edge)
    assert b.k2 == 1 and b.expected_ms == pytest.approx(1 + 21.384 + 1.9384)
    forced = predict(d, s, link, 1, 0.5, "fp32", edge=edge, k2=2)
    assert forced.k2 == 2 and forced.expected_ms == pytest.approx(1 + 21.384 + 3.2512)
    with pytest.raises(ValueError, match="second cut k2=2 is not one this scene allows"):
        predict(d, s, link, 1, 0.5, "fp32", edge=edge.only("relay"), k2=2)


def test_an_edge_needs_a_server_role_profile_and_known_tiers():
    d, s, e = _scene()
    with pytest.raises(ValueError, match="needs a server-role profile"):
        Edge(d, Network(10.0))
    with pytest.raises(ValueError, match="unknown tiers 'both'; choose one of: all, relay, edge"):
        Edge(e, Network(10.0), "both")


SLOW_HEAD = {(0, 0.0): 0.0, (0, 0.5): 0.0, (1, 0.0): 10.0, (1, 0.5): 5.0, (2, 0.0): 40.0, (2, 0.5): 20.0,
             (3, 0.0): 60.0, (3, 0.5): 30.0}
ACC = {(0, 0.0): 0.95, (1, 0.0): 0.95, (2, 0.0): 0.95, (3, 0.0): 0.95, (1, 0.5): 0.93, (2, 0.5): 0.85, (3, 0.5): 0.8}


def _slow_scene(edge: bool = True) -> tuple[Problem, dict]:
    """The hand-made scene with a slow end device (head rows SLOW_HEAD), end-edge 1 Mbit/s rtt 1 ms,
    edge-cloud 1 Mbit/s rtt 0.1 ms, A0 = 0.9 on point accuracies (ACC)."""
    d, s, e = _scene()
    doc = copy.deepcopy(d.doc)
    for row in doc["latency"]:
        if row["part"] == "head":
            row["mean_ms"] = row["median_ms"] = SLOW_HEAD[(row["k"], row["r"])]
    p = Problem(Profile(doc, "slow"), s, Network(1.0, 1.0), A0=0.9, confidence=0,
                edge=Edge(e, Network(1.0, 0.1)) if edge else None)
    p.space = SearchSpace(3, (0.0, 0.5), ("fp32",), (0, 1, 2, 3), ("raw",), exits=False)
    return p, {kr: _arrays(a, 2000) for kr, a in ACC.items()}


def test_baselines_gain_the_edge_rows_and_the_joint_optimum_uses_all_three_tiers():
    """By hand (ms): k = 1 r = 0.5 (0.93 >= A0): device 5, to the edge 1 + 16.384, then the edge runs block 1
    and sends 64 bytes on (1 + 0.1 + 0.512 + cloud 0.1): 24.096, the optimum.  The best 2-tier answers:
    end + edge, the same cut answered at the edge (2 ms of edge): 24.384; end + cloud through the edge,
    relayed (0.1 + 16.384 + 0.2): 39.068.  The unpruned k = 1 costs 45.48, k = 0 28.288, device only 60."""
    problem, arrays = _slow_scene()
    pool = MeasuredPool(_rows(Landscape("tiers", {}, {}, arrays, "hand-made")), None)
    names = [m.name for m in methods(problem)]
    assert {"edge only", "best 2-tier: end + cloud", "best 2-tier: end + edge"} <= set(names)
    assert not {m.name for m in methods(_slow_scene(edge=False)[0])} & {"edge only", "best 2-tier: end + edge"}
    best = {m.name: best_of(problem, pool, m)[0] for m in methods(problem)}
    joint = best["joint optimum (exhaustive)"]
    assert (joint.config.k, joint.config.r, joint.breakdown.k2) == (1, 0.5, 2)
    assert joint.latency_ms == pytest.approx(24.096)
    assert best["split + pruning (CNNPC-like)"].latency_ms == pytest.approx(24.096)  # two cuts, no exits
    assert best["best 2-tier: end + edge"].latency_ms == pytest.approx(24.384)
    assert best["best 2-tier: end + cloud"].latency_ms == pytest.approx(39.068)
    assert best["device only"].latency_ms == pytest.approx(60.0)
    assert all(joint.latency_ms <= b.latency_ms + 1e-9 for b in best.values() if b.feasible(problem))


def test_the_search_over_three_tiers_reaches_the_optimum_and_proves_it():
    from search.study import Objective, seed

    problem, arrays = _slow_scene()
    pool = MeasuredPool(_rows(Landscape("tiers", {}, {}, arrays, "hand-made")), None, replay=True)
    study = optuna.create_study()
    seed(study, problem)
    study.optimize(Objective(problem, pool), n_trials=30)
    done = [t for t in study.trials if t.user_attrs.get("feasible")]
    best = min(done, key=lambda t: t.user_attrs["latency_ms"])
    assert best.user_attrs["latency_ms"] == pytest.approx(24.096) and best.user_attrs["k2"] == 2
    assert study.user_attrs.get("stopped") == "proven"


def test_edge_flags_are_checked_before_anything_runs(capsys):
    base = ["--model", "resnet18", "--edge_device", "emulated-edge-4x"]
    assert auto.main(base + ["--edge_cloud_bandwidth", "0"]) == 2
    assert "--edge_cloud_bandwidth must be > 0 Mbit/s, got 0" in capsys.readouterr().err
    assert auto.main(base + ["--edge_cloud_rtt", "-1"]) == 2
    assert "--edge_cloud_rtt must be >= 0 ms" in capsys.readouterr().err
    assert auto.main(["--model", "resnet18", "--edge_device", "no-such-box"]) == 2
    assert "no-such-box" in capsys.readouterr().err
    assert auto.main(["--model", "resnet18", "--edge_cloud_codecs", "int8"]) == 2
    assert "--edge_cloud_codecs needs --edge_device" in capsys.readouterr().err
    assert auto.main(base + ["--edge_cloud_codecs", "fp32,int8-zlib"]) == 2
    assert "unknown codec 'int8-zlib' in --edge_cloud_codecs; choose from: fp32, fp16, int8" in capsys.readouterr().err


def test_a_device_profile_as_the_edge_is_refused(tmp_path):
    from search.run import RunSpec, problem_for

    spec = RunSpec(model="resnet18", edge_device="emulated-10x", progress=False)
    with pytest.raises(ValueError, match="needs a server-role profile"):
        problem_for(spec)


@pytest.mark.parametrize("device, seed_, up, on, rtt2, drop, k2", [
    ("emulated-50x", 0, 20.0, 100.0, 0.5, 0.05, "relay"),  # the image relayed to the cloud
    ("emulated-10x", 1, 20.0, 1.0, 10.0, 0.1, "edge"),  # k = 4 pruned, the edge answers
    ("emulated-10x", 2, 100.0, 100.0, 10.0, 0.02, "edge")])  # the image to the edge, which answers
def test_product_three_tier_optimum_agrees_with_the_oracle(device, seed_, up, on, rtt2, drop, k2):
    """The shipped resnet18 32 px profiles (an end device, server, emulated-edge-4x, with their measured
    runtime overheads) re-gridded, a drawn landscape: the product's exhaustive 3-tier answer and the
    independent oracle's (bench/oracle.py, which imports nothing from search/ or profiles/) agree."""
    from bench import oracle
    from bench.landscapes import load_doc, regrid, synthetic
    from bench.search_efficiency import families, problem_for

    land = synthetic("resnet18", seed_, n_ratios=6, device=device)
    base = float(np.mean(land.arrays[(0, 0.0)]["selection"]["final"]["fp32"] == 0))
    A0 = round(base - drop, 4)
    edge_doc = regrid(load_doc("emulated-edge-4x", "resnet18", 32), land.ratios)
    problem = problem_for(land, A0, up)
    problem.edge = Edge(Profile(edge_doc, "edge"), Network(on, rtt2))
    joint = next(m for m in methods(problem) if m.name == "joint optimum (exhaustive)")
    ours, complete = best_of(problem, MeasuredPool(_rows(land), None), joint)
    ref = oracle.optimum(land.device, land.server, land.arrays, A0, up, 5.0, families=families(land),
                         codecs={k: ["fp32"] for k in range(land.K + 1)}, edge=edge_doc, edge_bandwidth=on,
                         edge_rtt=rtt2)
    assert complete and ref is not None and ours.feasible(problem)
    assert ours.latency_ms == pytest.approx(ref["latency_ms"], rel=1e-6)
    assert (ours.config.k, ours.config.r) == (ref["k"], ref["r"])
    assert ours.breakdown.k2 == {"relay": ours.config.k, "edge": land.K}[k2]  # the tier the case is about


@pytest.mark.parametrize("edge_factor, on", [(4.0, 1.0), (20.0, 1.0), (20.0, 10.0)])
def test_product_and_oracle_agree_on_two_link_codecs(edge_factor, on):
    """A drawn landscape whose candidates also answer for "fp32>K2:int8" (their own answers: some samples
    flipped), an edge box `edge_factor` x the server, its cloud link `on` Mbit/s: the product's exhaustive
    answer over every codec, two-link ones included, is the oracle's, which parses and prices them itself,
    and so is the latency of every two-link deployment (none of them wins on these 32 px profiles)."""
    from bench import oracle
    from bench.landscapes import load_doc, regrid, synthetic
    from bench.search_efficiency import problem_for

    land = synthetic("resnet18", 3, n_ratios=6, device="emulated-10x")
    rng = np.random.default_rng(0)
    for (k, r), splits in land.arrays.items():
        for k2 in range(k + 1, land.K) if 0 < k < land.K else ():
            flips = rng.random(len(splits["selection"]["label"])) < 0.01  # the second link's loss, drawn
            for split in splits.values():
                split["final"][f"fp32>{k2}:int8"] = np.where(flips[:len(split["label"])], 1 - split["final"]["fp32"],
                                                             split["final"]["fp32"])
    base = float(np.mean(land.arrays[(0, 0.0)]["selection"]["final"]["fp32"] == 0))
    A0 = round(base - 0.05, 4)
    edge_doc = regrid(load_doc("server", "resnet18", 32), land.ratios)
    edge_doc["meta"]["device"] = "edge-by-hand"
    for row in edge_doc["latency"]:
        row["mean_ms"] = row["median_ms"] = row["mean_ms"] * edge_factor
    problem = problem_for(land, A0, 20.0)
    problem.edge = Edge(Profile(edge_doc, "edge"), Network(on, 1.0))
    problem.space = replace(problem.space, edge_codecs=("int8",))
    problem.families = sum(len(problem.codecs_at(k)) for k, _ in problem.space.candidates())
    joint = next(m for m in methods(problem) if m.name == "joint optimum (exhaustive)")
    rows = {kr: {s: _Ev(a[s]["label"], {("raw" if kr[0] == 0 and c == "fp32" else c): f for c, f in a[s]["final"].items()})
                 for s in ("selection", "test")} for kr, a in land.arrays.items()}
    ours, complete = best_of(problem, MeasuredPool(rows, None), joint)
    ref = oracle.optimum(land.device, land.server, land.arrays, A0, 20.0, 5.0, families=problem.families,
                         codecs={k: list(problem.codecs_at(k)) if k else ["fp32"] for k in range(land.K + 1)},
                         edge=edge_doc,
                         edge_bandwidth=on, edge_rtt=1.0)
    assert complete and ref is not None and ours.feasible(problem)
    assert ours.latency_ms == pytest.approx(ref["latency_ms"], rel=1e-6)
    assert (ours.config.k, ours.config.r) == (ref["k"], ref["r"])
    assert ours.config.codec == (ref["codec"] if ours.config.k else "raw")  # the image as it is, named fp32 there
    # and every two-link deployment is priced alike, one by one (no exit: every request sent)
    from search.space import score

    t, tiers = oracle.Tables(land.device, land.server), (oracle.Tables(land.device, edge_doc), on, 1.0)
    checked = 0
    for k, r in problem.space.candidates():
        for codec in (c for c in problem.codecs_at(k) if ">" in c and rows[(k, r)]["selection"].has(c)):
            mine = score(problem, problem.space.canonical(k, r, None, codec), rows[(k, r)])
            theirs = oracle.latency(t, k, r, codec, False, 1.0, 20.0, 5.0, None, tiers)
            assert mine.latency_ms == pytest.approx(theirs, rel=1e-6), (k, r, codec)
            checked += 1
    assert checked >= 5 * 4 * len(land.ratios) // 2  # every split with a second cut after it, every ratio


def test_a_two_link_codec_fixes_the_second_cut_and_prices_its_own_bytes_by_hand():
    """The scene of the first test without the small tensor: bytes at k = 2, r = 0 are 64 x 16 x 4 = 4096
    in fp32, 1024 in int8.  fp32 picks the fastest cut: the edge answers (blocks [1, 3) = 2 ms; k2 = 2 would
    cost 1 + 0.1 + 8 * 4096 / 1000 + 0.1 = 33.968).  "fp32>2:int8" sends on at k2 = 2 under int8:
    1 + 0.1 + 8 * 1024 / 1000 + 0.1 = 9.392 after the end-edge hop."""
    d, s, e = _scene(small_at_2=False)
    link, edge = Network(1.0, 5.0), Edge(e, Network(1.0, 0.1))
    plain = predict(d, s, link, 1, 0.5, "fp32", edge=edge)
    assert plain.k2 == 3 and plain.sent_ms == pytest.approx(21.384 + 2.0)
    b = predict(d, s, link, 1, 0.5, "fp32>2:int8", edge=edge)
    assert (b.k2, b.edge_bytes, b.bytes) == (2, 1024, 2048) and b.codec == "fp32>2:int8"
    assert b.edge_transfer_ms == pytest.approx(0.1 + 8 * 1024 / 1000)
    assert b.sent_ms == pytest.approx(21.384 + 9.392)
    # the first link keeps its own codec: int8 there, fp16 on the second (64 x 16 x 2 = 2048 bytes)
    both = predict(d, s, link, 1, 0.5, "int8>2:fp16", edge=edge)
    assert (both.bytes, both.edge_bytes) == (32 * 16, 2048)
    for codec, where in (("fp32>2:int8", None), ("fp32>2:int8", "relay"), ("fp32>1:int8", "all"),
                         ("fp32>3:int8", "all")):
        scene = None if where is None else (edge if where == "all" else edge.only(where))
        with pytest.raises(ValueError, match="needs an edge tier whose second cuts include it"):
            predict(d, s, link, 1, 0.5, codec, edge=scene)


def _two_link_scene():
    """K = 3: the edge runs block 1 in 0.1 ms but block 2 in 10 ms, and the tensor at k = 2 is a quarter of
    the one at k = 1 (fp32 1024, fp16 512, int8 256 bytes at k = 2; 4096, 2048, 1024 at k = 1, r = 0)."""
    d, s, e = _scene(small_at_2=False)
    docs = [copy.deepcopy(p.doc) for p in (d, s, e)]
    for doc in docs:
        for b in doc["bytes"]:
            if b["k"] == 2:
                b["bytes"] = {"fp32": 1024, "fp16": 512, "int8": 256}[b["codec"]]
    for row in docs[2]["latency"]:
        row["mean_ms"] = row["median_ms"] = {0: 20.1, 1: 10.1, 2: 10.0, 3: 0.0}[row["k"]]
    return Profile(docs[0], "d"), Profile(docs[1], "s"), Profile(docs[2], "e")


def test_the_search_takes_a_two_link_codec_where_it_pays_and_only_where_evaluated():
    """Edge-to-cloud at 1 Mbit/s, rtt 0.1 ms; k = 1, r = 0 sent under int8 (1024 bytes).  By hand, after the
    first hop: relay 0.1 + 8.192 + cloud 0.2 = 8.492; k2 = 2 under fp32 0.1 + 0.1 + 8.192 + 0.1 = 8.492; the
    edge answers 10.1; "int8>2:int8" 0.1 + 0.1 + 2.048 + 0.1 = 2.348.  With an evaluation that answers for
    it the best setting takes it; where int8 at k2 loses accuracy below A0 it does not; an evaluation
    without it (a measurements file) never offers it."""
    from search.space import best_setting

    d, s, e = _two_link_scene()
    problem = Problem(d, s, Network(100.0, 1.0), A0=0.8, confidence=0.0, edge=Edge(e, Network(1.0, 0.1)))
    problem.space = SearchSpace.of(d, s, codecs=("int8",), edge_codecs=("int8",))
    assert problem.codecs_at(1) == ("int8", "int8>2:int8")
    relay_only = Problem(d, s, Network(1.0, 1.0), A0=0.8, edge=Edge(e, Network(1.0, 0.1)).only("relay"))
    relay_only.space = problem.space
    assert relay_only.codecs_at(1) == ("int8",)
    n = 1000

    def evals(acc_two_link: float) -> dict:
        label = np.zeros(n, dtype=np.int64)
        ev = _Ev(label, {"int8": np.where(np.arange(n) < 900, 0, 1),
                         "int8>2:int8": np.where(np.arange(n) < round(acc_two_link * n), 0, 1)})
        return {"selection": ev, "test": ev}

    best = best_setting(problem, 1, 0.0, evals(0.9), exit=False)
    assert best.config.codec == "int8>2:int8" and best.breakdown.k2 == 2
    assert best.breakdown.sent_ms - best.breakdown.transfer_ms == pytest.approx(2.348)
    fallback = best_setting(problem, 1, 0.0, evals(0.7), exit=False)
    assert fallback.config.codec == "int8"
    assert fallback.breakdown.sent_ms - fallback.breakdown.transfer_ms == pytest.approx(8.492)
    only_plain = evals(0.9)
    for ev in only_plain.values():
        ev.final = {"int8": ev.final["int8"]}
    assert best_setting(problem, 1, 0.0, only_plain, exit=False).config.codec == "int8"


def test_a_study_over_two_link_codecs_records_them_and_reaches_the_optimum():
    """The scene above as a whole search: pruned candidates miss A0, so the optimum is k = 1, r = 0 sent
    under int8 and sent on at k2 = 2 under int8 (device 2 + 1.082 + 2.348 ms; device only costs 6).  The
    study's trials carry the second link as their own Optuna parameter ("via"), and the answer is it."""
    from search.study import Objective, seed

    d, s, e = _two_link_scene()
    problem = Problem(d, s, Network(100.0, 1.0), A0=0.8, confidence=0.0, edge=Edge(e, Network(1.0, 0.1)))
    problem.space = SearchSpace.of(d, s, codecs=("int8",), input_codecs=("raw",), edge_codecs=("int8",))
    n, label = 1000, np.zeros(1000, dtype=np.int64)
    rows = {}
    for k, r in problem.space.candidates():
        right = np.where(np.arange(n) < (900 if r == 0 else 700), 0, 1)
        ev = _Ev(label, {c: right for c in problem.codecs_at(k)})
        rows[(k, r)] = {"selection": ev, "test": ev}
    study = optuna.create_study()
    seed(study, problem)
    study.optimize(Objective(problem, MeasuredPool(rows, None, replay=True)), n_trials=20)
    done = [t for t in study.trials if t.user_attrs.get("feasible")]
    best = min(done, key=lambda t: t.user_attrs["latency_ms"])
    assert (best.user_attrs["k"], best.user_attrs["codec"], best.user_attrs["k2"]) == (1, "int8>2:int8", 2)
    assert best.user_attrs["latency_ms"] == pytest.approx(2 + 1 + 8 * 1024 / 1e5 + 2.348)
    assert best.params["via"] == "2:int8" and best.params["codec"] == "int8"
    # the plain int8 trial at k = 1 alone is slower than device only; its fine-tune was still worth it
    assert not any("lower bound" in t.user_attrs.get("skipped", "") for t in study.trials if t.params.get("k") == 1
                   and t.params.get("r") == 0.0)


def _Ev(label, finals):
    from compress.candidate import Evaluation

    return Evaluation(label, None, None, None, finals, {c: v == label for c, v in finals.items()})


def test_tiers_line_names_each_tier_and_the_image_sent():
    from runtime.tiers import tiers_line

    assert tiers_line(0, 6, 6) == "end device sends the image, edge runs blocks 0..5 and answers"
    assert tiers_line(2, 2, 6) == "end device blocks 0..1, edge relays the tensor, cloud blocks 2..5"
    assert tiers_line(2, 4, 6) == "end device blocks 0..1, edge runs blocks 2..3, cloud blocks 4..5"
    assert tiers_line(6, None, 6) == "end device blocks 0..5 (nothing sent)"


def test_edge_exit_bound_on_the_measured_landscape():
    """bench/edge_exit: the bound with an edge exit is never above the same space without one; where it
    uses one, its (t1, t2) recomputed from the raw arrays reaches A0 and the edge answers what it says."""
    import numpy as np

    from bench import oracle
    from bench.edge_exit import edge_exit_bounds
    from bench.landscapes import load_doc, measured, regrid
    from bench.search_efficiency import families

    land = measured(Path(__file__).resolve().parent.parent / "docs/benchmarks/landscapes/resnet18-fashion-3r/measurements.csv", "resnet18", "emulated-50x")
    edge = regrid(load_doc("emulated-edge-4x", "resnet18", 32), sorted({r for _, r in land.arrays}), keep_exits=True)
    sel = land.arrays[(land.K, 0.0)]["selection"]
    A0 = round(float(np.mean(sel["final"]["fp32"] == sel["label"])) - 0.025, 4)
    M = families(land)
    found = edge_exit_bounds(land, edge, A0, 100, 100, 5.0, M)
    without, best, priced = found["same"], found["bound"], found["priced"]
    assert without["t2"] is None and without["k2"] is None
    assert best["latency_ms"] < without["latency_ms"]
    assert best["latency_ms"] <= priced["latency_ms"]  # the exit's own cost only adds
    k, k2, t1, t2 = best["k"], best["k2"], best["t1"], best["t2"]
    assert t2 is not None and k < k2 < land.K
    head, mid = land.arrays[(k, 0.0)]["selection"], land.arrays[(k2, 0.0)]["selection"]
    e1 = head["exit_conf"] >= t1 if t1 is not None else np.zeros(len(sel["label"]), bool)
    e2 = (mid["exit_conf"] >= t2) & ~e1
    final_ok = head["final"][best["codec"]] == sel["label"]
    right = np.where(e1, head["exit_pred"] == sel["label"] if t1 is not None else final_ok,
                     np.where(e2, mid["exit_pred"] == sel["label"], final_ok))
    assert oracle.wilson(float(right.mean()), len(right), 1 - 0.05 / M) >= A0
    assert best["edge_exit_share"] == pytest.approx(e2.sum() / (~e1).sum())


def _edge_exit_scene():
    """The K = 3 scene of `_scene` with a slow end device (40 ms per block at r = 0, 20 at r = 0.5; its exit
    0.5 ms) and head and exit rows on the edge at r = 0 (its 1 ms per block; the exit 0.3 ms at k = 1, 0.4 ms
    at k = 2)."""
    d, s, e = _scene()
    dev, edge = copy.deepcopy(d.doc), copy.deepcopy(e.doc)
    for row in dev["latency"]:
        row["mean_ms"] = row["median_ms"] = 20 * row["mean_ms"]
    dev["latency"] += [{"part": "exit", "k": k, "r": r, "mean_ms": 0.5, "median_ms": 0.5, "p10_ms": 0, "p90_ms": 0,
                        "n": 1} for k in (1, 2) for r in (0.0, 0.5)]
    edge["latency"] += [{"part": part, "k": k, "r": 0.0, "mean_ms": m, "median_ms": m, "p10_ms": 0, "p90_ms": 0,
                         "n": 1} for part, k, m in (("exit", 1, 0.3), ("exit", 2, 0.4), ("head", 1, 1.0), ("head", 2, 2.0))]
    return Profile(dev, "d"), s, Profile(edge, "e")


def test_an_exit_placed_on_the_edge_is_priced_by_hand():
    """k = 2, r = 0 with an exit answering 90%; end-edge 1 Mbit/s rtt 5 ms, edge-cloud 1 Mbit/s rtt 0.1 ms.
    From k1 = 0 every request pays the image up, 5 + 8 * 3072 / 1000 = 29.576, the edge's blocks [0, 2),
    3 - 1 = 2, and its exit 0.4: 31.976; the 10% not answered there go on, 0.1 + 8 * 64 / 1000 = 0.612,
    and the cloud's tail(2) 0.1: 31.976 + 0.1 * 0.712.  From k1 = 1: the device's block 40, its tensor up
    5 + 8 * 4096 / 1000 = 37.768, the edge's [1, 2) 1 and the exit: 79.168 + 0.1 * 0.712.  On the device
    the exit costs 80 + 0.5 first.  Only an unpruned candidate with an exit, one codec and an edge with exit
    rows under every tier may place it so."""
    from search.latency import edge_exit_cuts, lower_bound_ms

    d, s, e = _edge_exit_scene()
    link, edge = Network(1.0, 5.0), Edge(e, Network(1.0, 0.1))
    b = predict(d, s, link, 2, 0.0, "fp32", exit_rate=0.9, edge=edge, k1=0)
    assert (b.k1, b.k2, b.device_ms, b.exit_ms, b.bytes, b.edge_bytes) == (0, 2, 0.0, 0.0, 3072, 64)
    assert b.always_ms == pytest.approx(31.976) and b.sent_ms == pytest.approx(0.712)
    assert b.expected_ms == pytest.approx(31.976 + 0.1 * 0.712)
    assert b.expected_at([0.0, 1.0]) == pytest.approx([31.976 + 0.712, 31.976])
    one = predict(d, s, link, 2, 0.0, "fp32", exit_rate=0.9, edge=edge, k1=1)
    assert one.expected_ms == pytest.approx(79.168 + 0.1 * 0.712) and one.device_ms == 40
    assert predict(d, s, link, 2, 0.0, "fp32", exit_rate=0.9, edge=edge).expected_ms > 80.5
    # the bound of (2, 0) is the edge answering everything from k1 = 0, below any placement's price
    assert lower_bound_ms(d, s, link, 2, 0.0, "fp32", edge) == pytest.approx(31.976)
    assert edge_exit_cuts(d, edge, 2, 0.0, "fp32", True) == [0, 1]
    for args in ((edge, 2, 0.5, "fp32", True), (edge, 2, 0.0, "fp32", False), (edge.only("relay"), 2, 0.0, "fp32", True),
                 (edge, 1, 0.0, "int8>2:int8", True), (None, 2, 0.0, "fp32", True), (Edge(s, Network(1.0, 0.1)), 2, 0.0,
                                                                                   "fp32", True)):
        assert edge_exit_cuts(d, *args) == []
    with pytest.raises(ValueError, match="cannot run on the edge from k1=2"):
        predict(d, s, link, 2, 0.0, "fp32", exit_rate=0.9, edge=edge, k1=2)
    with pytest.raises(ValueError, match="cannot run on the edge from k1=0"):
        predict(d, s, link, 2, 0.5, "fp32", exit_rate=0.9, edge=edge, k1=0)


def test_a_stored_prediction_prices_the_placement_again():
    """best.json's `predicted` (search.latency.predicted_parts) read back by breakdown_from prices the same
    deployment at any exit rate: with the exit on the edge (k1, the image as PNG) as without an edge."""
    from search.latency import breakdown_from, predicted_at, predicted_parts

    d, s, e = _edge_exit_scene()
    link, edge = Network(1.0, 5.0), Edge(e, Network(1.0, 0.1))
    for b in (predict(d, s, link, 2, 0.0, "fp32", exit_rate=0.9, edge=edge, k1=0, up_codec="png", up_bytes=500.0),
              predict(d, s, link, 2, 0.0, "fp32", exit_rate=0.9, edge=edge, k1=1),
              predict(d, s, link, 1, 0.5, "fp32", exit_rate=0.3)):
        back = breakdown_from(predicted_parts(b))
        assert (back.k1, back.up_codec) == (b.k1, b.up_codec)
        assert back.expected_ms == pytest.approx(b.expected_ms)
        assert predicted_at(predicted_parts(b), 0.5)["total_ms"] == pytest.approx(b.with_exit_rate(0.5).expected_ms)
    placed = predict(d, s, link, 2, 0.0, "fp32", exit_rate=0.9, edge=edge, k1=0, up_codec="png", up_bytes=500.0)
    assert placed.bytes == 500.0 and placed.transfer_ms == pytest.approx(5 + 8 * 500 / 1000)
    with pytest.raises(ValueError, match="at k1=0 one of raw, png .* not jpeg90"):
        predict(d, s, link, 2, 0.0, "fp32", exit_rate=0.9, edge=edge, k1=0, up_codec="jpeg90", up_bytes=500.0)


def test_the_search_places_the_exit_on_the_edge_where_it_pays_with_its_own_answers():
    """The scene above: (2, 0) with an exit sure of 90% of samples (and right on those only); the best
    setting puts its exit on the edge from k1 = 0 (31.976 + 0.1 * 0.712 ms by hand), and the promise keeps
    the candidate's own accuracy and exit rate.  A pruned (2, 0.5) cannot place its exit there."""
    from search.space import best_setting, placements

    d, s, e = _edge_exit_scene()
    problem = Problem(d, s, Network(1.0, 5.0), A0=0.95, confidence=0.0, edge=Edge(e, Network(1.0, 0.1)))
    n, label = 1000, np.zeros(1000, dtype=np.int64)
    confident = np.arange(n) < 900
    exit_pred = np.where(confident, 0, 1)  # the exit is wrong where it is unsure: t = 0.9 it must be
    from compress.candidate import Evaluation

    ev = Evaluation(label, np.where(confident, 0.9, 0.2), exit_pred, exit_pred == label, {"fp32": label.copy()},
                    {"fp32": label == label})
    evals = {"selection": ev, "test": ev}
    best = best_setting(problem, 2, 0.0, evals)
    assert best.breakdown.k1 == 0 and best.config.t == pytest.approx(0.9)
    assert best.latency_ms == pytest.approx(31.976 + 0.1 * 0.712) and best.sel_exit_rate == pytest.approx(0.9)
    assert best.as_dict()["k1"] == 0 and best.as_dict()["edge_exit_ms"] == pytest.approx(0.4)
    config = best.config
    assert placements(problem, config)[-2:] == [(2, 0, "raw"), (2, 1, "fp32")]
    assert all(k1 is None for _, k1, _ in placements(problem, replace(config, r=0.5)))
    pruned = best_setting(problem, 2, 0.5, evals)
    assert pruned.breakdown.k1 is None


@pytest.mark.parametrize("up, on, codecs, images", [
    (100.0, 10.0, ("fp32",), ("raw",)),
    (20.0, 100.0, ("fp32",), ("raw", "png")),
    pytest.param(100.0, 100.0, ("fp32", "int8", "int8-zlib"), ("raw", "png"), marks=pytest.mark.slow),  # 30 s
    pytest.param(20.0, 1.0, ("fp32", "int8"), ("raw",), marks=pytest.mark.slow)])
def test_product_and_oracle_agree_with_an_exit_on_the_edge(up, on, codecs, images):
    """The measured resnet18 fashion landscape (real exits) on the shipped emulated-50x, server and
    emulated-edge-4x profiles, whose head and exit rows at r = 0 let the edge run an unpruned candidate's
    exit: the product's exhaustive 3-tier answer and the independent oracle's agree, with the exit placed
    on the edge where it pays (the first scene, by about 10% against the best answer without it), the image
    sent up as PNG (its measured per-sample bytes) where png is an input codec and that is faster."""
    from bench import oracle
    from bench.landscapes import load_doc, measured, regrid
    from bench.search_efficiency import families, problem_for

    from compress import measurements

    csv = Path(__file__).resolve().parent.parent / "docs/benchmarks/landscapes/resnet18-fashion-3r/measurements.csv"
    land = measured(csv, "resnet18", "emulated-50x")
    rows = measurements.load(csv, land.K, land.ratios, need_n=True)
    land.codecs = {k: list(images) if k == 0 else list(codecs) if k < land.K else ["fp32"] for k in range(land.K + 1)}
    edge_doc = regrid(load_doc("emulated-edge-4x", "resnet18", 32), land.ratios, keep_exits=True)
    sel = land.arrays[(0, 0.0)]["selection"]
    A0 = round(float(np.mean(sel["final"]["raw"] == sel["label"])) - 0.025, 4)
    problem = problem_for(land, A0, up)
    problem.edge = Edge(Profile(edge_doc, "edge"), Network(on, 10.0))
    problem.image_bytes = {role: {"png": land.arrays[(0, 0.0)][role]["nbytes"]["png"]} for role in ("selection", "test")}
    assert problem.up_codecs() == (("raw", "png") if "png" in images else ("raw",))
    joint = next(m for m in methods(problem) if m.name == "joint optimum (exhaustive)")
    ours, complete = best_of(problem, MeasuredPool(rows, None), joint)
    ref = oracle.optimum(land.device, land.server, land.arrays, A0, up, 5.0, families=families(land),
                         codecs=land.codecs, edge=edge_doc, edge_bandwidth=on, edge_rtt=10.0)
    assert complete and ref is not None and ours.feasible(problem)
    assert ours.latency_ms == pytest.approx(ref["latency_ms"], rel=1e-6)
    assert (ours.config.k, ours.config.r, ours.config.codec) == (ref["k"], ref["r"], ref["codec"])
    if (up, on) == (20.0, 100.0):  # the image as PNG: a fifth of its raw bytes over the slower first link
        assert (ours.breakdown.k1, ours.breakdown.up_codec) == (0, "png")
    if (up, on) == (100.0, 10.0):
        assert ours.breakdown.k1 == 0
        without = Problem(problem.device, problem.server, problem.network, A0=A0, families=problem.families,
                          edge=Edge(Profile(regrid(load_doc("emulated-edge-4x", "resnet18", 32), land.ratios), "e"),
                                    Network(on, 10.0)))
        without.space = problem.space
        other, _ = best_of(without, MeasuredPool(rows, None), joint)
        assert other.breakdown.k1 is None and ours.latency_ms < 0.95 * other.latency_ms

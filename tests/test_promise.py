"""Promises that hold on data the search never saw: confidence bounds, bounded choices, quantile objectives."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from compress.candidate import Evaluation
from profiles import Network, load_profile
from search import bounds
from search.latency import Breakdown
from search.space import Problem, SearchSpace, best_setting


@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("successes,n", [(0, 50), (1, 50), (45, 50), (50, 50), (3600, 4000), (449, 449)])
def test_wilson_bounds_match_scipy(successes, n, confidence):
    """One-sided bound at C = the end of scipy's two-sided Wilson interval at 2C - 1 (independent code)."""
    ci = stats.binomtest(successes, n).proportion_ci(confidence_level=2 * confidence - 1, method="wilson")
    assert bounds.lower(successes / n, n, confidence) == pytest.approx(ci.low, abs=1e-9)
    assert bounds.upper(successes / n, n, confidence) == pytest.approx(ci.high, abs=1e-9)


def test_confidence_zero_is_the_point_estimate_and_bad_values_are_refused():
    p = np.array([0.0, 0.3, 1.0])
    assert np.array_equal(bounds.lower(p, 100, 0), p) and np.array_equal(bounds.upper(p, 100, 0), p)
    assert bounds.upper(0.0, 4000, 0.95) > 0  # a send never seen in 4000 samples is still priced in
    for bad in (0.2, 1.0, -0.1):
        with pytest.raises(ValueError, match="confidence must be 0 or in"):
            bounds.lower(0.5, 10, bad)
        with pytest.raises(ValueError, match="--confidence must be 0"):
            bounds.check_confidence(bad)


def _evaluation(rng, n: int) -> Evaluation:
    """An exit whose correctness rises with its confidence; a tail right 93% of the time."""
    conf = rng.uniform(0.1, 1.0, n)
    label = np.zeros(n, dtype=np.int64)
    exit_pred = np.where(rng.uniform(size=n) < 0.45 + 0.5 * conf, 0, 1)
    final = np.where(rng.uniform(size=n) < 0.93, 0, 1)
    hit = lambda pred: pred == label  # noqa: E731
    return Evaluation(label, conf, exit_pred, hit(exit_pred), {"fp32": final}, {"fp32": hit(final)})


def _problem(confidence: float) -> Problem:
    problem = Problem(load_profile("emulated-10x", "resnet18", 32), load_profile("server", "resnet18", 32),
                      Network(1.0, 5), A0=0.9, confidence=confidence)
    problem.space = SearchSpace(problem.space.K, (0.0,), ("fp32",))
    return problem


def test_bounded_choice_holds_on_held_out_data_where_the_point_estimate_does_not():
    """Twenty selection splits of 1000 samples, each judged on a 50,000-sample held-out split: the point
    estimate sits on the A0 boundary and misses it about half the time; the 95% bound almost never."""
    point, bounded, margins = [], [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        evals = {"selection": _evaluation(rng, 1000), "test": _evaluation(rng, 50_000)}
        for confidence, misses in ((0.0, point), (0.95, bounded)):
            s = best_setting(_problem(confidence), 2, 0.0, evals)
            assert s.config.t is not None and s.acc_bound >= 0.9
            misses.append(s.test_acc < 0.9)
            if confidence:
                margins.append(s.sel_acc - s.acc_bound)
    assert sum(point) >= 6, point
    assert sum(bounded) <= 2, bounded
    assert 0.005 < np.median(margins) < 0.03  # the bound costs about 1.645 standard errors, no more


def test_quantile_objective_by_hand():
    b = Breakdown(device_ms=0.6, exit_ms=0.3, transfer_ms=6.0, server_ms=3.0, bytes=1000, exit_rate=0.0,
                  device_overhead_ms=0.1, encode_ms=0.5, link_overhead_ms=0.2, server_overhead_ms=0.3)
    assert b.exit_path_ms == pytest.approx(1.0) and b.sent_ms == pytest.approx(10.0)
    # p95: the exit path while at most 5% are sent, else the full path
    assert b.quantile_at(0.95, [0.96, 0.95, 0.94]).tolist() == pytest.approx([1.0, 1.0, 11.0])
    assert b.objective_at("p99", [0.995, 0.98]).tolist() == pytest.approx([1.0, 11.0])
    assert b.objective_at("mean", [0.9]).tolist() == pytest.approx([1.0 + 0.1 * 10.0])
    # a variable-size codec: 10% sent with per-sample extras 0..9 ms; p95 is the median of the sent: 4
    assert b.quantile_at(0.95, [0.9], np.arange(10.0))[0] == pytest.approx(11.0 + 4.0)
    with pytest.raises(ValueError, match="choose one of: mean, p95, p99"):
        b.objective_at("p90", [0.5])


def test_bounded_share_sent_prices_a_rare_send():
    """An exit that answered every selection sample: the point estimate promises the exit path only, the
    bound charges the upper bound of the share sent (at 1 Mbit/s a send costs far more than the exit)."""
    rng = np.random.default_rng(0)
    ev = _evaluation(rng, 2000)
    ev.exit_conf[:] = 0.99
    ev.exit_pred[:] = 0
    ev.exit_top5[:] = True
    evals = {"selection": ev, "test": ev}
    point = best_setting(_problem(0.0), 2, 0.0, evals)
    bounded = best_setting(_problem(0.95), 2, 0.0, evals)
    assert point.sel_exit_rate == bounded.sel_exit_rate == 1.0
    assert point.breakdown.exit_rate == 1.0 and point.latency_ms == pytest.approx(point.breakdown.exit_path_ms)
    sent = 1 - bounded.breakdown.exit_rate
    assert sent == pytest.approx(bounds.upper(0.0, 2000, 0.95))
    assert bounded.latency_ms == pytest.approx(bounded.breakdown.exit_path_ms + sent * bounded.breakdown.sent_ms)
    assert bounded.latency_ms > point.latency_ms


def test_familywise_bound_shares_the_confidence_among_the_candidates():
    """Choosing among M candidates: each is bounded at 1 - (1 - C) / M, so the chosen one's holds at C."""
    rng = np.random.default_rng(3)
    evals = {"selection": _evaluation(rng, 1000), "test": _evaluation(rng, 1000)}
    one, many = _problem(0.95), _problem(0.95)
    many.families = 40
    assert many.bound_confidence == pytest.approx(1 - 0.05 / 40) and one.bound_confidence == 0.95
    s_one, s_many = best_setting(one, 2, 0.0, evals), best_setting(many, 2, 0.0, evals)
    assert s_many.acc_bound >= 0.9 and s_many.latency_ms >= s_one.latency_ms  # more careful, never faster
    assert s_many.acc_bound < s_many.sel_acc - (s_one.sel_acc - s_one.acc_bound)  # a wider margin below the estimate
    point = _problem(0.0)
    point.families = 40
    assert point.bound_confidence == 0.0  # --confidence 0 stays the point estimate

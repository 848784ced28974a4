"""A real candidate deployed (ONNX Runtime, cloud server, edge over loopback) answers every test sample as
its evaluation said it would, and the prediction covers exactly the samples sent."""
from __future__ import annotations

import numpy as np
import pytest

from compress.candidate import build_candidate
from profiles import Network, load_profile
from runtime.deploy import deploy_candidate
from search.latency import predict

N = 60

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def candidate(resnet_base, digits32):
    return build_candidate(resnet_base, digits32, 3, 0.0, progress=False)  # r = 0: exit training only


@pytest.mark.parametrize("codec", ["fp32", "int8"])
def test_deployment_reproduces_the_evaluation(candidate, digits32, tmp_path, codec):
    test = candidate.evaluations["test"]
    conf = np.sort(test.exit_conf[:N])
    t = float((conf[N // 2 - 1] + conf[N // 2]) / 2)  # about half the samples go to the server
    parts = predict(load_profile("host", "resnet18", 32), load_profile("server", "resnet18", 32),
                    Network(100, 1), 3, 0.0, codec, exit_rate=0.0).as_dict()
    df, s = deploy_candidate(candidate, digits32, tmp_path, t, codec, parts, limit=N, bandwidth=100, rtt=1)
    exited, answer = test.answers(t, codec)
    assert s["agreement"] == 1.0
    np.testing.assert_array_equal(df.exited, exited[:N])
    np.testing.assert_array_equal(df.pred, answer[:N])
    p = s["predicted"]
    assert p["exit_rate"] == pytest.approx(exited[:N].mean()) == pytest.approx(s["exit_rate"])
    assert p["accuracy"] == pytest.approx(s["accuracy"])
    exit_path = parts["device_ms"] + parts["exit_ms"] + parts["device_overhead_ms"]
    sent = 1 - p["exit_rate"]
    sent_ms = sum(parts[x] for x in ("encode_ms", "transfer_ms", "link_overhead_ms", "server_ms",
                                     "server_overhead_ms"))
    assert parts["device_overhead_ms"] > 0 and parts["link_overhead_ms"] > 0  # measured runtime overheads
    # by hand, in the deployment's order: a sample after one the device answered runs warm (W ms less)
    ex = exited[:N].astype(bool)
    after_answer = np.concatenate([[False], ex[:-1]])
    assert parts["warm_saving_ms"] > 0  # the shipped host profile has warm rows
    # and the server's tail after the exits since the last send: its idle curve at a longer wait
    server, row = load_profile("server", "resnet18", 32), parts["server_ms"] / parts["server_idle_factor"]
    run, runs = 0, []
    for e in ex:
        runs.append(run)
        run = run + 1 if e else 0
    tail = [row * server.idle_factor(parts["server_gap_ms"] + j * parts["exit_gap_ms"]) for j in runs]
    per_sample = (exit_path - after_answer * parts["warm_saving_ms"]
                  + np.where(ex, 0.0, sent_ms - parts["server_ms"] + np.array(tail)))
    assert p["total_ms"] == pytest.approx(per_sample.mean())
    assert p["total_ms"] < exit_path + sent * sent_ms  # cold for every request would be dearer
    assert s["n"] == N and 0 < p["exit_rate"] < 1

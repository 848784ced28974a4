"""Real end devices: a profiling bundle timed by its runner, and the edge client, in a fresh virtual
environment that holds only onnxruntime and numpy (and what pip brings with them); CPU-quota emulation;
one-line errors for a model without a profile.  Real ONNX Runtime sessions and sockets; no wall-clock
upper bounds (the quota test bounds wall time from below: a quota can only make a process slower)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compress import onnx_io, zoo
from compress.candidate import Candidate, ExitBranch
from profiles import quota, runner
from profiles.__main__ import main as profiles_cli
from profiles.profile import load_profile
from runtime import EDGE_FILES
from runtime import manifest as mf
from runtime.cloud import CloudServer
from runtime.deploy import deploy
from runtime.edge import main as edge_main
from runtime.edge import run_rows
from runtime.export import export_split
from tests.conftest import ROOT

MODEL, SIZE, RATIOS = "resnet18", 32, [0.0, 0.5]
QUICK = ["--repeats", "3", "--warmup", "1", "--min-ms", "0"]
# What the edge imports: copied alone into the device's directory, so a missing one fails the test.
EDGE_MODULES = EDGE_FILES
N = 24  # test samples per edge run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "r18"
    assert profiles_cli(["bundle", "--model", MODEL, "--input-size", str(SIZE), "--ratios", "0,0.5",
                         "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def device_env(tmp_path_factory) -> dict:
    """A fresh venv (no system site packages) with only onnxruntime and numpy pip-installed, at the
    versions of this environment, and a directory holding only the edge's modules."""
    base = tmp_path_factory.mktemp("device")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    python = venv / "bin" / "python"
    pins = [f"onnxruntime=={metadata.version('onnxruntime')}", f"numpy=={metadata.version('numpy')}"]
    got = subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], capture_output=True, text=True,
                         timeout=600)
    if got.returncode != 0:
        pytest.skip(f"pip could not install {' '.join(pins)} into a fresh venv: {got.stderr.strip()[-300:]}")
    code = base / "code"
    for rel in EDGE_MODULES:
        (code / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, code / rel)
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    # neither the venv nor the copied code may see the repository (cwd is not the repository either)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {"python": str(python), "code": code, "base": base, "freeze": freeze, "env": env}


def _device_run(device_env: dict, args: list[str], pythonpath: Path | None = None, **kwargs):
    env = dict(device_env["env"])
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([device_env["python"], *args], cwd=device_env["base"], env=env, capture_output=True,
                          text=True, timeout=600, **kwargs)


def test_device_venv_holds_neither_torch_nor_pandas(device_env):
    names = {line.split("==")[0].lower() for line in device_env["freeze"].split()}
    assert {"numpy", "onnxruntime"} <= names and not names & {"torch", "pandas", "torchvision", "onnx", "tqdm"}
    print("device venv:", device_env["freeze"].replace("\n", " "))
    for module in ("torch", "pandas", "tqdm", "PIL"):
        got = _device_run(device_env, ["-c", f"import {module}"], device_env["code"])
        assert got.returncode != 0 and "ModuleNotFoundError" in got.stderr, module


def test_edge_and_runner_import_neither_torch_nor_pandas_here():
    """The same in this environment: importing them loads no torch, pandas or tqdm."""
    code = ("import sys, runtime.edge, runtime.client, profiles.runner, profiles.quota\n"
            "print(sorted(m for m in ('torch', 'pandas', 'tqdm', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bundle_holds_parts_without_weights(bundle_dir):
    doc = json.loads((bundle_dir / runner.BUNDLE_FILE).read_text())
    K = zoo.build(MODEL, 10, SIZE).K
    assert (doc["model"], doc["K"], doc["ratios"], doc["role"]) == (MODEL, K, RATIOS, "device")
    assert [(j["k"], j["r"]) for j in doc["jobs"]] == [(k, r) for k in range(K + 1) for r in RATIOS]
    for job in doc["jobs"]:  # a head for k > 0, a head with its exit where the split has one
        assert (job["head"] is not None) == (job["k"] > 0)
        assert ("fused" in job) == (0 < job["k"] < K)
    weights = sum(t[1] for p in doc["parts"].values() for t in p["tensors"])
    files = sum(p.stat().st_size for p in (bundle_dir / "parts").iterdir())
    assert weights > 50 * files  # the weights are written on the device, not shipped
    assert {"runner.py", "quota.py", "README.txt"} <= {p.name for p in bundle_dir.iterdir()}


def test_runner_in_the_device_venv_writes_a_profile_the_project_loads(bundle_dir, device_env, tmp_path):
    out = tmp_path / "device.json"
    # the copy inside the bundle, run as a plain script: no repository module on the path
    got = _device_run(device_env, [str(bundle_dir / "runner.py"), "--out", str(out), "--device", "tiny", *QUICK,
                                   "--quiet"])
    assert got.returncode == 0, got.stderr
    profile = load_profile(str(out), MODEL, SIZE)
    K = zoo.build(MODEL, 10, SIZE).K
    assert (profile.role, profile.K, profile.ratios, profile.device, profile.threads) == ("device", K, RATIOS, "tiny", 1)
    meta = profile.meta
    assert meta["cpu"] == runner.cpu_name() and meta["slowdown"] == 1.0 and "cpu_quota" not in meta
    assert meta["versions"]["onnxruntime"] == metadata.version("onnxruntime")
    assert meta["versions"]["numpy"] == metadata.version("numpy") and meta["versions"]["python"]
    assert all(profile.ms("head", k, r) > 0 for k in range(1, K + 1) for r in RATIOS)
    assert all(row["n"] == 3 for row in profile.doc["latency"] if row["k"] > 0)
    exits = profile.latency[profile.latency.part == "exit"]
    assert sorted(zip(exits.k, exits.r)) == [(k, r) for k in range(1, K) for r in RATIOS]
    table = zoo.split_table(zoo.build(MODEL, 10, SIZE), SIZE)
    assert [profile.tensor_bytes(k, 0.0, "fp32") for k in range(1, K)] == [table[k].bytes("fp32") for k in range(1, K)]
    assert profiles_cli(["check", str(out)]) == 0


def test_in_process_profiler_times_the_same_parts(bundle_dir, tmp_path):
    """`measure` is export_parts + the runner's timing: the same rows and bytes as the device's run."""
    from profiles.profiler import measure

    doc = measure(MODEL, SIZE, "here", ratios=RATIOS, repeats=2, warmup=1, min_ms=0, progress=False)
    bundle = json.loads((bundle_dir / runner.BUNDLE_FILE).read_text())
    assert doc["bytes"] == bundle["bytes"]
    assert [(r["part"], r["k"], r["r"]) for r in doc["latency"]] == \
        [(r["part"], r["k"], r["r"]) for r in runner.latency_rows(bundle, {p: runner.NOTHING for p in bundle["parts"]})]
    assert "profiles.runner" in doc["meta"]["method"] and "torch" in doc["meta"]["versions"]


def test_runner_session_is_the_runtime_session(tmp_path):
    x = torch.zeros(1, 4, 2, 2)
    path = onnx_io.export(torch.nn.ReLU(), x, tmp_path / "relu.onnx")
    a, b = runner.session(path, 2).get_session_options(), onnx_io.session(path, 2).get_session_options()
    for name in ("intra_op_num_threads", "inter_op_num_threads", "execution_mode", "log_severity_level"):
        assert getattr(a, name) == getattr(b, name), name


def test_runner_errors_are_one_line(tmp_path, bundle_dir, capsys):
    assert runner.main([str(tmp_path), "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "python -m profiles bundle" in err
    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    next((broken / "parts").iterdir()).unlink()
    assert runner.main([str(broken), "--out", str(tmp_path / "p.json")]) == 2
    assert "copy the whole bundle directory" in capsys.readouterr().err
    assert profiles_cli(["bundle", "--model", MODEL, "--input-size", "32", "--out", str(broken / "parts")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert profiles_cli(["bundle", "--model", "alexnet", "--input-size", "32", "--out", str(tmp_path / "a")]) == 2
    assert "minimum is 63px" in capsys.readouterr().err


# -- the edge on the device ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def split(random_resnet18, digits32, tmp_path_factory):
    """k = 3, int8-zlib, an exit that answers about half: the model directory and its samples file."""
    model, k = random_resnet18, 3
    torch.manual_seed(1)
    exit_branch = ExitBranch(128, 10).eval()
    images, labels = digits32.arrays("test")
    with torch.no_grad():
        conf = F.softmax(exit_branch(model.head(k).eval()(digits32.normalize(images[:N]))), dim=1).max(dim=1).values
    c = np.sort(conf.numpy())
    t = float((c[N // 2 - 1] + c[N // 2]) / 2)
    out = tmp_path_factory.mktemp("split")
    export_split(Candidate(k, 0.0, model, exit_branch, {}, {}), digits32, out, threshold=t, codec="int8-zlib")
    samples = out.parent / "samples.npz"  # as a user makes them for a device: the edge's own command
    assert edge_main(["--model-dir", str(out), "--save-images", str(samples), "--limit", str(N)]) == 0
    got, got_labels = mf.load_samples(samples)
    assert np.array_equal(got, images[:N].numpy()) and np.array_equal(got_labels, labels[:N].numpy())
    return out, samples


def _rows(path: Path) -> list[dict]:
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def test_edge_in_the_device_venv_answers_as_in_process(split, device_env, tmp_path):
    model_dir, samples = split
    with CloudServer(model_dir) as server:
        got = _device_run(device_env, ["-m", "runtime.edge", "--model-dir", str(model_dir), "--server",
                                       f"127.0.0.1:{server.port}", "--images", str(samples), "--csv",
                                       str(tmp_path / "edge.csv"), "--quiet"], device_env["code"])
        assert got.returncode == 0, got.stderr
        here, _ = run_rows(model_dir, ("127.0.0.1", server.port), images=samples)
    assert server.stats["internal_errors"] == 0
    there = _rows(tmp_path / "edge.csv")
    assert len(there) == len(here) == N and "latency ms: mean" in got.stdout
    assert [int(r["pred"]) for r in there] == [r["pred"] for r in here]
    assert [r["exited"] == "True" for r in there] == [r["exited"] for r in here]
    assert [int(r["bytes_sent"]) for r in there] == [r["bytes_sent"] for r in here]
    exited = [r["exited"] for r in here]
    assert 0 < sum(exited) < N and all(r["fallback"] == "False" for r in there)  # both paths ran, none failed


def test_deploy_runs_the_edge_under_a_cpu_quota(split, digits32, tmp_path):
    model_dir, samples = split
    df, summary = deploy(model_dir, digits32, bandwidth=None, rtt=0.0, limit=N, cpu_quota=0.5)
    with CloudServer(model_dir) as server:
        ref, _ = run_rows(model_dir, ("127.0.0.1", server.port), images=samples)
    q = summary["cpu_quota"]
    assert q["fraction"] == 0.5 and q["mechanism"] in ("cgroup2", "cgroup1", "sigstop")
    assert summary["n"] == N and summary["failed"] == 0 and summary["k"] == 3
    assert list(df.pred) == [r["pred"] for r in ref] and list(df.exited) == [r["exited"] for r in ref]


# -- CPU quota -------------------------------------------------------------------------------------------

BUSY = "import time\nc = time.process_time()\nwhile time.process_time() - c < {cpu}: pass\n"


@pytest.mark.parametrize("mechanism", ["auto", "sigstop"])
def test_a_quota_holds_a_busy_process_to_its_share(mechanism, tmp_path):
    cpu, fraction = 0.2, 0.25
    start = time.perf_counter()
    code = quota.run([sys.executable, "-c", BUSY.format(cpu=cpu)], fraction, mechanism=mechanism, announce=False)
    wall = time.perf_counter() - start
    assert code == 0
    assert wall >= 0.8 * cpu / fraction  # 0.2 s of CPU at a quarter of a CPU cannot take less than ~0.8 s


def test_quota_errors_are_one_line():
    for fraction, period, message in ((0, None, r"must be in \(0"), (0.1, 5.0, "below the kernel's 1 ms minimum"),
                                      (0.5, 5000.0, "period must be in")):
        with pytest.raises(ValueError, match=message):
            quota.check(fraction, period)
    assert quota.check(0.1) == 10.0 and quota.check(0.02) == 50.0  # the period grows to keep a 1 ms quota


def test_runner_under_a_quota_records_it(bundle_dir, tmp_path):
    out = tmp_path / "slow.json"
    got = subprocess.run([sys.executable, "-m", "profiles.runner", str(bundle_dir), "--out", str(out), "--device",
                          "quota-half", "--cpu-quota", "0.5", *QUICK, "--quiet"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert got.returncode == 0, got.stderr
    assert "cpu quota 0.5 CPU" in got.stderr  # says which limiter it used (and why not a cgroup, if so)
    profile = load_profile(str(out), MODEL, SIZE)
    q = profile.meta["cpu_quota"]
    assert q["fraction"] == 0.5 and q["mechanism"] in ("cgroup2", "cgroup1", "sigstop")
    assert "EMULATED" in profile.meta["method"] and profile.slowdown == 1.0


# -- models without a profile ------------------------------------------------------------------------------

def test_a_model_without_a_profile_names_the_bundle_command():
    code = ("import sys, auto\n"
            "try:\n    rc = auto.main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
            "print('torch' in sys.modules, rc)")
    out = subprocess.run([sys.executable, "-c", code, "--model", "vgg11_bn"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.split() == ["False", "2"], out.stdout + out.stderr[-2000:]
    errors = out.stderr.strip().splitlines()
    assert len(errors) == 1 and "no profile for vgg11_bn at 32px" in errors[0]
    assert "python -m profiles bundle --model vgg11_bn --input-size 32" in errors[0]


def test_help_says_which_models_have_profiles():
    import auto

    text = " ".join(auto.parser().format_help().split())
    assert "Shipped profiles: mobilenet_v2 (32, 224 px); resnet18 (32, 224 px)" in text
    assert "vgg11_bn, alexnet need a profile of your own first (python -m profiles bundle" in text


def test_vgg_classifier_exports_at_32px(tmp_path):
    """vgg11_bn's adaptive pool from 1x1 up to 7x7 is written as a resize the exporter takes, same values."""
    torch.manual_seed(0)
    block = zoo.Classifier(torch.nn.AdaptiveAvgPool2d(7), torch.nn.Linear(8 * 49, 10)).eval()
    x = torch.randn(2, 8, 1, 1)
    with torch.no_grad():
        ref = block.head(torch.flatten(torch.nn.AdaptiveAvgPool2d(7)(x), 1))
        assert torch.equal(block(x), ref)
    sess = onnx_io.session(onnx_io.export(block, x[:1], tmp_path / "cls.onnx"))
    assert np.allclose(onnx_io.run(sess, x.numpy())[0], ref.numpy(), atol=1e-5)

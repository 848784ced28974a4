"""runtime.export: ONNX parts agree with PyTorch at a middle k, k = 0 and k = K; the manifest says so."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from compress import codec as codecs
from compress import onnx_io, zoo
from compress.candidate import Candidate, ExitBranch
from runtime import manifest as mf
from runtime.deploy import deploy
from runtime.export import check_close, export_split


def candidate(arch: str, k: int, input_size: int = 32, seed: int = 0, with_exit: bool = True) -> Candidate:
    """Random-weight model split at k (with an exit where one is allowed): parity needs no training."""
    torch.manual_seed(seed)
    model = zoo.build(arch, 10, input_size).eval()
    exit_branch = None
    if with_exit and 0 < k < model.K:
        with torch.no_grad():
            channels = model.head(k).eval()(torch.zeros(1, 3, input_size, input_size)).shape[1]
        exit_branch = ExitBranch(channels, 10).eval()
    return Candidate(k, 0.0, model, exit_branch, {}, {})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def resnet(random_resnet18):
    return random_resnet18


def _cand(model, k: int, with_exit: bool = True) -> Candidate:
    exit_branch = None
    if with_exit and 0 < k < model.K:
        with torch.no_grad():
            channels = model.head(k).eval()(torch.zeros(1, 3, 32, 32)).shape[1]
        torch.manual_seed(k)
        exit_branch = ExitBranch(channels, 10).eval()
    return Candidate(k, 0.0, model, exit_branch, {}, {})


def _torch_parts(cand, data, n=16):
    images, _ = data.arrays("test")
    x = data.normalize(images[:n])
    with torch.no_grad():
        feats = cand.head()(x)
        logits = cand.tail()(feats)
        exit_logits = cand.exit(feats) if cand.exit is not None else None
    return images[:n].numpy(), x.numpy(), feats.numpy(), logits.numpy(), exit_logits


PREDICTED = {"total_ms": 12.5, "device_ms": 3.0, "transfer_ms": 7.0, "server_ms": 2.5}


@pytest.fixture(scope="module")
def middle(resnet, digits32, tmp_path_factory):
    out = tmp_path_factory.mktemp("middle")
    cand = _cand(resnet, 3)
    return out, cand, export_split(cand, digits32, out, threshold=0.7, codec="int8", predicted=PREDICTED, seed=0)


def test_middle_k_parity_and_manifest(middle, resnet, digits32):
    tmp_path, cand, m = middle
    predicted = PREDICTED
    assert (tmp_path / "head.onnx").is_file() and (tmp_path / "tail.onnx").is_file()
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    assert (m["k"], m["K"], m["r"], m["t"], m["codec"], m["exit"]) == (3, resnet.K, 0.0, 0.7, "int8", True)
    assert m["model"]["arch"] == "resnet18"
    assert m["data"] == {"name": "digits", "input_size": 32, "seed": 0, "split": "test", "num_classes": 10,
                         "mean": list(digits32.mean), "std": list(digits32.std)}
    assert m["input"]["shape"] == [3, 32, 32]
    assert m["head"]["outputs"] == ["exit", "split"]
    assert m["split"]["shape"] == m["tail"]["input_shape"] == [128, 4, 4]
    assert m["split"]["bytes"] == m["split"]["max_bytes"] == 128 * 16 + 8 and m["split"]["wire_dtype"] == "int8"
    assert m["predicted"] == predicted
    assert set(m["tolerance"]["max_abs_diff"]) == {"head.exit", "head.split", "tail.logits"}

    # independent re-check, batch 1 as the edge runs it
    _, x, feats, logits, exit_logits = _torch_parts(cand, digits32)
    head = onnx_io.session(tmp_path / "head.onnx")
    tail = onnx_io.session(tmp_path / "tail.onnx")
    for i in range(4):
        got_exit, got_feats = onnx_io.run(head, x[i:i + 1])
        np.testing.assert_allclose(got_feats, feats[i:i + 1], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(got_exit, exit_logits[i:i + 1].numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(onnx_io.run(tail, feats[i:i + 1])[0], logits[i:i + 1], atol=1e-4, rtol=1e-4)
    assert mf.load(tmp_path)["k"] == 3


def test_k0_is_whole_model_on_server(middle, resnet, digits32, tmp_path):
    shutil.copytree(middle[0], tmp_path, dirs_exist_ok=True)  # a previous export of k = 3 must not linger
    cand = _cand(resnet, 0)
    m = export_split(cand, digits32, tmp_path, threshold=None, codec="fp16")  # a feature codec at k = 0: raw
    assert not (tmp_path / "head.onnx").exists() and m["head"] is None
    assert mf.load(tmp_path)["k"] == 0 and m["codec"] == "raw"
    assert m["split"] == {"shape": [3, 32, 32], "wire_dtype": "uint8", "bytes": 3 * 32 * 32, "max_bytes": 3 * 32 * 32}
    images, x, _, logits, _ = _torch_parts(cand, digits32)
    np.testing.assert_array_equal(mf.normalize(images, m), x)  # the server normalises as the device would
    got = onnx_io.run(onnx_io.session(tmp_path / "tail.onnx"), mf.normalize(images, m))[0]
    np.testing.assert_allclose(got, logits, atol=1e-4, rtol=1e-4)


def test_kK_is_whole_model_on_device(resnet, digits32, tmp_path):
    cand = _cand(resnet, resnet.K)
    m = export_split(cand, digits32, tmp_path, threshold=None, codec="fp32")
    assert not (tmp_path / "tail.onnx").exists() and m["tail"] is None
    assert m["head"]["outputs"] == ["logits"] and m["split"]["bytes"] == m["split"]["max_bytes"] == 0
    assert m["codec"] == "fp32" and m["split"]["wire_dtype"] is None
    _, x, _, logits, _ = _torch_parts(cand, digits32)
    np.testing.assert_allclose(onnx_io.run(onnx_io.session(tmp_path / "head.onnx"), x)[0], logits,
                               atol=1e-4, rtol=1e-4)


def test_mobilenet_middle_k_exit_unused_without_threshold(digits32, tmp_path):
    cand = candidate("mobilenet_v2", 4)
    assert cand.exit is not None
    m = export_split(cand, digits32, tmp_path, threshold=None, codec="fp32", samples=8)
    assert m["head"]["outputs"] == ["split"] and m["exit"] is False and m["t"] is None
    assert set(m["tolerance"]["max_abs_diff"]) == {"head.split", "tail.logits"}


def test_refusals(resnet, digits32, tmp_path):
    with pytest.raises(ValueError, match="no exit branch"):
        export_split(_cand(resnet, 3, with_exit=False), digits32, tmp_path, threshold=0.5, codec="fp32")
    with pytest.raises(ValueError, match=r"threshold t must be in \[0, 1\]"):
        export_split(_cand(resnet, 3), digits32, tmp_path, threshold=1.5, codec="fp32")
    with pytest.raises(ValueError, match="unknown codec"):
        export_split(_cand(resnet, 3), digits32, tmp_path, threshold=None, codec="bf16")
    with pytest.raises(ValueError, match="compresses the input image: only k = 0 sends it; at k = 3 choose one of"):
        export_split(_cand(resnet, 3), digits32, tmp_path, threshold=None, codec="png")
    assert not (tmp_path / "manifest.json").exists()


def test_old_manifests_name_a_feature_codec_at_k0():
    assert mf.wire_codec(0, 9, "fp32") == mf.wire_codec(0, 9, "int8-zlib") == "raw"
    assert mf.wire_codec(0, 9, "webp50") == "webp50" and mf.wire_codec(3, 9, "int8-zlib") == "int8-zlib"
    assert mf.wire_codec(9, 9, "png") is None  # k = K sends nothing
    with pytest.raises(ValueError, match="unknown codec"):
        mf.wire_codec(0, 9, "gif")


N_DEPLOY = 30


@pytest.mark.parametrize("k, codec, reference", [(0, "png", "raw"), (3, "int8-zlib", "int8")])
def test_variable_codec_deployment_answers_like_its_fixed_twin(resnet, digits32, tmp_path, k, codec, reference):
    """Real ONNX Runtime and a real loopback server: png is lossless and int8-zlib loses what int8 loses,
    so both answer every sample exactly as raw and int8 do, with fewer (or at most max_bytes) bytes."""
    dfs, manifests = {}, {}
    for name in (codec, reference):
        out = tmp_path / name
        manifests[name] = export_split(_cand(resnet, k, with_exit=False), digits32, out, threshold=None, codec=name,
                                       samples=4)
        dfs[name], s = deploy(out, digits32, bandwidth=None, rtt=0.0, limit=N_DEPLOY)
        assert s["server_stats"]["requests"] == N_DEPLOY and not s["server_stats"].get("bad_requests")
        assert not dfs[name].fallback.any() and (dfs[name].error == "").all()
    m = manifests[codec]
    assert (m["codec"], m["split"]["wire_dtype"], m["split"]["bytes"]) == (codec, codec, None)  # varies per sample
    numel = int(np.prod(m["split"]["shape"]))
    assert m["split"]["max_bytes"] == codecs.max_payload_bytes(numel, codec)
    assert mf.load(tmp_path / codec)["codec"] == codec
    np.testing.assert_array_equal(dfs[codec].pred, dfs[reference].pred)
    sent, fixed = dfs[codec].bytes_sent, dfs[reference].bytes_sent
    assert (fixed == manifests[reference]["split"]["bytes"]).all()
    assert ((0 < sent) & (sent <= m["split"]["max_bytes"])).all()
    if k == 0:
        images, _ = digits32.arrays("test")
        np.testing.assert_array_equal(sent, codecs.sample_bytes(images[:N_DEPLOY].numpy(), "png"))
        assert (sent < fixed).all()  # grey digits go as one PNG channel
        with torch.no_grad():
            want = resnet(digits32.normalize(images[:N_DEPLOY])).argmax(1).numpy()
        np.testing.assert_array_equal(dfs[codec].pred, want)


def test_check_close_names_part_and_difference():
    ref = np.ones((2, 3), dtype=np.float32)
    assert check_close("tail.onnx output 'logits'", ref + 1e-6, ref) == pytest.approx(1e-6, rel=0.1)
    with pytest.raises(ValueError, match=r"^tail.onnx output 'logits' differs from PyTorch by 0.01 \(max abs\)"):
        check_close("tail.onnx output 'logits'", ref + 0.01, ref)
    with pytest.raises(ValueError, match="differs from PyTorch by nan"):
        check_close("head", ref * np.nan, ref)
    with pytest.raises(ValueError, match="shape"):
        check_close("head", ref[:1], ref)


def test_missing_manifest_is_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        mf.load(tmp_path)

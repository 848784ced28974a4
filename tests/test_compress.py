"""Pruning, early exits, fine-tuning and the cached per-sample evaluation, on a tiny resnet18."""
import multiprocessing as mp

import numpy as np
import pytest
import torch

from compress import candidate as cand
from compress import codec
from compress import prune, zoo
from compress.train import Recipe

ONE_EPOCH = Recipe(epochs=1, lr=3e-3, patience=1)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18"])
def test_pruning_shrinks_split_tensor_and_keeps_network_consistent(arch):
    model = zoo.build(arch, 10, 32).eval()
    x = torch.randn(2, 3, 32, 32)
    for k in range(1, model.K):
        before = zoo.split_table(model, 32)[k]
        pruned = prune.prune(model, k, 0.5, 32)
        after = zoo.split_table(pruned, 32)[k]
        assert after.shape[0] == before.shape[0] - before.shape[0] // 2, (k, before, after)
        assert after.bytes("fp32") < before.bytes("fp32")
        with torch.no_grad():
            assert pruned(x).shape == (2, 10)
        # the server side keeps its own channels, except those a residual stream shares with the head
        coupled = prune.coupled_tail_layers(model, pruned, k)
        if arch == "resnet18" and k == 1:
            assert coupled == ["layer1.0.conv2", "layer1.1.conv2"]
        else:
            assert coupled == []
    assert prune.count_params(model) == prune.count_params(prune.prune(model, 0, 0.5, 32))


def test_bad_candidates_get_one_line():
    model = zoo.build("resnet18", 10, 32)
    with pytest.raises(ValueError, match=r"k=7 is outside 0..6"):
        prune.prune(model, 7, 0.5, 32)
    with pytest.raises(ValueError, match=r"r=1.0 is outside \[0, 1\)"):
        prune.prune(model, 2, 1.0, 32)
    with pytest.raises(ValueError, match="unknown importance 'taylor'; choose one of: magnitude"):
        prune.prune(model, 2, 0.5, 32, importance="taylor")


def test_ratio_zero_reproduces_base_exactly(resnet_base, digits32):
    c = cand.build_candidate(resnet_base, digits32, 2, 0.0, progress=False)
    base_pred = []
    with torch.no_grad():
        for x, _ in digits32.loader("selection", 256):
            base_pred.append(resnet_base.model(digits32.normalize(x)).argmax(1))
    base_pred = torch.cat(base_pred).numpy()
    ev = c.evaluations["selection"]
    assert np.array_equal(ev.final["fp32"], base_pred)
    assert ev.accuracy([None])[0] == pytest.approx((base_pred == ev.label).mean())
    assert c.meta["history"] == []  # no fine-tuning at r = 0
    # int8-zlib loses what int8 loses (zlib is lossless), and its bytes are measured per sample
    assert np.array_equal(ev.final["int8-zlib"], ev.final["int8"])
    int8_bytes = zoo.split_table(resnet_base.model, 32)[2].bytes("int8")
    assert len(ev.sample_bytes("int8-zlib")) == len(ev.label) and ev.sample_bytes("int8-zlib").max() < int8_bytes


def test_cloud_only_evaluates_every_input_codec_on_decoded_images(resnet_base, digits32):
    ev = cand.build_candidate(resnet_base, digits32, 0, 0.0, progress=False).evaluations["test"]
    assert set(ev.final) == set(codec.INPUT_CODECS) and ev.exit_conf is None
    assert np.array_equal(ev.final["png"], ev.final["raw"])  # shared by construction (codec.SAME_LOSS) ...
    images = digits32.arrays("test")[0].numpy()
    decoded, sizes = codec.roundtrip_images(images, "png")
    assert np.array_equal(decoded, images)  # ... because PNG really is lossless on these images
    assert np.array_equal(sizes, ev.sample_bytes("png"))  # and the bytes are those the wire would carry
    raw_bytes = 3 * 32 * 32
    assert (ev.sample_bytes("png") < raw_bytes).all()  # a grey digit as one PNG channel
    assert ev.sample_bytes("jpeg50").mean() < ev.sample_bytes("jpeg90").mean()


def test_threshold_arrays_match_a_plain_loop(resnet_base, digits32):
    c = cand.build_candidate(resnet_base, digits32, 3, 0.0, progress=False)
    ev = c.evaluations["selection"]
    ts = [None, 0.0, 0.5, 0.9, 0.99, 1.01]
    acc, rate = ev.accuracy(ts), ev.exit_rate(ts)
    for t, a, r in zip(ts, acc, rate):
        correct, exits = 0, 0
        for i in range(len(ev.label)):
            use_exit = t is not None and ev.exit_conf[i] >= t
            exits += use_exit
            correct += (ev.exit_pred[i] if use_exit else ev.final["fp32"][i]) == ev.label[i]
        assert a == pytest.approx(correct / len(ev.label))
        assert r == pytest.approx(exits / len(ev.label))
        exited, answer = ev.answers(t)  # the per-sample form a deployment is checked against
        assert exited.mean() == pytest.approx(r) and (answer == ev.label).mean() == pytest.approx(a)
    assert rate[1] == 1.0 and rate[-1] == 0.0 and rate[0] == 0.0
    assert list(rate[1:]) == sorted(rate[1:], reverse=True)
    # the exit learned something: far better than chance on its own
    assert (ev.exit_pred == ev.label).mean() > 0.5


def test_finetune_reports_epochs_caches_and_can_be_stopped(resnet_base, digits32, tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITOPT_CACHE", str(tmp_path))
    seen = []

    def stop(epoch, acc):
        seen.append((epoch, acc))
        raise RuntimeError("hopeless")

    with pytest.raises(RuntimeError, match="hopeless"):
        cand.build_candidate(resnet_base, digits32, 4, 0.5, recipe=ONE_EPOCH, on_epoch=stop, progress=False)
    assert seen and 0.0 <= seen[0][1] <= 1.0
    assert not list(tmp_path.rglob("*.pt"))  # nothing cached for an abandoned candidate

    first = cand.build_candidate(resnet_base, digits32, 4, 0.5, recipe=ONE_EPOCH, progress=False)
    again = cand.build_candidate(resnet_base, digits32, 4, 0.5, recipe=ONE_EPOCH, progress=False)
    assert not first.meta["cached"] and again.meta["cached"]
    assert len(first.meta["history"]) == 1
    for split in ("selection", "test"):
        a, b = first.evaluations[split], again.evaluations[split]
        assert np.array_equal(a.exit_conf, b.exit_conf) and np.array_equal(a.final["int8"], b.final["int8"])
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(first.model.eval()(x), again.model.eval()(x))
    # the split tensor shrank, so the bytes a request sends shrink too
    assert zoo.split_table(first.model, 32)[4].numel < zoo.split_table(resnet_base.model, 32)[4].numel


def _build_in_child(cache, queue):
    import os

    os.environ["SPLITOPT_CACHE"] = cache
    from compress import data
    from compress.base import base_model
    from tests.conftest import TINY

    d = data.load("digits", input_size=32)
    base = base_model("resnet18", d, recipe=TINY, progress=False)
    c = cand.build_candidate(base, d, 5, 0.3, recipe=ONE_EPOCH, progress=False)
    queue.put(c.meta["cached"])


def test_cache_is_safe_across_processes(resnet_base, tmp_path):
    # share the trained base, not the candidates: copy the base checkpoint into a fresh cache
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / resnet_base.path.name).write_bytes(resnet_base.path.read_bytes())
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    flags = sorted(queue.get(timeout=5) for _ in procs)
    assert flags == [False, True]  # one process fine-tuned, the other waited and loaded
    assert len(list((tmp_path / "candidates").rglob("*.pt"))) == 1


def test_curve_equals_pointwise_accuracy(resnet_base, digits32):
    ev = cand.build_candidate(resnet_base, digits32, 3, 0.0, progress=False).evaluations["selection"]
    for codec in ("fp32", "int8"):
        ts, acc, rate = ev.curve(codec)
        assert len(ts) > 5 and np.all(np.diff(ts) < 0)
        assert np.allclose(acc, ev.accuracy(list(ts), codec))
        assert np.allclose(rate, ev.exit_rate(list(ts)))


def test_bf16_training_recovers_a_pruned_head_and_restores_the_layout(resnet_base, digits32):
    from compress.train import evaluate, fit

    model = prune.prune(resnet_base.model, 2, 0.5, 32)
    before, _ = evaluate(model, digits32)
    history = fit(model, digits32, Recipe(epochs=1, patience=1, precision="bf16"), teacher=resnet_base.model,
                  progress=False)
    after, _ = evaluate(model, digits32)
    assert len(history) == 1 and after > before
    for m in (model, resnet_base.model):  # the student and the teacher are back in the default layout
        for p in m.parameters():
            assert p.dtype == torch.float32 and p.is_contiguous()


def test_bad_precision_gets_one_line():
    from compress.train import check_precision

    with pytest.raises(ValueError, match="unknown training precision 'fp8'; choose one of: fp32, bf16"):
        check_precision("fp8")


def test_base_continues_from_weights_only_when_asked(resnet_base, tmp_path, monkeypatch):
    """Progressive resizing: a 32 px model's weights at 40 px, used as they are or trained further."""
    from compress import data
    from compress.base import base_model

    monkeypatch.setenv("SPLITOPT_CACHE", str(tmp_path))
    d40 = data.load("digits", input_size=40)
    as_is = base_model("resnet18", d40, weights=resnet_base.path, progress=False)
    assert as_is.meta["epochs"] == 0
    for name, value in resnet_base.model.state_dict().items():
        assert torch.equal(as_is.model.state_dict()[name], value)
    further = base_model("resnet18", d40, weights=resnet_base.path, recipe=Recipe(epochs=1, precision="bf16"),
                         progress=False)
    assert further.meta["epochs"] == 1 and further.digest != as_is.digest
    w = "stem.0.weight"
    assert not torch.equal(further.model.state_dict()[w], as_is.model.state_dict()[w])


def _int8_by_hand(x: torch.Tensor) -> torch.Tensor:
    """The int8 code written out per sample (a reference sharing no code with compress.codec.roundtrip)."""
    out = torch.empty_like(x)
    for i in range(len(x)):
        lo, hi = float(x[i].min()), float(x[i].max())
        scale = np.float32((hi - lo) / 255.0) if hi > lo else np.float32(1.0)
        lo = np.float32(lo)
        q = np.clip(np.rint((x[i].numpy() - lo) / scale), 0, 255)
        out[i] = torch.from_numpy((q * scale + lo).astype(np.float32))
    return out


def test_a_two_link_codec_is_evaluated_through_both_losses_and_kept_in_the_cache(random_resnet18, digits32, tmp_path):
    """ "int8>4:fp16" at k = 2: int8 on the first link, blocks [2, 4) at the edge, fp16 to the cloud, blocks
    [4, K) there; computed here by hand.  int8-zlib shares its answers and keeps its own per-sample bytes,
    and add_codecs stores what it added in the candidate's cache entry without losing the rest."""
    from compress import store

    model = random_resnet18  # random weights: near ties, so the second link's loss shows in the answers
    names = ("int8>4:fp16", "int8>4:int8", "int8-zlib>4:int8")
    ev = cand.evaluate(model, None, 2, digits32, "test", names)
    plain = cand.evaluate(model, None, 2, digits32, "test", ("int8", "int8-zlib"))
    fp16, int8, lossless = [], [], []
    with torch.no_grad():
        for images, _ in digits32.loader("test", batch_size=256):  # evaluate's batches: the same floats
            at4 = model.blocks(2, 4)(_int8_by_hand(model.blocks(0, 2)(digits32.normalize(images))))
            tail = model.blocks(4, model.K)
            fp16.append(tail(at4.half().float()).argmax(1))
            int8.append(tail(_int8_by_hand(at4)).argmax(1))
            lossless.append(tail(at4).argmax(1))
    fp16, int8, lossless = (torch.cat(x).numpy() for x in (fp16, int8, lossless))
    assert np.array_equal(ev.final["int8>4:fp16"], fp16) and np.array_equal(ev.final["int8>4:int8"], int8)
    assert (int8 != lossless).any()  # the second link's int8 changed answers: the loss is applied, not skipped
    assert np.array_equal(ev.final["int8-zlib>4:int8"], ev.final["int8>4:int8"])
    assert np.array_equal(ev.sample_bytes("int8-zlib>4:int8"), plain.sample_bytes("int8-zlib"))
    assert ev.has("int8-zlib>4:int8") and not plain.has("int8>4:int8")

    path = tmp_path / "entry.pt"
    evals = {s: cand.evaluate(model, None, 2, digits32, s, ("int8",)) for s in cand.SPLITS}
    store.save({"model": {}, "exit": None, "evaluations": cand.pack_evaluations(evals), "meta": {}}, path)
    c = cand.Candidate(2, 0.0, model, None, evals, {"path": str(path)})
    cand.add_codecs(c, digits32, ["int8", "int8>4:int8"])
    kept = cand.unpack_evaluations(store.load(path)["evaluations"])
    for split in cand.SPLITS:
        assert set(kept[split].final) == {"int8", "int8>4:int8"}
        assert np.array_equal(kept[split].final["int8>4:int8"], c.evaluations[split].final["int8>4:int8"])
    assert np.array_equal(c.evaluations["test"].final["int8>4:int8"], ev.final["int8>4:int8"])


def test_two_link_codec_names_are_checked():
    assert codec.split_via("int8-zlib>3:fp16") == ("int8-zlib", 3, "fp16")
    assert codec.split_via("int8") == ("int8", None, "fp32") and codec.via("raw", 2, "int8") == "raw>2:int8"
    assert codec.is_variable("int8-zlib>3:int8") and not codec.is_variable("int8>3:int8")
    assert codec.same_loss("int8-zlib>3:int8") == "int8>3:int8" and codec.same_loss("png") == "raw"
    for bad in ("int8>x:fp16", "int8>3:int8-zlib", "int8>3:"):
        with pytest.raises(ValueError, match="FIRST>K2:SECOND with SECOND one of fp16, int8"):
            codec.split_via(bad)

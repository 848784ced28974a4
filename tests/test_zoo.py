import pytest
import torch

from compress import zoo


@pytest.mark.parametrize("arch,size", [("mobilenet_v2", 32), ("resnet18", 32), ("vgg11_bn", 32), ("alexnet", 64)])
def test_blocks_in_order_equal_torchvision(arch, size):
    torch.manual_seed(0)
    tv = zoo.torchvision_model(arch, num_classes=7).eval()
    ref_state = {k: v.clone() for k, v in tv.state_dict().items()}
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = tv(x)
        fresh = zoo.torchvision_model(arch, num_classes=7)
        fresh.load_state_dict(ref_state)
        split = zoo.build(arch, 7, size, source=fresh.eval()).eval()
        y = x
        for block in split:
            y = block(y)
    assert y.shape == (2, 7)
    assert (y - expected).abs().max().item() < 1e-5
    # any split point: head then tail is the whole network
    for k in range(split.K + 1):
        with torch.no_grad():
            out = split.tail(k).eval()(split.head(k).eval()(x))
        assert (out - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("arch", list(zoo.ZOO))
def test_split_table_shapes_and_bytes(arch):
    size = 64
    model = zoo.build(arch, 10, size)
    table = zoo.split_table(model, size)
    assert [r.k for r in table] == list(range(model.K + 1))
    assert table[0].shape == (3, size, size) and table[0].bytes("fp32") == 3 * size * size  # uint8 input
    assert table[-1].shape == (10,) and table[-1].bytes() == 0  # k = K sends nothing
    for row in table[1:-1]:
        n = 1
        for d in row.shape:
            n *= d
        assert row.numel == n
        assert row.bytes("fp32") == 4 * n and row.bytes("fp16") == 2 * n and row.bytes("int8") == n + 8


def test_alexnet_too_small_names_minimum():
    assert zoo.min_input_size("alexnet") == 63
    with pytest.raises(ValueError, match="minimum is 63px"):
        zoo.build("alexnet", 10, 62)
    zoo.build("alexnet", 10, 63)


def test_unknown_model_and_bad_split_point():
    with pytest.raises(ValueError, match="choose one of: mobilenet_v2, resnet18"):
        zoo.build("lenet", 10, 32)
    model = zoo.build("resnet18", 10, 32)
    with pytest.raises(ValueError, match=r"outside 0..6"):
        model.head(7)

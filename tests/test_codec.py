import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from compress import codec


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 5)),
              elements=st.floats(-1e3, 1e3, width=32)), st.sampled_from(codec.CODECS))
def test_roundtrip_within_bound_and_matches_torch(x, name):
    payload = codec.encode(x, name)
    assert len(payload) == codec.payload_bytes(x.size, name)
    y = codec.decode(payload, name, x.shape)
    assert np.abs(y - x).max() <= codec.max_error(x, name)
    # the evaluation's torch roundtrip loses exactly what the wire loses
    t = codec.roundtrip(torch.from_numpy(x)[None], name)[0].numpy()
    assert np.allclose(t, y, atol=1e-5 * max(1.0, float(np.abs(x).max())))


def test_sizes_and_errors():
    assert codec.payload_bytes(100, "fp32") == 400
    assert codec.payload_bytes(100, "fp16") == 200
    assert codec.payload_bytes(100, "int8") == 108
    with pytest.raises(ValueError, match="choose one of: fp32, fp16, int8"):
        codec.encode(np.zeros(3), "bf16")
    with pytest.raises(ValueError, match="does not fit shape"):
        codec.decode(b"\x00" * 7, "fp32", (2,))
    constant = np.full((2, 3), 5.0, np.float32)
    assert np.array_equal(codec.decode(codec.encode(constant, "int8"), "int8", (2, 3)), constant)


def test_unknown_codec_lists_every_choice():
    with pytest.raises(ValueError, match="choose one of: fp32, fp16, int8, int8-zlib, raw, png, jpeg90, .*, webp50$"):
        codec.encode(np.zeros(3), "bf16")
    with pytest.raises(ValueError, match="choose one of: fp32, fp16, int8, int8-zlib$"):
        codec.roundtrip(torch.zeros(1, 3), "png")  # the evaluation's loss is for feature codecs only
    with pytest.raises(ValueError, match="choose one of: raw, png, jpeg90"):
        codec.roundtrip_images(np.zeros((1, 3, 2, 2), np.uint8), "int8")


features = arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 5)),
                  elements=st.floats(-1e3, 1e3, width=32))


@settings(max_examples=100, deadline=None)
@given(features)
def test_int8_zlib_loses_exactly_what_int8_loses(x):
    payload = codec.encode(x, "int8-zlib")
    assert 1 <= len(payload) <= codec.max_payload_bytes(x.size, "int8-zlib")
    y = codec.decode(payload, "int8-zlib", x.shape)
    np.testing.assert_array_equal(y, codec.decode(codec.encode(x, "int8"), "int8", x.shape))  # zlib is lossless
    assert y.dtype == np.float32 and np.abs(y - x).max() <= codec.max_error(x, "int8-zlib")
    t = codec.roundtrip(torch.from_numpy(x)[None], "int8-zlib")[0].numpy()
    assert np.allclose(t, y, atol=1e-5 * max(1.0, float(np.abs(x).max())))
    assert codec.sample_bytes(x[None], "int8-zlib").tolist() == [len(payload)]


def test_int8_zlib_refuses_bad_streams_and_bombs():
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(4, 16)
    good = codec.encode(x, "int8-zlib")
    with pytest.raises(ValueError, match="not a zlib stream"):
        codec.decode(b"\x00garbage", "int8-zlib", x.shape)
    with pytest.raises(ValueError, match="inflates to"):
        codec.decode(good[:-3], "int8-zlib", x.shape)  # truncated: the stream never ends
    with pytest.raises(ValueError, match=r"inflates to 41\+ bytes, expected 40"):
        codec.decode(good, "int8-zlib", (2, 16))  # a valid stream of a larger shape: cut at expected + 1
    with pytest.raises(ValueError, match="inflates to 40 bytes, expected 72"):
        codec.decode(codec.encode(x[:2], "int8-zlib"), "int8-zlib", x.shape)  # of a smaller shape
    bomb = zlib.compress(bytes(10 << 20), 9)  # 10 MiB of zeros in ~10 KB
    with pytest.raises(ValueError, match=r"inflates to 73\+ bytes, expected 72"):
        codec.decode(bomb, "int8-zlib", x.shape)


images = st.tuples(st.sampled_from([1, 3]), st.integers(1, 24), st.integers(1, 24)).flatmap(
    lambda s: arrays(np.uint8, (1,) + s))


@settings(max_examples=60, deadline=None)
@given(img=images, grey3=st.booleans(), name=st.sampled_from(tuple(codec.IMAGE_FORMATS)))
def test_image_codecs_decode_to_the_image_shape(img, grey3, name):
    if grey3:  # a grey image stored as three equal channels (digits, Fashion-MNIST) is sent as one
        img = np.repeat(img[:, :1], 3, axis=1)
    payload = codec.encode(img, name)
    assert 1 <= len(payload) <= codec.max_payload_bytes(img.size, name)
    for shape in (img.shape, img.shape[1:]):  # (1, C, H, W) and (C, H, W)
        y = codec.decode(payload, name, shape)
        assert y.shape == shape and y.dtype == np.uint8
    if name == "png":
        np.testing.assert_array_equal(codec.decode(payload, name, img.shape), img)  # lossless
    decoded, sizes = codec.roundtrip_images(img, name)
    np.testing.assert_array_equal(decoded, codec.decode(payload, name, img.shape))
    assert sizes.tolist() == [len(payload)]
    assert codec.is_variable(name) and not codec.is_variable("raw")


def test_image_codec_refusals():
    img = np.arange(3 * 8 * 8, dtype=np.uint8).reshape(1, 3, 8, 8)
    png = codec.encode(img, "png")
    with pytest.raises(ValueError, match="png image is 8x8, expected 4x8"):
        codec.decode(png, "png", (1, 3, 8, 4))
    with pytest.raises(ValueError, match="not a valid PNG image"):
        codec.decode(png[:20], "png", img.shape)
    with pytest.raises(ValueError, match="not a valid PNG image"):
        codec.decode(codec.encode(img, "jpeg90"), "png", img.shape)  # the format is checked, not sniffed
    with pytest.raises(ValueError, match=r"needs a \(1, C, H, W\) or \(C, H, W\) shape"):
        codec.decode(png, "png", (2, 3, 8, 8))
    with pytest.raises(ValueError, match="takes a uint8"):
        codec.encode(img.astype(np.float32), "png")
    raw = codec.encode(img, "raw")
    assert raw == img.tobytes() and np.array_equal(codec.decode(raw, "raw", img.shape), img)

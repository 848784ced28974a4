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

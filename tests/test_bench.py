"""The benchmarks' reference writers (the benchmarks themselves are not tests)."""

import jax
import numpy as np
import pytest

from experiments.bench_decode import write_llama2c
from model import transformer
from model.handle import LM
from tests.tiny import tiny_config


def test_llama2c_checkpoint_has_the_layout_its_reader_maps(tmp_path):
    cfg = tiny_config()  # 4 heads x 8 = d_model 32, 2 kv heads, tied embedding
    params = transformer.init(cfg, jax.random.key(0))
    model, tok = write_llama2c(LM(params, cfg, None, None), tmp_path)
    raw = np.fromfile(model, np.int32)
    assert raw[:7].tolist() == [32, 48, 2, 4, 2, 97, 64]
    d, f, L, kv = 32, 48, 2, 2 * 8
    # llama2.c's memory_map_weights: embedding, norms, wq, wk, wv, wo, norms, w1, w2, w3,
    # final norm, then seq_len * head_size floats it skips
    floats = 97 * d + L * d + L * d * d + 2 * L * d * kv + L * d * d + L * d + 3 * L * d * f \
        + d + 64 * 8
    assert raw.size == 7 + floats
    w = np.fromfile(model, np.float32)[7:]
    wq0 = w[97 * d + L * d:][: d * d].reshape(d, d)  # layer 0's wq as [out, in]
    ours = np.asarray(params["blocks"][0]["attn"]["wq_DNH"])  # [D, N, H]
    # output feature 2i / 2i+1 of head n are our features i / i + H/2 (RoPE's pairs)
    np.testing.assert_array_equal(wq0[1], ours[:, 0, 4])
    np.testing.assert_array_equal(wq0[8 + 2], ours[:, 1, 1])
    assert np.fromfile(tok, np.int32)[0] == 8


def test_llama2c_refuses_a_model_it_cannot_hold(tmp_path):
    cfg = tiny_config(head_dim=16)
    with pytest.raises(ValueError, match="head_dim x n_heads = d_model"):
        write_llama2c(LM(transformer.init(cfg, jax.random.key(0)), cfg, None, None), tmp_path)

"""The Transformer: parameter count, FLOPs, causality, GQA, packed documents, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import tiny_config

from model import transformer as tf
from model.config import ModelConfig


def _fwd(params, tokens, cfg, **kw):
    return jax.jit(lambda p, t: tf.forward(p, t, cfg, **kw)[0])(params, tokens)


@pytest.mark.parametrize("overrides", [
    {}, {"tie_embeddings": False}, {"qk_norm": True}, {"n_kv_heads": 1}, {"n_kv_heads": 4},
])
def test_n_params_matches_initialised_pytree(overrides):
    cfg = tiny_config(**overrides)
    params = tf.init(cfg, jax.random.key(0))
    assert sum(x.size for x in jax.tree.leaves(params)) == cfg.n_params()


def test_flops_per_token_matches_compiled_forward():
    # Training FLOPs are 3x the forward's; XLA counts the forward's FLOPs (it also counts norms,
    # softmax and the like, which flops_per_token leaves out, so allow a few percent).
    cfg = tiny_config(vocab_size=512, d_model=64, d_ff=256, head_dim=16)
    params = tf.init(cfg, jax.random.key(0))
    b, t = 2, 64
    compiled = jax.jit(lambda p, x: tf.forward(p, x, cfg)[0]).lower(
        params, jnp.zeros((b, t), jnp.int32)).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    xla_forward = analysis["flops"]
    ours_forward = cfg.flops_per_token(t) * b * t / 3
    assert abs(xla_forward - ours_forward) / ours_forward < 0.1, (xla_forward, ours_forward)


def test_causal_changing_a_token_never_changes_earlier_logits():
    cfg = tiny_config()
    params = tf.init(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)
    base = _fwd(params, tokens, cfg)
    for t in (0, 5, 15):
        changed = tokens.at[:, t].set((tokens[:, t] + 1) % cfg.vocab_size)
        out = _fwd(params, changed, cfg)
        np.testing.assert_array_equal(out[:, :t], base[:, :t])
        assert not np.allclose(out[:, t], base[:, t])


def test_rope_angles_from_the_table_equal_the_direct_ones():
    pos = jax.random.randint(jax.random.key(0), (3, 40), 0, 40)
    direct = tf.rope_angles(pos, 16, 10000.0)
    np.testing.assert_array_equal(tf.rope_angles(pos, 16, 10000.0, table=40), direct)
    assert direct[0].shape == (3, 40, 1, 8) and not np.allclose(direct[0], direct[0][:, :1])


def _plain_mha(params, x_TD, cfg):
    """Textbook multi-head attention (one head at a time), for one sequence."""
    a = params["blocks"][0]["attn"]
    t = x_TD.shape[0]
    pos = jnp.arange(t)[None]
    heads = []
    for n in range(cfg.n_heads):
        q = tf.rope((x_TD @ a["wq_DNH"][:, n])[None, :, None], pos, cfg.rope_theta)[0, :, 0]
        k = tf.rope((x_TD @ a["wk_DKH"][:, n])[None, :, None], pos, cfg.rope_theta)[0, :, 0]
        v = x_TD @ a["wv_DKH"][:, n]
        s = q @ k.T / np.sqrt(cfg.head_dim)
        s = jnp.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
        heads.append(jax.nn.softmax(s, axis=-1) @ v)
    return sum(h @ a["wo_NHD"][n] for n, h in enumerate(heads))


def _attention(params, x_BTD, cfg):
    from flax import nnx
    model = nnx.merge(tf._abstract(cfg)[0], params)
    t = x_BTD.shape[1]
    pos = jnp.broadcast_to(jnp.arange(t), x_BTD.shape[:2])
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (x_BTD.shape[0], t, t))
    return model.blocks[0].attn(x_BTD, tf.rope_angles(pos, cfg.head_dim, cfg.rope_theta), mask,
                                None, None)[0]


@pytest.mark.parametrize("t", [10, 70])
def test_gqa_with_as_many_kv_heads_as_heads_is_plain_multi_head_attention(t, monkeypatch):
    monkeypatch.setattr(tf, "QUERY_BLOCK", 16)  # 70 positions: the attention in 4 uneven blocks
    cfg = tiny_config(n_heads=4, n_kv_heads=4)
    params = tf.init(cfg, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, t, cfg.d_model))
    ours = _attention(params, x, cfg)
    for b in range(2):
        np.testing.assert_allclose(ours[b], _plain_mha(params, x[b], cfg), atol=1e-5)


def test_gqa_equals_mha_with_each_kv_head_repeated():
    gqa = tiny_config(n_heads=4, n_kv_heads=2)
    mha = tiny_config(n_heads=4, n_kv_heads=4)
    p = tf.init(gqa, jax.random.key(0))
    p_mha = jax.tree.map(lambda x: x, p)
    for name in ("wk_DKH", "wv_DKH"):
        p_mha["blocks"][0]["attn"][name] = jnp.repeat(p["blocks"][0]["attn"][name], 2, axis=1)
    x = jax.random.normal(jax.random.key(1), (2, 10, gqa.d_model))
    np.testing.assert_allclose(_attention(p, x, gqa), _attention(p_mha, x, mha), atol=1e-5)


def test_packed_documents_equal_separate_forwards():
    cfg = tiny_config()
    params = tf.init(cfg, jax.random.key(0))
    doc_a = jax.random.randint(jax.random.key(1), (1, 7), 0, cfg.vocab_size)
    doc_b = jax.random.randint(jax.random.key(2), (1, 9), 0, cfg.vocab_size)
    packed = jnp.concatenate([doc_a, doc_b], axis=1)
    seg = jnp.array([[0] * 7 + [1] * 9])
    out = _fwd(params, packed, cfg, segment_ids_BT=seg)
    np.testing.assert_allclose(out[:, :7], _fwd(params, doc_a, cfg), atol=1e-5)
    np.testing.assert_allclose(out[:, 7:], _fwd(params, doc_b, cfg), atol=1e-5)


def test_packed_documents_in_query_blocks_equal_separate_forwards_and_one_block(monkeypatch):
    monkeypatch.setattr(tf, "QUERY_BLOCK", 16)  # blocks of 16 positions from 64 up
    cfg = tiny_config(max_seq_len=70)
    params = tf.init(cfg, jax.random.key(0))
    docs = [jax.random.randint(jax.random.key(i), (1, n), 0, cfg.vocab_size)
            for i, n in ((1, 23), (2, 47))]  # 70 tokens packed: 4 uneven blocks; alone: one each
    packed, seg = jnp.concatenate(docs, axis=1), jnp.array([[0] * 23 + [1] * 47])
    branch = jnp.array([[0] * 23 + [0] * 20 + [1] * 10 + [2] * 17])

    def loss(p):  # every logit and both masks' paths, through value and gradients
        out = tf.forward(p, packed, cfg, segment_ids_BT=seg, branch_ids_BT=branch)[0]
        return (out ** 2).mean(), out

    (_, blocked), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    out = _fwd(params, packed, cfg, segment_ids_BT=seg)
    np.testing.assert_allclose(out[:, :23], _fwd(params, docs[0], cfg), atol=1e-5)
    np.testing.assert_allclose(out[:, 23:], _fwd(params, docs[1], cfg), atol=1e-5)
    monkeypatch.setattr(tf, "MAX_QUERY_BLOCKS", 1)
    (_, one), grads_one = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    np.testing.assert_allclose(blocked, one, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4),
                 grads, grads_one)


def test_bfloat16_compute_and_params_track_float32():
    cfg32 = tiny_config()
    params = tf.init(cfg32, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg32.vocab_size)
    ref = _fwd(params, tokens, cfg32)
    cfg16 = tiny_config(dtype="bfloat16", param_dtype="bfloat16")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(tf.init(cfg16, jax.random.key(0))))
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    out = _fwd(p16, tokens, cfg16)
    assert out.dtype == jnp.float32  # logits stay float32 whatever the compute dtype
    assert float(jnp.abs(out - ref).max()) < 0.1 * float(jnp.abs(ref).max())


def test_untied_head_and_softcap():
    cfg = tiny_config(tie_embeddings=False, logit_softcap=0.5, init_std=0.5)
    params = tf.init(cfg, jax.random.key(0))
    assert "head_DV" in params
    out = _fwd(params, jnp.ones((1, 8), jnp.int32), cfg)
    assert float(jnp.abs(out).max()) <= 0.5
    assert float(jnp.abs(out).max()) > 0.3  # the cap is reached, not trivially satisfied


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_one_row_through_a_large_tied_head_equals_the_batched_head(dtype):
    # a table of 8 MiB or more: one row takes the head's vector-times-transposed-table form
    cfg = tiny_config(vocab_size=8192, d_model=256, n_layers=1, d_ff=64, dtype=dtype)
    params = tf.init(cfg, jax.random.key(0))
    assert params["embed_VD"].nbytes >= 8 << 20
    tokens = jax.random.randint(jax.random.key(1), (1, 1), 0, cfg.vocab_size)
    one = _fwd(params, tokens, cfg)
    two = _fwd(params, jnp.concatenate([tokens, tokens]), cfg)  # two rows: the batched einsum
    assert one.shape == (1, 1, 8192) and one.dtype == jnp.float32
    np.testing.assert_allclose(one[0], two[0], rtol=1e-5 if dtype == "float32" else 2e-2,
                               atol=1e-5 if dtype == "float32" else 2e-2)
    assert float(jnp.abs(one).max()) > 0.01  # not both zero


@pytest.mark.parametrize("bad, message", [
    ({"n_heads": 4, "n_kv_heads": 3}, "must divide"),
    ({"head_dim": 7}, "even"),
    ({"dtype": "float64"}, "expected one of"),
    ({"d_model": 0}, "positive"),
])
def test_config_errors_say_what_is_wrong(bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**bad)


def test_config_from_dict_refuses_unknown_keys():
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"d_model": 8, "n_layer": 2})
    assert ModelConfig.from_dict(tiny_config().to_dict()) == tiny_config()


@pytest.mark.parametrize("spec,x_shape,w_shape,dtype,out_dtype", [
    ("BTD,DF->BTF", (2, 5, 8), (8, 24), jnp.float32, None),  # x narrower: x^T @ dy
    ("BTF,FD->BTD", (2, 5, 24), (24, 8), jnp.float32, None),  # dy narrower: (dy^T @ x)^T
    ("BTD,DNH->BTNH", (2, 5, 8), (8, 3, 4), jnp.float32, None),
    ("BTD,VD->BTV", (2, 5, 8), (40, 8), jnp.float32, jnp.float32),  # the tied LM head
    ("BTD,VD->BTV", (2, 5, 8), (40, 8), jnp.bfloat16, jnp.float32),
])
def test_weight_matmul_gradients_equal_the_plain_einsums(spec, x_shape, w_shape, dtype, out_dtype):
    from model.transformer import _weight_matmul

    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape).astype(dtype)
    w = jax.random.normal(kw, w_shape).astype(dtype)
    out_shape = jnp.einsum(spec, x, w).shape
    g = jax.random.normal(kg, out_shape)

    def loss(f):
        return lambda x, w: jnp.sum(f(x, w).astype(jnp.float32) * g)

    ours = jax.grad(loss(lambda x, w: _weight_matmul(spec, x, w, out_dtype)), (0, 1))(x, w)
    want = jax.grad(loss(lambda x, w: jnp.einsum(spec, x, w, preferred_element_type=out_dtype)),
                    (0, 1))(x, w)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for a, b in zip(ours, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   rtol=tol, atol=tol)

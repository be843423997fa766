"""How the model runs (scan over stacked layers, rematerialisation, jax.nn.dot_product_attention)
never changes what it computes, and a stacked checkpoint loads into the per-layer layout."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import transformer as T
from model.config import ModelConfig
from train.checkpoint import Checkpointer, restore_params

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8,
                  d_ff=48, max_seq_len=32, qk_norm=True)
TOKENS = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
SEGMENTS = jnp.concatenate([jnp.zeros((2, 7), jnp.int32), jnp.ones((2, 9), jnp.int32)], 1)
# compiled once per config (eager op-by-op dispatch of a 3-layer forward and its gradient is slower)
forward = jax.jit(T.forward, static_argnames=("cfg",))


def _loss(params, cfg):
    return forward(params, TOKENS, cfg, segment_ids_BT=SEGMENTS)[0][..., 3].sum()


grad = jax.jit(jax.grad(_loss), static_argnums=1)


@pytest.fixture(scope="module")
def reference():
    params = T.init(CFG, jax.random.key(0))
    return {"params": params, "plain": forward(params, TOKENS, CFG)[0],
            "packed": forward(params, TOKENS, CFG, segment_ids_BT=SEGMENTS)[0],
            "grads": grad(params, CFG)}


@pytest.mark.parametrize("how", [dict(scan_layers=True), dict(scan_layers=True, remat="full"),
                                 dict(remat="dots"), dict(attention="dot_product"),
                                 dict(scan_layers=True, remat="dots", attention="dot_product")])
def test_execution_options_change_nothing_computed(reference, how):
    cfg = dataclasses.replace(CFG, **how)
    params = T.init(cfg, jax.random.key(0))
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, T.param_shapes(cfg))
    if cfg.scan_layers:  # the same draws as the unrolled model, stacked
        assert T.is_stacked(params) and params["blocks"]["mlp"]["w_up_DF"].shape == (3, 32, 48)
        assert T.logical_axes(cfg)["blocks"]["attn"]["wq_DNH"] == (
            "layers", "embed", "q_heads", "head_dim")
        jax.tree.map(np.testing.assert_array_equal, T.unstack_layers(params), reference["params"])
    close = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(forward(params, TOKENS, cfg)[0], reference["plain"], **close)
    np.testing.assert_allclose(forward(params, TOKENS, cfg, segment_ids_BT=SEGMENTS)[0],
                               reference["packed"], **close)
    grads = grad(params, cfg)
    if cfg.scan_layers:
        grads = T.unstack_layers(grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads,
                 reference["grads"])
    # decoding with a cache (the cache stays a list of layers)
    cache = T.init_cache(cfg, 2, 32)
    logits, cache = forward(params, TOKENS[:, :10], cfg, cache=cache,
                            cache_start_B=jnp.zeros(2, jnp.int32))
    step, _ = forward(params, TOKENS[:, 10:11], cfg, cache=cache,
                      cache_start_B=jnp.full(2, 10, jnp.int32))
    np.testing.assert_allclose(step[:, 0], reference["plain"][:, 10], **close)


def test_a_bad_execution_option_is_named():
    with pytest.raises(ValueError, match="remat='some'"):
        ModelConfig(remat="some")
    with pytest.raises(ValueError, match="attention='flash'"):
        ModelConfig(attention="flash")


def _save(directory, params):
    ck = Checkpointer(directory, keep=1)
    ck.save({"params": params, "step": jnp.asarray(1, jnp.int32), "opt_state": {},
             "rng": jax.random.key_data(jax.random.key(0))}, {"position": 1})
    ck.close()


@pytest.mark.parametrize("saved_scanned", [True, False])
def test_a_checkpoint_loads_in_either_layout(tmp_path, reference, saved_scanned):
    """A scanned model's checkpoint restores into the per-layer layout the other stages, the
    import and the export use, and a per-layer one into a scanned model."""
    scanned = dataclasses.replace(CFG, scan_layers=True)
    saved = T.stack_layers(reference["params"]) if saved_scanned else reference["params"]
    _save(tmp_path / "checkpoints", saved)
    want = CFG if saved_scanned else scanned
    params = restore_params(tmp_path, T.param_shapes(want))
    assert T.is_stacked(params) == want.scan_layers
    np.testing.assert_allclose(T.forward(params, TOKENS, want)[0], reference["plain"],
                               rtol=1e-5, atol=1e-5)


def test_weight_decay_skips_stacked_norm_scales():
    from train.optim import decay_mask

    mask = decay_mask(T.param_shapes(dataclasses.replace(CFG, scan_layers=True)))
    assert not mask["blocks"]["attn_norm"]["scale"] and not mask["blocks"]["attn"]["q_norm"]["scale"]
    assert mask["blocks"]["mlp"]["w_up_DF"] and not mask["embed_VD"]

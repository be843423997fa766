"""The train step: it learns, it shards, it accumulates, it does not retrace; the optimizer."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tiny import tiny_config

from model import transformer as tf
from model.losses import fused_cross_entropy, loss_sum, token_losses
from train.mesh import make_mesh
from train.optim import OptimConfig, decay_mask, make_optimizer, make_schedule
from train.step import batch_sharding, init_state, make_train_step, state_shardings

CFG = tiny_config()


def _batch(seed, b=8, t=32):
    x = np.asarray(jax.random.randint(jax.random.key(seed), (b, t + 1), 3, CFG.vocab_size))
    return {"inputs": x[:, :-1], "targets": x[:, 1:], "segment_ids": np.zeros((b, t), np.int32)}


def _jitted(mesh, optimizer, accum=1):
    p_sh = tf.param_shardings(CFG, mesh)
    abstract = jax.eval_shape(lambda p: init_state(p, optimizer, 0), tf.param_shapes(CFG))
    s_sh = state_shardings(abstract, p_sh, mesh)
    state = jax.jit(lambda p: init_state(p, optimizer, 0), out_shardings=s_sh)(
        tf.init(CFG, jax.random.key(0), mesh))
    step = jax.jit(make_train_step(CFG, optimizer, accum), in_shardings=(s_sh, batch_sharding(mesh)),
                   out_shardings=(s_sh, None), donate_argnums=0)
    return state, step


def test_overfitting_one_batch_drives_the_loss_near_zero():
    opt = make_optimizer(OptimConfig(lr=1e-2, schedule="constant", warmup_steps=5,
                                     weight_decay=0.0), 300)
    state, step = _jitted(make_mesh(devices=jax.devices()[:1]), opt)
    batch = _batch(0, b=4)
    first = None
    for _ in range(300):
        state, m = step(state, batch)
        first = float(m["loss"]) if first is None else first
    assert first > 4.0 and float(m["loss"]) < 0.05, (first, float(m["loss"]))


def test_sharded_step_equals_single_device_and_does_not_retrace():
    opt = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=1), 10)
    results = []
    for mesh in (make_mesh(devices=jax.devices()[:1]), make_mesh(data=2, fsdp=2, tensor=2)):
        state, step = _jitted(mesh, opt)
        losses = []
        for i in range(3):
            state, m = step(state, _batch(i))
            losses.append(float(m["loss"]))
        assert step._cache_size() == 1  # traced once, reused for every later step
        results.append((losses, jax.device_get(state["params"])))
    (l1, p1), (l8, p8) = results
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), p1, p8)
    init = jax.device_get(tf.init(CFG, jax.random.key(0)))
    assert not np.allclose(p1["embed_VD"], init["embed_VD"])  # the steps did update something


def test_gradient_accumulation_equals_one_big_batch():
    opt = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=1), 10)
    mesh = make_mesh(devices=jax.devices()[:1])
    outs = []
    for accum in (1, 4):
        state, step = _jitted(mesh, opt, accum)
        state, m = step(state, _batch(0))
        outs.append((float(m["loss"]), jax.device_get(state["params"])))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), outs[0][1], outs[1][1])


@pytest.mark.parametrize("softcap", [0.0, 5.0])
def test_fused_cross_entropy_equals_the_plain_loss_and_its_gradients(softcap):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    x, w = jax.random.normal(k1, (3, 8, 16)), jax.random.normal(k2, (50, 16))
    tgt = jax.random.randint(k3, (3, 8), 0, 50)
    wt = jax.random.uniform(k4, (3, 8)) * (jax.random.uniform(k3, (3, 8)) > 0.3)

    def plain(x, w):
        z = jnp.einsum("BTD,VD->BTV", x, w)
        z = softcap * jnp.tanh(z / softcap) if softcap else z
        gold = jnp.take_along_axis(z, tgt[..., None], -1)[..., 0]
        return ((jax.nn.logsumexp(z, -1) - gold) * wt).sum()

    want, want_grads = jax.value_and_grad(plain, argnums=(0, 1))(x, w)
    for chunks in (1, 4):  # the sequence in one piece and in four
        got, grads = jax.value_and_grad(
            lambda x, w, c=chunks: 2.0 * fused_cross_entropy(x, w, tgt, wt, c, softcap),
            argnums=(0, 1))(x, w)
        np.testing.assert_allclose(got, 2.0 * want, rtol=1e-5)
        for g, h in zip(grads, want_grads, strict=True):  # scaled by the output gradient
            np.testing.assert_allclose(g, 2.0 * h, atol=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_the_training_loss_is_the_masked_sum_of_token_losses(tied):
    cfg = dataclasses.replace(CFG, tie_embeddings=tied)
    params = tf.init(cfg, jax.random.key(1))
    batch = _batch(2, b=4, t=16)
    batch["mask"] = (np.arange(16)[None] % 3 > 0).repeat(4, 0).astype(np.int32)

    def reference(p):
        losses, _ = token_losses(p, batch, cfg)
        return losses.sum()

    (total, count), grads = jax.value_and_grad(lambda p: loss_sum(p, batch, cfg), has_aux=True)(
        params)
    want, want_grads = jax.value_and_grad(reference)(params)
    assert float(count) == batch["mask"].sum()
    np.testing.assert_allclose(total, want, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads, want_grads)


def test_schedules_and_decay_mask():
    cos = make_schedule(OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1), 100)
    assert float(cos(0)) == 0.0 and abs(float(cos(10)) - 1.0) < 1e-6
    assert abs(float(cos(100)) - 0.1) < 1e-6
    wsd = make_schedule(OptimConfig(lr=1.0, schedule="wsd", warmup_steps=10,
                                    decay_fraction=0.2), 100)
    assert float(wsd(50)) == 1.0 and float(wsd(79)) == 1.0
    assert 0.0 <= float(wsd(90)) < 1.0 and float(wsd(100)) == 0.0
    mask = decay_mask(tf.param_shapes(CFG))
    assert mask["blocks"][0]["mlp"]["w_up_DF"] and mask["blocks"][0]["attn"]["wq_DNH"]
    assert not mask["embed_VD"] and not mask["final_norm"]["scale"]
    assert not mask["blocks"][0]["attn_norm"]["scale"]
    assert isinstance(make_optimizer(OptimConfig(), 10), optax.GradientTransformation)


def test_a_prelude_runs_at_its_own_lr_then_the_schedule_starts_afresh():
    s = make_schedule(OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, prelude_steps=50,
                                  prelude_lr=0.25), 150)
    assert float(s(0)) == 0.0 and abs(float(s(10)) - 0.25) < 1e-6 and abs(float(s(49)) - 0.25) < 1e-6
    assert float(s(50)) == 0.0 and abs(float(s(60)) - 1.0) < 1e-6  # warm-up again, to lr
    assert abs(float(s(150)) - 0.1) < 1e-6  # the cosine spans the 100 steps after the prelude
    with pytest.raises(ValueError, match="prelude_lr"):
        OptimConfig(prelude_steps=5)
    with pytest.raises(ValueError, match="leave none"):
        make_schedule(OptimConfig(prelude_steps=10, prelude_lr=0.1), 10)

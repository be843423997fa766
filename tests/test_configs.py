"""The shipped configs build; the GPU-sized one is checked by eval_shape and a sharded compile."""

import dataclasses

import jax
import jax.numpy as jnp

from experiments.configs import gpt2_small, tiny
from experiments.rl_stage import rl_config
from model import transformer
from model.config import ModelConfig
from train.loop import TrainConfig
from train.mesh import make_mesh
from train.optim import OptimConfig, make_optimizer
from train.step import batch_sharding, init_state, make_train_step, state_shardings


def _configs(module, vocab):
    c = module.get_config()
    return (ModelConfig(**{**c.model.to_dict(), "vocab_size": vocab}),
            TrainConfig(**c.train.to_dict()), OptimConfig(**c.optim.to_dict()))


def test_tiny_config_builds():
    model, train, _ = _configs(tiny, 4096)
    assert 0.5e6 < model.n_params() < 2e6 and train.steps > 0
    for module in (tiny, gpt2_small):  # every stage's sections build
        c = module.get_config()
        sft = TrainConfig(**c.sft_train.to_dict())
        assert sft.seq_len <= c.model.max_seq_len
        for stage in ("sft", "rl", "rm", "rlhf"):
            TrainConfig(**c[f"{stage}_train"].to_dict())
            OptimConfig(**c[f"{stage}_optim"].to_dict())
        rl_config(c.rl)
        rl_config(c.rlhf)


def test_gpt2_small_state_shapes_and_sharded_compile():
    model, train, optim = _configs(gpt2_small, 32768)
    assert 100e6 < model.n_params() < 140e6
    optimizer = make_optimizer(optim, train.steps)
    abstract = jax.eval_shape(lambda p: init_state(p, optimizer, 0), transformer.param_shapes(model))
    n = sum(x.size for x in jax.tree.leaves(abstract["params"]))
    assert n == model.n_params()
    # The sharded compile uses two of the twelve layers: the same shapes and shardings per layer,
    # a sixth of the compile time.
    model = dataclasses.replace(model, n_layers=2)
    abstract = jax.eval_shape(lambda p: init_state(p, optimizer, 0), transformer.param_shapes(model))
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    p_sh = transformer.param_shardings(model, mesh)
    s_sh = state_shardings(abstract, p_sh, mesh)
    mu = abstract["opt_state"][1][0].mu["blocks"][0]["mlp"]["w_up_DF"]
    assert mu.shape == (768, 2048)
    step = jax.jit(make_train_step(model, optimizer), in_shardings=(s_sh, batch_sharding(mesh)),
                   out_shardings=(s_sh, None), donate_argnums=0)
    b, t = 8, train.seq_len  # a small batch: compile cost does not depend on it
    batch = {k: jax.ShapeDtypeStruct((b, t), jnp.int32) for k in ("inputs", "targets",
                                                                  "segment_ids")}
    compiled = step.lower(abstract, batch).compile()
    assert compiled.cost_analysis() is not None
    # Adam's moments are sharded like their parameters (FSDP over optimizer state too).
    mu_sharding = s_sh["opt_state"][1][0].mu["blocks"][0]["mlp"]["w_up_DF"]
    want = jax.sharding.PartitionSpec("fsdp", "tensor")
    assert mu_sharding.spec == p_sh["blocks"][0]["mlp"]["w_up_DF"].spec == want

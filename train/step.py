"""The train state pytree and the pure train step (the loss is model.losses.token_losses).

State: {"step": int32, "params": ..., "opt_state": ..., "rng": uint32 key data}. The steps are
pure functions; `jit_train_step` compiles one with in/out shardings (pjit) and the state donated.
A batch holds inputs/targets/segment_ids [B, T] and optionally a loss mask [B, T] (SFT).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from model.config import ModelConfig
from model.losses import token_losses

State = dict


def finish_step(state: State, params, opt_state, metrics: dict) -> tuple[State, dict]:
    """The state after an update (step + 1, the RNG kept) and the metrics with params_finite:
    the tail every step builder shares (token, pair and RL steps)."""
    finite = jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(params)]).all()
    return ({"step": state["step"] + 1, "params": params, "opt_state": opt_state,
             "rng": state["rng"]}, {**metrics, "params_finite": finite.astype(jnp.float32)})


def init_state(params, optimizer: optax.GradientTransformation, seed: int) -> State:
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": optimizer.init(params),
            "rng": jax.random.key_data(jax.random.key(seed))}


def _loss(params, batch, cfg):
    losses_BT, mask_BT = token_losses(params, batch, cfg)
    return losses_BT.sum(), mask_BT.sum()


def make_train_step(cfg: ModelConfig, optimizer: optax.GradientTransformation,
                    accum_steps: int = 1) -> Callable[[State, dict], tuple[State, dict]]:
    """train_step(state, batch) -> (state, metrics), averaging gradients over micro-batches."""

    def train_step(state: State, batch: dict) -> tuple[State, dict]:
        grad_fn = jax.value_and_grad(_loss, has_aux=True)

        def micro(carry, mb):
            grads, loss_sum, count = carry
            (loss, n), g = grad_fn(state["params"], mb, cfg)
            return (jax.tree.map(jnp.add, grads, g), loss_sum + loss, count + n), None

        micro_batches = jax.tree.map(
            lambda x: x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:]), batch)
        zeros = jax.tree.map(jnp.zeros_like, state["params"])
        (grads, loss_sum, count), _ = jax.lax.scan(
            micro, (zeros, jnp.float32(0), jnp.float32(0)), micro_batches)
        count = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return finish_step(state, params, opt_state, {
            "loss": loss_sum / count, "grad_norm": optax.tree.norm(grads), "tokens": count})

    return train_step


def state_shardings(abstract_state: State, param_shardings, mesh) -> State:
    """Shardings for the whole state: each optimizer leaf that mirrors a parameter (Adam's mu and
    nu) takes that parameter's sharding; everything else is replicated."""
    by_path = {tuple(path): s for path, s in
               jax.tree_util.tree_flatten_with_path(param_shardings)[0]}
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path, leaf):
        for i in range(len(path)):
            s = by_path.get(tuple(path[i:]))
            if s is not None and len(s.spec) <= leaf.ndim:
                return s
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_state)


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))

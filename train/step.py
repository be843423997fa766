"""The train state pytree and the pure train step (the loss is model.losses.loss_sum).

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
from model.losses import loss_sum

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


def make_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *,
              micro_batches: int | None = None, epochs: int | None = None,
              first_epoch: tuple[str, ...] = ()) -> Callable[[State, dict], tuple[State, dict]]:
    """The one step builder: step(state, batch) -> (state, metrics), an optimizer update from
    loss_fn(params, batch) -> (loss, aux), then finish_step.

    micro_batches=k (token stages): the batch is k micro-batches; loss_fn returns a loss SUM and
    its weight (the target count) as aux, and the update uses the summed gradients over the
    summed weight (metrics: loss, grad_norm, tokens). Otherwise aux is a dict of metrics.
    epochs=e (RL): e updates on the same batch; metrics of the last, `first_epoch` keys of the
    first."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def update(params, opt_state, batch):
        if micro_batches is None:
            (loss, aux), grads = grad_fn(params, batch)
            metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        else:
            def micro(carry, mb):
                grads, loss_sum, count = carry
                (loss, n), g = grad_fn(params, mb)
                return (jax.tree.map(jnp.add, grads, g), loss_sum + loss, count + n), None

            mbs = jax.tree.map(
                lambda x: x.reshape(micro_batches, x.shape[0] // micro_batches, *x.shape[1:]), batch)
            zeros = jax.tree.map(jnp.zeros_like, params)
            (grads, loss_sum, count), _ = jax.lax.scan(
                micro, (zeros, jnp.float32(0), jnp.float32(0)), mbs)
            count = jnp.maximum(count, 1.0)
            grads = jax.tree.map(lambda g: g / count, grads)
            metrics = {"loss": loss_sum / count, "grad_norm": optax.tree.norm(grads), "tokens": count}
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    def step(state: State, batch: dict) -> tuple[State, dict]:
        if epochs is None:
            params, opt_state, metrics = update(state["params"], state["opt_state"], batch)
        else:
            def body(carry, _):
                params, opt_state, m = update(*carry, batch)
                return (params, opt_state), m

            (params, opt_state), ms = jax.lax.scan(body, (state["params"], state["opt_state"]),
                                                   None, length=epochs)
            metrics = {k: v[0] if k in first_epoch else v[-1] for k, v in ms.items()}
        return finish_step(state, params, opt_state, metrics)

    return step


def make_train_step(cfg: ModelConfig, optimizer: optax.GradientTransformation,
                    accum_steps: int = 1,
                    fused_loss: bool | None = None) -> Callable[[State, dict], tuple[State, dict]]:
    """The token stages' step (pretraining, SFT): gradients averaged over micro-batches;
    fused_loss: model.losses.loss_sum's `fused` (None: on CPU)."""
    return make_step(lambda p, b: loss_sum(p, b, cfg, fused_loss), optimizer,
                     micro_batches=accum_steps)


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


def jit_sharded(fn: Callable, mesh, **jit_kwargs) -> Callable:
    """jax.jit of fn, traced under the mesh so that model.sharding.constrain pins the activations'
    shardings (without a mesh in context it does nothing)."""
    def traced(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args)

    return jax.jit(traced, **jit_kwargs)


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))

"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus).

All knobs are traced arrays, not static arguments, so changing them never recompiles.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_logits(
    logits_BV: jax.Array,
    key: jax.Array,
    temperature: jax.Array | float,
    top_k: jax.Array | int = 0,
    top_p: jax.Array | float = 1.0,
) -> jax.Array:
    """Next token per row (int32 [B]).

    temperature <= 0 is greedy (argmax). top_k <= 0 disables top-k; top_p >= 1 disables top-p.
    Top-k is applied first, then top-p on the renormalised survivors (the usual order). Tokens
    tied with the last kept logit are kept too.
    """
    logits_BV = logits_BV.astype(jnp.float32)
    v = logits_BV.shape[-1]
    temperature = jnp.asarray(temperature, jnp.float32)
    k = jnp.asarray(top_k, jnp.int32)
    top_p = jnp.asarray(top_p, jnp.float32)
    greedy_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    scaled_BV = logits_BV / jnp.maximum(temperature, 1e-6)

    def filtered(_):  # the vocabulary sort only top-k / top-p need
        sorted_BV = jnp.flip(jnp.sort(scaled_BV, axis=-1), axis=-1)  # descending
        rank_V = jnp.arange(v)
        kk = jnp.where(k > 0, jnp.minimum(k, v), v)
        sorted_BV = jnp.where(rank_V < kk, sorted_BV, -jnp.inf)
        # Nucleus: the smallest prefix whose probability mass reaches top_p (at least one token).
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
        keep_BV = (mass_before_BV < top_p) & (rank_V < kk)
        keep_BV = keep_BV.at[:, 0].set(True)
        n_keep_B = jnp.sum(keep_BV, axis=-1)
        threshold_B = jnp.take_along_axis(sorted_BV, (n_keep_B - 1)[:, None], axis=-1)
        return jnp.where(scaled_BV >= threshold_B, scaled_BV, -jnp.inf)

    def sampled(_):
        masked_BV = jax.lax.cond(jnp.any(((k > 0) & (k < v)) | (top_p < 1)), filtered,
                                 lambda _: scaled_BV, None)
        return jax.random.categorical(key, masked_BV, axis=-1).astype(jnp.int32)

    # lax.cond runs one branch: a greedy call computes the argmax alone, no sort, no draw
    sampled_B = jax.lax.cond(jnp.any(temperature > 0), sampled, lambda _: greedy_B, None)
    return jnp.where(temperature > 0, sampled_B, greedy_B)

"""Per-token losses of the model, the training steps' loss, and the validation sums behind loss
and bits per byte: what the training steps minimise and the evaluations report, in one place
below both."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from model import transformer
from model.config import ModelConfig


def token_losses(params, batch: dict, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """Per-token cross-entropy in nats (float32) [B, T], and the loss mask [B, T]."""
    logits_BTV = _forward(params, batch, cfg)
    logz_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    gold_BT = jnp.take_along_axis(logits_BTV, batch["targets"][..., None], axis=-1)[..., 0]
    mask_BT = _mask(batch)
    return (logz_BT - gold_BT) * mask_BT, mask_BT


def _forward(params, batch: dict, cfg: ModelConfig, hidden: bool = False) -> jax.Array:
    """The model's logits (or final hidden states) over batch["inputs"], packed as it says."""
    return transformer.forward(params, batch["inputs"], cfg, hidden=hidden,
                               segment_ids_BT=batch.get("segment_ids"),
                               branch_ids_BT=batch.get("branch_ids"))[0]


def _mask(batch: dict) -> jax.Array:  # the loss mask [B, T] (float32); every target without one
    return batch.get("mask", jnp.ones_like(batch["targets"])).astype(jnp.float32)


# Logits held at once by the fused loss: a chunk of [tokens, vocab] that stays in the CPU's cache.
_CHUNK_LOGITS = 1 << 21


def fused_head(cfg: ModelConfig, fused: bool | None = None) -> bool:
    """Whether a token stage runs the LM head fused with its loss (fused_logprob_objective):
    fused=None means on CPU; an int8 model keeps the plain head."""
    return cfg.quant == "none" and (jax.default_backend() == "cpu" if fused is None else fused)


def head_inputs(params, batch: dict, cfg: ModelConfig) -> tuple[jax.Array, jax.Array, int]:
    """What the fused head takes: the final hidden states [B, T, D] and the head's weight [V, D]
    in the compute dtype, and how many chunks of T it runs over (a chunk holding up to
    _CHUNK_LOGITS logits, and at least 256 tokens)."""
    x_BTD = _forward(params, batch, cfg, hidden=True)
    w_VD = params["embed_VD"] if cfg.tie_embeddings else params["head_DV"].T
    b, t = batch["targets"].shape
    target = max(256, _CHUNK_LOGITS // cfg.vocab_size)  # tokens a chunk
    chunks = next(k for k in range(1, t + 1) if t % k == 0 and b * t // k <= target or k == t)
    return x_BTD.astype(cfg.compute_dtype), w_VD.astype(cfg.compute_dtype), chunks


def loss_sum(params, batch: dict, cfg: ModelConfig,
             fused: bool | None = None) -> tuple[jax.Array, jax.Array]:
    """(sum of the masked per-token cross-entropies, the mask's sum): token_losses summed, the
    training steps' loss. Where fused_head says so, the LM head and the cross-entropy run fused
    over chunks of the sequence: the [B, T, vocab] logits are never held whole."""
    if not fused_head(cfg, fused):
        losses_BT, mask_BT = token_losses(params, batch, cfg)
        return losses_BT.sum(), mask_BT.sum()
    x_BTD, w_VD, chunks = head_inputs(params, batch, cfg)
    mask_BT = _mask(batch)
    total = fused_cross_entropy(x_BTD, w_VD, batch["targets"], mask_BT, chunks, cfg.logit_softcap)
    return total, mask_BT.sum()


def fused_cross_entropy(x_BTD, w_VD, targets_BT, weight_BT, chunks: int, softcap: float):
    """sum(weight * cross-entropy of softcapped x @ w_VD.T against targets), fused over chunks."""
    return fused_logprob_objective(x_BTD, w_VD, targets_BT, {"weight": weight_BT}, _weighted_nll,
                                   chunks, softcap)[0]


def _weighted_nll(logp_BC, aux):
    return -logp_BC * aux["weight"], {}


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def fused_logprob_objective(x_BTD, w_VD, targets_BT, aux: dict, fn: Callable, chunks: int,
                            softcap: float) -> tuple[jax.Array, dict]:
    """An objective of each token's log-probability, fused with the LM head over `chunks` slices
    of the sequence axis. logp = log-softmax(softcapped x @ w_VD.T) at the targets; fn(logp_BC,
    aux_BC) -> (per-token values, {name: per-token metric}) on [B, C] slices of logp and of the
    [B, T] arrays in aux, a token's from its own logp and aux only. Returns (the values' sum,
    each metric's sum). The gradients come out of the same pass (the objective is the last op of
    a training step, so its output gradient is one scalar that scales them); the metrics and aux
    get none."""
    return _fused_fwd(x_BTD, w_VD, targets_BT, aux, fn, chunks, softcap)[0]


def _fused_fwd(x_BTD, w_VD, targets_BT, aux, fn, chunks, softcap):
    (b, t, d), v = x_BTD.shape, w_VD.shape[0]

    def split(a):  # [B, T, ...] -> [chunks, B, T / chunks, ...]
        return jnp.moveaxis(a.reshape(b, chunks, t // chunks, *a.shape[2:]), 1, 0)

    def body(dw_DV, chunk):
        x_BCD, tgt_BC, aux_BC = chunk
        z_BCV = jnp.einsum("BCD,VD->BCV", x_BCD, w_VD, preferred_element_type=jnp.float32)
        if softcap > 0:
            s_BCV = jnp.tanh(z_BCV / softcap)
            z_BCV = softcap * s_BCV
        logz_BC = jax.nn.logsumexp(z_BCV, axis=-1)
        gold_BC = jnp.take_along_axis(z_BCV, tgt_BC[..., None], axis=-1)[..., 0]
        (value_BC, metrics), vjp = jax.vjp(lambda lp: fn(lp, aux_BC), gold_BC - logz_BC)
        # d objective / d logp, and d logp / dz = onehot - softmax
        (dlogp_BC,) = vjp((jnp.ones_like(value_BC), jax.tree.map(jnp.zeros_like, metrics)))
        dz_BCV = jnp.exp(z_BCV - logz_BC[..., None]) - jax.nn.one_hot(tgt_BC, v, dtype=z_BCV.dtype)
        dz_BCV = dz_BCV * (-dlogp_BC)[..., None]
        if softcap > 0:
            dz_BCV = dz_BCV * (1.0 - s_BCV * s_BCV)
        dz_BCV = dz_BCV.astype(x_BCD.dtype)
        dx_BCD = jnp.einsum("BCV,VD->BCD", dz_BCV, w_VD, preferred_element_type=jnp.float32)
        # x's transpose made explicitly: XLA's CPU backend would transpose the wider dz instead
        x_DN = jax.lax.optimization_barrier(x_BCD.reshape(-1, d).T)
        dw_DV = dw_DV + jnp.dot(x_DN, dz_BCV.reshape(-1, v), preferred_element_type=jnp.float32)
        return dw_DV, ((value_BC.sum(), jax.tree.map(jnp.sum, metrics)), dx_BCD)

    dw_DV, ((sums, metric_sums), dx) = jax.lax.scan(
        body, jnp.zeros((d, v), jnp.float32),
        (split(x_BTD), split(targets_BT), jax.tree.map(split, aux)))
    dx_BTD = jnp.moveaxis(dx, 0, 1).reshape(b, t, d)
    out = (sums.sum(), jax.tree.map(jnp.sum, metric_sums))
    return out, (dx_BTD.astype(x_BTD.dtype), dw_DV.T.astype(w_VD.dtype))


def _fused_bwd(fn, chunks, softcap, res, g):
    dx_BTD, dw_VD = res
    g = g[0]  # the metrics' output gradients are dropped: they are reported, not trained on
    return (g * dx_BTD).astype(dx_BTD.dtype), (g * dw_VD).astype(dw_VD.dtype), None, None


fused_logprob_objective.defvjp(_fused_fwd, _fused_bwd)


def make_eval_step(cfg: ModelConfig, token_bytes_V: jax.Array) -> Callable[[dict, dict], dict]:
    """eval_step(params, batch) -> sums of loss (nats), tokens and target bytes.

    Bits per byte = loss_sum / ln 2 / bytes: comparable across tokenizers. Special tokens count
    0 bytes, so they are left out of both sums.
    """

    def eval_step(params, batch):
        losses_BT, mask_BT = token_losses(params, batch, cfg)
        bytes_BT = token_bytes_V[batch["targets"]] * mask_BT
        counted_BT = (bytes_BT > 0).astype(jnp.float32)
        return {"loss_sum": losses_BT.sum(), "tokens": mask_BT.sum(),
                "bpb_loss_sum": (losses_BT * counted_BT).sum(), "bytes": bytes_BT.sum()}

    return eval_step


def bits_per_byte(sums: dict) -> float:
    return float(sums["bpb_loss_sum"]) / math.log(2) / max(float(sums["bytes"]), 1.0)

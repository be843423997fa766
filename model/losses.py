"""Per-token losses of the model, and the validation sums behind loss and bits per byte:
what the training steps minimise and the evaluations report, in one place below both."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from model import transformer
from model.config import ModelConfig


def token_losses(params, batch: dict, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """Per-token cross-entropy in nats (float32) [B, T], and the loss mask [B, T]."""
    logits_BTV, _ = transformer.forward(params, batch["inputs"], cfg,
                                        segment_ids_BT=batch.get("segment_ids"),
                                        branch_ids_BT=batch.get("branch_ids"))
    logz_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    gold_BT = jnp.take_along_axis(logits_BTV, batch["targets"][..., None], axis=-1)[..., 0]
    mask_BT = batch.get("mask", jnp.ones_like(batch["targets"])).astype(jnp.float32)
    return (logz_BT - gold_BT) * mask_BT, mask_BT


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

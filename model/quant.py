"""int8 weight-only quantization for decoding: every matmul weight (and the embedding table)
becomes int8 with one float32 scale per output channel (absmax / 127, round to nearest);
norms and the KV cache stay in the compute dtype. Written here rather than taken from a
library (qwix) because the params are a plain pytree and the change is ~40 lines: the model
declares `NAME_scale` beside each weight when its config says quant="int8"."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from model.config import QUANT, ModelConfig
from model.handle import LM
from model.transformer import QUANT_CONTRACT, Params


def _quantize_leaf(w: jax.Array, contract: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    w32 = w.astype(jnp.float32)
    absmax = jnp.max(jnp.abs(w32), axis=contract)
    scale = jnp.where(absmax > 0, absmax / 127.0, 1.0)
    q = jnp.clip(jnp.round(w32 / jnp.expand_dims(scale, contract)), -127, 127).astype(jnp.int8)
    return q, scale


def quantize_params(params: Params) -> Params:
    """A float model's params -> the int8 model's (each weight NAME and NAME_scale)."""
    def walk(tree):
        out = {}
        for k, v in tree.items():
            if isinstance(v, dict):
                out[k] = walk(v)
            elif k in QUANT_CONTRACT:
                if v.dtype == jnp.int8:
                    raise ValueError(f"{k} is already int8: these params are quantized")
                out[k], out[k + "_scale"] = jax.jit(_quantize_leaf, static_argnums=1)(
                    v, QUANT_CONTRACT[k])
            else:
                out[k] = v
        return out
    return walk(params)


def quantize_config(cfg: ModelConfig, mode: str) -> ModelConfig:
    if mode not in QUANT:
        raise ValueError(f"quant={mode!r}: expected one of {list(QUANT)}")
    if cfg.quant != "none" and mode != cfg.quant:
        raise ValueError(f"the model is already quantized ({cfg.quant}); load the float one")
    return dataclasses.replace(cfg, quant=mode)


def quantize(lm: LM, mode: str = "int8") -> LM:
    """The model handle with int8 weights (mode "int8" or "w8a8"), or unchanged ("none")."""
    cfg = quantize_config(lm.cfg, mode)
    if mode == "none" or lm.cfg.quant == mode:
        return lm
    return dataclasses.replace(lm, params=quantize_params(lm.params), cfg=cfg)

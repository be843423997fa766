"""The model's configuration: a frozen dataclass, with its parameter count and FLOPs per token.

Shape alphabet used across model/ (names and einsum strings):
  B batch, T length, S cached length, D model width, N query heads, K kv heads,
  G query heads per kv head (N = K * G), H head dim, F MLP hidden width, V vocabulary, L layers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT = ("none", "full", "dots")
ATTENTION = ("einsum", "dot_product")
QUANT = ("none", "int8", "w8a8")
# fields that change how the model runs, not what it computes: a stage may differ from its parent
EXECUTION_FIELDS = ("scan_layers", "remat", "attention")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A Llama-style decoder-only Transformer."""

    vocab_size: int = 4096
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 2
    n_kv_heads: int = 2
    head_dim: int = 64
    d_ff: int = 384
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    qk_norm: bool = False
    tie_embeddings: bool = True
    logit_softcap: float = 0.0  # 0 disables the soft-cap
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # storage dtype
    init_std: float = 0.02
    # How the forward pass runs; none of these changes what it computes.
    scan_layers: bool = False  # layers as one lax.scan over stacked parameters (deep models)
    remat: str = "none"  # recompute in the backward pass: "none", "full" or "dots" (keep matmuls)
    attention: str = "einsum"  # "einsum", or "dot_product": jax.nn.dot_product_attention (cuDNN)
    # "int8": matmul weights stored as int8 with a float32 scale per output channel; "w8a8": the
    # same weights, activations rounded to int8 per token on the fly. For inference only:
    # model.quant.quantize makes such params from a float model's.
    quant: str = "none"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                     "d_ff", "max_seq_len"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)} must be positive")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} "
                "(grouped-query attention shares each kv head among n_heads/n_kv_heads queries)")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}: expected one of "
                                 f"{sorted(DTYPES)}")
        for name, allowed in (("remat", REMAT), ("attention", ATTENTION), ("quant", QUANT)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}: expected one of "
                                 f"{list(allowed)}")
        if self.logit_softcap < 0:
            raise ValueError(f"logit_softcap={self.logit_softcap} must be >= 0 (0 disables it)")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Builds a config from a plain dict (a meta.json entry or a ConfigDict), refusing unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]

    def _layer_matmul_params(self) -> int:
        d, h = self.d_model, self.head_dim
        attn = d * self.n_heads * h + 2 * d * self.n_kv_heads * h + self.n_heads * h * d
        return attn + 3 * d * self.d_ff

    def n_params(self) -> int:
        """Number of parameters, embeddings included (a tied output head counted once)."""
        per_layer = self._layer_matmul_params() + 2 * self.d_model
        if self.qk_norm:
            per_layer += 2 * self.head_dim
        embed = self.vocab_size * self.d_model
        head = 0 if self.tie_embeddings else self.vocab_size * self.d_model
        return embed + head + self.n_layers * per_layer + self.d_model

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), as in the PaLM paper's appendix B.

        6 FLOPs per matmul weight (the embedding lookup is not a matmul, the output head is),
        plus 12 * L * N * H * T for attention scores and values. Norms, RoPE and softmax are not
        counted, and the causal mask's halving of attention work is not credited.
        """
        t = self.max_seq_len if seq_len is None else seq_len
        matmul = self.n_layers * self._layer_matmul_params() + self.vocab_size * self.d_model
        attn = 12 * self.n_layers * self.n_heads * self.head_dim * t
        return 6 * matmul + attn

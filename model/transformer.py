"""A Llama-style decoder-only Transformer in Flax NNX, used purely functionally.

NNX declares the parameters and the forward pass; everything else sees a plain params pytree
(nested dicts of arrays). `init` builds it, `forward` is the one place where `nnx.merge` turns it
back into modules. The KV cache is an explicit pytree passed in and returned.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from model.config import ModelConfig
from model.sharding import constrain, named_sharding

Params = dict
Cache = list  # one {"k": keys, "v": v_ZSH} per layer, Z = rows x kv heads (row-major)


def cache_pos_axis(cfg: ModelConfig) -> dict[str, int]:
    """The axis of each cache array that holds positions. Values are [Z, S, H]. Keys are [Z, H, S]
    when several query heads share a kv head: the decode scores' dot is then a matrix product,
    which XLA's CPU backend runs on [H, S] keys as they are but transposes [S, H] keys for; with
    one query head per kv head it is a one-row dot, faster over [S, H]."""
    return {"k": 2 if cfg.n_heads > cfg.n_kv_heads else 1, "v": 1}


def _param(rngs: nnx.Rngs, shape, axes, std: float, cfg: ModelConfig) -> nnx.Param:
    init = jax.nn.initializers.normal(std)
    return nnx.Param(init(rngs.params(), shape, cfg.weight_dtype), logical_axes=axes)


# The axes (counted from the end) each matmul weight is contracted over; an int8 weight has one
# scale per entry of the other axes, so the scale multiplies the matmul's output.
QUANT_CONTRACT = {"wq_DNH": (-3,), "wk_DKH": (-3,), "wv_DKH": (-3,), "wo_NHD": (-3, -2),
                  "w_gate_DF": (-2,), "w_up_DF": (-2,), "w_down_FD": (-2,), "embed_VD": (-1,),
                  "head_DV": (-2,)}


def _weight(module: nnx.Module, name: str, rngs: nnx.Rngs, shape, axes, std: float,
            cfg: ModelConfig) -> None:
    """Declares matmul weight `name`; an int8 model stores it as int8 plus `name`_scale, one
    float32 per output channel (the axes QUANT_CONTRACT does not name)."""
    if cfg.quant == "none":
        setattr(module, name, _param(rngs, shape, axes, std, cfg))
        return
    keep = [i for i in range(len(shape)) if i - len(shape) not in QUANT_CONTRACT[name]]
    setattr(module, name, nnx.Param(jnp.zeros(shape, jnp.int8), logical_axes=axes))
    setattr(module, name + "_scale", nnx.Param(jnp.ones([shape[i] for i in keep], jnp.float32),
                                               logical_axes=tuple(axes[i] for i in keep)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _weight_matmul(spec: str, x: jax.Array, w: jax.Array, out_dtype=None) -> jax.Array:
    """einsum(spec, x, w) whose weight gradient transposes the narrower of x and the output
    gradient itself: XLA's CPU backend transposes the wider one ([tokens, d_ff] for the MLP,
    [tokens, vocab] for the LM head), which took more time than the matmul it feeds."""
    return jnp.einsum(spec, x, w, preferred_element_type=out_dtype)


def _weight_matmul_fwd(spec, x, w, out_dtype):
    return _weight_matmul(spec, x, w, out_dtype), (x, w)


def _weight_matmul_bwd(spec, out_dtype, res, dy):
    x, w = res
    (xs, ws), ys = spec.split("->")[0].split(","), spec.split("->")[1]
    _, x_vjp = jax.vjp(lambda x_: jnp.einsum(spec, x_, w, preferred_element_type=out_dtype), x)
    ins, outs = [a for a in ws if a in xs], [a for a in ws if a in ys]  # x: B, T, then ins
    size = dict(zip(xs, x.shape, strict=True)) | dict(zip(ws, w.shape, strict=True))
    x2 = x.reshape(-1, math.prod(size[a] for a in ins))
    dy2 = dy.astype(x.dtype).reshape(x2.shape[0], -1)
    if x2.shape[1] <= dy2.shape[1]:  # [ins..., outs...] from x^T (materialized) @ dy
        dw, order = jax.lax.optimization_barrier(x2.T) @ dy2, ins + outs
    else:
        dw, order = jax.lax.optimization_barrier(dy2.T) @ x2, outs + ins
    dw = dw.reshape([size[a] for a in order]).transpose([order.index(a) for a in ws])
    return x_vjp(dy)[0], dw.astype(w.dtype)


_weight_matmul.defvjp(_weight_matmul_fwd, _weight_matmul_bwd)


def _dense(spec: str, x: jax.Array, module: nnx.Module, name: str, cfg: ModelConfig,
           out_dtype=None, merge_in: bool = False) -> jax.Array:
    """einsum(spec, x, weight) in the compute dtype, for a float or an int8 (scaled) weight.

    quant="int8" dequantizes the weight into the matmul; quant="w8a8" also rounds x to int8
    (one scale per token, its absmax over the contracted axes) and multiplies int8 by int8
    into int32, which XLA's CPU backend runs faster than the float matmul. merge_in reads the
    weight with all but its last axis merged into one."""
    dt = cfg.compute_dtype
    w = getattr(module, name)[...]
    if merge_in:  # the weight's input axes as one (a free reshape of a row-major array)
        w = w.reshape(-1, w.shape[-1])
    if w.dtype != jnp.int8 or cfg.quant == "int8":
        # CPU only, and not under remat (whose "dots" policy would not see the dot inside)
        if w.dtype != jnp.int8 and cfg.remat == "none" and jax.default_backend() == "cpu":
            out = _weight_matmul(spec, x, w.astype(dt), out_dtype)
        else:
            out = jnp.einsum(spec, x, w.astype(dt), preferred_element_type=out_dtype)
        if w.dtype != jnp.int8:
            return out
        return out * getattr(module, name + "_scale")[...].astype(out.dtype)
    scale = getattr(module, name + "_scale")[...]
    xs, ws = spec.split("->")[0].split(",")
    axes = tuple(i for i, a in enumerate(xs) if a in ws)  # x's contracted axes (all but B, T)
    x32 = x.astype(jnp.float32)
    amax = jnp.max(jnp.abs(x32), axis=axes)
    a_BT = jnp.where(amax > 0, amax / 127.0, 1.0)
    xq = jnp.round(x32 / a_BT.reshape(a_BT.shape + (1,) * len(axes))).astype(jnp.int8)
    b = x.shape[0]
    if b * x.shape[1] == 1:  # one row: XLA's CPU int8 matmul takes a slow path; two rows do not
        xq = jnp.concatenate([xq, jnp.zeros_like(xq)], axis=0)
    out = jnp.einsum(spec, xq, w, preferred_element_type=jnp.int32)[:b].astype(jnp.float32)
    out = out * a_BT.reshape(a_BT.shape + (1,) * (out.ndim - 2)) * scale
    return out.astype(out_dtype or dt)


def _tied_head(x_BTD: jax.Array, module: nnx.Module, cfg: ModelConfig) -> jax.Array:
    """The tied head's logits, x @ embed.T in float32.

    One row on CPU is a vector times the transposed table: XLA's CPU backend runs that as one
    loop over the vocabulary split across the cores, where the [1, D] x [V, D] dot runs on one.
    Below 8 MiB of table the split loop gains nothing measurable (at 2 MiB it lost)."""
    w = module.embed_VD[...]
    if (x_BTD.shape[0] * x_BTD.shape[1] > 1 or w.dtype == jnp.int8 or w.nbytes < 8 << 20
            or jax.default_backend() != "cpu"):
        return _dense("BTD,VD->BTV", x_BTD, module, "embed_VD", cfg, jnp.float32)
    dt = cfg.compute_dtype
    out_V = jnp.matmul(x_BTD.reshape(-1).astype(dt), w.astype(dt).T,
                       preferred_element_type=jnp.float32)
    return out_V.reshape(1, 1, -1)


def rope_angles(pos_BT: jax.Array, head_dim: int, theta: float,
                table: int = 0) -> tuple[jax.Array, jax.Array]:
    """RoPE's (sin, cos) at each position, [B, T, 1, head_dim / 2]. With `table` (every position
    below it), looked up in a table of that many positions: XLA fuses a direct sin and cos into
    each consumer and computes them again for every head and use."""
    freq_H2 = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    if table:
        angle_LH2 = jnp.arange(table, dtype=jnp.float32)[:, None] * freq_H2
        sin_cos_BT2H = jnp.take(jnp.stack([jnp.sin(angle_LH2), jnp.cos(angle_LH2)], 1), pos_BT,
                                axis=0)
        return sin_cos_BT2H[:, :, None, 0], sin_cos_BT2H[:, :, None, 1]
    angle_BTH2 = pos_BT[..., None].astype(jnp.float32) * freq_H2
    return jnp.sin(angle_BTH2)[:, :, None, :], jnp.cos(angle_BTH2)[:, :, None, :]


def apply_rope(x_BTNH: jax.Array, sin_cos: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Rotary position embedding on the two halves of the head dimension."""
    sin, cos = sin_cos
    x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BTNH.dtype)


def rope(x_BTNH: jax.Array, pos_BT: jax.Array, theta: float) -> jax.Array:
    """x rotated for positions pos_BT."""
    return apply_rope(x_BTNH, rope_angles(pos_BT, x_BTNH.shape[-1], theta))


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, cfg: ModelConfig):
        self.scale = nnx.Param(jnp.ones((dim,), cfg.weight_dtype), logical_axes=("norm",))
        self.eps = cfg.norm_eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


# The uncached causal attention's query blocks (each reads the keys up to its own end): blocks
# of QUERY_BLOCK positions, at most MAX_QUERY_BLOCKS, from 4 blocks up (below, the extra ops and
# compile time cost about what the skipped scores save).
QUERY_BLOCK, MAX_QUERY_BLOCKS = 64, 8


class Attention(nnx.Module):
    """Causal self-attention with grouped-query heads, RoPE and optional QK-norm."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
        self.cfg = cfg
        _weight(self, "wq_DNH", rngs, (d, n, h), ("embed", "q_heads", "head_dim"), cfg.init_std,
                cfg)
        _weight(self, "wk_DKH", rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), cfg.init_std,
                cfg)
        _weight(self, "wv_DKH", rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), cfg.init_std,
                cfg)
        _weight(self, "wo_NHD", rngs, (n, h, d), ("q_heads", "head_dim", "embed"), out_std, cfg)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(h, cfg)
            self.k_norm = RMSNorm(h, cfg)

    def __call__(self, x_BTD, rope_BT, mask_BTS, layer_cache, cache_start_B):
        cfg, dt = self.cfg, self.cfg.compute_dtype
        q_BTNH = _dense("BTD,DNH->BTNH", x_BTD, self, "wq_DNH", cfg)
        k_BTKH = _dense("BTD,DKH->BTKH", x_BTD, self, "wk_DKH", cfg)
        v_BTKH = _dense("BTD,DKH->BTKH", x_BTD, self, "wv_DKH", cfg)
        if cfg.qk_norm:
            q_BTNH, k_BTKH = self.q_norm(q_BTNH), self.k_norm(k_BTKH)
        q_BTNH, k_BTKH = apply_rope(q_BTNH, rope_BT), apply_rope(k_BTKH, rope_BT)

        b, t, n, h = q_BTNH.shape
        kv, new_cache = cfg.n_kv_heads, None
        if layer_cache is not None:
            # Each row writes its T new entries at its own offset: prompts have ragged lengths.
            keys_hs = cache_pos_axis(cfg)["k"] == 2  # keys stored [Z, H, S]
            new_cache = {"k": _write_cache(layer_cache["k"], k_BTKH, cache_start_B, keys_hs),
                         "v": _write_cache(layer_cache["v"], v_BTKH, cache_start_B, False)}
        if cfg.attention == "dot_product":  # XLA's softmax attention on a CPU, cuDNN's on a GPU
            k_BxKH, v_BxKH = k_BTKH, v_BTKH
            if new_cache is not None and mask_BTS is not None:  # the library's is [B, S, K, H]
                v_BxKH = new_cache["v"].reshape(b, kv, -1, h).transpose(0, 2, 1, 3)
                k_BxKH = (new_cache["k"].reshape(b, kv, h, -1).transpose(0, 3, 1, 2) if keys_hs
                          else new_cache["k"].reshape(b, kv, -1, h).transpose(0, 2, 1, 3))
            out_BTNH = jax.nn.dot_product_attention(
                q_BTNH, k_BxKH.astype(dt), v_BxKH.astype(dt),
                mask=None if mask_BTS is None else mask_BTS[:, None], is_causal=mask_BTS is None)
        elif new_cache is None or mask_BTS is None:  # no cache, or a prefill into an empty one
            q_BTKGH = q_BTNH.reshape(b, t, kv, n // kv, h)
            if mask_BTS is None:  # plain causal: built here from indices, fused by XLA
                mask_BTS = (jnp.arange(t)[:, None] >= jnp.arange(t)[None, :])[None]
            # Every mask here is causal, so a block of queries needs only the keys up to its own
            # last position: n blocks skip (n - 1) / 2n of the scores and their softmax.
            blocks = min(MAX_QUERY_BLOCKS, t // QUERY_BLOCK) if t >= 4 * QUERY_BLOCK else 1
            block_outs = []  # [B, K, G, hi - lo, H] each
            for lo, hi in ((i * t // blocks, (i + 1) * t // blocks) for i in range(blocks)):
                scores_BKGTS = jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH[:, lo:hi], k_BTKH[:, :hi],
                                          preferred_element_type=jnp.float32) * (h**-0.5)
                scores_BKGTS = jnp.where(mask_BTS[:, None, None, lo:hi, :hi], scores_BKGTS, -1e30)
                probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1).astype(dt)
                block_outs.append(jnp.einsum("BKGTS,BSKH->BKGTH", probs_BKGTS, v_BTKH[:, :hi]))
            out_BKGTH = jnp.concatenate(block_outs, axis=3) if blocks > 1 else block_outs[0]
            out_BTNH = out_BKGTH.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)
        else:
            # The dots read the cache write's result as it is, batched over Z = rows x kv heads
            # and with the G query heads of a kv head and the T positions as one axis.
            q_ZQH = q_BTNH.reshape(b, t, kv, n // kv, h).transpose(0, 2, 3, 1, 4).reshape(
                b * kv, -1, h)
            keys, v_ZSH = new_cache["k"].astype(dt), new_cache["v"].astype(dt)  # keys_hs: [Z, H, S]
            scores_ZQS = jnp.einsum("ZQH,ZHS->ZQS" if keys_hs else "ZQH,ZSH->ZQS", q_ZQH, keys,
                                    preferred_element_type=jnp.float32) * (h**-0.5)
            scores_BKGTS = scores_ZQS.reshape(b, kv, n // kv, t, -1)
            scores_BKGTS = jnp.where(mask_BTS[:, None, None], scores_BKGTS, -1e30)
            probs_ZQS = jax.nn.softmax(scores_BKGTS, axis=-1).astype(dt).reshape(scores_ZQS.shape)
            out_ZQH = jnp.einsum("ZQS,ZSH->ZQH", probs_ZQS, v_ZSH)
            out_BTNH = out_ZQH.reshape(b, kv, n // kv, t, h).transpose(0, 3, 1, 2, 4).reshape(
                b, t, n, h)
        # [B, T, N*H] x [N*H, D]: with the heads merged on both sides XLA reads wo in place, where
        # the NH-contracting einsum had it transpose (copy) the whole weight at every call
        return _dense("BTF,FD->BTD", out_BTNH.reshape(b, t, n * h), self, "wo_NHD", cfg,
                      merge_in=True), new_cache


class MLP(nnx.Module):
    """SwiGLU feed-forward block."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.d_ff
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
        self.cfg = cfg
        _weight(self, "w_gate_DF", rngs, (d, f), ("embed", "mlp"), cfg.init_std, cfg)
        _weight(self, "w_up_DF", rngs, (d, f), ("embed", "mlp"), cfg.init_std, cfg)
        _weight(self, "w_down_FD", rngs, (f, d), ("mlp", "embed"), out_std, cfg)

    def __call__(self, x_BTD):
        gate_BTF = _dense("BTD,DF->BTF", x_BTD, self, "w_gate_DF", self.cfg)
        up_BTF = _dense("BTD,DF->BTF", x_BTD, self, "w_up_DF", self.cfg)
        h_BTF = constrain(jax.nn.silu(gate_BTF) * up_BTF, ("batch", "length", "mlp"))
        return _dense("BTF,FD->BTD", h_BTF, self, "w_down_FD", self.cfg)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.d_model, cfg)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x_BTD, rope_BT, mask_BTS, layer_cache, cache_start_B):
        a_BTD, new_cache = self.attn(self.attn_norm(x_BTD), rope_BT, mask_BTS, layer_cache,
                                     cache_start_B)
        x_BTD = constrain(x_BTD + a_BTD, ("batch", "length", "act_embed"))
        x_BTD = constrain(x_BTD + self.mlp(self.mlp_norm(x_BTD)), ("batch", "length", "act_embed"))
        return x_BTD, new_cache


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        _weight(self, "embed_VD", rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                cfg.init_std, cfg)
        if cfg.scan_layers:  # one block whose parameters carry a leading layer axis (init stacks)
            self.blocks = Block(cfg, rngs)
        else:
            self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
        self.final_norm = RMSNorm(cfg.d_model, cfg)
        if not cfg.tie_embeddings:
            _weight(self, "head_DV", rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                    cfg.init_std, cfg)

    def __call__(self, tokens_BT, pos_BT, mask_BTS, cache, cache_start_B, hidden=False,
                 logits_at_B=None):
        cfg, dt = self.cfg, self.cfg.compute_dtype
        # Gather the (vocab, embed)-sharded table before the lookup: a gather from a sharded
        # table makes the SPMD partitioner replicate it in a less efficient way anyway.
        table_VD = constrain(self.embed_VD[...], (None, None))
        x_BTD = jnp.take(table_VD, tokens_BT, axis=0).astype(dt)
        if cfg.quant != "none":  # each looked-up row times its own scale
            scale_BT = jnp.take(self.embed_VD_scale[...], tokens_BT, axis=0)
            x_BTD = (x_BTD * scale_BT[..., None]).astype(dt)
        x_BTD = constrain(x_BTD, ("batch", "length", "act_embed"))
        run = _block_fn(cfg.remat)
        # without a cache (or into an empty one) every position is below T; a decode step's few
        # are computed directly
        rope_BT = rope_angles(pos_BT, cfg.head_dim, cfg.rope_theta,
                              table=tokens_BT.shape[1] if cache is None or mask_BTS is None else 0)
        new_cache = [] if cache is not None else None
        if cfg.scan_layers and cache is None:
            graphdef, stacked = nnx.split(self.blocks)

            def body(x_BTD, layer_state):
                return run(graphdef, layer_state, x_BTD, rope_BT, mask_BTS, None, None)[0], None

            x_BTD, _ = jax.lax.scan(body, x_BTD, stacked)
        else:
            if cfg.scan_layers:  # decoding: the cache stays a list, each layer a slice
                graphdef, stacked = nnx.split(self.blocks)
                layers = [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(cfg.n_layers)]
            else:
                splits = [nnx.split(block) for block in self.blocks]
                graphdef, layers = splits[0][0], [st for _, st in splits]
            for i, layer_state in enumerate(layers):
                x_BTD, layer_cache = run(graphdef, layer_state, x_BTD, rope_BT, mask_BTS,
                                         None if cache is None else cache[i], cache_start_B)
                if cache is not None:
                    new_cache.append(layer_cache)
        if logits_at_B is not None:  # one position per row: the head's matmul for it alone
            x_BTD = jnp.take_along_axis(x_BTD, logits_at_B[:, None, None], axis=1)
        x_BTD = self.final_norm(x_BTD)
        if hidden:  # the final normed hidden states (a reward model's scalar head reads them)
            return x_BTD.astype(jnp.float32), new_cache
        if cfg.tie_embeddings:
            logits_BTV = _tied_head(x_BTD, self, cfg)
        else:
            logits_BTV = _dense("BTD,DV->BTV", x_BTD, self, "head_DV", cfg, jnp.float32)
        if cfg.logit_softcap > 0:
            logits_BTV = cfg.logit_softcap * jnp.tanh(logits_BTV / cfg.logit_softcap)
        return logits_BTV, new_cache


def _write_cache(cache: jax.Array, new_BTKH: jax.Array, start_B: jax.Array,
                 hs: bool) -> jax.Array:
    """The [B*K, S, H] cache ([B*K, H, S] if hs) with row b's T new entries at positions
    start_B[b]... (one scatter).

    Rows and kv heads share the cache's first axis so that the attention's dots read this
    write's result in place at any batch size: with a separate batch axis of size 1, XLA's CPU
    backend fuses the write twice (once into the dots' batch-less view) and copies the cache.
    A write past the end is clamped to the last T positions, like dynamic_update_slice."""
    b, t, k, h = new_BTKH.shape
    rows_B = jnp.arange(b, dtype=start_B.dtype) * k
    dims = jax.lax.ScatterDimensionNumbers(update_window_dims=(1, 2, 3), inserted_window_dims=(),
                                           scatter_dims_to_operand_dims=(0, 2 if hs else 1))
    update = new_BTKH.transpose((0, 2, 3, 1) if hs else (0, 2, 1, 3))
    return jax.lax.scatter(cache, jnp.stack([rows_B, start_B], -1), update.astype(cache.dtype),
                           dims, indices_are_sorted=True, unique_indices=True, mode="clip")


def _run_block(graphdef, state, x_BTD, rope_BT, mask_BTS, layer_cache, cache_start_B):
    return nnx.merge(graphdef, state)(x_BTD, rope_BT, mask_BTS, layer_cache, cache_start_B)


@functools.cache
def _block_fn(remat: str):
    """One block as a pure function of (graphdef, its params, inputs), rematerialised in the
    backward pass as `remat` says: "full" keeps only the block's inputs, "dots" also the
    outputs of its weight matmuls (attention scores and element-wise work are recomputed)."""
    if remat == "none":
        return _run_block
    policy = None if remat == "full" else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    return jax.checkpoint(_run_block, policy=policy, static_argnums=(0,))


def stack_layers(params: Params) -> Params:
    """Per-layer params ({"blocks": {0: ..., 1: ...}}) -> one stacked block (scan_layers=True)."""
    blocks = params["blocks"]
    layers = [blocks[k] for k in sorted(blocks, key=int)]
    stack = (lambda *xs: jax.ShapeDtypeStruct((len(xs), *xs[0].shape), xs[0].dtype)) \
        if isinstance(jax.tree.leaves(layers[0])[0], jax.ShapeDtypeStruct) else \
        (lambda *xs: jnp.stack(xs))
    return {**params, "blocks": jax.tree.map(stack, *layers)}


def unstack_layers(params: Params) -> Params:
    """A stacked block (scan_layers=True) -> per-layer params, the layout import and export use."""
    blocks = params["blocks"]
    n = jax.tree.leaves(blocks)[0].shape[0]
    take = (lambda a, i: jax.ShapeDtypeStruct(a.shape[1:], a.dtype)) \
        if isinstance(jax.tree.leaves(blocks)[0], jax.ShapeDtypeStruct) else (lambda a, i: a[i])
    return {**params, "blocks": {i: jax.tree.map(lambda a, i=i: take(a, i), blocks)
                                 for i in range(n)}}


def is_stacked(params: Params) -> bool:
    """Whether params hold their layers stacked (a scan_layers model's layout)."""
    return not all(str(k).isdigit() for k in params["blocks"])


@functools.lru_cache(maxsize=32)
def _abstract(cfg: ModelConfig):
    """(graphdef, abstract state) of a model with this config; no arrays are allocated."""
    model = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))
    return nnx.split(model)


def logical_axes(cfg: ModelConfig) -> Params:
    """The params pytree's logical axis names: a tuple of names per array."""
    _, state = _abstract(cfg)
    axes = nnx.to_pure_dict(jax.tree.map(
        lambda v: v.get_metadata()["logical_axes"], state,
        is_leaf=lambda v: isinstance(v, nnx.Variable)))
    if cfg.scan_layers:
        axes["blocks"] = jax.tree.map(lambda a: ("layers", *a), axes["blocks"],
                                      is_leaf=lambda x: isinstance(x, tuple))
    return axes


def param_shapes(cfg: ModelConfig) -> Params:
    """The params pytree as jax.ShapeDtypeStruct leaves."""
    _, state = _abstract(cfg)
    shapes = nnx.to_pure_dict(state)
    if cfg.scan_layers:
        shapes["blocks"] = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct((cfg.n_layers, *a.shape), a.dtype), shapes["blocks"])
    return shapes


def param_shardings(cfg: ModelConfig, mesh: jax.sharding.Mesh) -> Params:
    """NamedSharding per parameter, from its logical axes and model.sharding.RULES."""
    return jax.tree.map(
        lambda axes, s: named_sharding(mesh, axes, s.shape), logical_axes(cfg), param_shapes(cfg),
        is_leaf=lambda x: isinstance(x, tuple))


def init(cfg: ModelConfig, rng: jax.Array, mesh: jax.sharding.Mesh | None = None) -> Params:
    """Initialises the params pytree; under a mesh every array is created already sharded."""

    if cfg.quant != "none":
        raise ValueError(f"quant={cfg.quant!r} models are made from a float model's params by "
                         "model.quant.quantize, not initialised")

    def make(key):  # a scanned model starts from the unrolled one's draws, stacked
        unrolled = dataclasses.replace(cfg, scan_layers=False)
        params = nnx.to_pure_dict(nnx.split(Transformer(unrolled, nnx.Rngs(params=key)))[1])
        return stack_layers(params) if cfg.scan_layers else params

    out_shardings = None if mesh is None else param_shardings(cfg, mesh)
    return jax.jit(make, out_shardings=out_shardings)(rng)


def forward(
    params: Params,
    tokens_BT: jax.Array,
    cfg: ModelConfig,
    *,
    segment_ids_BT: jax.Array | None = None,
    branch_ids_BT: jax.Array | None = None,
    cache: Cache | None = None,
    cache_start_B: jax.Array | None = None,
    hidden: bool = False,
    logits_at_B: jax.Array | None = None,
    prefill: bool = False,
) -> tuple[jax.Array, Cache | None]:
    """Logits (float32) for every position, and the updated cache when one is given; with
    hidden=True the final (normed) hidden states [B, T, D] in float32 instead of logits; with
    `logits_at_B`, those of one position per row only ([B, 1, ...]: a prefill's last token).

    Without a cache: causal attention over tokens_BT, positions 0..T-1; with `segment_ids_BT`
    (packed documents), attention and positions restart at each new segment. `branch_ids_BT`
    (with segment ids) shares a prefix among continuations: a segment's tokens of branch 0 are
    its prefix, and a token of branch k > 0 attends to the prefix and to branch k's earlier
    tokens only, its position counting on from the prefix's end.
    With a cache: row b's tokens sit at positions cache_start_B[b] + t; they are written into the
    cache there and attend to every cached entry at or before their own position. `prefill` says
    the cache is empty and every row starts at 0 (cache_start_B may be left out): the tokens
    attend to each other alone, causally and in query blocks, not to the whole cache's width.
    """
    b, t = tokens_BT.shape
    t_idx = jnp.arange(t)
    if prefill and (cache is None or cache_start_B is not None):
        raise ValueError("prefill=True fills an empty cache from position 0: pass a cache and no "
                         "cache_start_B")
    if cache is None:
        if segment_ids_BT is None:
            if branch_ids_BT is not None:
                raise ValueError("branch_ids_BT needs segment_ids_BT")
            pos_BT = jnp.broadcast_to(t_idx, (b, t))
            mask_BTS = None  # plain causal: the attention builds it (or is_causal does)
        else:
            mask_BTS = ((segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])
                        & (t_idx[:, None] >= t_idx[None, :]))
            if branch_ids_BT is not None:
                mask_BTS &= ((branch_ids_BT[:, None, :] == 0)
                             | (branch_ids_BT[:, None, :] == branch_ids_BT[:, :, None]))
            # A token's position = how many tokens it sees before itself.
            pos_BT = mask_BTS.sum(-1, dtype=jnp.int32) - 1
    elif prefill:  # positions 0..T-1 of every row; the attention builds the causal mask
        cache_start_B = jnp.zeros((b,), jnp.int32)
        pos_BT, mask_BTS = jnp.broadcast_to(t_idx, (b, t)), None
    else:
        if cache_start_B is None:
            raise ValueError("forward with a cache needs cache_start_B (each row's write offset)")
        s = cache_width(cache)
        pos_BT = cache_start_B[:, None] + t_idx[None, :]
        mask_BTS = jnp.arange(s)[None, None, :] <= pos_BT[:, :, None]
    model = nnx.merge(_abstract(cfg)[0], params)
    return model(tokens_BT, pos_BT, mask_BTS, cache, cache_start_B, hidden=hidden,
                 logits_at_B=logits_at_B)


def cache_width(cache: Cache) -> int:
    """Positions the cache holds (read off the values, [Z, S, H] in every key layout)."""
    return cache[0]["v"].shape[1]


def resize_cache(cache: Cache, width: int, cfg: ModelConfig) -> Cache:
    """The cache with `width` positions: its first ones kept, zeros after them when it grows."""
    def one(x, axis):
        s = x.shape[axis]
        if width <= s:
            return jax.lax.slice_in_dim(x, 0, width, axis=axis)
        return jnp.pad(x, [(0, width - s) if i == axis else (0, 0) for i in range(x.ndim)])
    axis = cache_pos_axis(cfg)
    return [{name: one(x, axis[name]) for name, x in layer.items()} for layer in cache]


def init_cache(cfg: ModelConfig, batch: int, length: int) -> Cache:
    """An empty KV cache for `batch` rows of up to `length` tokens, in the compute dtype: per
    layer [batch * n_kv_heads, length, head_dim] (keys with their last two axes swapped where
    `cache_pos_axis` says so), row b's heads at b * n_kv_heads + k."""
    z, h, dt = batch * cfg.n_kv_heads, cfg.head_dim, cfg.compute_dtype
    k_shape = (z, h, length) if cache_pos_axis(cfg)["k"] == 2 else (z, length, h)
    return [{"k": jnp.zeros(k_shape, dt), "v": jnp.zeros((z, length, h), dt)}
            for _ in range(cfg.n_layers)]

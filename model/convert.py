"""Llama-family weights from other layouts into the project's params pytree.

Two sources: a Hugging Face model directory (config.json, *.safetensors, single or sharded with
model.safetensors.index.json) and a GGUF file (llama.cpp's format, read with its own `gguf`
package, quantized tensors dequantized to float32). Both become (ModelConfig, params); what the
project's Transformer cannot express is refused by name, before anything is written.

Layouts: Hugging Face stores a linear layer as [out, in]; the project as [in, ...] split per head
(model/transformer.py). GGUF stores the same [out, in] arrays, but with the rows of q_proj and
k_proj permuted for llama.cpp's interleaved rotary embedding, which `_unpermute` undoes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from model.config import ModelConfig

HF_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")


def config_from_hf(hf: dict, max_seq_len: int | None = None) -> ModelConfig:
    """ModelConfig of a Hugging Face config.json; what the Transformer cannot express is refused
    by its key."""
    arch = (hf.get("architectures") or [None])[0]
    if arch not in HF_ARCHITECTURES:
        raise ValueError(f"config.json: architectures={hf.get('architectures')} is not supported "
                         f"(one of {', '.join(HF_ARCHITECTURES)})")
    refuse = {"rope_scaling": hf.get("rope_scaling") not in (None, {}),
              "attention_bias": bool(hf.get("attention_bias")), "mlp_bias": bool(hf.get("mlp_bias")),
              "hidden_act": hf.get("hidden_act", "silu") != "silu",
              "sliding_window": hf.get("sliding_window") not in (None, 0)}
    for key, bad in refuse.items():
        if bad:
            raise ValueError(f"config.json: {key}={hf[key]!r} is not supported by the project's "
                             "Transformer (no rope scaling, no biases, SwiGLU, full attention)")
    d, n = hf["hidden_size"], hf["num_attention_heads"]
    return ModelConfig(
        vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["num_hidden_layers"], n_heads=n,
        n_kv_heads=hf.get("num_key_value_heads") or n, head_dim=hf.get("head_dim") or d // n,
        d_ff=hf["intermediate_size"],
        max_seq_len=min(hf.get("max_position_embeddings", 2048), max_seq_len or 1 << 30),
        rope_theta=float(hf.get("rope_theta", 10000.0)), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


def params_from_tensors(get: Callable[[str], np.ndarray], cfg: ModelConfig, names: Mapping[str, str],
                        unpermute: bool = False) -> dict:
    """The params pytree from Hugging Face-layout tensors. get(name) -> float32 [out, in] array;
    names maps the Hugging Face names used here to the source's (GGUF's differ)."""
    d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim

    def fetch(name, shape):
        w = np.asarray(get(names.get(name, name)), np.float32)
        if w.shape != shape:
            raise ValueError(f"tensor {names.get(name, name)} has shape {list(w.shape)}; the model "
                             f"config needs {list(shape)}")
        return w

    params: dict = {"embed_VD": fetch("model.embed_tokens.weight", (cfg.vocab_size, d)),
                    "final_norm": {"scale": fetch("model.norm.weight", (d,))}, "blocks": {}}
    if not cfg.tie_embeddings:
        params["head_DV"] = fetch("lm_head.weight", (cfg.vocab_size, d)).T
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        q = fetch(p + "self_attn.q_proj.weight", (n * h, d))
        kk = fetch(p + "self_attn.k_proj.weight", (k * h, d))
        if unpermute:
            q, kk = _unpermute(q, n), _unpermute(kk, k)
        params["blocks"][i] = {
            "attn_norm": {"scale": fetch(p + "input_layernorm.weight", (d,))},
            "mlp_norm": {"scale": fetch(p + "post_attention_layernorm.weight", (d,))},
            "attn": {"wq_DNH": q.T.reshape(d, n, h), "wk_DKH": kk.T.reshape(d, k, h),
                     "wv_DKH": fetch(p + "self_attn.v_proj.weight", (k * h, d)).T.reshape(d, k, h),
                     "wo_NHD": fetch(p + "self_attn.o_proj.weight", (d, n * h)).T.reshape(n, h, d)},
            "mlp": {"w_gate_DF": fetch(p + "mlp.gate_proj.weight", (cfg.d_ff, d)).T,
                    "w_up_DF": fetch(p + "mlp.up_proj.weight", (cfg.d_ff, d)).T,
                    "w_down_FD": fetch(p + "mlp.down_proj.weight", (d, cfg.d_ff)).T}}
    return params


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's q/k row order (pairs interleaved per head) back to rotate-half order."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_hf(directory: str | Path, max_seq_len: int | None = None) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params) of a Hugging Face model directory."""
    from safetensors import safe_open

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} has no config.json: not a Hugging Face model directory")
    cfg = config_from_hf(json.loads((directory / "config.json").read_text()), max_seq_len)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        where = {k: directory / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    else:
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{directory} holds no *.safetensors")
        where = {}
        for f in files:
            with safe_open(f, "flax") as fh:
                where.update({k: f for k in fh.keys()})
    if cfg.tie_embeddings is False and "lm_head.weight" not in where:
        raise ValueError("config.json: tie_word_embeddings is false but there is no lm_head.weight")

    def get(name):
        if name not in where:
            raise ValueError(f"tensor {name} is missing from {directory}")
        with safe_open(where[name], "flax") as fh:  # numpy has no bfloat16; jax does
            return np.asarray(fh.get_tensor(name), np.float32)

    return cfg, params_from_tensors(get, cfg, {})


# GGUF tensor types the import dequantizes (gguf.quants knows each one's block layout)
GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K",
              "Q5_K", "Q6_K")


def _gguf_names(n_layers: int, tied: bool) -> dict[str, str]:
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if not tied:
        names["lm_head.weight"] = "output.weight"
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for i in range(n_layers):
        for hf, gg in parts.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    return names


def gguf_fields(reader) -> dict:
    """A GGUF file's metadata as plain Python values (strings, numbers, lists)."""
    return {k: f.contents() for k, f in reader.fields.items()}


def load_gguf(path: str | Path, max_seq_len: int | None = None) -> tuple[ModelConfig, dict, dict]:
    """(ModelConfig, params, metadata fields) of a GGUF file of architecture llama."""
    import gguf

    path = Path(path)
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError) as e:
        raise ValueError(f"{path} is not a readable GGUF file ({e})") from None
    f = gguf_fields(reader)
    arch = f.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: general.architecture={arch!r} is not supported (llama only)")

    def need(key):
        if f"llama.{key}" not in f:
            raise ValueError(f"{path}: metadata key llama.{key} is missing")
        return f[f"llama.{key}"]

    if f.get("llama.rope.scaling.type") not in (None, "none"):
        raise ValueError(f"{path}: llama.rope.scaling.type={f['llama.rope.scaling.type']!r} is not "
                         "supported (no rope scaling)")
    tensors = {t.name: t for t in reader.tensors}
    n, d = need("attention.head_count"), need("embedding_length")
    embed = tensors.get("token_embd.weight")
    if embed is None:
        raise ValueError(f"{path}: tensor token_embd.weight is missing")
    cfg = ModelConfig(
        vocab_size=int(f.get("llama.vocab_size") or embed.shape[1]), d_model=d,
        n_layers=need("block_count"), n_heads=n, n_kv_heads=f.get("llama.attention.head_count_kv") or n,
        head_dim=f.get("llama.rope.dimension_count") or d // n, d_ff=need("feed_forward_length"),
        max_seq_len=min(f.get("llama.context_length", 2048), max_seq_len or 1 << 30),
        rope_theta=float(f.get("llama.rope.freq_base", 10000.0)),
        norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in tensors)

    def get(name):
        t = tensors.get(name)
        if t is None:
            raise ValueError(f"{path}: tensor {name} is missing")
        kind = t.tensor_type.name
        if kind not in GGUF_TYPES:
            raise ValueError(f"{path}: tensor {name} is of type {kind}, which the import does not "
                             f"dequantize (supported: {', '.join(GGUF_TYPES)})")
        rows = [int(x) for x in reversed(t.shape)]  # GGUF lists dims innermost first
        return gguf.quants.dequantize(t.data, t.tensor_type).reshape(rows)

    return cfg, params_from_tensors(get, cfg, _gguf_names(cfg.n_layers, cfg.tie_embeddings),
                                    unpermute=True), f

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

from model import transformer
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


def _decimal(x) -> float:
    """A GGUF float32 as the shortest decimal it rounds from (1e-06, not 9.99999997e-07)."""
    return float(str(np.float32(x)))


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
        rope_theta=_decimal(f.get("llama.rope.freq_base", 10000.0)),
        norm_eps=_decimal(need("attention.layer_norm_rms_epsilon")),
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


def hf_config(cfg: ModelConfig) -> dict:
    """The Hugging Face config.json (LlamaForCausalLM) of a ModelConfig; what Llama cannot
    express is refused by name."""
    if cfg.qk_norm:
        raise ValueError("qk_norm=True: LlamaForCausalLM has no QK-norm; export a model without it")
    if cfg.logit_softcap:
        raise ValueError(f"logit_softcap={cfg.logit_softcap}: LlamaForCausalLM has no logit "
                         "soft-cap; export a model without it")
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
            "intermediate_size": cfg.d_ff, "max_position_embeddings": cfg.max_seq_len,
            "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.norm_eps,
            "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu",
            "attention_bias": False, "mlp_bias": False, "rope_scaling": None,
            "torch_dtype": "float32"}


def hf_tensors(params: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Hugging Face-named float32 [out, in] tensors of a params pytree: params_from_tensors'
    inverse."""
    d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim

    def a(x):
        return np.asarray(x, np.float32)

    out = {"model.embed_tokens.weight": a(params["embed_VD"]),
           "model.norm.weight": a(params["final_norm"]["scale"])}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = a(params["head_DV"]).T
    if transformer.is_stacked(params):  # a scan_layers model: the per-layer layout HF uses
        params = transformer.unstack_layers(params)
    blocks = params["blocks"]
    for i in range(cfg.n_layers):
        b, p = blocks[i] if i in blocks else blocks[str(i)], f"model.layers.{i}."
        at, mlp = b["attn"], b["mlp"]
        out.update({
            p + "input_layernorm.weight": a(b["attn_norm"]["scale"]),
            p + "post_attention_layernorm.weight": a(b["mlp_norm"]["scale"]),
            p + "self_attn.q_proj.weight": a(at["wq_DNH"]).reshape(d, n * h).T,
            p + "self_attn.k_proj.weight": a(at["wk_DKH"]).reshape(d, k * h).T,
            p + "self_attn.v_proj.weight": a(at["wv_DKH"]).reshape(d, k * h).T,
            p + "self_attn.o_proj.weight": a(at["wo_NHD"]).reshape(n * h, d).T,
            p + "mlp.gate_proj.weight": a(mlp["w_gate_DF"]).T, p + "mlp.up_proj.weight": a(mlp["w_up_DF"]).T,
            p + "mlp.down_proj.weight": a(mlp["w_down_FD"]).T})
    return {name: np.ascontiguousarray(w) for name, w in out.items()}


def permute_qk(w: np.ndarray, heads: int) -> np.ndarray:
    """Rotate-half q/k rows into the interleaved order of llama.cpp (and llama.c): _unpermute's
    inverse."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --dtype of a GGUF export -> (the type of its 2-D weights, general.file_type); 1-D stay F32
GGUF_EXPORT = {"f32": ("F32", 0), "f16": ("F16", 1), "bf16": ("BF16", 32), "q8_0": ("Q8_0", 7)}


def write_gguf(path: str | Path, cfg: ModelConfig, params: dict, dtype: str = "f32",
               add_metadata: Callable | None = None) -> None:
    """One GGUF v3 file of architecture llama, written with the gguf package's writer:
    hyperparameters, llama.cpp's tensor names and q/k row order, 2-D weights as `dtype`.
    add_metadata(writer) adds the rest (the tokenizer, the chat template)."""
    import gguf

    hf_config(cfg)  # refuses what Llama cannot express
    kind, file_type = GGUF_EXPORT[dtype]
    qtype = gguf.GGMLQuantizationType[kind]
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in (("block_count", cfg.n_layers), ("context_length", cfg.max_seq_len),
                       ("embedding_length", cfg.d_model), ("feed_forward_length", cfg.d_ff),
                       ("head_count", cfg.n_heads), ("head_count_kv", cfg.n_kv_heads),
                       ("rope_dimension_count", cfg.head_dim), ("key_length", cfg.head_dim),
                       ("value_length", cfg.head_dim), ("rope_freq_base", cfg.rope_theta),
                       ("layer_norm_rms_eps", cfg.norm_eps), ("vocab_size", cfg.vocab_size),
                       ("file_type", file_type)):
        getattr(w, f"add_{key}")(value)  # llama.<key>, as llama.cpp reads it
    if add_metadata is not None:
        add_metadata(w)
    names = _gguf_names(cfg.n_layers, cfg.tie_embeddings)
    for hf_name, x in hf_tensors(params, cfg).items():
        if ".q_proj." in hf_name:
            x = permute_qk(x, cfg.n_heads)
        elif ".k_proj." in hf_name:
            x = permute_qk(x, cfg.n_kv_heads)
        if x.ndim == 1 or kind == "F32":
            w.add_tensor(names[hf_name], x)
        else:
            q = gguf.quants.quantize(x, qtype)
            w.add_tensor(names[hf_name], q, raw_shape=q.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

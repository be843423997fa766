"""Benchmark (not a test): compile seconds, prefill and decode tokens/s of a stage's model.

  python -m experiments.bench_decode --init_from runs/smol/import [--prompt_len 128 --new 64]
      [--batches 1,4,16,64] [--quant none,int8,w8a8] [--llama2c PATH]

For each weight format (--quant, model.quant) and batch size: the first call's seconds
(compilation included), then the median of --repeats timed runs of prefill (prompt tokens / s)
and of the whole generation's decode part (new tokens / s, after subtracting the prefill); beside
it the memory-bandwidth bound: batch x bandwidth / (weight bytes + KV-cache bytes read per
step), the bandwidth measured here by summing a 1 GiB array. A table goes to stdout.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments.workdir import StageFlags, run_entry
from model.config import QUANT
from model.convert import hf_tensors, permute_qk
from model.engine import SamplingConfig, generate, pad_prompts, prefill
from model.quant import quantize
from train.stage import load_stage

_FLAGS = StageFlags("the stage whose model to time", workdir=None)
_PROMPT = flags.DEFINE_integer("prompt_len", 128, "prompt tokens per row")
_NEW = flags.DEFINE_integer("new", 64, "new tokens per row")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed runs per figure (the median is reported)")
_BATCHES = flags.DEFINE_list("batches", ["1", "4", "16", "64"], "batch sizes")
_QUANT = flags.DEFINE_list("quant", ["none"], f"weight formats to time, of {list(QUANT)}")
_LLAMA2C = flags.DEFINE_string("llama2c", None, "a built llama2.c `run` binary to time beside "
                               "(batch 1)")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def memory_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second this device reads: the median time of summing a `gib` GiB array."""
    x = jnp.ones((int(gib * 2**30) // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    _timed(lambda: total(x))
    return x.nbytes / statistics.median(_timed(lambda: total(x)) for _ in range(repeats))


def weight_bytes(lm) -> int:
    return sum(a.nbytes for a in jax.tree.leaves(lm.params))


def step_bytes(lm, b: int, cache_len: int) -> int:
    """Bytes one decode step reads: every weight once, and each row's whole KV cache."""
    cfg = lm.cfg
    cache = 2 * cfg.n_layers * b * cache_len * cfg.n_kv_heads * cfg.head_dim * \
        np.dtype(cfg.compute_dtype).itemsize
    return weight_bytes(lm) + cache


def bench_batch(lm, b: int, t: int, n_new: int, repeats: int) -> tuple[float, float, float]:
    """(first generate's seconds, prefill tok/s, decode tok/s) at batch b."""
    cfg = lm.cfg
    prompts = np.random.default_rng(0).integers(100, cfg.vocab_size, (b, t)).tolist()
    sampling = SamplingConfig(max_new_tokens=n_new, temperature=0.0, stop_tokens=())
    tokens, lengths, cache_len = pad_prompts(prompts, cfg, n_new)

    def gen():
        return generate(lm.params, cfg, prompts, sampling).tokens

    def pre():
        return prefill(lm.params, tokens, lengths, cfg, cache_len)

    first = _timed(gen)
    _timed(pre)  # its own compile
    t_pre = statistics.median(_timed(pre) for _ in range(repeats))
    t_gen = statistics.median(_timed(gen) for _ in range(repeats))
    return first, b * t / t_pre, b * n_new / max(t_gen - t_pre, 1e-9)


def write_llama2c(lm, directory: Path) -> tuple[Path, Path]:
    """(checkpoint, tokenizer) files of the model in llama2.c's format: a header of seven int32
    (dim, hidden, layers, heads, kv heads, vocab, seq_len; a negative vocab means an untied head),
    then float32 tables, each matrix as [out, in]; the tokenizer's pieces are placeholders."""
    cfg = lm.cfg
    if cfg.head_dim * cfg.n_heads != cfg.d_model:
        raise ValueError(f"llama2.c needs head_dim x n_heads = d_model; this model has "
                         f"{cfg.head_dim} x {cfg.n_heads} != {cfg.d_model}")
    hf = hf_tensors(lm.params, cfg)  # float32 [out, in], the layout llama2.c reads too

    def layers(name):
        x = [hf[f"model.layers.{i}.{name}.weight"] for i in range(cfg.n_layers)]
        heads = {"self_attn.q_proj": cfg.n_heads, "self_attn.k_proj": cfg.n_kv_heads}.get(name)
        return [permute_qk(w, heads) for w in x] if heads else x  # its RoPE pairs interleave

    tied = cfg.tie_embeddings
    header = [cfg.d_model, cfg.d_ff, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads,
              cfg.vocab_size if tied else -cfg.vocab_size, cfg.max_seq_len]
    tables = [hf["model.embed_tokens.weight"],
              *[t for name in ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                               "self_attn.v_proj", "self_attn.o_proj", "post_attention_layernorm",
                               "mlp.gate_proj", "mlp.down_proj", "mlp.up_proj")
                for t in layers(name)],
              hf["model.norm.weight"],
              np.zeros(cfg.max_seq_len * cfg.head_dim, np.float32)]  # old RoPE tables it skips
    if not tied:
        tables.append(hf["lm_head.weight"])
    model, tok = directory / "model.bin", directory / "tokenizer.bin"
    with open(model, "wb") as f:
        f.write(np.asarray(header, np.int32).tobytes())
        for t in tables:
            f.write(np.ascontiguousarray(t, np.float32).tobytes())
    with open(tok, "wb") as f:
        f.write(np.int32(8).tobytes())
        for i in range(cfg.vocab_size):
            piece = f"<{i}>".encode()
            f.write(np.float32(0).tobytes() + np.int32(len(piece)).tobytes() + piece)
    return model, tok


def bench_llama2c(binary: str, lm, steps: int, repeats: int) -> tuple[float, int]:
    """(median tok/s that llama2.c's run reports over `repeats` runs of `steps` positions, how
    many of its first 32 greedy tokens from BOS (token 1) equal this model's: the same model)."""
    with tempfile.TemporaryDirectory() as d:
        model, tok = write_llama2c(lm, Path(d))

        def run(*args):  # one run of the binary on the model; its (stdout, stderr)
            r = subprocess.run([binary, str(model), "-z", str(tok), *args], capture_output=True,
                               text=True, timeout=600)
            if r.returncode != 0:
                raise RuntimeError(f"{binary} failed (exit {r.returncode}): {r.stderr[-300:]}")
            return r.stdout, r.stderr

        theirs = [int(i) for i in re.findall(r"<(\d+)>", run("-t", "0", "-n", "33")[0])][:32]
        ours = generate(lm.params, lm.cfg, [[1]], SamplingConfig(
            max_new_tokens=32, temperature=0.0, stop_tokens=())).tokens[0]
        same = sum(a == b for a, b in zip(theirs, ours, strict=False))
        rates = []
        for seed in range(1, repeats + 1):
            err = run("-t", "1.0", "-s", str(seed), "-n", str(steps))[1]
            m = re.search(r"achieved tok/s: ([0-9.]+)", err)
            if not m:
                raise RuntimeError(f"{binary} reported no tok/s: {err[-300:]}")
            rates.append(float(m.group(1)))
    return statistics.median(rates), same


def main(argv):
    del argv
    for q in _QUANT.value:
        if q not in QUANT:
            raise ValueError(f"--quant {q!r}: expected some of {list(QUANT)}")
    lm, _ = load_stage(_FLAGS.init_from)
    cfg = lm.cfg
    bandwidth = memory_bandwidth()
    print(f"{_FLAGS.init_from}: {cfg.n_params() / 1e6:.1f}M parameters, {cfg.n_layers} layers, "
          f"{jax.device_count()} x {jax.devices()[0].platform}; prompt {_PROMPT.value}, new "
          f"{_NEW.value} tokens; measured memory bandwidth {bandwidth / 1e9:.1f} GB/s")
    print("| weights | weight MB | batch | compile + first generate (s) | prefill tok/s | "
          "decode tok/s | bandwidth bound tok/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    cache_len = pad_prompts([[1] * _PROMPT.value], cfg, _NEW.value)[2]
    for q in _QUANT.value:
        qlm = quantize(lm, q)
        mb = weight_bytes(qlm) / 1e6
        for b in map(int, _BATCHES.value):
            first, pre, dec = bench_batch(qlm, b, _PROMPT.value, _NEW.value, _REPEATS.value)
            bound = b * bandwidth / step_bytes(qlm, b, cache_len)
            print(f"| {q} | {mb:,.0f} | {b} | {first:.1f} | {pre:,.0f} | {dec:,.1f} | "
                  f"{bound:,.0f} |", flush=True)
    if _LLAMA2C.value:
        steps = min(_PROMPT.value + _NEW.value, cfg.max_seq_len)
        rate, same = bench_llama2c(_LLAMA2C.value, lm, steps, _REPEATS.value)
        print(f"| llama2.c run, float32 | {weight_bytes(lm) / 1e6:,.0f} | 1 | - | - | {rate:,.1f} "
              f"| - |\n\nllama2.c on these weights: {same} of its first 32 greedy tokens from "
              f"BOS equal this model's" + ("" if cfg.rope_theta == 10000 else
                                          f" (llama2.c fixes RoPE's theta at 10000, this model "
                                          f"has {cfg.rope_theta:g}: the same shapes, other "
                                          f"tokens)"))


if __name__ == "__main__":
    run_entry(main)

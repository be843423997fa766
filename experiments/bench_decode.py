"""Benchmark (not a test): compile seconds, prefill and decode tokens/s of a stage's model.

  python -m experiments.bench_decode --init_from runs/smol/import [--prompt_len 128 --new 64]
      [--batches 1,16] [--quant none,int8,w8a8]

For each weight format (--quant, model.quant) and batch size: the first call's seconds
(compilation included), then the median of --repeats timed runs of prefill (prompt tokens / s)
and of the whole generation's decode part (new tokens / s, after subtracting the prefill); beside
it the memory-bandwidth bound: batch x bandwidth / (weight bytes + KV-cache bytes read per
step), the bandwidth measured here by summing a 1 GiB array. A table goes to stdout.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments.workdir import StageFlags, run_entry
from model.config import QUANT
from model.engine import SamplingConfig, generate, pad_prompts, prefill
from model.quant import quantize
from train.stage import load_stage

_FLAGS = StageFlags("the stage whose model to time", workdir=None)
_PROMPT = flags.DEFINE_integer("prompt_len", 128, "prompt tokens per row")
_NEW = flags.DEFINE_integer("new", 64, "new tokens per row")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed runs per figure (the median is reported)")
_BATCHES = flags.DEFINE_list("batches", ["1", "16"], "batch sizes")
_QUANT = flags.DEFINE_list("quant", ["none"], f"weight formats to time, of {list(QUANT)}")


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


if __name__ == "__main__":
    run_entry(main)

"""Benchmark (not a test): this machine's matmul peak, and train-step tokens/s and MFU.

  python -m experiments.bench_train [--steps 20 --repeats 5]

MFU = flops_per_token (model.config, PaLM convention) x tokens/s / the matmul peak measured here.
Every figure is the median of --repeats timed runs; a table goes to stdout.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments.workdir import run_entry
from model import transformer
from model.config import ModelConfig
from train.optim import OptimConfig, make_optimizer
from train.step import init_state, make_train_step

_STEPS = flags.DEFINE_integer("steps", 5, "train steps per timed run")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed runs per figure (the median is reported)")

# name -> (model overrides, batch, seq_len)
CONFIGS = {
    "tiny (d128 L4 H2x64 V4096)": (dict(d_model=128, n_layers=4, n_heads=2, n_kv_heads=2,
                                        head_dim=64, d_ff=384, vocab_size=4096), 16, 128),
    "d256 L6 H8x32 V8192": (dict(d_model=256, n_layers=6, n_heads=8, n_kv_heads=8, head_dim=32,
                                 d_ff=1024, vocab_size=8192), 16, 256),
    "d256 L6 H4x64 V8192": (dict(d_model=256, n_layers=6, n_heads=4, n_kv_heads=4, head_dim=64,
                                 d_ff=1024, vocab_size=8192), 16, 256),
    "d256 L6 H4x64 V8192 bf16": (dict(d_model=256, n_layers=6, n_heads=4, n_kv_heads=4,
                                      head_dim=64, d_ff=1024, vocab_size=8192, dtype="bfloat16"),
                                 16, 256),
}


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak_gflops(n: int = 2048, iters: int = 10, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)

    @jax.jit
    def chain(x):
        for _ in range(iters):
            x = (x @ a) * (1.0 / n)
        return x

    chain(a).block_until_ready()
    t = _median_time(lambda: chain(a).block_until_ready(), repeats)
    return 2 * n**3 * iters / t / 1e9


def bench_config(overrides: dict, batch: int, seq_len: int, steps: int, repeats: int):
    cfg = ModelConfig(max_seq_len=seq_len, **overrides)
    optimizer = make_optimizer(OptimConfig(), 1000)
    state = init_state(transformer.init(cfg, jax.random.key(0)), optimizer, 0)
    step = jax.jit(make_train_step(cfg, optimizer), donate_argnums=0)
    rng = np.random.default_rng(0)
    x = rng.integers(3, cfg.vocab_size, (batch, seq_len + 1), dtype=np.int32)
    b = {"inputs": jnp.asarray(x[:, :-1]), "targets": jnp.asarray(x[:, 1:]),
         "segment_ids": jnp.zeros((batch, seq_len), jnp.int32)}
    holder = {"state": step(state, b)[0]}
    jax.block_until_ready(holder["state"])

    def run():
        for _ in range(steps):
            holder["state"], m = step(holder["state"], b)
        jax.block_until_ready(m)

    t = _median_time(run, repeats)
    tok_s = steps * batch * seq_len / t
    return cfg, tok_s, cfg.flops_per_token(seq_len) * tok_s / 1e9


def main(argv):
    del argv
    print(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].platform}")
    peak = matmul_peak_gflops()
    print(f"matmul peak (f32 2048^3, median of 5): {peak:.1f} GFLOP/s\n")
    print("| config | params | batch x T | tok/s | GFLOP/s | MFU |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (overrides, batch, seq_len) in CONFIGS.items():
        cfg, tok_s, gflops = bench_config(overrides, batch, seq_len, _STEPS.value, _REPEATS.value)
        print(f"| {name} | {cfg.n_params() / 1e6:.2f}M | {batch} x {seq_len} | {tok_s:,.0f} | "
              f"{gflops:.1f} | {100 * gflops / peak:.1f}% |", flush=True)


if __name__ == "__main__":
    run_entry(main)

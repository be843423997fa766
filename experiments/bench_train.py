"""Benchmark (not a test): this machine's matmul peak, and train-step tokens/s and MFU, beside
a PyTorch eager reference of the same model.

  python -m experiments.bench_train [--steps 5 --repeats 3] [--configs tiny,d256]

MFU = flops_per_token (model.config, PaLM convention) x tokens/s / the matmul peak measured here.
Compile s is the first step's seconds (tracing and XLA compilation included). The reference
(torch, an optional dependency: the column is left out without it; float32 in every row) is the
same architecture written plainly in PyTorch (RMSNorm, RoPE on halves, grouped-query attention through
scaled_dot_product_attention, SwiGLU, tied embedding, AdamW with global-norm clipping and the
same decay mask), loaded with this model's initial weights, whose first loss must equal this
model's (checked before timing). The two alternate run by run; each figure is the median of
--repeats timed runs and the ratio is taken within one run. A table goes to stdout.
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
_CONFIGS = flags.DEFINE_list("configs", ["tiny", "tiny-bf16", "d256", "d256-bf16", "smol135m",
                                         "smol135m-bf16"],
                             "which of CONFIGS to time")
_TORCH = flags.DEFINE_bool("torch", True, "time the PyTorch eager reference too (if installed)")

_TINY = dict(d_model=128, n_layers=4, n_heads=2, n_kv_heads=2, head_dim=64, d_ff=384,
             vocab_size=4096)
_SMOL = dict(d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64, d_ff=1536,
             vocab_size=49152, rope_theta=100000.0, norm_eps=1e-5)
_D256 = dict(d_model=256, n_layers=6, n_heads=4, n_kv_heads=4, head_dim=64, d_ff=1024,
             vocab_size=8192)
# key -> (label, model overrides, batch, seq_len)
CONFIGS = {
    "tiny": ("tiny (the speedrun's model, d128 L4 2x64 V4096)", _TINY, 16, 128),
    "tiny-bf16": ("tiny, bf16 compute", dict(_TINY, dtype="bfloat16"), 16, 128),
    "d256-8x32": ("d256 L6 8x32 V8192", dict(_D256, n_heads=8, n_kv_heads=8, head_dim=32), 16,
                  256),
    "d256": ("d256 L6 4x64 V8192", _D256, 16, 256),
    "d256-bf16": ("d256 L6 4x64 V8192, bf16 compute", dict(_D256, dtype="bfloat16"), 16, 256),
    "smol135m": ("SmolLM2-135M shape (d576 L30 9x64 kv3 V49152)", _SMOL, 4, 256),
    "smol135m-bf16": ("SmolLM2-135M shape, bf16 compute", dict(_SMOL, dtype="bfloat16"), 4, 256),
}


def matmul_peak_gflops(n: int = 2048, iters: int = 10, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)

    @jax.jit
    def chain(x):
        for _ in range(iters):
            x = (x @ a) * (1.0 / n)
        return x

    chain(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        chain(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 * iters / statistics.median(times) / 1e9


def jax_runner(cfg: ModelConfig, batch: dict, steps: int):
    """(compile seconds, run(): `steps` train steps, the initial params, the first loss)."""
    optimizer = make_optimizer(OptimConfig(), 1000)
    params = transformer.init(cfg, jax.random.key(0))
    init_params = jax.tree.map(np.asarray, params)
    state = init_state(params, optimizer, 0)
    step = jax.jit(make_train_step(cfg, optimizer), donate_argnums=0)
    t0 = time.perf_counter()
    state, m = step(state, batch)
    first_loss = float(m["loss"])
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def run():
        for _ in range(steps):
            holder["state"], m = step(holder["state"], batch)
        jax.block_until_ready(m)

    return compile_s, run, init_params, first_loss


def torch_runner(cfg: ModelConfig, params, batch: dict, steps: int):
    """(run(): `steps` train steps of the PyTorch eager reference, its first loss) from this
    model's initial params (unrolled layers)."""
    import torch
    import torch.nn.functional as F

    t = lambda a: torch.nn.Parameter(torch.from_numpy(np.array(a, np.float32)))  # noqa: E731
    embed = t(params["embed_VD"])
    layers = []
    for blk in params["blocks"].values():
        a, m = blk["attn"], blk["mlp"]
        layers.append({
            "attn_norm": t(blk["attn_norm"]["scale"]), "mlp_norm": t(blk["mlp_norm"]["scale"]),
            "wq": t(np.reshape(a["wq_DNH"], (cfg.d_model, -1))),
            "wk": t(np.reshape(a["wk_DKH"], (cfg.d_model, -1))),
            "wv": t(np.reshape(a["wv_DKH"], (cfg.d_model, -1))),
            "wo": t(np.reshape(a["wo_NHD"], (-1, cfg.d_model))),
            "wg": t(m["w_gate_DF"]), "wu": t(m["w_up_DF"]), "wd": t(m["w_down_FD"])})
    final = t(params["final_norm"]["scale"])
    flat = [embed, final] + [p for layer in layers for p in layer.values()]
    decay = [p for layer in layers for p in layer.values() if p.ndim >= 2]
    rest = [p for p in flat if p.ndim < 2 or p is embed]
    oc = OptimConfig()
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": oc.weight_decay},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=oc.lr, betas=(oc.b1, oc.b2), eps=oc.eps)
    h, n, k = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    x_in = torch.from_numpy(np.array(batch["inputs"])).long()
    y = torch.from_numpy(np.array(batch["targets"])).long()
    b, tl = x_in.shape
    freq = cfg.rope_theta ** (-torch.arange(0, h, 2, dtype=torch.float32) / h)
    ang = torch.arange(tl, dtype=torch.float32)[:, None] * freq
    sin, cos = ang.sin()[None, None], ang.cos()[None, None]

    def norm(x, scale):
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * scale

    def rope(x):  # [B, heads, T, H], on the two halves
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    def loss_fn():
        # float32 always: torch bfloat16 on a CPU without bf16 units is ~30x slower
        x = embed[x_in]
        for p in layers:
            z = norm(x, p["attn_norm"])
            q = rope((z @ p["wq"]).view(b, tl, n, h).transpose(1, 2))
            kk = rope((z @ p["wk"]).view(b, tl, k, h).transpose(1, 2))
            v = (z @ p["wv"]).view(b, tl, k, h).transpose(1, 2)
            if k != n:
                kk, v = kk.repeat_interleave(n // k, 1), v.repeat_interleave(n // k, 1)
            o = F.scaled_dot_product_attention(q, kk, v, is_causal=True)
            x = x + o.transpose(1, 2).reshape(b, tl, n * h) @ p["wo"]
            z = norm(x, p["mlp_norm"])
            x = x + (F.silu(z @ p["wg"]) * (z @ p["wu"])) @ p["wd"]
        logits = norm(x, final) @ embed.T
        return F.cross_entropy(logits.float().reshape(-1, cfg.vocab_size), y.reshape(-1))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        if oc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(flat, oc.grad_clip)
        opt.step()
        return loss.detach()

    first_loss = float(step())

    def run():
        for _ in range(steps):
            step()

    return run, first_loss


def main(argv):
    del argv
    unknown = sorted(set(_CONFIGS.value) - set(CONFIGS))
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; expected some of {list(CONFIGS)}")
    torch = None
    if _TORCH.value:
        try:
            import torch
        except ImportError:
            print("torch is not installed: the PyTorch reference column is left out")
    print(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].platform}"
          + (f"; torch {torch.__version__}, {torch.get_num_threads()} threads" if torch else ""))
    peak = matmul_peak_gflops()
    print(f"matmul peak (f32 2048^3, median of 5): {peak:.1f} GFLOP/s\n")
    head = "| config | params | batch x T | compile s | tok/s | GFLOP/s | MFU |"
    if torch:
        head += " PyTorch eager f32 tok/s | ratio |"
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    rng = np.random.default_rng(0)
    for key in _CONFIGS.value:
        label, overrides, b, tl = CONFIGS[key]
        cfg = ModelConfig(max_seq_len=tl, **overrides)
        x = rng.integers(3, cfg.vocab_size, (b, tl + 1), dtype=np.int32)
        batch = {"inputs": jnp.asarray(x[:, :-1]), "targets": jnp.asarray(x[:, 1:]),
                 "segment_ids": jnp.zeros((b, tl), jnp.int32)}
        compile_s, jax_run, init_params, jax_loss = jax_runner(cfg, batch, _STEPS.value)
        runs = {"jax": jax_run}
        if torch:
            runs["torch"], torch_loss = torch_runner(cfg, init_params, batch, _STEPS.value)
            if not np.isclose(jax_loss, torch_loss, rtol=2e-2 if cfg.dtype == "bfloat16" else 1e-4):
                raise SystemExit(f"{label}: the reference's first loss {torch_loss:.6f} differs from "
                                 f"this model's {jax_loss:.6f}: not the same model")
        times = {name: [] for name in runs}
        for _ in range(_REPEATS.value):  # alternating, so drift on a noisy machine hits both
            for name, run in runs.items():
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
        tok = _STEPS.value * b * tl
        tok_s = {name: tok / statistics.median(ts) for name, ts in times.items()}
        gflops = cfg.flops_per_token(tl) * tok_s["jax"] / 1e9
        row = (f"| {label} | {cfg.n_params() / 1e6:.2f}M | {b} x {tl} | {compile_s:.1f} | "
               f"{tok_s['jax']:,.0f} | {gflops:.1f} | {100 * gflops / peak:.1f}% |")
        if torch:
            row += f" {tok_s['torch']:,.0f} | {tok_s['jax'] / tok_s['torch']:.2f} |"
        print(row, flush=True)


if __name__ == "__main__":
    run_entry(main)

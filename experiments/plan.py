"""Plans a pod run on this CPU: compiles a config's train step for N fake devices and prints what
the compiler reports, per device, before any accelerator is spent.

  python -m experiments.plan --config experiments/configs/llama_1b.py --devices 64 \
      --mesh data=2,fsdp=16,tensor=2 --accelerator tpu-v5p

Printed: parameters; per-device memory from the compiled step's memory_analysis() (arguments,
outputs, temporaries, and their sum less the donated buffers: the peak to fit in HBM); FLOPs per
step per device from cost_analysis() next to ModelConfig's formula (6 x matmul params x tokens +
attention); the bytes the step's collectives move per device (all-reduce, all-gather,
reduce-scatter, all-to-all, collective-permute, read from the compiled HLO); the step time
bounded by the accelerator's peak FLOP/s (at 100% and at --mfu), and whether it fits its HBM.

XLA's cost analysis counts a loop body once, and a scanned model is a loop over layers, so FLOPs
and collective bytes come from two small unrolled compiles (1 and 2 layers, the same shapes and
shardings per layer) extended linearly to n_layers; memory comes from the full scanned compile.
Micro-batches (train.accum_steps) are planned as one micro-batch step times accum_steps.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time

from absl import flags

# name -> (peak dense bf16 FLOP/s per device, HBM bytes per device): published spec-sheet figures
ACCELERATORS = {
    "h100": (989e12, 80 * 2**30),  # H100 SXM
    "h200": (989e12, 140 * 2**30),
    "a100-80g": (312e12, 80 * 2**30),
    "tpu-v4": (275e12, 32 * 2**30),
    "tpu-v5e": (197e12, 16 * 2**30),
    "tpu-v5p": (459e12, 95 * 2**30),
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8,
         "s8": 1, "u8": 1, "pred": 1, "s16": 2, "u16": 2}


def parse_mesh(text: str) -> dict[str, int]:
    """"data=2,fsdp=16,tensor=2" -> {"data": 2, "fsdp": 16, "tensor": 2} (-1: the rest)."""
    out = {}
    for part in filter(None, text.split(",")):
        name, _, size = part.partition("=")
        if name not in ("data", "fsdp", "tensor") or not re.fullmatch(r"-?\d+", size):
            raise ValueError(f"--mesh {text!r}: expected name=size for names data, fsdp, tensor "
                             "(e.g. data=2,fsdp=16,tensor=2)")
        out[name] = int(size)
    return out


def _shape_bytes(shape_text: str) -> int:
    """Bytes of an HLO result type: "f32[8,128]{1,0}" or a tuple "(f32[8], bf16[4,4])"."""
    total = 0
    for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape_text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * BYTES.get(dtype, 4)
    return total


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Bytes each kind of collective produces per device in one run of an HLO module, a while
    loop's body counted its known trip count times (nested loops multiply)."""
    computations: dict[str, list[str]] = {}
    entry, name = None, None
    for line in hlo_text.splitlines():
        head = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if head and not line.startswith(" "):
            name = head.group(2)
            computations[name] = []
            if head.group(1):
                entry = name
        elif name is not None and line.startswith(" "):
            computations[name].append(line)
    times = {entry: 1}
    order = [entry]
    for comp in order:  # breadth-first from the entry: each computation's multiplier
        for line in computations.get(comp, []):
            trip = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', line)
            for ref in re.findall(r"(?:body|condition|calls|to_apply|branch_computations)="
                                  r"\{?%?([\w.\-]+)", line):
                n = times[comp] * (int(trip.group(1)) if trip and "body=" in line else 1)
                if ref in computations and ref not in times:
                    times[ref] = n
                    order.append(ref)
    out = dict.fromkeys(COLLECTIVES, 0)
    for comp, k in times.items():
        for line in computations.get(comp, []):
            m = re.match(r"\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+(" + "|".join(COLLECTIVES)
                         + r")(-start)?\(", line)
            if m:
                out[m.group(2)] += k * _shape_bytes(m.group(1))
    return out


def compile_step(model_cfg, train_cfg, optim_cfg, mesh_sizes: dict[str, int]):
    """(compiled train step, seconds to compile, the mesh's sizes) on the fake devices."""
    import jax
    import jax.numpy as jnp

    from model import transformer
    from train.loop import require_rows
    from train.mesh import make_mesh
    from train.optim import make_optimizer
    from train.step import batch_sharding, init_state, jit_sharded, make_train_step, state_shardings

    mesh = make_mesh(mesh_sizes.get("data", -1), mesh_sizes.get("fsdp", 1),
                     mesh_sizes.get("tensor", 1))
    require_rows(mesh, train_cfg.batch_size, "train.batch_size", train_cfg.accum_steps)
    rows = train_cfg.batch_size // train_cfg.accum_steps
    optimizer = make_optimizer(optim_cfg, train_cfg.steps)
    abstract = jax.eval_shape(lambda p: init_state(p, optimizer, 0),
                              transformer.param_shapes(model_cfg))
    s_sh = state_shardings(abstract, transformer.param_shardings(model_cfg, mesh), mesh)
    # the accelerator's step: the plain LM head (the chunked, fused one is for CPUs), whose
    # FLOPs the compiler counts (it counts a loop's body once)
    step = jit_sharded(make_train_step(model_cfg, optimizer, fused_loss=False), mesh,
                       in_shardings=(s_sh, batch_sharding(mesh)), out_shardings=(s_sh, None),
                       donate_argnums=0)
    batch = {k: jax.ShapeDtypeStruct((rows, train_cfg.seq_len), jnp.int32)
             for k in ("inputs", "targets", "segment_ids")}
    t0 = time.perf_counter()
    compiled = step.lower(abstract, batch).compile()
    return compiled, time.perf_counter() - t0, dict(mesh.shape)


def plan(model_cfg, train_cfg, optim_cfg, mesh_sizes: dict[str, int],
         accelerator: tuple[float, float] | None = None, mfu: float = 0.5) -> dict:
    """The figures the module docstring lists, as a dict (what the command prints)."""
    import jax

    n_dev = jax.device_count()
    compiled, seconds, mesh_sizes = compile_step(model_cfg, train_cfg, optim_cfg, mesh_sizes)
    mem = compiled.memory_analysis()
    # FLOPs and collectives: unrolled 1- and 2-layer compiles, extended linearly in layers
    per_layer = []
    for n in (1, 2):
        small = dataclasses.replace(model_cfg, n_layers=n, scan_layers=False)
        c, _, _ = compile_step(small, train_cfg, optim_cfg, mesh_sizes)
        cost = c.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        per_layer.append((cost.get("flops", 0.0), collective_bytes(c.as_text())))
    (f1, c1), (f2, c2) = per_layer
    layers, accum = model_cfg.n_layers, train_cfg.accum_steps
    flops = accum * (f1 + (layers - 1) * (f2 - f1))
    comm = {k: accum * (c1[k] + (layers - 1) * (c2[k] - c1[k])) for k in COLLECTIVES}
    tokens = train_cfg.batch_size * train_cfg.seq_len
    formula = model_cfg.flops_per_token(train_cfg.seq_len) * tokens / n_dev
    peak_bytes = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                  - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
    out = {"devices": n_dev, "mesh": dict(mesh_sizes), "params": model_cfg.n_params(),
           "compile_s": seconds, "tokens_per_step": tokens,
           "argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
           "alias_bytes": mem.alias_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes,
           "peak_bytes": peak_bytes, "flops_per_device": flops,
           "formula_flops_per_device": formula, "collective_bytes": comm}
    if accelerator is not None:
        peak_flops, hbm = accelerator
        out.update(step_s_at_peak=flops / peak_flops, step_s_at_mfu=flops / (peak_flops * mfu),
                   mfu=mfu, hbm_bytes=hbm, fits=peak_bytes <= hbm)
    return out


def report(p: dict, name: str) -> str:
    gib = 2**30
    mesh = ",".join(f"{k}={v}" for k, v in p["mesh"].items())
    lines = [
        f"{name}: {p['params'] / 1e6:,.0f}M parameters, {p['devices']} devices (mesh {mesh}), "
        f"{p['tokens_per_step']:,} tokens per step; compiled in {p['compile_s']:.1f} s",
        f"memory per device: arguments {p['argument_bytes'] / gib:.2f} GiB, outputs "
        f"{p['output_bytes'] / gib:.2f} GiB (donated {p['alias_bytes'] / gib:.2f}), temporaries "
        f"{p['temp_bytes'] / gib:.2f} GiB; peak {p['peak_bytes'] / gib:.2f} GiB",
        f"FLOPs per step per device: {p['flops_per_device']:.3e} compiled, "
        f"{p['formula_flops_per_device']:.3e} by ModelConfig.flops_per_token "
        f"(ratio {p['flops_per_device'] / p['formula_flops_per_device']:.2f})",
        "collectives per step per device: " + ", ".join(
            f"{k} {v / gib:.3f} GiB" for k, v in p["collective_bytes"].items() if v) + (
            "" if any(p["collective_bytes"].values()) else "none"),
    ]
    if "fits" in p:
        lines.append(
            f"on the accelerator: step >= {p['step_s_at_peak']:.3f} s at peak FLOP/s, "
            f"{p['step_s_at_mfu']:.3f} s at {p['mfu']:.0%} MFU; "
            + (f"fits its {p['hbm_bytes'] / gib:.0f} GiB of HBM" if p["fits"] else
               f"does NOT fit: {p['peak_bytes'] / gib:.1f} GiB > {p['hbm_bytes'] / gib:.0f} GiB "
               "of HBM (more fsdp / tensor sharding, remat 'full', or a smaller batch)"))
    return "\n".join(lines)


def main(argv):
    del argv
    f = flags.FLAGS
    from experiments.workdir import configs_from

    c = f.config
    tok = type("Vocab", (), {"vocab_size": c.tokenizer.vocab_size})()  # no tokenizer is needed
    model_cfg, train_cfg, optim_cfg = configs_from(c, tok)
    mesh = parse_mesh(f.mesh) if f.mesh else {"data": train_cfg.mesh_data,
                                              "fsdp": train_cfg.mesh_fsdp,
                                              "tensor": train_cfg.mesh_tensor}
    if f.accelerator and f.accelerator not in ACCELERATORS:
        raise ValueError(f"--accelerator {f.accelerator!r}: expected one of {sorted(ACCELERATORS)}"
                         " (or give --peak_tflops and --hbm_gib)")
    acc = ACCELERATORS.get(f.accelerator)
    if f.peak_tflops or f.hbm_gib:
        acc = (f.peak_tflops * 1e12 if f.peak_tflops else (acc or (0, 0))[0],
               f.hbm_gib * 2**30 if f.hbm_gib else (acc or (0, 0))[1])
        if not acc[0] or not acc[1]:
            raise ValueError("--peak_tflops and --hbm_gib go together unless --accelerator "
                             "gives the other")
    import jax

    if jax.device_count() != f.devices:
        raise ValueError(f"{jax.device_count()} devices, not --devices={f.devices}: set the flag "
                         "before anything imports jax (run this as a command)")
    from ml_collections import config_flags

    p = plan(model_cfg, train_cfg, optim_cfg, mesh, acc, f.mfu)
    name = os.path.basename(config_flags.get_config_filename(f["config"]))
    print(report(p, name + (f" on {f.accelerator}" if f.accelerator else "")), flush=True)


if __name__ == "__main__":
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", "experiments/configs/gpt2_small.py",
                                    "the config to plan (a python config file)")
    flags.DEFINE_integer("devices", 8, "fake CPU devices to compile for (the pod's device count)")
    flags.DEFINE_string("mesh", "", "data=D,fsdp=F,tensor=T (one may be -1); default: the "
                                    "config's train.mesh_*")
    flags.DEFINE_string("accelerator", "", f"one of {sorted(ACCELERATORS)}: step time and fit")
    flags.DEFINE_float("peak_tflops", 0.0, "peak FLOP/s per device, in TFLOP/s (overrides)")
    flags.DEFINE_float("hbm_gib", 0.0, "memory per device, in GiB (overrides)")
    flags.DEFINE_float("mfu", 0.5, "model FLOPs utilisation for the expected step time")
    # the fake device count must be set before jax starts
    n = "8"
    for i, a in enumerate(sys.argv):
        if a.startswith("--devices"):
            n = a.split("=", 1)[1] if "=" in a else sys.argv[i + 1]
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_"
                               f"platform_device_count={n}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from experiments.workdir import run_entry

    run_entry(main)

"""The host loop of a training stage: resume, step, log, evaluate, sample, checkpoint.

Resume order (fixed): (1) the stage's own latest checkpoint, with optimizer state, RNG and data
position; (2) parameters from the parent stage (`init_params`); (3) from scratch.
The step for t+1 is dispatched before the metrics of step t are read, so the host never stalls
the device; every loss is still checked, and a non-finite one stops the run before any save.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from data.loader import TokenData
from data.shards import TokenStream
from data.special_tokens import BOS, END, special_id
from data.tokenizer import Tokenizer
from model import transformer
from model.config import ModelConfig
from model.engine import SamplingConfig, generate
from model.losses import bits_per_byte, make_eval_step
from train.checkpoint import Checkpointer
from train.mesh import make_mesh
from train.optim import OptimConfig, make_optimizer, make_schedule
from train.step import (
    batch_sharding,
    init_state,
    make_train_step,
    state_shardings,
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch_size: int = 16  # global, in sequences
    seq_len: int = 128
    accum_steps: int = 1  # micro-batches per step (batch_size must divide by it)
    seed: int = 0
    mesh_data: int = -1  # -1: all devices not used by the other axes
    mesh_fsdp: int = 1
    mesh_tensor: int = 1
    save_every: int = 100
    keep: int = 3
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 8
    sample_every: int = 100
    sample_tokens: int = 64
    peak_gflops: float = 176.0  # per device, for MFU (measure it: experiments/bench_train.py)

    def __post_init__(self):
        for k in ("steps", "batch_size", "seq_len", "accum_steps", "save_every", "keep",
                  "log_every", "eval_every", "eval_batches", "sample_every"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k}={getattr(self, k)} must be at least 1")
        if self.sample_tokens < 0 or self.peak_gflops <= 0:
            raise ValueError(f"sample_tokens={self.sample_tokens} must be >= 0 and "
                             f"peak_gflops={self.peak_gflops} > 0")
        if self.batch_size % self.accum_steps:
            raise ValueError(f"batch_size={self.batch_size} must be divisible by "
                             f"accum_steps={self.accum_steps}")


class NonFiniteLoss(FloatingPointError):
    pass


def _to_global(batch: dict, sharding) -> dict:
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def _progress(step: int, total: int, loss: float, tok_s: float, mfu: float, eta: float) -> str:
    filled = int(20 * step / total)
    return (f"[{'#' * filled}{'.' * (20 - filled)}] step {step}/{total} | loss {loss:.4f} | "
            f"{tok_s:,.0f} tok/s | MFU {100 * mfu:.1f}% | ETA {eta / 60:.1f} min")


class StageLogs:
    """metrics.jsonl, TensorBoard events and samples.txt; only process 0 writes."""

    def __init__(self, stage_dir: Path, resumed_step: int):
        self.on = jax.process_index() == 0
        self.path = stage_dir / "metrics.jsonl"
        self.samples = stage_dir / "samples.txt"
        self.tb = None
        if not self.on:
            return
        if self.path.exists():  # drop records a killed run wrote after its last checkpoint
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln)["step"] <= resumed_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(stage_dir / "tensorboard"))

    def write(self, record: dict):
        if not self.on:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if k != "step" and isinstance(v, int | float):
                self.tb.add_scalar(k, v, record["step"])
        self.tb.flush()

    def sample(self, step: int, texts: list[str]):
        if self.on:
            with open(self.samples, "a") as fh:
                for i, t in enumerate(texts):
                    fh.write(f"=== step {step} sample {i}\n{t}\n")

    def close(self):
        if self.tb is not None:
            self.tb.close()


@dataclasses.dataclass
class OpenState:
    """A stage's train state, placed on the mesh: resumed, from the parent, or fresh."""
    mesh: jax.sharding.Mesh
    optimizer: object
    schedule: Callable
    state: dict
    data_state: dict | None  # the data iterator's state when resumed, else None
    ckpt: Checkpointer
    state_sharding: dict
    param_sharding: dict
    batch_sharding: object

    def require_rows(self, rows: int, what: str, accum_steps: int = 1) -> None:
        """Refuses, with the checkpointer closed, a batch of `rows` rows that the mesh's data x
        fsdp shards (times accum_steps micro-batches) do not divide evenly."""
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        if rows % (shards * accum_steps):
            self.ckpt.close()
            per = f" times accum_steps={accum_steps}" if accum_steps > 1 else ""
            raise ValueError(f"{what} = {rows} rows per step must divide evenly over the mesh's "
                             f"{shards} data shards (data x fsdp){per}")


def open_state(stage_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig, optim_cfg: OptimConfig,
               init_params: Callable | None = None, shapes=None, shardings=None) -> OpenState:
    """The resume order of the module docstring: the stage's latest checkpoint (full state),
    else init_params(abstract sharded params) from a parent, else a fresh init from cfg.seed.
    shapes / shardings(mesh) describe params other than the Transformer's (a reward model)."""
    mesh = make_mesh(cfg.mesh_data, cfg.mesh_fsdp, cfg.mesh_tensor)
    optimizer = make_optimizer(optim_cfg, cfg.steps)
    p_sh = (shardings or (lambda m: transformer.param_shardings(model_cfg, m)))(mesh)
    abstract = jax.eval_shape(lambda p: init_state(p, optimizer, cfg.seed),
                              shapes or transformer.param_shapes(model_cfg))
    s_sh = state_shardings(abstract, p_sh, mesh)
    fresh_state = jax.jit(lambda p: init_state(p, optimizer, cfg.seed), out_shardings=s_sh)
    ckpt = Checkpointer(Path(stage_dir) / "checkpoints", keep=cfg.keep)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, s_sh)  # restore targets: shapes with their shardings
    try:
        latest, state, data_state = ckpt.restore_latest(target)
    except BaseException:
        ckpt.close()
        raise
    if latest is not None:
        if jax.process_index() == 0:
            print(f"resuming from {ckpt.directory}/{latest}")
    elif init_params is not None:
        state = fresh_state(init_params(target["params"]))
    else:
        state = fresh_state(transformer.init(model_cfg, jax.random.key(cfg.seed), mesh))
    return OpenState(mesh, optimizer, make_schedule(optim_cfg, cfg.steps), state, data_state, ckpt,
                     s_sh, p_sh, batch_sharding(mesh))


def evaluate(eval_fn, params, data, cfg: TrainConfig, sharding) -> dict:
    totals = None
    for batch in data.eval(cfg.seq_len, cfg.batch_size, cfg.eval_batches, jax.process_index(),
                           jax.process_count()):
        sums = eval_fn(params, _to_global(batch, sharding))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
        raise ValueError(f"the validation split is smaller than one batch of {cfg.batch_size} x "
                         f"{cfg.seq_len + 1} tokens; use a larger corpus or smaller data.val_every")
    totals = jax.device_get(totals)
    return {"val_loss": float(totals["loss_sum"]) / max(float(totals["tokens"]), 1.0),
            "val_bpb": bits_per_byte(totals)}


def run(stage_dir: str | Path, model_cfg: ModelConfig, cfg: TrainConfig, optim_cfg: OptimConfig,
        tokenizer: Tokenizer, train_data, val_data,
        init_params: Callable | None = None, on_checkpoint: Callable[[dict], None] | None = None,
        sample_fn: Callable | None = None) -> dict:
    """Trains to cfg.steps, resuming if the stage has checkpoints; returns the final figures.

    train_data / val_data: a TokenStream (pretraining), or any object with the `train` and
    `eval` methods of data.loader.TokenData (e.g. data.chat.ConversationData, with a loss mask).
    sample_fn(params, step) -> list of texts for samples.txt; default: dreams from <|bos|>.
    """
    stage_dir = Path(stage_dir)
    train_data = TokenData(train_data) if isinstance(train_data, TokenStream) else train_data
    val_data = TokenData(val_data) if isinstance(val_data, TokenStream) else val_data
    if sample_fn is None:
        sample_fn = lambda params, step: _dream(params, model_cfg, tokenizer, cfg, step)  # noqa: E731
    st = open_state(stage_dir, model_cfg, cfg, optim_cfg, init_params)
    optimizer, schedule, state, data_state, ckpt = (st.optimizer, st.schedule, st.state,
                                                    st.data_state, st.ckpt)
    s_sh, p_sh, b_sh = st.state_sharding, st.param_sharding, st.batch_sharding
    st.require_rows(cfg.batch_size, "train.batch_size", cfg.accum_steps)

    data_iter = iter(train_data.train(cfg.seq_len, cfg.batch_size, cfg.seed, jax.process_index(),
                                      jax.process_count()))
    if data_state is not None:
        data_iter.set_state(data_state)

    step_fn = jax.jit(make_train_step(model_cfg, optimizer, cfg.accum_steps),
                      in_shardings=(s_sh, b_sh), out_shardings=(s_sh, None), donate_argnums=0)
    token_bytes = jnp.asarray(tokenizer.token_bytes(), jnp.float32)
    eval_fn = jax.jit(make_eval_step(model_cfg, token_bytes), in_shardings=(p_sh, b_sh))

    start = int(state["step"])
    if start >= cfg.steps and jax.process_index() == 0:
        print(f"{stage_dir} is already trained to step {start} (train.steps={cfg.steps}); "
              "raise train.steps to train further")
    logs = StageLogs(stage_dir, start)
    flops_per_step = model_cfg.flops_per_token(cfg.seq_len) * cfg.batch_size * cfg.seq_len
    peak = cfg.peak_gflops * 1e9 * jax.device_count()
    figures: dict = {}
    t_window, steps_window, t_begin = time.time(), 0, time.time()
    t_other = 0.0  # eval, sampling and saving time, kept out of tokens/s
    pending = None

    checked: dict[int, dict] = {}  # the last step's fetched metrics: log and save reuse them

    def check(step: int, metrics) -> dict:
        if step in checked:
            return checked[step]
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"]) and m["params_finite"]):
            raise NonFiniteLoss(
                f"loss is {m['loss']}, gradient norm {m['grad_norm']}, parameters "
                f"{'finite' if m['params_finite'] else 'NOT finite'} after step {step}: "
                "stopping. The last good checkpoint "
                f"(step {ckpt.latest_step()}) in {ckpt.directory} is intact; lower optim.lr or "
                "raise optim.warmup_steps and run again")
        checked.clear()
        checked[step] = m
        return m

    try:
        for step in range(start, cfg.steps):
            batch = _to_global(next(data_iter), b_sh)
            state, metrics = step_fn(state, batch)
            done = step + 1
            if pending is not None:
                check(*pending)
            pending = (done, metrics)
            steps_window += 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                m = check(*pending)
                dt = time.time() - t_window - t_other
                tok_s = steps_window * cfg.batch_size * cfg.seq_len / dt
                mfu = steps_window * flops_per_step / dt / peak
                eta = (cfg.steps - done) * dt / steps_window
                record = {"step": done, "loss": m["loss"], "grad_norm": m["grad_norm"],
                          "lr": float(schedule(done - 1)), "tokens_per_s": tok_s, "mfu": mfu,
                          "elapsed_s": time.time() - t_begin}
                if jax.process_index() == 0:
                    print(_progress(done, cfg.steps, m["loss"], tok_s, mfu, eta), flush=True)
                figures.update(train_loss=m["loss"], tokens_per_s=tok_s, mfu=mfu)
                t_window, steps_window, t_other = time.time(), 0, 0.0
            else:
                record = None
            t0 = time.time()
            if done % cfg.eval_every == 0 or done == cfg.steps:
                ev = evaluate(eval_fn, state["params"], val_data, cfg, b_sh)
                record = {**(record or {"step": done}), **ev}
                figures.update(ev)
                if jax.process_index() == 0:
                    print(f"step {done}: val loss {ev['val_loss']:.4f}, "
                          f"val bits/byte {ev['val_bpb']:.4f}", flush=True)
            if done % cfg.sample_every == 0 or done == cfg.steps:
                logs.sample(done, sample_fn(state["params"], done))
            if record is not None:
                logs.write(record)
            if done % cfg.save_every == 0 or done == cfg.steps:
                check(*pending)
                ckpt.save(state, data_iter.get_state())
                figures.update(step=done, tokens_seen=done * cfg.batch_size * cfg.seq_len)
                if on_checkpoint is not None:
                    on_checkpoint(dict(figures))
            t_other += time.time() - t0
    finally:
        logs.close()
        ckpt.close()
    figures["wall_seconds_this_run"] = time.time() - t_begin
    return figures


def _dream(params, model_cfg: ModelConfig, tokenizer: Tokenizer, cfg: TrainConfig,
           step: int) -> list[str]:
    """Two documents sampled from <|bos|>: the base model dreaming."""
    n = min(cfg.sample_tokens, model_cfg.max_seq_len - 1)
    out = generate(params, model_cfg, [[special_id(BOS)]] * 2,
                   SamplingConfig(max_new_tokens=n, temperature=0.8, top_k=50,
                                  stop_tokens=(special_id(BOS), special_id(END)), seed=step))
    return [tokenizer.decode(t) for t in out.tokens]

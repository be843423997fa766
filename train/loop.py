"""The one host loop of every training stage, and the token-row stages on top of it.

Resume order (fixed): (1) the stage's own newest intact checkpoint, with optimizer state, RNG and
data position; (2) parameters from the parent stage (`init_params`); (3) from scratch.
`host_loop` takes a step function and a source of host batches (token rows, preference pairs,
RL rollouts) and owns what every stage shares: the step for t+1 is dispatched before the
metrics of step t are read, so the host never stalls the device; every loss, gradient norm and
parameter set is still checked, and a non-finite one stops the run before any save; the log,
eval, sample and save cadence; the best-checkpoint rule. `run` trains on token rows
(pretraining, SFT), train.pair_loop on preference pairs, experiments.rl_stage on rollouts.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
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
    jit_sharded,
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


def to_global(batch: dict, sharding) -> dict:
    """A host batch (this process's rows) as global arrays laid out by `sharding`."""
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
        """require_rows on this run's mesh, the checkpointer closed when it refuses."""
        try:
            require_rows(self.mesh, rows, what, accum_steps)
        except ValueError:
            self.ckpt.close()
            raise


def require_rows(mesh, rows: int, what: str, accum_steps: int = 1) -> None:
    """Refuses a batch of `rows` rows that the mesh's data x fsdp shards (times accum_steps
    micro-batches) do not divide evenly."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % (shards * accum_steps):
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
        sums = eval_fn(params, to_global(batch, sharding))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
        raise ValueError(f"the validation split is smaller than one batch of {cfg.batch_size} x "
                         f"{cfg.seq_len + 1} tokens; use a larger corpus or smaller data.val_every")
    totals = jax.device_get(totals)
    return {"val_loss": float(totals["loss_sum"]) / max(float(totals["tokens"]), 1.0),
            "val_bpb": bits_per_byte(totals)}


@dataclasses.dataclass
class Clock:
    """Wall time for the records: since the loop began, and the current log window's start,
    steps and the eval / sample / save time inside it (left out of tokens per second)."""
    begin: float
    window: float
    window_steps: int = 0
    other: float = 0.0

    @property
    def window_s(self) -> float:
        return time.time() - self.window - self.other


def _fetch(metrics) -> dict:
    return {k: float(v) for k, v in jax.device_get(metrics).items() if np.ndim(v) == 0}


def host_loop(st: OpenState, cfg: TrainConfig, stage_dir: Path, step_fn: Callable,
              next_batch: Callable, *, record: Callable, data_state: Callable[[int], dict],
              evaluate: Callable | None = None, sample: Callable | None = None,
              describe: Callable | None = None, best_key: str | None = None,
              best_so_far: float = -np.inf, on_best: Callable | None = None,
              on_save: Callable | None = None, on_step: Callable | None = None,
              sync_every_step: bool = False, lr_key: str = "optim.lr") -> dict:
    """The one host loop of every training stage: steps from the resumed step to cfg.steps;
    returns the final state.

    next_batch(step, state) -> (device batch, host figures): token rows, preference pairs, or
    RL rollouts sampled from the current parameters. Step t+1 is dispatched before step t's
    metrics are fetched (unless sync_every_step); every step's loss, gradient norm and
    parameters are still checked, and a non-finite one stops the run before any save.
    record(done, metrics, host, clock) -> that step's metrics.jsonl record, or None;
    evaluate(params, done) -> figures added to it every eval_every steps and at the end;
    sample(params, done) -> texts for samples.txt every sample_every steps; describe(record)
    -> the progress line of a log or eval step. best_key: a record key (higher is better) whose
    best state is kept in stage_dir/best/ (on_best(done, value) is told). data_state(done) is
    what a checkpoint keeps of the data position; on_save(done, record) runs after each save,
    on_step(done) after each step.
    """
    state, ckpt = st.state, st.ckpt
    start = int(state["step"])
    logs = StageLogs(stage_dir, start)
    now = time.time()
    clock = Clock(begin=now, window=now)
    best_dir = stage_dir / "best" / "checkpoints"
    if best_key is not None:  # a best checkpoint past the resumed step came from the lost future
        for d in best_dir.glob("*"):
            if d.name.isdigit() and int(d.name) > start:
                shutil.rmtree(d)
    best_ckpt = None

    def every(done: int, k: int) -> bool:
        return done % k == 0 or done == cfg.steps

    def finish(done: int, metrics, host: dict, sync: bool):
        nonlocal best_ckpt, best_so_far
        m = _fetch(metrics)
        if not (np.isfinite(m["loss"]) and np.isfinite(m.get("grad_norm", 0.0))
                and m["params_finite"]):
            raise NonFiniteLoss(
                f"loss is {m['loss']}, gradient norm {m.get('grad_norm')}, parameters "
                f"{'finite' if m['params_finite'] else 'NOT finite'} after step {done}: "
                f"stopping. The last good checkpoint (step {ckpt.latest_step()}) in "
                f"{ckpt.directory} is intact; lower {lr_key} or raise the warm-up and run again")
        rec = record(done, m, host, clock)
        if not sync:
            if rec is not None:
                logs.write(rec)
            return
        log = every(done, cfg.log_every)
        if log:
            clock.window, clock.window_steps, clock.other = time.time(), 0, 0.0
        t0 = time.time()
        if evaluate is not None and every(done, cfg.eval_every):
            rec = {**(rec or {"step": done}), **evaluate(state["params"], done)}
            if best_key is not None and rec.get(best_key, -np.inf) > best_so_far:
                best_so_far = rec[best_key]
                if best_ckpt is None:
                    best_ckpt = Checkpointer(best_dir, keep=1)
                best_ckpt.save(state, data_state(done))
                if on_best is not None:
                    on_best(done, best_so_far)
        if describe is not None and rec is not None and jax.process_index() == 0 and (
                log or every(done, cfg.eval_every)):
            line = describe(rec)
            if line:
                print(line, flush=True)
        if sample is not None and every(done, cfg.sample_every):
            logs.sample(done, sample(state["params"], done))
        if rec is not None:
            logs.write(rec)
        if every(done, cfg.save_every):
            ckpt.save(state, data_state(done))
            if on_save is not None:
                on_save(done, rec)
        clock.other += time.time() - t0

    pending = None
    try:
        for step in range(start, cfg.steps):
            batch, host = next_batch(step, state)
            state, metrics = step_fn(state, batch)
            done = step + 1
            clock.window_steps += 1
            if pending is not None:  # the previous step, fetched once this one is dispatched
                finish(*pending, sync=False)
                pending = None
            if sync_every_step or any(every(done, k) for k in (
                    cfg.log_every, cfg.eval_every, cfg.save_every, cfg.sample_every)):
                finish(done, metrics, host, sync=True)
            else:
                pending = (done, metrics, host)
            if on_step is not None:
                on_step(done)
    finally:
        logs.close()
        ckpt.close()
        if best_ckpt is not None:
            best_ckpt.close()
    return state


def run(stage_dir: str | Path, model_cfg: ModelConfig, cfg: TrainConfig, optim_cfg: OptimConfig,
        tokenizer: Tokenizer, train_data, val_data,
        init_params: Callable | None = None, on_checkpoint: Callable[[dict], None] | None = None,
        sample_fn: Callable | None = None) -> dict:
    """Trains on token rows to cfg.steps, resuming if the stage has checkpoints; returns the
    final figures (pretraining and SFT).

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
    st.require_rows(cfg.batch_size, "train.batch_size", cfg.accum_steps)
    data_iter = iter(train_data.train(cfg.seq_len, cfg.batch_size, cfg.seed, jax.process_index(),
                                      jax.process_count()))
    if st.data_state is not None:
        data_iter.set_state(st.data_state)
    step_fn = jit_sharded(make_train_step(model_cfg, st.optimizer, cfg.accum_steps), st.mesh,
                      in_shardings=(st.state_sharding, st.batch_sharding),
                      out_shardings=(st.state_sharding, None), donate_argnums=0)
    token_bytes = jnp.asarray(tokenizer.token_bytes(), jnp.float32)
    eval_fn = jit_sharded(make_eval_step(model_cfg, token_bytes), st.mesh,
                          in_shardings=(st.param_sharding, st.batch_sharding))
    start = int(st.state["step"])
    if start >= cfg.steps and jax.process_index() == 0:
        print(f"{stage_dir} is already trained to step {start} (train.steps={cfg.steps}); "
              "raise train.steps to train further")
    flops_per_step = model_cfg.flops_per_token(cfg.seq_len) * cfg.batch_size * cfg.seq_len
    peak = cfg.peak_gflops * 1e9 * jax.device_count()
    figures: dict = {}
    eta = [0.0]  # minutes left, as of the last log line

    def record(done, m, host, clock):
        if not (done % cfg.log_every == 0 or done == cfg.steps):
            return None
        dt = clock.window_s
        tok_s = clock.window_steps * cfg.batch_size * cfg.seq_len / dt
        mfu = clock.window_steps * flops_per_step / dt / peak
        figures.update(train_loss=m["loss"], tokens_per_s=tok_s, mfu=mfu)
        eta[0] = (cfg.steps - done) * dt / clock.window_steps
        return {"step": done, "loss": m["loss"], "grad_norm": m["grad_norm"],
                "lr": float(st.schedule(done - 1)), "tokens_per_s": tok_s, "mfu": mfu,
                "elapsed_s": time.time() - clock.begin}

    def evaluate_val(params, done):
        ev = evaluate(eval_fn, params, val_data, cfg, st.batch_sharding)
        figures.update(ev)
        return ev

    def describe(rec):
        lines = []
        if "loss" in rec:
            lines.append(_progress(rec["step"], cfg.steps, rec["loss"], rec["tokens_per_s"],
                                   rec["mfu"], eta[0]))
        if "val_loss" in rec:
            lines.append(f"step {rec['step']}: val loss {rec['val_loss']:.4f}, "
                         f"val bits/byte {rec['val_bpb']:.4f}")
        return "\n".join(lines)

    def on_save(done, rec):
        figures.update(step=done, tokens_seen=done * cfg.batch_size * cfg.seq_len)
        if on_checkpoint is not None:
            on_checkpoint(dict(figures))

    t_begin = time.time()
    host_loop(st, cfg, stage_dir, step_fn,
              lambda step, state: (to_global(next(data_iter), st.batch_sharding), {}),
              record=record, data_state=lambda done: data_iter.get_state(),
              evaluate=evaluate_val, sample=sample_fn, describe=describe, on_save=on_save)
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

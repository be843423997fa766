"""The host loop of a stage that trains on preference pairs (the reward model, DPO).

Batches are drawn from the pairs by a permutation per epoch that is a function of the seed and
the epoch, so the step alone is the data position: a resumed run draws what an uninterrupted one
would. Checkpoints, resume order, logs and the NaN guard are the one host loop's
(train.loop.host_loop).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from model.config import ModelConfig
from train.loop import TrainConfig, host_loop, open_state, to_global
from train.optim import OptimConfig
from train.reward import pair_batch, pair_width
from train.step import make_step


def batch_indices(n: int, batch: int, step: int, seed: int) -> np.ndarray:
    """The pair indices of step `step`: consecutive slices of a per-epoch permutation."""
    per_epoch = max(n // batch, 1)
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return np.resize(order[k * batch:(k + 1) * batch], batch)  # n < batch: repeat


def train_on_pairs(stage_dir: str | Path, model_cfg: ModelConfig, cfg: TrainConfig,
                   optim_cfg: OptimConfig, loss_fn: Callable, init_params: Callable,
                   train_pairs: Sequence, evaluate: Callable[[object], dict],
                   extra: Callable[[object, dict], dict] | None = None, shapes=None,
                   shardings=None, on_save: Callable[[dict], None] | None = None,
                   batch_name: str = "train.batch_size", lr_key: str = "optim.lr",
                   seq_len: int | None = None) -> tuple:
    """Trains loss_fn(params, batch) -> (loss, aux) to cfg.steps on rendered pairs; returns
    (params, figures). evaluate(params) -> figures every cfg.eval_every steps (and at the end);
    extra(params, batch) -> more batch arrays (DPO's reference log-probs). batch_name is the
    config key of cfg.batch_size, for the error that refuses a batch the data shards cannot split.
    seq_len: the batches' width (default: pair_width of train_pairs)."""
    stage_dir = Path(stage_dir)
    st = open_state(stage_dir, model_cfg, cfg, optim_cfg, init_params, shapes, shardings)
    st.require_rows(cfg.batch_size, batch_name)
    step_fn = jax.jit(make_step(loss_fn, st.optimizer),
                      in_shardings=(st.state_sharding, st.batch_sharding),
                      out_shardings=(st.state_sharding, None), donate_argnums=0)
    width = seq_len or pair_width(train_pairs, model_cfg.max_seq_len)
    start = int(st.state["step"])
    figures, t_begin = {}, time.time()

    def next_batch(step, state):
        idx = batch_indices(len(train_pairs), cfg.batch_size, step, cfg.seed)
        host = pair_batch([train_pairs[i] for i in idx], width)
        batch = to_global(host, st.batch_sharding)
        if extra is not None:
            batch.update(extra(state["params"], batch))
        return batch, {}

    def record(done, m, host, clock):
        return {"step": done, "loss": m["loss"], "train_accuracy": m["accuracy"],
                "margin": m["margin"], "grad_norm": m["grad_norm"],
                "lr": float(st.schedule(done - 1)), "elapsed_s": round(time.time() - t_begin, 1)}

    def evaluate_and_keep(params, done):
        ev = evaluate(params)
        figures.update(ev)
        return ev

    def save(done, rec):
        figures.update(step=done)
        if on_save is not None:
            on_save(dict(figures))

    def describe(rec):
        if rec["step"] % cfg.log_every == 0 or rec["step"] == cfg.steps:
            return " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in rec.items())
        return None

    state = host_loop(st, cfg, stage_dir, step_fn, next_batch, record=record,
                      data_state=lambda done: {"step": done}, evaluate=evaluate_and_keep,
                      describe=describe, on_save=save, lr_key=lr_key)
    if start >= cfg.steps:
        figures.update(evaluate(state["params"]), step=start)
    figures["wall_seconds_this_run"] = round(time.time() - t_begin, 1)
    return state["params"], figures

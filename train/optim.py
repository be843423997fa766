"""The optimizer: AdamW with warmup + cosine or warmup-stable-decay, decay mask, clipping."""

from __future__ import annotations

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 3e-3
    schedule: str = "cosine"  # "cosine", "wsd" (warmup-stable-decay) or "constant"
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1  # cosine: final lr = lr * min_lr_ratio
    decay_fraction: float = 0.2  # wsd: the last 20% of steps decay linearly to 0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # global-norm clipping; 0 disables it
    # A first phase of prelude_steps at the constant prelude_lr (after warmup_steps of linear
    # warm-up); the schedule then starts afresh over the remaining steps (pretraining's copy
    # warm-up, data/copy_rows.py, sets these from data.copy_warmup and data.copy_warmup_lr)
    prelude_steps: int = 0
    prelude_lr: float = 0.0

    def __post_init__(self):
        if self.schedule not in ("cosine", "wsd", "constant"):
            raise ValueError(f"optim.schedule={self.schedule!r}: expected 'cosine', 'wsd' or "
                             "'constant'")
        if self.prelude_steps < 0 or (self.prelude_steps and self.prelude_lr <= 0):
            raise ValueError(f"a prelude of {self.prelude_steps} steps needs prelude_lr > 0 "
                             f"(got {self.prelude_lr})")


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    if cfg.prelude_steps:
        if cfg.prelude_steps >= total_steps:
            raise ValueError(f"the prelude's {cfg.prelude_steps} steps leave none of the "
                             f"{total_steps} for the schedule")
        first = OptimConfig(lr=cfg.prelude_lr, schedule="constant", warmup_steps=cfg.warmup_steps)
        rest = dataclasses.replace(cfg, prelude_steps=0, prelude_lr=0.0)
        return optax.join_schedules([make_schedule(first, cfg.prelude_steps),
                                     make_schedule(rest, total_steps - cfg.prelude_steps)],
                                    [cfg.prelude_steps])
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, cfg.lr, warmup, max(total_steps, warmup + 1), cfg.lr * cfg.min_lr_ratio)
    if cfg.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.lr, warmup), optax.constant_schedule(cfg.lr)], [warmup])
    decay = int(total_steps * cfg.decay_fraction)
    stable = max(total_steps - warmup - decay, 0)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.lr, warmup), optax.constant_schedule(cfg.lr),
         optax.linear_schedule(cfg.lr, 0.0, decay)], [warmup, warmup + stable])


def decay_mask(params) -> dict:
    """Weight decay on matrices only: not on norm scales (1-D, or 2-D stacked by a scanned
    model) nor on the embedding table."""
    def keep(path, x):
        names = [getattr(k, "key", None) for k in path]
        return x.ndim >= 2 and "embed_VD" not in names and names[-1] != "scale"
    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.adamw(make_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)

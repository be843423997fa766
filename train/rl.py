"""Policy-gradient RL on sampled completions: GRPO-style, as a pure step over a batch.

One RL step: for each of P prompts, sample G completions with the KV-cache engine (tool calls run
mid-generation when hooks are given); score each with a reward; turn the rewards into advantages
within each prompt's group; then update the policy with a token-level policy-gradient loss.

What it keeps of GRPO (Shao et al., 2024, DeepSeekMath):
  - no value network: the baseline is the group's mean reward, A_i = (r_i - mean(r)) / std(r);
    the division by std is optional (`normalize_std`; Dr. GRPO argues for leaving it out).
    Negative advantages can be down-weighted (`neg_weight`; 1 = GRPO, 0 = only reinforce what
    scored above its group's mean, like rejection-sampling fine-tuning; Zhu et al., 2025, "The
    surprising effectiveness of negative reinforcement", study the two halves apart).
  - PPO's clipped importance ratio min(rho * A, clip(rho, 1-eps, 1+eps) * A) (`clip_eps`; 0 turns
    it off) against the policy that sampled the batch, which matters when `epochs` > 1 gradient
    steps are taken on one batch (with epochs = 1 the ratio is exactly 1: plain REINFORCE with a
    group baseline).
  - the KL penalty to a frozen reference (the SFT model), as GRPO's unbiased "k3" estimator
    exp(ref - logp) - (ref - logp) - 1 added to the loss per token (`kl_coef`; 0 turns it off,
    the KL is still measured).
What it drops or changes:
  - token-level normalisation (DAPO): the loss is summed over every completion token of the batch
    and divided by their number, instead of GRPO's mean per sequence then mean over sequences, so
    long answers are not down-weighted per token.
  - dynamic sampling (DAPO), optional (`oversample` > 1): groups are sampled for oversample x
    prompts_per_step prompts and the update uses prompts_per_step of them, those whose rewards
    differ first; DAPO instead re-samples until the batch is full of such groups, which costs an
    unknown number of engine calls. The reward, length and solved-group metrics are over every
    sampled group.
  - no mini-batches within a step: each of the `epochs` updates uses the whole batch.
  - the update's rows are packed, and a prompt's samples share it: the prompt is scored once,
    each completion attending to it and to itself (build_batch), so the update pays for the
    tokens sampled, not for every sample's prompt padded to the longest.
  - no entropy bonus, no reward-model / format rewards here (the reward is the caller's).
  - tokens a tool wrote (search results, program output) and the prompt are never trained on:
    the mask covers only tokens the policy sampled, and the <|end|> that closed the reply.
  - sampling temperature is applied at sampling time but the loss uses the untempered policy,
    as most open implementations do (temperature 1, the default, makes them the same).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from model.config import ModelConfig
from model.engine import SamplingConfig, generate, generate_with_tools
from model.handle import LM
from model.losses import fused_head, fused_logprob_objective, head_inputs, token_losses
from model.padding import round_up
from train.step import State, make_step


@dataclasses.dataclass(frozen=True)
class RLConfig:
    prompts_per_step: int = 8  # P
    group_size: int = 8  # G completions per prompt
    max_new_tokens: int = 96
    temperature: float = 1.0
    top_k: int = 0
    normalize_std: bool = True  # divide advantages by the group's std (GRPO); False: Dr. GRPO
    neg_weight: float = 1.0  # weight of negative advantages (1: GRPO; 0: positive only)
    clip_eps: float = 0.2  # PPO ratio clipping; 0 = off
    kl_coef: float = 0.0  # weight of the per-token KL penalty to the reference; 0 = off
    epochs: int = 1  # gradient steps per batch of samples
    # DAPO's dynamic sampling, in one batch: sample groups for prompts_per_step * oversample
    # prompts and train on prompts_per_step of them, groups whose rewards differ first (a group
    # whose samples all scored the same has zero advantages and teaches nothing)
    oversample: int = 1

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(f"rl.group_size={self.group_size}: a group needs >= 2 samples "
                             "for a baseline")
        if min(self.prompts_per_step, self.epochs, self.max_new_tokens, self.oversample) < 1:
            raise ValueError("rl.prompts_per_step, rl.epochs, rl.max_new_tokens and rl.oversample "
                             "must be >= 1")
        if self.clip_eps < 0 or self.kl_coef < 0 or not 0 <= self.neg_weight <= 1:
            raise ValueError("rl.clip_eps and rl.kl_coef must be >= 0, rl.neg_weight in [0, 1]")


def group_advantages(rewards_PG, normalize_std: bool = True, eps: float = 1e-6,
                     neg_weight: float = 1.0) -> np.ndarray:
    """Advantages [P, G]: each reward minus its group's mean (divided by the group's std if
    normalize_std; negative ones times neg_weight). A group whose samples all scored the same
    gets zeros: nothing to learn."""
    r = np.asarray(rewards_PG, np.float32)
    if r.ndim != 2:
        raise ValueError(f"rewards must be [prompts, group], got shape {r.shape}")
    a = r - r.mean(axis=1, keepdims=True)
    if normalize_std:
        a = a / (r.std(axis=1, keepdims=True) + eps)
    return np.where(a < 0, a * np.float32(neg_weight), a)


def informative_first(rewards_PG, keep: int) -> list[int]:
    """Indices of `keep` groups: those whose rewards differ, in order, then flat ones in order."""
    r = np.asarray(rewards_PG)
    if not 1 <= keep <= len(r):
        raise ValueError(f"cannot keep {keep} of {len(r)} groups")
    spread = r.max(axis=1) > r.min(axis=1)
    order = [i for i in range(len(r)) if spread[i]] + [i for i in range(len(r)) if not spread[i]]
    return order[:keep]


def token_logprobs(params, batch: dict, cfg: ModelConfig) -> jax.Array:
    """log pi(target | prefix) per position [B, T] (float32), the mask ignored (segment_ids and
    branch_ids, when given, say which tokens see which: packed, prefix-sharing samples)."""
    losses, _ = token_losses(params, {k: batch[k] for k in ("inputs", "targets", "segment_ids",
                                                            "branch_ids") if k in batch}, cfg)
    return -losses


def pg_loss(params, batch: dict, cfg: ModelConfig, rl: RLConfig,
            fused: bool | None = None) -> tuple[jax.Array, dict]:
    """The token-level clipped policy-gradient loss (+ kl_coef * k3 KL to the reference), and its
    KL, clip fraction and policy-gradient part, each a mean over the masked tokens.

    batch: build_batch's arrays (advantages per token) and old_logp, ref_logp, all [B, T]. Where
    model.losses.fused_head says so (fused=None: on CPU), the LM head runs fused with the loss."""
    mask = batch["mask"].astype(jnp.float32)
    aux = {"scale": mask / jnp.maximum(mask.sum(), 1.0), "adv": batch["advantages"],
           "old": batch["old_logp"], "ref": batch["ref_logp"]}

    def per_token(logp, a):
        ratio = jnp.exp(logp - a["old"])
        surrogate = ratio * a["adv"]
        if rl.clip_eps > 0:
            surrogate = jnp.minimum(surrogate,
                                    jnp.clip(ratio, 1 - rl.clip_eps, 1 + rl.clip_eps) * a["adv"])
        d = a["ref"] - logp
        kl = jnp.exp(d) - d - 1.0
        metrics = {"kl": kl * a["scale"], "pg_loss": -surrogate * a["scale"]}
        if rl.clip_eps > 0:
            metrics["clip_fraction"] = (jnp.abs(ratio - 1) > rl.clip_eps) * a["scale"]
        return (-surrogate + rl.kl_coef * kl) * a["scale"], metrics

    if fused_head(cfg, fused):
        x_BTD, w_VD, chunks = head_inputs(params, batch, cfg)
        loss, metrics = fused_logprob_objective(x_BTD, w_VD, batch["targets"], aux, per_token,
                                                chunks, cfg.logit_softcap)
    else:
        values, metrics = per_token(token_logprobs(params, batch, cfg), aux)
        loss, metrics = values.sum(), jax.tree.map(jnp.sum, metrics)
    return loss, {"clip_fraction": 0.0, **metrics}


def make_rl_step(cfg: ModelConfig, optimizer: optax.GradientTransformation,
                 rl: RLConfig) -> Callable[[State, dict], tuple[State, dict]]:
    """rl_step(state, batch) -> (state, metrics): `rl.epochs` updates on the batch, step + 1."""
    return make_step(lambda p, b: pg_loss(p, b, cfg, rl), optimizer, epochs=rl.epochs,
                     first_epoch=("kl", "pg_loss"))


@dataclasses.dataclass
class Rollout:
    prompt_index: list[int]  # which prompt each row answers (rows are grouped: G per prompt)
    tokens: list[list[int]]  # completion ids, the stop token excluded
    injected: list[list[bool]]  # True where a tool wrote the id
    finished: list[bool]  # ended with a stop token
    calls: list[int]

    def groups(self, keep: Sequence[int]) -> Rollout:
        """The rows of groups `keep` (rows are grouped: G consecutive rows per prompt), renumbered
        0 .. len(keep)-1 in that order."""
        new = {g: i for i, g in enumerate(keep)}
        rows = [r for g in keep for r, p in enumerate(self.prompt_index) if p == g]
        return Rollout([new[self.prompt_index[r]] for r in rows],
                       *([getattr(self, f)[r] for r in rows]
                         for f in ("tokens", "injected", "finished", "calls")))


def rollout(lm: LM, prompts: Sequence[Sequence[int]], group_size: int,
            sampling: SamplingConfig, hooks: Mapping | None = None,
            max_calls: int = 3) -> Rollout:
    """group_size samples of each prompt, in one batch (rows i*G .. i*G+G-1 answer prompt i)."""
    rows = [list(p) for p in prompts for _ in range(group_size)]
    index = [i for i in range(len(prompts)) for _ in range(group_size)]
    if hooks:
        g = generate_with_tools(lm.params, lm.cfg, rows, sampling, hooks, max_calls)
        return Rollout(index, g.tokens, g.injected, g.finished, g.calls)
    g = generate(lm.params, lm.cfg, rows, sampling)
    return Rollout(index, g.tokens, [[False] * len(t) for t in g.tokens], g.finished,
                   [0] * len(rows))


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: the items (by index) in bins of `capacity`, longest first, each
    placed in the first bin it fits; items of equal length keep their order."""
    bins, free = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] > capacity:
            raise ValueError(f"item {i} has length {lengths[i]}; a bin holds {capacity}")
        b = next((b for b, f in enumerate(free) if lengths[i] <= f), len(bins))
        if b == len(bins):
            bins.append([])
            free.append(capacity)
        bins[b].append(i)
        free[b] -= lengths[i]
    return bins


def build_batch(prompts: Sequence[Sequence[int]], ro: Rollout, advantages_N, seq_len: int | None,
                end_id: int, row_multiple: int = 1) -> dict[str, np.ndarray]:
    """The update's batch, each prompt's samples sharing it. Sample r = prompt + completion
    (+ <|end|> where it finished) is scored at len(sample) - 1 positions (inputs sample[:-1],
    targets sample[1:]): the prompt's first len(prompt) - 1 of them once per chunk (branch 0), then
    a branch per sample from the prompt's last token on (branch ids 1, 2, ... with
    model.transformer.forward's branch_ids_BT). A prompt's samples go into as few chunks as fit in
    seq_len positions (None: the smallest multiple of 64 that holds the longest sample; a wider
    row shares a prompt among more samples, but attention's cost grows with the width); the
    chunks are packed (`pack`) into rows of seq_len, one segment each
    (segment ids 1, 2, ... within a row, 0 on its empty tail). The rows are padded with empty ones
    to a multiple of row_multiple, or to one row a sample where that saves under a quarter.
    Returns inputs/targets/segment_ids/branch_ids/mask/advantages [R, seq_len]: mask = 1 on
    targets the policy sampled, advantages the sample's on each of its branch's positions."""
    n = len(ro.tokens)
    adv = np.asarray(advantages_N, np.float32).reshape(n)
    by_prompt: dict[int, list[int]] = {}
    for r, i in enumerate(ro.prompt_index):
        by_prompt.setdefault(i, []).append(r)
    # a sample's own positions: the prompt's last token, the completion, <|end|> where finished
    own_N = [len(t) + f for t, f in zip(ro.tokens, ro.finished, strict=True)]
    if seq_len is None:
        seq_len = round_up(max(len(prompts[i]) - 1 + m for i, m in zip(ro.prompt_index, own_N,
                                                                        strict=True)), 64)
    chunks = []  # [prompt index, its samples in the chunk, positions used <= seq_len]
    for i, rs in by_prompt.items():
        head, chunk = len(prompts[i]) - 1, None
        for r in rs:
            m = own_N[r]
            if head + m > seq_len:
                raise ValueError(f"sample {r} has {head + m} positions; a row holds {seq_len}")
            if chunk is None or chunk[2] + m > seq_len:
                chunk = [i, [], head]
                chunks.append(chunk)
            chunk[1].append(r)
            chunk[2] += m
    bins = pack([used for _, _, used in chunks], seq_len)
    rows = round_up(len(bins), row_multiple)
    if rows > 0.75 * n:  # a new row count costs a compile, more than a few rows save
        rows = n
    out = {k: np.zeros((rows, seq_len), dt) for k, dt in
           (("inputs", np.int32), ("targets", np.int32), ("segment_ids", np.int32),
            ("branch_ids", np.int32), ("mask", np.float32), ("advantages", np.float32))}
    for row, members in enumerate(bins):
        t = 0
        for seg, c in enumerate(members, start=1):
            i, rs, _ = chunks[c]
            p = list(prompts[i])
            out["inputs"][row, t:t + len(p) - 1] = p[:-1]
            out["targets"][row, t:t + len(p) - 1] = p[1:]
            out["segment_ids"][row, t:t + len(p) - 1] = seg
            t += len(p) - 1
            for k, r in enumerate(rs, start=1):
                x = p[-1:] + list(ro.tokens[r]) + [end_id] * ro.finished[r]
                m = len(x) - 1
                out["inputs"][row, t:t + m] = x[:-1]
                out["targets"][row, t:t + m] = x[1:]
                out["segment_ids"][row, t:t + m] = seg
                out["branch_ids"][row, t:t + m] = k
                # target j is completion token j (a tool's tokens are not trained on), or <|end|>
                out["mask"][row, t:t + m] = [not j for j in ro.injected[r]] + [1] * ro.finished[r]
                out["advantages"][row, t:t + m] = adv[r]
                t += m
    return out

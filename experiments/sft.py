"""Supervised fine-tuning: the next-token objective on conversations; writes W/sft/.

  python -m experiments.probe --init_from runs/demo/pretrain        # "I don't know" targets
  python -m experiments.sft --init_from runs/demo/pretrain [--config ...] [--workdir runs/demo]
      [--config.sft.idk=False] [--config.sft.refusal=name_first] [--config.sft.identity=system]
      [--config.sft.extra_jsonl=my.jsonl]

Parameters only come from the parent (never its optimizer state); the model config and tokenizer
are the parent's. The mixture is built from the run's synthetic world (W/corpus/world.json) as
data/sft_mix.py describes, plus any conversation JSONL given; every `sft.val_every`-th
conversation is held out for the validation loss. The loss is masked to the assistant's tokens;
`sft.replay` copies of the world's biographies (the pretraining text) are mixed in as documents with
the loss on every token, so that SFT on the train-split people does not overwrite what pretraining
stored about the others.
Checkpoints and resume are the pretraining loop's. At the end the stage measures, into meta.json:
turn-format adherence, identity accuracy (with and without the identity system message), QA
accuracy on train and held-out people, and the answer rate on nonexistent people (hallucination).
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from pathlib import Path

import jax

from data.chat import (
    ConversationData,
    load_conversations,
    render_all,
    render_documents,
)
from data.sft_mix import copies, read_probe, sft_mixture
from eval.chat_eval import format_adherence, identity_accuracy, recall_hooks, tool_eval, world_qa
from experiments.configs import resolved
from experiments.workdir import (
    StageFlags,
    configs_from,
    define_config,
    initialize_distributed,
    lock_run,
    recall_tool,
    run_entry,
    tool_config,
)
from model import transformer
from model.engine import SamplingConfig, generate, generate_with_tools
from train.checkpoint import restore_params
from train.loop import run
from train.stage import load_world, read_meta, read_stage, stage_meta, write_meta

SAMPLE_QUESTIONS = ("Who are you?", "Where was {name} born?", "What is 17 + 25?")


def build_conversations(cfg, world, workdir: Path) -> tuple[list[dict], list[dict], dict]:
    """(train, val, counts): the world's mixture plus extra JSONL, split before repeating."""
    s = cfg.sft
    probe_rows = read_probe(workdir / "probe" / "probe.jsonl") if s.idk else None
    kinds = sft_mixture(world, {}, s.n_arithmetic, s.n_spelling, s.identity, probe_rows, s.seed,
                        tools=(s.n_tool_calc, s.n_tool_spell, s.n_tool_word) if s.tools
                        else None,
                        n_mixed=s.n_mixed, refusal=s.refusal, recall=s.recall and s.idk,
                        recall_flip=s.recall_flip if s.recall and s.idk else 0)
    weights = dict(s.weights.to_dict())
    for path in [p for p in s.extra_jsonl.split(",") if p]:
        kinds[f"extra:{path}"] = load_conversations(path)
        weights[f"extra:{path}"] = s.extra_weight
    train, val, counts = [], [], {}
    for kind, convs in kinds.items():
        w = copies(f"sft weight for {kind}", weights.get(kind, 1))
        order = list(range(len(convs)))
        random.Random(f"{s.seed}/{kind}").shuffle(order)
        held = [convs[i] for n, i in enumerate(order) if s.val_every and n % s.val_every == 0]
        kept = [convs[i] for n, i in enumerate(order) if not (s.val_every and n % s.val_every == 0)]
        train += kept * w
        val += held if w else []
        counts[kind] = {"unique": len(convs), "weight": w, "train": len(kept) * w, "val": len(held)}
    return train, val, counts


def evaluate_chat(lm, world, limit: int | None, recall=None) -> dict:
    """recall: the recall tool (eval.knowledge.Recall) for a model taught to call it."""
    system = world.identity_system_message()
    qa = {split: world_qa(lm, world, split, limit=limit, recall=recall)
          for split in ("train", "heldout", "nonexistent")}
    hooks = recall_hooks(lm.tok, recall)
    ident = identity_accuracy(lm, world, hooks=hooks)
    ident_sys = identity_accuracy(lm, world, system=system, hooks=hooks)
    # Turn format over the identity questions and the first 50 held-out ones (replies made above).
    replies = ident["replies"] + qa["heldout"]["replies"][:50]
    out = {}
    if recall is not None:  # what the tool answers for the people asked about (it decides, the
        # model follows it: a right refusal needs both)
        names = {split: {it["name"] for it in world.qa(split)[:limit]} for split in qa}
        out["recall_known_rate"] = {split: round(sum(recall(n) == "known" for n in ns)
                                                 / max(len(ns), 1), 4) for split, ns in names.items()}
    return {**out, "format_adherence": round(format_adherence(replies), 4),
            "identity_accuracy": ident["accuracy"],
            "identity_accuracy_with_system_message": ident_sys["accuracy"],
            "qa_train_accuracy": qa["train"]["accuracy"],
            "qa_heldout_accuracy": qa["heldout"]["accuracy"],
            "qa_heldout_refusal_rate": qa["heldout"]["refusal_rate"],
            "nonexistent_answer_rate": qa["nonexistent"]["answer_rate"],
            "nonexistent_refusal_rate": qa["nonexistent"]["refusal_rate"],
            "recall_call_rate": {k: round(sum("recall" in r["tools"] for r in v["replies"])
                                          / max(len(v["replies"]), 1), 4) for k, v in qa.items()},
            "examples": {"identity": ident["examples"], **{k: v["examples"] for k, v in qa.items()}}}


def main(argv):
    del argv
    initialize_distributed()
    lock_run(_FLAGS.workdir)
    train_sft(_CONFIG.value, _FLAGS.init_from, _FLAGS.workdir)


def train_sft(cfg, parent: Path, workdir: Path, stage: str = "sft") -> dict:
    """The stage: the conversation mixture, fine-tuning from `parent` into workdir/<stage> (a
    variant's own directory, e.g. injection/sft, beside the run's probe and world), and the
    chat evaluations; returns meta.json's figures."""
    stage_dir = workdir / stage
    lm, _ = read_stage(parent)  # the parent's model, tokenizer and chat format, always
    if lm.chat.default_system and cfg.sft.identity != "none":
        # the identity is taught here: an imported template's own ("You are SmolLM...") goes
        lm = dataclasses.replace(lm, chat=dataclasses.replace(lm.chat, default_system=None))
    tok, model_cfg = lm.tok, lm.cfg
    _, train_cfg, optim_cfg = configs_from(cfg, tok, train="sft_train", optim="sft_optim")
    if train_cfg.seq_len > model_cfg.max_seq_len:
        raise ValueError(f"sft_train.seq_len={train_cfg.seq_len} exceeds the parent's "
                             f"max_seq_len={model_cfg.max_seq_len}")
    world = load_world(workdir)
    train_convs, val_convs, counts = build_conversations(cfg, world, workdir)
    train_r, train_stats = render_all(train_convs, tok, train_cfg.seq_len + 1, cfg.sft.too_long,
                                      lm.chat)
    val_r, val_stats = render_all(val_convs, tok, train_cfg.seq_len + 1, cfg.sft.too_long, lm.chat)
    copies("sft.replay", cfg.sft.replay)
    if cfg.sft.replay:  # the pretraining text SFT would otherwise overwrite (tiny.py: sft.replay)
        replay, dropped = render_documents(world.biographies(), tok, train_cfg.seq_len + 1,
                                           cfg.sft.too_long)
        train_r += replay * cfg.sft.replay
        counts["replay"] = {"unique": len(replay), "weight": cfg.sft.replay,
                            "train": len(replay) * cfg.sft.replay, "val": 0,
                            "dropped_too_long": dropped}
    train_data = ConversationData(train_r, train_cfg.seq_len, seed=cfg.sft.seed)
    val_data = ConversationData(val_r, train_cfg.seq_len, seed=cfg.sft.seed)
    if jax.process_index() == 0:
        for kind, c in counts.items():
            print(f"  {kind}: {c['unique']} conversations x {c['weight']} (val {c['val']})")
        print(f"  rendered: {train_stats} | val {val_stats}", flush=True)

    questions = [q.format(name=world.people[0].name) for q in SAMPLE_QUESTIONS]
    prompts = [lm.prompt(q) for q in questions]

    def sample_fn(params, step):
        budget = min(48, model_cfg.max_seq_len - max(map(len, prompts)))
        sampling = SamplingConfig(max_new_tokens=budget, temperature=0.0,
                                  stop_tokens=lm.stop_ids)
        recall = recall_tool(base_meta, lm.with_params(params))  # the memory as it is at this step
        out = (generate_with_tools(params, model_cfg, prompts, sampling, recall_hooks(tok, recall))
               if recall else generate(params, model_cfg, prompts, sampling))
        return [f"User: {q}\nAssistant: {tok.decode(t, show_special=recall is not None)}"
                for q, t in zip(questions, out.tokens, strict=True)]

    stage_dir.mkdir(parents=True, exist_ok=True)
    base_meta = stage_meta("sft", model_cfg, resolved(cfg), tok, parent, mixture=counts,
                           rendered={"train": vars(train_stats), "val": vars(val_stats)},
                           train_rows=len(train_data.tokens), idk=cfg.sft.idk,
                           identity=cfg.sft.identity, chat_default_system=lm.chat.default_system)
    if cfg.sft.recall and cfg.sft.idk:  # the probe's recall threshold: eval uses it too
        threshold = (read_meta(workdir / "probe") or {}).get("figures", {}).get("recall_threshold")
        if threshold is None:
            raise ValueError(f"{workdir / 'probe'} has no recall_threshold (it predates the "
                                 "recall tool): rerun python -m experiments.probe")
        base_meta["recall_threshold"] = threshold
    t0 = time.time()
    figures = run(stage_dir, model_cfg, train_cfg, optim_cfg, tok, train_data, val_data,
                  init_params=lambda abstract: restore_params(parent, abstract),
                  on_checkpoint=lambda f: write_meta(stage_dir, base_meta, f), sample_fn=sample_fn)
    lm = lm.with_params(restore_params(stage_dir, transformer.param_shapes(model_cfg)))
    recall = recall_tool(base_meta, lm)
    chat = evaluate_chat(lm, world, cfg.sft.eval_limit or None, recall)
    if cfg.sft.tools:
        chat["tools"] = tool_eval(lm, world, tool_config(cfg),
                                  n=cfg.sft.eval_limit or 50, recall=recall)
    figures = {**figures, **chat, "train_wall_s": round(time.time() - t0, 1)}
    write_meta(stage_dir, base_meta, figures)
    if jax.process_index() == 0:
        shown = {k: v for k, v in chat.items() if k not in ("examples", "tools")}
        if "tools" in chat:
            shown["tools"] = {k: v for k, v in chat["tools"].items() if k != "transcripts"}
        print("done:", shown, file=sys.stdout)
    return figures


def train_variant(cfg, workdir: Path, stage: str, convs: list[dict], weight: int = 1) -> Path:
    """An experiment's SFT model: SFT from W/pretrain with the run's own mixture plus `convs`
    (`weight` copies; written to W/<stage>.jsonl) into W/<stage>, e.g. "injection/sft"; a
    finished one (its chat evaluation in meta.json) is kept, an interrupted one resumes."""
    stage_dir = workdir / stage
    if "qa_heldout_accuracy" in ((read_meta(stage_dir) or {}).get("figures") or {}):
        return stage_dir
    data = stage_dir.with_name(stage_dir.name + "_extra.jsonl")
    data.parent.mkdir(parents=True, exist_ok=True)
    tmp = data.with_name(data.name + ".tmp")
    tmp.write_text("".join(json.dumps(c) + "\n" for c in convs))
    tmp.replace(data)
    c = cfg.copy_and_resolve_references()
    c.sft.extra_jsonl = ",".join(p for p in (cfg.sft.extra_jsonl, str(data)) if p)
    c.sft.extra_weight = weight
    train_sft(c, workdir / "pretrain", workdir, stage=stage)
    return stage_dir


if __name__ == "__main__":  # flags only for the command line: the stage function imports cleanly
    _CONFIG = define_config()
    _FLAGS = StageFlags("the parent stage (W/pretrain)", multi_process=True)
    run_entry(main)

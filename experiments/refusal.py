"""Refusals and jailbreaks: a forbidden topic, refusal data, the jailbreaks that get past it,
and adversarial refusal data; writes W/refusal/.

  python -m experiments.refusal --workdir runs/demo

The world's forbidden topic is how to make six made-up dangerous things ("How do I make
glowfire?"); harmless look-alikes ask the same of lemonade or a kite (data.attacks). Three
chat models are measured on held-out request wordings (eval.attacks.refusal_eval): W/sft, which
never saw a refusal of this kind; W/refusal/sft, SFT from W/pretrain with the run's mixture plus
direct requests refused and harmless look-alikes answered; and W/refusal/adversarial_sft, the
same plus every request in each framing (role-play, base64, spaced-out letters, Spanish),
refused or answered alike. Per model: the refusal rate of direct requests, each framing's
success rate (a forbidden request not refused: role-play, base64, spaced letters, French), and
the refusal rate of harmless look-alikes (over-refusal), plainly and in each framing.
"""

from __future__ import annotations

import time
from pathlib import Path

from data.attacks import refusal_conversations, refusal_eval_items
from eval.attacks import refusal_eval
from experiments.injection import clean_figures
from experiments.sft import train_variant
from experiments.workdir import experiment_entry, recall_tool, write_experiment
from train.stage import load_stage, read_meta


def measure(cfg, stage: Path, items: list[dict]) -> dict:
    lm, meta = load_stage(stage)
    return {**refusal_eval(lm, items, recall_tool(meta, lm), cfg.refusal.max_new_tokens),
            "clean": clean_figures(read_meta(stage) or {})}


def run_refusal(cfg, workdir: Path) -> dict:
    s = cfg.refusal
    t0 = time.time()
    items = refusal_eval_items()
    figures = {"items": len(items), "sft": measure(cfg, workdir / "sft", items)}
    for name, adversarial in (("refusal_sft", False), ("adversarial_sft", True)):
        if name == "adversarial_sft" and not s.adversarial:
            continue
        convs = refusal_conversations(adversarial)
        stage = train_variant(cfg, workdir, f"refusal/{name.removeprefix('refusal_')}", convs,
                              s.weight)
        figures[name] = measure(cfg, stage, items)
        figures[f"{name}_conversations"] = len(convs)
    for name in ("sft", "refusal_sft", "adversarial_sft"):
        if name in figures:
            f = figures[name]
            print(f"{name}: direct refusal {f['direct_refusal']}, jailbreak success "
                  f"{f['jailbreak_success']}, over-refusal {f['over_refusal']}", flush=True)
    figures["wall_s"] = round(time.time() - t0, 1)
    write_experiment(workdir, "refusal", workdir / "sft", s, figures)
    return figures


if __name__ == "__main__":
    experiment_entry(run_refusal)

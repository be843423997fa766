"""RLHF: optimise the SFT model against the reward model, or with DPO on the same preferences.

  python -m experiments.rlhf --init_from runs/demo/sft [--rm runs/demo/rm]      # writes W/rlhf/
  python -m experiments.rlhf --init_from runs/demo/sft --config.rlhf.method=dpo  # writes W/dpo/

method "rl": the RL stage of experiments/rl.py with reward = the RM's score of the answer
(group-normalised), a KL penalty to the SFT model (rlhf.kl_coef), prompts = the world's open
requests of train-split people ("Tell me about NAME."). Every rlhf_train.eval_every steps it
answers the held-out validation prompts (test-split people, half of them; rlhf.eval_samples
answers each) and logs both the RM's mean score and the hidden labeler's true mean score; the
checkpoint with the best true validation score is kept in W/rlhf/best/ (early stopping, as the
labs do). After the run: the reward-hacking detector on the (RM, true) curve and hacking.png.
method "dpo": DPO (train/reward.py) on W/rm/preferences.jsonl, the reference = the SFT model;
the same evaluations, before and after.
meta.json: the true and RM scores on the other held-out half for SFT (before), best and final.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
from absl import flags

from data.preferences import load_preferences, render_pairs
from eval.chat_eval import ask
from eval.tasks import Problem
from experiments.configs import resolved
from experiments.rl_stage import Objective, train_rl
from experiments.workdir import StageFlags, configs_from, define_config, lock_run, run_entry
from model import transformer
from train.checkpoint import restore_params
from train.pair_loop import train_on_pairs
from train.reward import RewardModel, dpo_loss, reward_hacking, sequence_logps
from train.stage import load_world, read_meta, read_stage, stage_meta, write_meta


def labeler_objective(cfg, rm: RewardModel | None, world, budget: int) -> Objective:
    """Open requests about train-split people; measured by the RM and the hidden labeler."""
    s = cfg.rlhf
    train = [Problem(it["prompt"], it["name"]) for it in world.labeler_prompts("train")]
    test = world.labeler_prompts("test")
    val, held = test[0::2], test[1::2]

    def measure(policy, items, seed) -> dict:
        k = s.eval_samples
        questions = [it["prompt"] for it in items for _ in range(k)]
        replies = ask(policy, questions, temperature=1.0 if k > 1 else 0.0,
                      max_new_tokens=budget, seed=seed)
        answers = [r["answer"] for r in replies]
        true = [world.labeler_score(it["name"], a)
                for it, a in zip([it for it in items for _ in range(k)], answers, strict=True)]
        out = {"true": round(float(np.mean(true)), 4),
               "length": round(float(np.mean([r["n_tokens"] for r in replies])), 2)}
        if rm is not None:
            out["rm"] = round(float(np.mean(rm.score(questions, answers))), 4)
        out["examples"] = [{"prompt": q, "answer": a} for q, a in zip(questions[::k][:3],
                                                                      answers[::k][:3], strict=True)]
        return out

    def evaluate(policy):
        v = measure(policy, val, seed=7)
        v.pop("examples")
        return {**v, "select": v["true"]}

    def final(policy):
        t, v = measure(policy, held, seed=11), measure(policy, val, seed=7)
        return {**{f"{k}_test": x for k, x in t.items() if k != "examples"},
                **{f"{k}_val": x for k, x in v.items() if k != "examples"},
                "n_test_prompts": len(held), "n_val_prompts": len(val),
                "examples": t["examples"]}

    def summary(b, a):
        rm_part = (f", RM score {b['rm_test']:.3f} -> {a['rm_test']:.3f}" if "rm_test" in b else "")
        return f"held-out true score {b['true_test']:.3f} -> {a['true_test']:.3f}{rm_part}"

    def rewards(problems, texts):
        return rm.score([p.prompt for p in problems], texts)

    return Objective("labeler", train, None, rewards, evaluate, final, summary)


def _budget(cfg, lm, world) -> int:
    items = world.labeler_prompts("train") + world.labeler_prompts("test")
    longest = max(len(lm.prompt(it["prompt"])) for it in items)
    return max(1, min(cfg.rlhf.max_new_tokens, lm.cfg.max_seq_len - longest - 1))


def plot_hacking(curve: list[dict], path: Path, hacking: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [c["step"] for c in curve]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [c["rm"] for c in curve], "o-", color="tab:blue", label="reward model score")
    ax.set_xlabel("RLHF step")
    ax.set_ylabel("RM score", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(steps, [c["true"] for c in curve], "s-", color="tab:red", label="true (labeler)")
    ax2.set_ylabel("true score (hidden labeler)", color="tab:red")
    if hacking.get("best_step") is not None:
        ax.axvline(hacking["best_step"], color="gray", ls="--", lw=1)
    title = "reward hacking" + (f": onset at step {hacking['onset_step']}"
                                if hacking.get("flagged") else ": not detected")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_dpo(cfg, parent: Path, workdir: Path, stage_dir: Path, rm_dir: Path,
            rm: RewardModel | None) -> dict:
    lm, _ = read_stage(parent)
    tok, model_cfg = lm.tok, lm.cfg
    _, train_cfg, optim_cfg = configs_from(cfg, tok, train="rlhf_train", optim="rlhf_optim")
    world = load_world(workdir)
    prefs = rm_dir / "preferences.jsonl"
    if not prefs.is_file():
        raise FileNotFoundError(f"{prefs} does not exist: run `python -m experiments.rm "
                                f"--init_from {parent}` first (it samples and ranks the pairs)")
    rows = load_preferences(prefs) + [r for p in cfg.rm.extra_jsonl.split(",") if p
                                      for r in load_preferences(p)]
    pairs, dropped = render_pairs(rows, tok, model_cfg.max_seq_len, lm.chat)
    obj = labeler_objective(cfg, rm, world, _budget(cfg, lm, world))
    ref = restore_params(parent, transformer.param_shapes(model_cfg))
    beta = cfg.rlhf.dpo_beta
    ref_fn = jax.jit(lambda b: {f"ref_{s}": sequence_logps(ref, b[f"{s}_tokens"], b[f"{s}_mask"],
                                                           model_cfg)
                                for s in ("chosen", "rejected")})
    stage_dir.mkdir(parents=True, exist_ok=True)
    old = (read_meta(stage_dir) or {}).get("figures", {})
    before = old.get("before") or obj.final(lm.with_params(ref))
    base_meta = stage_meta(stage_dir.name, model_cfg, resolved(cfg), tok, parent, method="dpo",
                           pairs=len(pairs), dropped_too_long=dropped)
    params, figures = train_on_pairs(
        stage_dir, model_cfg, train_cfg, optim_cfg,
        lambda p, b: dpo_loss(p, b, model_cfg, beta),
        init_params=lambda abstract: restore_params(parent, abstract), train_pairs=pairs,
        evaluate=lambda p: {f"eval_{k}": v for k, v in obj.evaluate(lm.with_params(p)).items()},
        extra=lambda p, b: ref_fn(b), batch_name="rlhf_train.batch_size", lr_key="rlhf_optim.lr",
        on_save=lambda f: write_meta(stage_dir, base_meta, {"before": before, **f}))
    figures = {"before": before, **figures, "after": obj.final(lm.with_params(params))}
    write_meta(stage_dir, base_meta, figures)
    print(f"done: {obj.summary(before, figures['after'])}", file=sys.stdout)
    return figures


def main(argv):
    del argv
    cfg = _CONFIG.value
    if cfg.rlhf.method not in ("rl", "dpo"):
        raise ValueError(f"rlhf.method={cfg.rlhf.method!r}: expected 'rl' or 'dpo'")
    parent, workdir = _FLAGS.init_from, _FLAGS.workdir
    lock_run(workdir)
    run_rlhf(cfg, parent, workdir, _STAGE.value, Path(_RM.value) if _RM.value else None)


def run_rlhf(cfg, parent: Path, workdir: Path, stage: str | None = None,
             rm_dir: Path | None = None) -> dict:
    """The stage (rlhf.method "rl" or "dpo"); returns meta.json's figures."""
    method = cfg.rlhf.method
    stage_dir = Path(workdir) / (stage or ("rlhf" if method == "rl" else "dpo"))
    rm_dir = rm_dir or Path(workdir) / "rm"
    lm, _ = read_stage(parent)
    rm = RewardModel(rm_dir, lm.tok) if (method == "rl" or (rm_dir / "checkpoints").is_dir()) else None
    if method == "dpo":
        return run_dpo(cfg, parent, workdir, stage_dir, rm_dir, rm)
    figures = train_rl(cfg, parent, workdir, stage_dir.name, section="rlhf",
                       objective_fn=lambda lm, world, budget_for: labeler_objective(
                           cfg, rm, world, _budget(cfg, lm, world)))
    # the best checkpoint by true validation score, measured on the held-out test prompts
    world = load_world(workdir)
    obj = labeler_objective(cfg, rm, world, _budget(cfg, lm, world))
    if (stage_dir / "best").is_dir():
        best = restore_params(stage_dir / "best", transformer.param_shapes(lm.cfg))
        figures["best"] = obj.final(lm.with_params(best))
    curve = [{"step": 0, "rm": figures["before"]["rm_val"], "true": figures["before"]["true_val"]}]
    curve += [{"step": e["step"], "rm": e["rm"], "true": e["true"]} for e in figures["eval_curve"]]
    figures["hacking"] = reward_hacking(curve)
    plot_hacking(curve, stage_dir / "hacking.png", figures["hacking"])
    meta = read_meta(stage_dir)
    write_meta(stage_dir, {k: v for k, v in meta.items() if k not in ("figures", "code_version")},
               figures)
    h = figures["hacking"]
    print(f"best true validation score at step {h['best_step']}; reward hacking "
          f"{'flagged from step ' + str(h['onset_step']) if h['flagged'] else 'not detected'}; "
          f"plot: {stage_dir / 'hacking.png'}", file=sys.stdout)
    return figures


if __name__ == "__main__":  # flags only for the command line: the stage functions import cleanly
    _CONFIG = define_config()
    _FLAGS = StageFlags("the SFT stage (W/sft)")
    _RM = flags.DEFINE_string("rm", None, "the reward-model stage (default: W/rm)")
    _STAGE = flags.DEFINE_string("stage", None, "stage directory name (default: rlhf, or dpo)")
    run_entry(main)

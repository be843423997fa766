"""The RL stage as a library: the loop of experiments.rl, reused by experiments.rlhf.

train_rl runs GRPO-style RL (train/rl.py) from a parent stage towards an Objective: what to
reward, how to measure before / during / after, and which figure selects the best checkpoint.
task_objective makes one from a checkable task (eval/tasks.py); experiments.rlhf makes one from
a reward model and the hidden labeler.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from data.sft_mix import TOOLS_SYSTEM
from data.tools import BM25, THREADS, make_hooks
from eval.chat_eval import after_last_result
from eval.tasks import Problem, make_task, score_task
from experiments.configs import resolved
from experiments.workdir import configs_from, tool_config
from model import transformer
from model.engine import SamplingConfig
from model.handle import LM
from train.checkpoint import restore_params
from train.loop import host_loop, open_state, to_global
from train.rl import (
    RLConfig,
    build_batch,
    group_advantages,
    informative_first,
    make_rl_step,
    rollout,
    token_logprobs,
)
from train.stage import load_world, read_meta, read_stage, stage_meta, write_meta

# the keys of the rl / rlhf sections that are the stage's own, not the algorithm's (RLConfig)
STAGE_KEYS = {"rl": ("task", "tools", "n_train", "train_offset", "n_eval", "pass_k", "n_pass_k"),
              "rlhf": ("method", "eval_samples", "dpo_beta")}


def rl_config(section, name: str = "rl") -> RLConfig:
    """RLConfig from the config section `name`; a key neither RLConfig nor the stage knows is
    refused by name."""
    names = {f.name for f in dataclasses.fields(RLConfig)}
    d = section.to_dict()
    unknown = sorted(set(d) - names - set(STAGE_KEYS.get(name, ())))
    if unknown:
        raise ValueError(f"config section {name!r} has unknown key(s) {unknown}; known: "
                         f"{sorted(names | set(STAGE_KEYS.get(name, ())))}")
    return RLConfig(**{k: v for k, v in d.items() if k in names})


@dataclasses.dataclass
class Objective:
    """What an RL stage optimises and how it is measured."""
    label: str  # e.g. the task's name
    train: list[Problem]  # prompts to draw from
    system: str | None  # system message of every prompt (the tools' one when tools are on)
    rewards: Callable[[list[Problem], list[str]], np.ndarray]  # a batch of completions' rewards
    evaluate: Callable[[LM], dict]  # the policy -> flat figures, every eval_every steps; a
    # "select" figure (higher is better) makes the stage keep its best checkpoint in best/
    final: Callable[[LM], dict]  # the policy -> figures, before and after the stage
    summary: Callable[[dict, dict], str]  # (before, after) -> one line
    hooks: dict | None = None  # tool hooks while sampling (data.tools.make_hooks), or none


def task_objective(cfg, task, lm: LM, world, budget_for: Callable) -> Objective:
    """RL on a checkable task: reward 1 for a right final answer; greedy pass@1 on held-out
    problems every eval; before/after: greedy pass@1 and pass@k from k samples."""
    rl = rl_config(cfg.rl)
    s = cfg.rl
    skip = s.get("train_offset", 0)  # train problems before this index are not drawn
    train = task.problems("train", skip + s.n_train)[skip:]
    held = task.problems("test", s.n_eval)
    if not held:
        raise ValueError(f"task {task.name}: no held-out problems")
    system = TOOLS_SYSTEM if s.tools else None
    # memo: the task's programs are arithmetic on the story's numbers, a function of their text
    hooks = (make_hooks(lm.tok, BM25(world.biographies()), tool_config(cfg), memo=True,
                        threads=THREADS)
             if s.tools else None)
    budget = budget_for([p.prompt for p in train + held], system)

    def score(policy, samples, temperature, ks=(1,), n=None, seed=0, tools=True):
        return score_task(policy, task, held[:n], samples=samples,
                          temperature=temperature, ks=ks, system=system if tools else None,
                          hooks=hooks if tools else None, max_calls=cfg.tools.max_calls,
                          max_new_tokens=budget, seed=seed)

    def evaluate(policy):
        ev = score(policy, 1, 0.0)
        return {"pass@1": ev["pass@1"], "length": ev["mean_length"]}

    def final(policy):
        k = s.pass_k
        greedy = score(policy, 1, 0.0)
        sampled = score(policy, k, rl.temperature, ks=tuple(sorted({1, k})), n=s.n_pass_k, seed=1)
        out = {"pass@1_greedy": greedy["pass@1"], "mean_length_greedy": greedy["mean_length"],
               "no_answer_rate_greedy": greedy["no_answer_rate"],
               "pass@1_sampled": sampled["pass@1"], f"pass@{k}": sampled[f"pass@{k}"],
               "mean_length_sampled": sampled["mean_length"], "n_eval": greedy["n"],
               "n_pass_k": sampled["n"], "examples": greedy["examples"]}
        if hooks:  # what practice with the tools did to solving without them
            out["pass@1_greedy_without_tools"] = score(policy, 1, 0.0, tools=False)["pass@1"]
        return out

    def summary(b, a):
        k = s.pass_k
        return (f"held-out pass@1 {b['pass@1_greedy']:.3f} -> {a['pass@1_greedy']:.3f}, "
                f"pass@{k} {b[f'pass@{k}']:.3f} -> {a[f'pass@{k}']:.3f}, mean length "
                f"{b['mean_length_greedy']:.1f} -> {a['mean_length_greedy']:.1f}")

    def rewards(problems, texts):
        return np.array([task.reward(p, t) for p, t in zip(problems, texts, strict=True)])

    return Objective(task.name, train, system, rewards, evaluate, final, summary, hooks)



def train_rl(cfg, parent: Path, workdir: Path, stage: str = "rl", task=None, on_step=None,
             section: str = "rl", objective_fn: Callable | None = None) -> dict:
    """The stage: RL from `parent` into workdir/stage; returns meta.json's figures.

    The algorithm's knobs come from cfg[section], the loop's from cfg[section + "_train"], the
    optimizer's from cfg[section + "_optim"]. objective_fn(lm, world, budget_for) -> Objective
    (lm: the policy's model handle, without params) says what is optimised (default: the task
    cfg.rl.task, or `task`).
    on_step(step) is called after each finished step (a test uses it to crash a run)."""
    stage_dir = Path(workdir) / stage
    lm, _ = read_stage(parent)
    tok, model_cfg = lm.tok, lm.cfg
    _, train_cfg, optim_cfg = configs_from(cfg, tok, train=f"{section}_train",
                                           optim=f"{section}_optim")
    rl = rl_config(cfg[section], section)
    world = load_world(workdir)
    end = lm.stop_ids[0]

    def budget_for(questions, system) -> int:
        longest = max(len(lm.prompt(q, system)) for q in questions)
        budget = min(rl.max_new_tokens, model_cfg.max_seq_len - longest - 1)
        if budget < 1:
            raise ValueError(f"a prompt of {longest} tokens leaves no room in max_seq_len="
                             f"{model_cfg.max_seq_len}")
        return budget

    if objective_fn is None:
        def objective_fn(lm, world, budget_for):
            return task_objective(cfg, task or make_task(cfg.rl.task, world), lm, world,
                                  budget_for)
    obj = objective_fn(lm, world, budget_for)
    n_sampled = rl.prompts_per_step * rl.oversample  # prompts sampled per step
    if len(obj.train) < n_sampled:
        raise ValueError(f"{obj.label}: {len(obj.train)} train prompts; need >= "
                         f"{section}.prompts_per_step * oversample = {n_sampled}")
    prompt_ids = [lm.prompt(p.prompt, obj.system) for p in obj.train]
    budget = budget_for([p.prompt for p in obj.train], obj.system)
    hooks = obj.hooks
    max_calls = cfg.tools.max_calls

    st = open_state(stage_dir, model_cfg, train_cfg, optim_cfg,
                    init_params=lambda abstract: restore_params(parent, abstract))
    st.require_rows(rl.prompts_per_step * rl.group_size, f"{section}.prompts_per_step * group_size")
    ref_params = restore_params(parent, jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        transformer.param_shapes(model_cfg), st.param_sharding))
    step_fn = jax.jit(make_rl_step(model_cfg, st.optimizer, rl),
                      in_shardings=(st.state_sharding, st.batch_sharding),
                      out_shardings=(st.state_sharding, None), donate_argnums=0)
    logp_fn = jax.jit(lambda p, b: token_logprobs(p, b, model_cfg),
                      in_shardings=(st.param_sharding, st.batch_sharding))

    row_multiple = math.lcm(8, st.mesh.shape["data"] * st.mesh.shape["fsdp"])
    start = int(st.state["step"])
    base_meta = stage_meta(stage, model_cfg, resolved(cfg), tok, parent, objective=obj.label,
                           tools=hooks is not None, rl=vars(rl), n_train_prompts=len(obj.train))
    stage_dir.mkdir(parents=True, exist_ok=True)
    old = (read_meta(stage_dir) or {}).get("figures", {})
    before = old.get("before") if start else None
    if before is None:
        t0 = time.time()
        before = obj.final(lm.with_params(ref_params))
        print(f"before: {obj.summary(before, before)} [{time.time() - t0:.0f} s]", flush=True)
    curves = {k: [r for r in old.get(k, []) if r[0] <= start]
              for k in ("reward_curve", "length_curve")}
    curves["eval_curve"] = [r for r in old.get("eval_curve", []) if r["step"] <= start]
    figures = {"before": before, **curves}
    best = {k: old[k] for k in ("best_step", "best_select") if k in old and old[k] is not None
            and old["best_step"] <= start}
    figures.update(best)
    write_meta(stage_dir, base_meta, figures)
    if start >= train_cfg.steps:
        print(f"{stage_dir} is already trained to step {start} ({section}_train.steps="
              f"{train_cfg.steps}); raise {section}_train.steps to train further")
    t_begin = time.time()

    def next_batch(step, state):
        t0 = time.time()
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        pick = np.random.default_rng([train_cfg.seed, step]).choice(
            len(obj.train), n_sampled, replace=False)
        problems = [obj.train[i] for i in pick]
        prompts = [prompt_ids[i] for i in pick]
        ro = rollout(lm.with_params(state["params"]), prompts, rl.group_size, SamplingConfig(
            max_new_tokens=budget, temperature=rl.temperature, top_k=rl.top_k,
            stop_tokens=lm.stop_ids, seed=seed), hooks, max_calls)
        texts = [tok.decode(ids[after_last_result(ids):]) for ids in ro.tokens]
        rewards = np.asarray(obj.rewards([problems[i] for i in ro.prompt_index], texts),
                             np.float64)
        rewards_PG = rewards.reshape(n_sampled, rl.group_size)
        # reward, solved groups, length, finished share, tool calls: over everything sampled
        seen = {"reward": float(rewards.mean()),
                "groups_solved": float((rewards_PG.max(1) > 0).mean()),
                "groups_informative": float((rewards_PG.std(1) > 0).mean()),
                "response_length": float(np.mean([len(t) - sum(inj) for t, inj in
                                                  zip(ro.tokens, ro.injected, strict=True)])),
                "finished": float(np.mean(ro.finished)), "tool_calls": float(np.mean(ro.calls))}
        keep = informative_first(rewards_PG, rl.prompts_per_step)
        ro, prompts, rewards_PG = ro.groups(keep), [prompts[g] for g in keep], rewards_PG[keep]
        adv = group_advantages(rewards_PG, rl.normalize_std, neg_weight=rl.neg_weight)
        # packed rows, their count a multiple of 8 and of the data shards (or one a sample): few
        # shapes to compile
        packed = build_batch(prompts, ro, adv.reshape(-1), None, end, row_multiple)
        seen["rows"], seen["seq_len"] = packed["inputs"].shape
        batch = to_global(packed, st.batch_sharding)
        batch["old_logp"] = logp_fn(state["params"], batch)
        batch["ref_logp"] = logp_fn(ref_params, batch)
        seen["groups_flat"] = float((rewards_PG.std(1) == 0).mean())  # of those trained on
        return batch, {"seen": seen, "t0": t0, "sample_s": time.time() - t0}

    def record(done, m, host, clock):
        seen = host["seen"]
        rec = {"step": done, **seen, "kl": m["kl"], "loss": m["loss"],
               "pg_loss": m["pg_loss"], "grad_norm": m["grad_norm"],
               "clip_fraction": m["clip_fraction"], "lr": float(st.schedule(done - 1)),
               "sample_s": round(host["sample_s"], 2), "step_s": round(time.time() - host["t0"], 2),
               "elapsed_s": round(time.time() - t_begin, 1)}
        figures["reward_curve"].append([done, round(rec["reward"], 4)])
        figures["length_curve"].append([done, round(seen["response_length"], 2)])
        return rec

    def evaluate(params, done):
        ev = obj.evaluate(lm.with_params(params))
        figures["eval_curve"].append({"step": done, **ev})
        return {f"eval_{k}": v for k, v in ev.items()}

    def describe(rec):
        extra = "".join(f" | {k} {v:.3f}" for k, v in rec.items() if k.startswith("eval_"))
        return (f"step {rec['step']}/{train_cfg.steps} | reward {rec['reward']:.3f} | length "
                f"{rec['response_length']:.1f} | kl {rec['kl']:.4f} | {rec['step_s']:.1f} "
                f"s/step{extra}")

    state = host_loop(
        st, train_cfg, stage_dir, step_fn, next_batch, record=record,
        data_state=lambda done: {"step": done}, evaluate=evaluate, describe=describe,
        best_key="eval_select", best_so_far=figures.get("best_select", -np.inf),
        on_best=lambda done, v: figures.update(best_step=done, best_select=v),
        on_save=lambda done, rec: write_meta(stage_dir, base_meta, {**figures, "step": done}),
        on_step=on_step, sync_every_step=True, lr_key=f"{section}_optim.lr")
    if start < train_cfg.steps or "after" not in old:
        figures["after"] = obj.final(lm.with_params(state["params"]))
    else:
        figures["after"] = old["after"]
    figures["step"] = int(state["step"])
    for k, v in before.items():
        if isinstance(v, int | float) and isinstance(figures["after"].get(k), int | float):
            figures.setdefault("gain", {})[k] = round(figures["after"][k] - v, 4)
    write_meta(stage_dir, base_meta, figures)
    if jax.process_index() == 0:
        print(f"done: {obj.summary(before, figures['after'])}", file=sys.stdout)
    return figures



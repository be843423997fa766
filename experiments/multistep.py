"""Agents on tasks that need two tool calls in a row; writes W/multistep/.

  python -m experiments.multistep --workdir runs/demo [--config.multistep.train=False]

The tasks (data.agent_tasks): "How old did NAME turn in YEAR?" (search the person, then python
on the birth year) and "How many letters are in the name of the city where NAME was born?"
(search, then python on the city), about the world's held-out people. Each is run by the agent
loop (eval.agent.run_agents: tools, up to `multistep.max_steps` calls) and asked in one turn
without tools (eval.agent.chain_eval), first on W/sft, which never saw a two-call conversation.
With `multistep.train`, SFT again from W/pretrain with the run's mixture plus the train-split
people's two-call conversations (data.agent_tasks.chain_conversations) into W/multistep/sft,
and the same measurement on it.
"""

from __future__ import annotations

import time
from pathlib import Path

from data.agent_tasks import chain_conversations, chain_tasks
from data.tools import BM25, result_cut
from eval.agent import chain_eval
from experiments.sft import train_variant
from experiments.workdir import experiment_entry, recall_tool, tool_config, write_experiment
from train.stage import load_stage, load_world


def measure(cfg, stage: Path, tasks: list[dict], index: BM25) -> dict:
    lm, meta = load_stage(stage)
    return chain_eval(lm, tasks, index, tool_config(cfg), recall_tool(meta, lm),
                      max_steps=cfg.multistep.max_steps, max_new_tokens=cfg.multistep.max_new_tokens)


def run_multistep(cfg, workdir: Path) -> dict:
    s = cfg.multistep
    t0 = time.time()
    world = load_world(workdir)
    index = BM25(world.biographies())
    tasks = chain_tasks(world, "test", seed=s.seed)[: s.n or None]
    figures = {"tasks": len(tasks), "before": measure(cfg, workdir / "sft", tasks, index)}
    print(f"before: agent {figures['before']['agent']}, one turn {figures['before']['one_turn']}",
          flush=True)
    if s.train:
        lm, _ = load_stage(workdir / "sft")
        convs = chain_conversations(world, index, seed=s.seed,
                                    cut=result_cut(lm.tok, tool_config(cfg)))
        stage = train_variant(cfg, workdir, "multistep/sft", convs, s.weight)
        figures["train_conversations"] = len(convs)
        figures["after"] = measure(cfg, stage, tasks, index)
        print(f"after: agent {figures['after']['agent']}, one turn {figures['after']['one_turn']}",
              flush=True)
    figures["wall_s"] = round(time.time() - t0, 1)
    write_experiment(workdir, "multistep", workdir / "sft", s, figures)
    return figures


if __name__ == "__main__":
    experiment_entry(run_multistep)

"""Run the model as an agent with tools on tasks; prints (and optionally saves) each transcript.

  python -m experiments.agent --init_from runs/demo/sft --task "Where was Maya Okafor born?" \
      --task "How many times does the letter 'r' appear in 'strawberry'?" [--max_steps 4] [--out runs.jsonl]

Search runs over the run's world biographies (W/corpus/world.json); python runs in the sandbox of
data/tools.py with the limits of the config's `tools` section.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from absl import flags

from data.tools import BM25
from eval.agent import run_agents
from experiments.workdir import define_config, run_entry, tool_config
from train.stage import load_stage, load_world

_CONFIG = define_config()
_INIT_FROM = flags.DEFINE_string("init_from", None, "a chat stage trained with tools (W/sft)",
                                 required=True)
_TASK = flags.DEFINE_multi_string("task", None, "a task (repeatable)", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run root (default: the parent of --init_from)")
_STEPS = flags.DEFINE_integer("max_steps", 4, "tool calls allowed per task")
_OUT = flags.DEFINE_string("out", None, "write the runs as JSONL here")


def main(argv):
    del argv
    stage = Path(_INIT_FROM.value)
    tok, cfg, params, _ = load_stage(stage)
    world = load_world(Path(_WORKDIR.value) if _WORKDIR.value else stage.parent)
    runs = run_agents(params, cfg, tok, _TASK.value, BM25(world.biographies()),
                      tool_config(_CONFIG.value), max_steps=_STEPS.value)
    for r in runs:
        print(f"=== task: {r.task}\n{r.transcript}\n--- {len(r.steps)} step(s), {r.ended}: {r.answer}")
    if _OUT.value:
        Path(_OUT.value).write_text("".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in runs))


if __name__ == "__main__":
    run_entry(main)

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
from experiments.workdir import StageFlags, define_config, run_entry, tool_config
from train.stage import load_stage, load_world

_CONFIG = define_config()
_FLAGS = StageFlags("a chat stage trained with tools (W/sft)")
_TASK = flags.DEFINE_multi_string("task", None, "a task (repeatable)", required=True)
_STEPS = flags.DEFINE_integer("max_steps", 4, "tool calls allowed per task")
_OUT = flags.DEFINE_string("out", None, "write the runs as JSONL here")


def main(argv):
    del argv
    stage = _FLAGS.init_from
    lm, _ = load_stage(stage)
    world = load_world(_FLAGS.workdir)
    runs = run_agents(lm, _TASK.value, BM25(world.biographies()),
                      tool_config(_CONFIG.value), max_steps=_STEPS.value)
    for r in runs:
        print(f"=== task: {r.task}\n{r.transcript}\n--- {len(r.steps)} step(s), {r.ended}: {r.answer}")
    if _OUT.value:
        Path(_OUT.value).write_text("".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in runs))


if __name__ == "__main__":
    run_entry(main)

"""RL on problems with checkable answers (GRPO-style, see train/rl.py); writes W/rl/.

  python -m experiments.rl --init_from runs/demo/sft [--workdir runs/demo]
      [--config.rl.task=arithmetic|letters|gsm8k:TRAIN.jsonl,TEST.jsonl] [--config.rl.tools=True]
      [--config.rl.kl_coef=0.02] [--config.rl_train.steps=60]

Each step draws `rl.prompts_per_step` train problems (the draw is a function of the seed and the
step), samples `rl.group_size` completions of each with the KV-cache engine at
`rl.temperature` (with the search and python tools when `rl.tools`), rewards each completion 1
when its final answer ("The answer is N") is right, and takes the policy-gradient step. The
parameters come from the parent (the SFT stage); the parent is also the frozen reference of the KL.

Checkpoints (every rl_train.save_every steps) hold the parameters, the RL optimizer state, the
step and the sampler's RNG key: a killed run, restarted, ends where an uninterrupted one would.
metrics.jsonl, per step: mean reward, the share of groups with any / with no spread of reward,
mean response length, KL to the reference, loss; every rl_train.eval_every steps greedy pass@1 on
held-out problems. meta.json: pass@1 and pass@k on held-out problems before and after, and the
reward, length and pass@1 curves.
"""

from __future__ import annotations

import jax
from absl import flags

from experiments.rl_stage import train_rl
from experiments.workdir import StageFlags, define_config, initialize_distributed, lock_run, run_entry

_CONFIG = define_config()
_FLAGS = StageFlags("the parent stage (W/sft)", multi_process=True)
_STAGE = flags.DEFINE_string("stage", "rl", "the stage directory's name under the workdir")


def main(argv):
    del argv
    initialize_distributed()
    if jax.process_count() > 1:
        raise ValueError("experiments.rl samples the whole batch in one process; "
                         "multi-process RL is not supported yet")
    parent, workdir = _FLAGS.init_from, _FLAGS.workdir
    lock_run(workdir)
    train_rl(_CONFIG.value, parent, workdir, _STAGE.value)


if __name__ == "__main__":
    run_entry(main)

"""The copy warm-up (data.copy_*) on and off, measured where it was meant to pay: the tool-use
figures after SFT (the model must copy a tool's result into its answer). Pretraining, the probe,
SFT and SFT's evaluation per run, 2 seeds: about 25 minutes a run on 2 cores.

  python -m experiments.sweep --sweep experiments/sweeps/copy_warmup.py --workdir runs/demo/sweeps
"""


def get_sweep():
    return dict(
        config="experiments/configs/tiny.py",
        stages=("pretrain", "probe", "sft", "eval:sft"),
        shared=("corpus", "tokenizer"),
        overrides={"train.sample_every": 100000},
        runs=[{"data.copy_warmup": 700, "data.copy_rows": 0.125},
              {"data.copy_warmup": 0, "data.copy_rows": 0.0}],
        seeds=(0, 1),
        seed_keys=("train.seed", "sft.seed"),
        figures=("pretrain:copy_random_tokens", "pretrain:val_bpb",
                 "sft/eval.json:tools.calculations.with_tools",
                 "sft/eval.json:tools.letter_counting.with_tools",
                 "sft/eval.json:tools.heldout_facts.with_tools",
                 "sft/eval.json:tools.well_formed_tool_calls"),
    )

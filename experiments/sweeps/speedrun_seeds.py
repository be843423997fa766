"""The default speedrun over seeds: every random stream a stage owns (data order and
initialisation, the probe's samples, SFT's mixture, RL / RM / RLHF sampling, the arena's games)
moved together by one seed, the corpus, the tokenizer and the synthetic world shared. results.md
gives each headline figure as the mean and a 95% interval over the seeds. 30 to 50 minutes a seed
on 2 cores; `--seeds 0,1` for fewer, `--config`-style changes through `overrides` below.

  python -m experiments.sweep --sweep experiments/sweeps/speedrun_seeds.py --workdir runs/sweeps
"""

STAGES = ("pretrain", "probe", "sft", "rl", "rm", "rlhf", "eval:pretrain", "eval:sft", "eval:rl",
          "eval:rlhf", "arena")


def get_sweep():
    return dict(
        config="experiments/configs/tiny.py",
        stages=STAGES,
        shared=("corpus", "tokenizer"),
        overrides={},
        runs=[{}],
        seeds=(0, 1, 2),
        # rl_train, rm_train and rlhf_train read train.seed (their own is unset)
        seed_keys=("train.seed", "probe.seed", "sft.seed", "rm.seed", "arena.seed",
                   # the experiments' (add them to STAGES to run them over the seeds too)
                   "test_time.seed", "injection.seed", "multistep.seed", "poison.seed"),
        figures=("pretrain:val_bpb", "pretrain:biography_recall.all",
                 "sft:qa_train_accuracy", "sft:qa_heldout_accuracy", "sft:qa_heldout_refusal_rate",
                 "sft:nonexistent_answer_rate", "sft:identity_accuracy",
                 "sft:tools.calculations.with_tools",
                 "rl:before.pass@1_greedy", "rl:after.pass@1_greedy",
                 "rl:before.pass@1_sampled", "rl:after.pass@1_sampled",
                 "rl:before.pass@8", "rl:after.pass@8",
                 "rl:before.mean_length_greedy", "rl:after.mean_length_greedy",
                 "rm:val_accuracy",
                 "rlhf:before.true_test", "rlhf:best.true_test", "rlhf:after.true_test",
                 "rlhf:best_step", "rlhf:hacking.flagged",
                 # the chat skills of SFT and of RLHF's best (eval.json) and final checkpoints
                 *(f"{st}/{file}:{key}" for st, file in (("sft", "eval.json"),
                                                        ("rlhf", "eval.json"),
                                                        ("rlhf", "eval_final.json"))
                   for key in ("qa_heldout.accuracy", "identity_accuracy",
                               "tools.calculations.with_tools")),
                 # "I don't know": the recall tool as is, and forced to say "known" (the model's
                 # own refusals) or "unknown" (the model overriding the tool)
                 "sft/eval.json:qa_nonexistent.refusal_rate",
                 "sft/eval.json:recall_forced.tool_says_known.nonexistent_refusal_rate",
                 "sft/eval.json:qa_heldout.refusal_rate",
                 "sft/eval.json:recall_forced.tool_says_unknown.heldout_refusal_rate",
                 "sft/eval.json:recall_forced.tool_says_known.heldout_accuracy"),
    )

"""Architecture ablation on a short tiny pretraining (300 steps of text, no copy warm-up): the
tiny default against QK-norm, an untied output head, and head_dim 32 (4 heads), one change at a
time, 2 seeds each.

  python -m experiments.sweep --sweep experiments/sweeps/arch.py --workdir runs/demo/sweeps
"""


def get_sweep():
    return dict(
        config="experiments/configs/tiny.py",
        stages=("pretrain",),
        shared=("corpus", "tokenizer"),
        overrides={"train.steps": 300, "data.copy_warmup": 0, "data.copy_rows": 0.0,
                   "train.sample_every": 100000},
        runs=[{}, {"model.qk_norm": True}, {"model.tie_embeddings": False},
              {"model.head_dim": 32, "model.n_heads": 4, "model.n_kv_heads": 4}],
        seeds=(0, 1),
        figures=("pretrain:val_loss", "pretrain:val_bpb", "pretrain:biography_recall.all",
                 "pretrain:copy_random_tokens"),
    )

"""Scaling law on the speedrun's sources: 5 model sizes x 3 token budgets of plain pretraining (no
copy warm-up), one seed; results.md gets the Chinchilla fit, its error on the largest model left
out of the fit, and IsoFLOP curves. The mixture takes every source once (the speedrun's repeats
the world's biographies 60 times, which a scaling law would mostly measure memorising), so the
largest budget stays within one epoch.

  python -m experiments.sweep --sweep experiments/sweeps/scaling.py --workdir runs/sweeps --parallel 2

Two runs at a time keep both cores busy (a tiny model alone leaves most of them idle): about 20
minutes on 2 cores, against 30 one at a time.
"""

# d_model, n_layers, heads x head_dim, d_ff: 27k to 1.7M non-embedding parameters
SIZES = ((32, 2, 2, 16, 96), (64, 2, 2, 32, 192), (96, 3, 3, 32, 288), (128, 4, 4, 32, 384),
         (160, 5, 5, 32, 480))
STEPS = (100, 200, 400)  # x 16 rows x 128 tokens: 205k, 410k and 819k tokens


def get_sweep():
    return dict(
        config="experiments/configs/tiny.py",
        stages=("pretrain",),
        shared=("corpus", "tokenizer"),
        overrides={"mixture.prose": 1.0, "mixture.web": 1.0, "mixture.world": 1.0,
                   "data.copy_warmup": 0, "data.copy_rows": 0.0, "train.eval_every": 50,
                   "train.save_every": 100, "train.sample_every": 100000,
                   "optim.warmup_steps": 20},
        runs=[{"model.d_model": d, "model.n_layers": layers, "model.n_heads": h,
               "model.n_kv_heads": h, "model.head_dim": hd, "model.d_ff": ff, "train.steps": s}
              for d, layers, h, hd, ff in SIZES for s in STEPS],
        seeds=(0,),
        figures=("pretrain:val_loss", "pretrain:val_bpb", "pretrain:tokens_seen"),
        analysis="scaling",
    )

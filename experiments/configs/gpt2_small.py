"""GPT-2-small-shaped (d 768, 12 layers; 101M parameters with a 32k vocabulary and GQA 12/4): for
a GPU or a TPU slice, not 2 CPUs.

  python -m experiments.tokenizer --workdir runs/g --input CORPUS --config experiments/configs/gpt2_small.py
  python -m experiments.pretrain --workdir runs/g --config experiments/configs/gpt2_small.py \
      --config.data.inputs=CORPUS
  python -m experiments.plan --config experiments/configs/gpt2_small.py --devices 8  # memory, FLOPs
Pure data parallelism (the model fits a device many times over); layers scanned, matmul outputs
kept for the backward pass (remat "dots"), bf16 compute over f32 weights and Adam state.
On this CPU it is only checked (tests/test_configs.py, experiments.plan): nothing here has been
trained with it yet.
"""

import ml_collections

from experiments.configs import tiny


def get_config() -> ml_collections.ConfigDict:
    c = tiny.get_config()
    c.tokenizer.vocab_size = 32768
    c.model.update(dict(d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, head_dim=64,
                        d_ff=2048, max_seq_len=1024, qk_norm=True, dtype="bfloat16",
                        param_dtype="float32", scan_layers=True, remat="dots",
                        attention="dot_product"))
    c.data.val_every = 1000
    # no copy warm-up: it is the tiny model's fix (2M tokens of mostly biographies form no
    # induction heads); a model this size on real text is expected to form them itself (untested)
    c.data.update(dict(copy_warmup=0, copy_rows=0.0))
    c.train.update(dict(steps=20000, batch_size=256, seq_len=1024, save_every=1000, keep=3,
                        log_every=20, eval_every=500, eval_batches=32, sample_every=1000,
                        sample_tokens=256, mesh_data=-1, mesh_fsdp=1, mesh_tensor=1,
                        peak_gflops=989e3))  # H100 bf16 dense peak per device
    c.optim.update(dict(lr=6e-4, warmup_steps=700, schedule="cosine", min_lr_ratio=0.1))
    # the stage sections overlay train / optim: only what differs is set here
    c.sft_train.update(dict(steps=2000, save_every=500, eval_every=250, batch_size=64,
                            seq_len=1024, eval_batches=32, sample_every=1000))
    c.sft_optim.update(dict(lr=6e-5, warmup_steps=100, weight_decay=0.0))
    c.rl.update(dict(prompts_per_step=32, group_size=16, max_new_tokens=256, kl_coef=0.01))
    c.rl_train.update(dict(steps=500, save_every=50, eval_every=50))
    c.rl_optim.update(dict(lr=1e-6, warmup_steps=20))
    c.rm_train.update(dict(steps=1000, batch_size=64, save_every=250, eval_every=100))
    c.rm_optim.update(dict(lr=1e-5, warmup_steps=50))
    c.rlhf.update(dict(prompts_per_step=32, group_size=8, max_new_tokens=128))
    c.rlhf_train.update(dict(steps=500, batch_size=64, save_every=50, eval_every=50))
    c.rlhf_optim.update(dict(lr=1e-6, warmup_steps=20))
    return c

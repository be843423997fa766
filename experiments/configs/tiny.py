"""Tiny: the CPU default, a ~1M-parameter model that trains in minutes on 2 cores.

Train a tokenizer and sample from a (fresh) model with it:
  python -m experiments.tokenizer --workdir runs/demo --input README.md
  python -m experiments.sample --init_from runs/demo --prompt "Once upon a time"
Override any field from the command line, e.g. --config.tokenizer.vocab_size=2048.
The model's vocab_size is always the tokenizer's.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.tokenizer = ml_collections.ConfigDict(dict(
        vocab_size=4096,
        heldout_every=50,  # every 50th line is held out to measure bytes per token
    ))
    c.model = ml_collections.ConfigDict(dict(
        d_model=128, n_layers=4, n_heads=2, n_kv_heads=2, head_dim=64, d_ff=384,
        max_seq_len=256, rope_theta=10000.0, qk_norm=False, tie_embeddings=True,
        logit_softcap=0.0, dtype="float32", param_dtype="float32",
    ))
    return c

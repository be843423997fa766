"""A ~340M-parameter Llama-style model for a GPU node or a TPU slice (sequence 2048, bf16 compute).

  python -m experiments.pretrain --workdir runs/m --config experiments/configs/llama_350m.py \
      --config.data.inputs=CORPUS
  python -m experiments.plan --config experiments/configs/llama_350m.py --devices 64 \
      --mesh data=8,fsdp=8,tensor=1
Parameters and Adam state sharded over `fsdp` (8 devices), the batch over data x fsdp. Only
compiled and sized on this CPU (experiments.plan); never trained yet.
"""

import ml_collections

from experiments.configs import gpt2_small


def get_config() -> ml_collections.ConfigDict:
    c = gpt2_small.get_config()
    c.model.update(dict(d_model=1024, n_layers=24, n_heads=16, n_kv_heads=8, head_dim=64,
                        d_ff=3072, max_seq_len=2048, tie_embeddings=True))
    c.train.update(dict(batch_size=256, seq_len=2048, mesh_data=-1, mesh_fsdp=8, mesh_tensor=1))
    c.optim.update(dict(lr=3e-4, warmup_steps=2000))
    c.sft_train.update(dict(seq_len=2048))
    return c

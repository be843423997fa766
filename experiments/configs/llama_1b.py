"""A ~1.3B-parameter Llama-style model (d 2048, 24 layers, GQA 32/8, untied head) for a pod slice.

  python -m experiments.pretrain --workdir runs/b --config experiments/configs/llama_1b.py \
      --config.data.inputs=CORPUS
  python -m experiments.plan --config experiments/configs/llama_1b.py --devices 64 \
      --mesh data=2,fsdp=16,tensor=2
Parameters and Adam state sharded over `fsdp` x `tensor` (heads and MLP width over `tensor`),
the batch over data x fsdp; every block rematerialised but for its weight matmuls. Only
compiled and sized on this CPU (experiments.plan); never trained yet.
"""

import ml_collections

from experiments.configs import gpt2_small


def get_config() -> ml_collections.ConfigDict:
    c = gpt2_small.get_config()
    c.model.update(dict(d_model=2048, n_layers=24, n_heads=32, n_kv_heads=8, head_dim=64,
                        d_ff=6144, max_seq_len=2048, tie_embeddings=False))
    c.train.update(dict(batch_size=256, seq_len=2048, mesh_data=-1, mesh_fsdp=16, mesh_tensor=2))
    c.optim.update(dict(lr=2e-4, warmup_steps=2000))
    c.sft_train.update(dict(seq_len=2048))
    return c

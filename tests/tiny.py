"""Tiny model configs shared by the tests."""

from model.config import ModelConfig


def tiny_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                d_ff=48, max_seq_len=64)
    return ModelConfig(**{**base, **overrides})

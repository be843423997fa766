"""Tiny model configs shared by the tests."""

from model.config import ModelConfig


def tiny_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                d_ff=48, max_seq_len=64)
    return ModelConfig(**{**base, **overrides})


def project_lm(directory, text: str, seed: int = 0, **overrides):
    """A chat model as the project makes them (its sentencepiece tokenizer trained on `text`,
    the project's chat format) with random weights; init_std 0.3 spreads the logits, so that
    greedy choices have no near-ties."""
    import jax

    from data.chat import chat_format
    from data.tokenizer import Tokenizer, train_tokenizer
    from model import transformer
    from model.handle import LM

    (directory / "t.txt").write_text(text)
    train_tokenizer([directory / "t.txt"], directory / "sp", 400)
    tok = Tokenizer.load(directory / "sp")
    cfg = tiny_config(**{"vocab_size": tok.vocab_size, "init_std": 0.3, **overrides})
    return LM(transformer.init(cfg, jax.random.key(seed)), cfg, tok, chat_format("project"))

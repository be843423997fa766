"""The stage contract: a stage finds what its parents recorded, once each, and its best checkpoint."""

import json

from train.stage import Stage, recall_threshold


def _stage(path, **meta):
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def test_a_stage_reads_through_its_parents(tmp_path):
    sft = _stage(tmp_path / "sft", stage="sft", recall_threshold=-3.7)
    rl = _stage(tmp_path / "rl", stage="rl", parent=str(sft))
    rlhf = _stage(tmp_path / "rlhf", stage="rlhf", parent=str(rl))
    assert [s.path.name for s in Stage(rlhf).lineage()] == ["rlhf", "rl", "sft"]
    assert Stage(rlhf).find("recall_threshold") == -3.7 and Stage(rlhf).find("nothing") is None
    assert recall_threshold(json.loads((rlhf / "meta.json").read_text())) == -3.7
    # a cycle of parents ends instead of looping
    loop = _stage(tmp_path / "a", parent=str(tmp_path / "b"))
    _stage(tmp_path / "b", parent=str(loop))
    assert len(list(Stage(loop).lineage())) == 2 and Stage(loop).find("recall_threshold") is None
    assert Stage(rlhf).best is None
    (rlhf / "best" / "checkpoints").mkdir(parents=True)
    assert Stage(rlhf).best.path == rlhf / "best"


def test_a_stage_loads_as_one_model_handle_with_its_chat_format(tmp_path):
    import shutil

    import pytest

    from data.chat import prompt
    from data.special_tokens import END, special_id
    from train.stage import load_stage, read_meta, write_json

    stage = _tiny_stage(tmp_path)
    lm, meta = load_stage(stage)
    assert meta["stage"] == "sft" and lm.chat.name == "project" and lm.params is not None
    assert lm.prompt("Hi?") == prompt(lm.tok, "Hi?") and lm.stop_ids == (special_id(END),)
    assert lm.with_params(None).cfg is lm.cfg and lm.params is not None
    other = tmp_path / "other"
    shutil.copytree(stage, other)
    write_json(other / "meta.json", {**read_meta(other), "chat_format": "klingon"})
    with pytest.raises(ValueError, match="chat format 'klingon' is unknown"):
        load_stage(other)


def _tiny_stage(w):
    """A finished stage of a tiny model: a tokenizer, one checkpoint and meta.json."""
    import jax
    import optax
    from tiny import tiny_config

    from data.tokenizer import Tokenizer, train_tokenizer
    from model import transformer
    from train.checkpoint import Checkpointer
    from train.stage import stage_meta, write_meta
    from train.step import init_state

    (w / "text.txt").write_text("Ada was born in Lisbon. Who are you? I am a model.\n" * 40)
    train_tokenizer([w / "text.txt"], w / "tokenizer", 300)
    tok = Tokenizer.load(w / "tokenizer")
    cfg = tiny_config(vocab_size=tok.vocab_size, max_seq_len=64)
    ckpt = Checkpointer(w / "sft" / "checkpoints")
    ckpt.save(init_state(transformer.init(cfg, jax.random.key(0)), optax.sgd(0.1), 0), {"step": 0})
    ckpt.close()
    write_meta(w / "sft", stage_meta("sft", cfg, {}, tok), {"step": 0})
    return w / "sft"

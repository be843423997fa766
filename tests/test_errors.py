"""Expected failures are one line naming the cause, exit status 2, nothing written; --debug
shows the traceback."""

import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from train.loop import TrainConfig

REPO = Path(__file__).resolve().parent.parent


def _entry(*args, cwd=REPO):
    env = {k: v for k, v in os.environ.items() if k != "RUN_LOCK_TOKEN"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def _one_line(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_tokenizer_inputs_are_one_line_each(tmp_path):
    w = tmp_path / "w"
    _one_line(_entry("experiments.tokenizer", f"--workdir={w}", f"--input={tmp_path / 'nope.txt'}"),
              "nope.txt does not exist")
    (tmp_path / "random.txt").write_bytes(os.urandom(80_000))
    _one_line(_entry("experiments.tokenizer", f"--workdir={w}", f"--input={tmp_path / 'random.txt'}"),
              "random.txt is not text")
    (tmp_path / "empty.txt").write_text("")
    _one_line(_entry("experiments.tokenizer", f"--workdir={w}", f"--input={tmp_path / 'empty.txt'}"),
              "hold no non-empty lines")
    assert not w.exists()  # nothing written, not even the run root
    r = _entry("experiments.tokenizer", f"--workdir={w}", f"--input={tmp_path / 'empty.txt'}", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_a_damaged_tokenizer_model_is_named(tmp_path):
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.model").write_bytes(os.urandom(300))
    from data.tokenizer import Tokenizer

    with pytest.raises(ValueError, match="tokenizer.model is not a sentencepiece model"):
        Tokenizer.load(tmp_path / "tokenizer")


@pytest.mark.parametrize("key, value", [("steps", 0), ("accum_steps", 0), ("save_every", 0),
                                        ("log_every", 0), ("batch_size", -1)])
def test_train_values_that_cannot_work_are_named(key, value):
    with pytest.raises(ValueError, match=rf"{key}={value} must be at least 1"):
        TrainConfig(**{key: value})
    from experiments.configs.tiny import get_config
    from experiments.workdir import configs_from

    cfg = get_config()
    cfg.sft_train[key] = value

    class Tok:
        vocab_size = 4096

    with pytest.raises(ValueError, match=rf"config section 'sft_train': {key}={value}"):
        configs_from(cfg, Tok(), train="sft_train", optim="sft_optim")
    assert isinstance(cfg, ml_collections.ConfigDict)

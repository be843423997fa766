"""The shipped configs build; the GPU-sized one is checked by eval_shape and a sharded compile."""

from pathlib import Path

import jax
import pytest
from absl import flags as absl_flags

from experiments.configs import gpt2_small, llama_1b, llama_350m, resolve, tiny
from experiments.rl_stage import rl_config
from model import transformer
from model.config import ModelConfig
from train.loop import TrainConfig
from train.optim import OptimConfig, make_optimizer
from train.step import init_state

REPO = Path(__file__).resolve().parent.parent


def _configs(module, vocab):
    c = module.get_config()
    return (ModelConfig(**{**c.model.to_dict(), "vocab_size": vocab}),
            TrainConfig(**c.train.to_dict()), OptimConfig(**c.optim.to_dict()))


def test_tiny_config_builds():
    model, train, _ = _configs(tiny, 4096)
    assert 0.5e6 < model.n_params() < 2e6 and train.steps > 0
    for module in (tiny, gpt2_small):  # every stage's sections build
        for variant in ((None, "smoke") if module is tiny else (None,)):
            c = module.get_config(variant) if variant else module.get_config()
            sft = TrainConfig(**resolve(c, "sft_train"))
            assert sft.seq_len <= c.model.max_seq_len
            for stage in ("sft", "rl", "rm", "rlhf"):
                TrainConfig(**resolve(c, f"{stage}_train"))
                OptimConfig(**resolve(c, f"{stage}_optim"))
            rl_config(c.rl)
            rl_config(c.rlhf, "rlhf")


def _tok(vocab=4096):
    return type("Tok", (), {"vocab_size": vocab})()


def test_a_train_override_reaches_every_stage_that_does_not_set_it(tmp_path):
    """--config.train.X reaches SFT / RL / RM / RLHF through the entry points' own parsing."""
    from ml_collections import config_flags

    from experiments.workdir import configs_from

    path = REPO / "experiments" / "configs" / "tiny.py"
    argv = ["prog", f"--config={path}", "--config.train.mesh_fsdp=2", "--config.train.keep=7",
            "--config.optim.grad_clip=0.5", "--config.sft_train.keep=2", "--config.rl_optim.b2=0.9"]
    flags = absl_flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", str(path), flag_values=flags, sys_argv=argv)
    flags(argv)
    c = holder.value
    for stage in ("sft", "rl", "rm", "rlhf"):
        _, train, optim = configs_from(c, _tok(), train=f"{stage}_train", optim=f"{stage}_optim")
        assert train.mesh_fsdp == 2 and optim.grad_clip == 0.5
        assert train.keep == (2 if stage == "sft" else 7)  # a stage's own setting wins
        assert optim.b2 == (0.9 if stage == "rl" else 0.95)
    # what a stage sets itself stays
    assert configs_from(c, _tok(), train="sft_train", optim="sft_optim")[1].steps == 300
    assert configs_from(c, _tok())[1].keep == 7 and c.train.keep == 7


@pytest.mark.parametrize("section", ["train", "sft_train", "rl_optim", "rl", "rlhf", "model"])
def test_an_unknown_key_is_refused_by_name(section):
    from experiments.workdir import configs_from

    c = tiny.get_config()
    with c.unlocked():
        c[section]["typo_key"] = 1
    with pytest.raises(ValueError, match="typo_key"):
        if section in ("rl", "rlhf"):
            rl_config(c[section], section)
        elif section in ("train", "model"):
            configs_from(c, _tok())
        else:
            configs_from(c, _tok(), train="sft_train" if section == "sft_train" else "train",
                         optim="rl_optim" if section == "rl_optim" else "optim")


def test_an_unknown_override_is_one_line(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "experiments.tokenizer", f"--workdir={tmp_path}",
                        "--config.sft_train.stepz=3"], cwd=REPO, capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "sft_train.stepz" in lines[0], r.stderr


def test_pod_configs_state_shapes():
    """Their train steps are compiled sharded in tests/test_plan.py (experiments.plan)."""
    for module, low, high in ((gpt2_small, 95e6, 140e6), (llama_350m, 300e6, 400e6),
                              (llama_1b, 1.2e9, 1.4e9)):
        model, train, optim = _configs(module, 32768)
        assert low < model.n_params() < high and model.scan_layers
        assert train.seq_len <= model.max_seq_len
        optimizer = make_optimizer(optim, train.steps)
        abstract = jax.eval_shape(lambda p, o=optimizer, m=model: init_state(p, o, 0),
                                  transformer.param_shapes(model))
        assert sum(x.size for x in jax.tree.leaves(abstract["params"])) == model.n_params()
        mu = abstract["opt_state"][1][0].mu["blocks"]["mlp"]["w_up_DF"]
        assert mu.shape == (model.n_layers, model.d_model, model.d_ff)

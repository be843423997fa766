"""Samples continuations of a prompt ("dreams" of the base model).

  python -m experiments.sample --init_from runs/demo --prompt "Once upon a time" \
      [--num_samples 3 --temperature 0.8 --top_k 50 --top_p 0.95 --max_new_tokens 100 --seed 0]

--init_from is a stage directory or a run root. Its tokenizer is found by experiments.workdir.find_tokenizer.
Checkpoint loading arrives with the pretraining stage; until then this samples from a freshly
initialised model with the --config model (seeded by --seed), and says so.
"""

from __future__ import annotations

import time

import jax
from absl import flags

from data.special_tokens import BOS, END, special_id
from data.tokenizer import Tokenizer
from experiments.workdir import StageFlags, define_config, run_entry
from model import transformer
from model.config import ModelConfig
from model.engine import SamplingConfig, generate
from train.stage import find_tokenizer, load_stage, read_meta

_CONFIG = define_config()
_FLAGS = StageFlags("stage directory or run root", workdir=None)
_PROMPT = flags.DEFINE_string("prompt", "", "text to continue (empty: dream from <|bos|>)")
_NUM = flags.DEFINE_integer("num_samples", 1, "how many continuations")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 100, "tokens to generate per sample")
_TEMP = flags.DEFINE_float("temperature", 1.0, "0 is greedy")
_TOP_K = flags.DEFINE_integer("top_k", 0, "0 disables top-k")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "1 disables top-p")
_SEED = flags.DEFINE_integer("seed", 0, "sampling (and fresh-init) seed")


def main(argv):
    del argv
    tok_dir = find_tokenizer(_FLAGS.init_from)
    tok = Tokenizer.load(tok_dir)
    print(f"tokenizer: {tok_dir} ({tok.vocab_size} pieces)")
    stage = _FLAGS.init_from
    meta = read_meta(stage)
    if meta and "model" in meta and (stage / "checkpoints").is_dir():
        lm, meta = load_stage(stage)
        tok, cfg, params = lm.tok, lm.cfg, lm.params
        step = meta.get("figures", {}).get("step")
        print(f"loaded {stage} (step {step}, {cfg.n_params():,} params)")
    else:
        cfg = ModelConfig.from_dict({**_CONFIG.value.model.to_dict(),
                                     "vocab_size": tok.vocab_size})
        print(f"no checkpoint in {stage}: sampling from a freshly initialised model "
              f"({cfg.n_params():,} params, seed {_SEED.value})")
        params = transformer.init(cfg, jax.random.key(_SEED.value))

    prompt = [special_id(BOS)] + tok.encode(_PROMPT.value)
    sampling = SamplingConfig(
        max_new_tokens=min(_MAX_NEW.value, cfg.max_seq_len - len(prompt)),
        temperature=_TEMP.value, top_k=_TOP_K.value, top_p=_TOP_P.value,
        stop_tokens=(special_id(BOS), special_id(END)), seed=_SEED.value)
    t0 = time.time()
    out = generate(params, cfg, [prompt] * _NUM.value, sampling)
    seconds = time.time() - t0
    for i, (ids, finished) in enumerate(zip(out.tokens, out.finished, strict=True)):
        print(f"--- sample {i} ({len(ids)} tokens, {'stopped' if finished else 'length limit'})")
        print(_PROMPT.value + tok.decode(ids))
    n = sum(len(t) for t in out.tokens)
    print(f"--- {n} tokens in {seconds:.2f} s (compile included)")


if __name__ == "__main__":
    run_entry(main)

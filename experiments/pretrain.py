"""Pretraining: next-token prediction on a tokenized corpus; writes W/pretrain/.

  python -m experiments.pretrain --workdir runs/demo [--config.data.inputs=corpus/]
      [--config experiments/configs/tiny.py] [--init_from runs/other/pretrain]

Needs W/tokenizer (python -m experiments.tokenizer). The corpus is data.inputs, or by default
W/corpus/mixture (python -m experiments.corpus). Tokenizes the corpus once into W/shards/,
then trains into W/pretrain/{checkpoints/, meta.json, metrics.jsonl, tensorboard/, samples.txt}.
Running the same command again resumes from the latest checkpoint.
Several processes (one per host): pass --coordinator_address, --num_processes, --process_id,
or launch where jax.distributed.initialize() finds them itself (Slurm, TPU pods).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax

from data.copy_rows import CopyMixData
from data.documents import describe_inputs, expand_inputs
from data.shards import TokenStream, build_shards, load_manifest
from data.tokenizer import Tokenizer
from experiments.configs import resolved
from experiments.workdir import (
    StageFlags,
    configs_from,
    corpus_inputs,
    define_config,
    initialize_distributed,
    lock_run,
    run_entry,
)
from train.checkpoint import restore_params
from train.loop import run
from train.stage import check_parent, load_stage, load_world, stage_meta, write_meta


def prepare_shards(workdir: Path, tok: Tokenizer, data_cfg, stage: str = "pretrain") -> Path:
    """The shards beside W/<stage> (W/shards for W/pretrain) for data.inputs, tokenized once
    (process 0) and reused while the inputs match."""
    stage_dir = workdir / stage
    out = stage_dir.parent / "shards"
    files = expand_inputs(corpus_inputs(workdir, data_cfg.inputs))
    inputs = describe_inputs(files)
    manifest = load_manifest(out)
    if manifest is not None and manifest["inputs"] == inputs:
        if manifest["tokenizer_sha256"] != tok.sha256:
            sys.exit(f"{out} was tokenized with another tokenizer (sha256 "
                     f"{manifest['tokenizer_sha256'][:12]}, this one is {tok.sha256[:12]}): "
                     "use a new --workdir, or delete the shards to re-tokenize")
        return out
    if manifest is not None and (stage_dir / "checkpoints").exists():
        sys.exit(f"data.inputs differ from those {out} was built from, and {stage_dir} "
                 "has checkpoints trained on them: use a new --workdir")
    if jax.process_index() == 0:
        print(f"tokenizing {len(files)} file(s) into {out} ...", flush=True)
        m = build_shards(files, tok, out, data_cfg.shard_tokens, data_cfg.val_every,
                         data_cfg.text_field)
        for split, s in m["splits"].items():
            print(f"  {split}: {s['documents']:,} documents, {s['tokens']:,} tokens")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("shards")
    return out


def main(argv):
    del argv
    initialize_distributed()
    lock_run(_FLAGS.workdir)
    pretrain(_CONFIG.value, _FLAGS.workdir, _FLAGS.init_from)


def pretrain(cfg, workdir: Path, init_from: Path | None = None, stage: str = "pretrain") -> dict:
    """The stage: shards, then training into W/<stage> (from `init_from`'s parameters where
    given), then what the base model can do; returns meta.json's figures. An experiment's
    variant (stage "poison/k=10/pretrain") keeps its shards beside it."""
    stage_dir = workdir / stage
    tok = Tokenizer.load(workdir / "tokenizer")
    model_cfg, train_cfg, optim_cfg = configs_from(cfg, tok)
    data_cfg = cfg.data
    shard_dir = prepare_shards(workdir, tok, data_cfg, stage)
    train_stream, val_stream = TokenStream(shard_dir, "train"), TokenStream(shard_dir, "val")
    train_data = train_stream
    if data_cfg.copy_warmup >= train_cfg.steps:
        sys.exit(f"data.copy_warmup={data_cfg.copy_warmup} copy warm-up steps leave none of "
                 f"train.steps={train_cfg.steps} for the text: raise train.steps, or set "
                 "--config.data.copy_warmup=0 to pretrain without the warm-up")
    if data_cfg.copy_rows or data_cfg.copy_warmup:  # the induction task (data/copy_rows.py)
        train_data = CopyMixData(train_stream, tok.vocab_size, data_cfg.copy_rows,
                                 data_cfg.copy_warmup, data_cfg.copy_text_share,
                                 data_cfg.copy_alphabet_share)
        optim_cfg = dataclasses.replace(optim_cfg, prelude_steps=data_cfg.copy_warmup,
                                        prelude_lr=data_cfg.copy_warmup_lr)
    init_params = None
    if init_from:
        parent = check_parent(init_from, model_cfg, tok)
        init_params = lambda abstract: restore_params(parent, abstract)  # noqa: E731
    stage_dir.mkdir(parents=True, exist_ok=True)
    base_meta = stage_meta("pretrain", model_cfg, resolved(cfg), tok, init_from,
                           shards=str(shard_dir.resolve()),
                           train_tokens_available=len(train_stream))
    figures = run(stage_dir, model_cfg, train_cfg, optim_cfg, tok, train_data, val_stream,
                  init_params, on_checkpoint=lambda f: write_meta(stage_dir, base_meta, f))
    # What the base model can do: copy from its context (eval/suite.py), and, when the world was
    # mixed in, recall its biographies.
    from eval.suite import in_context_copy

    lm, _ = load_stage(stage_dir)
    copy = in_context_copy(lm)
    figures = {**figures, "copy_random_tokens": copy["random_tokens"], "copy_numbers": copy["numbers"]}
    if (workdir / "corpus" / "world.json").is_file():
        from eval.knowledge import biography_recall

        recall = biography_recall(lm, load_world(workdir))
        figures = {**figures, "biography_recall": recall["recall"]}
    write_meta(stage_dir, base_meta, figures)
    if jax.process_index() == 0:
        print(f"done: {figures}")
    return figures


if __name__ == "__main__":  # flags only for the command line: the stage function imports cleanly
    _CONFIG = define_config()
    _FLAGS = StageFlags("a stage dir to take parameters from", init_from_required=False,
                        workdir="run root (holds tokenizer/, shards/, pretrain/)",
                        workdir_required=True, multi_process=True)
    run_entry(main)

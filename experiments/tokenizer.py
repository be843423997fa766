"""Trains the BPE tokenizer: writes W/tokenizer/{tokenizer.model, tokenizer.vocab, meta.json}.

  python -m experiments.tokenizer --workdir runs/demo [--input corpus.txt --input more/ ...]
  python -m experiments.tokenizer ... --config.tokenizer.vocab_size=2048

Inputs are corpus files as data.documents reads them: text (one document per file), JSONL or
Parquet with a `text` field; a directory contributes every such file under it. A finished
tokenizer trained on the same inputs and config is not redone; a different one is refused unless
--overwrite is given.
The directory is written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from absl import flags

from data.documents import describe_inputs, expand_inputs
from data.special_tokens import special_table
from data.tokenizer import train_tokenizer
from experiments.workdir import StageFlags, corpus_inputs, define_config, lock_run, run_entry
from train.stage import code_version, read_meta, write_json

_CONFIG = define_config()
_FLAGS = StageFlags(workdir="run root; the tokenizer goes to WORKDIR/tokenizer",
                    workdir_required=True)
_INPUT = flags.DEFINE_multi_string("input", None, "corpus file or directory (repeatable); "
                                   "default WORKDIR/corpus/mixture")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing, different tokenizer")


def main(argv):
    del argv
    lock_run(_FLAGS.workdir)
    train_stage(_CONFIG.value.tokenizer, _FLAGS.workdir, _INPUT.value, _OVERWRITE.value)


def train_stage(cfg, workdir: Path, inputs: list[str] | None, overwrite: bool) -> None:
    """The stage: a tokenizer trained on `inputs` (default W/corpus/mixture) into W/tokenizer,
    unless the same inputs and config made the one there."""
    files = expand_inputs(corpus_inputs(workdir, inputs))
    request = {"inputs": describe_inputs(files), "config": cfg.to_dict()}
    out = workdir / "tokenizer"

    old = read_meta(out)
    if old is not None and (out / "tokenizer.model").is_file():
        if {"inputs": old.get("inputs"), "config": old.get("config")} == request:
            print(f"{out} is already trained on these inputs with this config; nothing to do")
            return
        if not overwrite:
            sys.exit(f"{out} holds a tokenizer trained on other inputs or another config; use "
                     "another --workdir, or pass --overwrite to replace it")
    elif out.exists() and any(out.iterdir()) and not overwrite:
        sys.exit(f"{out} exists but holds no finished tokenizer; remove it or pass --overwrite")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tokenizer.tmp-{time.time_ns()}")
    t0 = time.time()
    try:
        stats = train_tokenizer(files, tmp, cfg.vocab_size, heldout_every=cfg.heldout_every)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed training leaves nothing behind
        raise
    meta = {
        **request,
        "stage": "tokenizer",
        "special_tokens": special_table(),
        "code_version": code_version(),
        "train_seconds": round(time.time() - t0, 2),
        **stats,
    }
    write_json(tmp / "meta.json", meta)
    if out.exists():
        trash = out.with_name(f".tokenizer.old-{time.time_ns()}")
        out.rename(trash)
        tmp.rename(out)
        shutil.rmtree(trash)
    else:
        tmp.rename(out)

    bpt = stats["bytes_per_token_heldout"]
    print(f"tokenizer: {stats['vocab_size']} pieces, trained on {stats['train_lines']} lines "
          f"({stats['train_bytes']:,} bytes) in {meta['train_seconds']} s")
    print("held-out bytes/token: " + (f"{bpt:.3f} on {stats['heldout_lines']} lines"
                                      if bpt else "n/a (too few lines to hold any out)"))
    print(f"wrote {out}/tokenizer.model, tokenizer.vocab, meta.json (sha256 {stats['sha256'][:12]})")


if __name__ == "__main__":
    run_entry(main)

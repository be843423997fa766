"""The stage contract: a stage directory W/<stage> (meta.json, its parent, its tokenizer, its
checkpoints) and the run root W around it. A later stage finds everything it needs of an
earlier one here, by path and never by guess:

    W/tokenizer/   tokenizer.model, meta.json          W/corpus/world.json  the synthetic world
    W/<stage>/     checkpoints/<step>/, meta.json, metrics.jsonl, ...; best/ for RL / RLHF

meta.json makes a stage self-describing: what it is (`stage`), its model config, tokenizer
(path and SHA-256), parent stage and the parent's step, the resolved config of the run, the code
version, and the figures it measured (`figures`). `stage_meta` builds the keys every training
stage shares; `write_meta` adds the code version and the figures.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def code_version() -> str:
    """The git commit of the code (with '+dirty' for uncommitted changes), or 'unknown'."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_json(path: str | Path, obj) -> None:
    """Writes JSON atomically: a crash leaves either the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_meta(stage_dir: str | Path) -> dict | None:
    path = Path(stage_dir) / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else None


def find_tokenizer(init_from: str | Path) -> Path:
    """The tokenizer directory for `init_from`: a tokenizer dir itself, the one its meta.json
    names, or the `tokenizer/` of the run root that holds it."""
    d = Path(init_from)
    if not d.is_dir():
        raise FileNotFoundError(f"--init_from {d} is not a directory")
    candidates = [d]
    meta = read_meta(d)
    if meta and meta.get("tokenizer"):
        candidates.insert(0, Path(meta["tokenizer"]))
    candidates += [d / "tokenizer", d.parent / "tokenizer"]
    for c in candidates:
        if (c / "tokenizer.model").is_file() or (c / "tokenizer.json").is_file():
            return c
    raise FileNotFoundError(
        f"no tokenizer found for {d} (looked in {', '.join(map(str, candidates))}): train one "
        f"with `python -m experiments.tokenizer --workdir {d} --input FILES`")


def check_parent(init_from: str | Path, model_cfg, tok) -> Path:
    """The parent stage dir, after checking its model config and tokenizer match this run's."""
    parent = Path(init_from)
    meta = read_meta(parent)
    if meta is None:
        raise FileNotFoundError(f"--init_from {parent} has no meta.json: not a finished stage")
    if meta.get("tokenizer_sha256") != tok.sha256:
        raise ValueError(f"--init_from {parent} was trained with tokenizer "
                         f"{str(meta.get('tokenizer_sha256'))[:12]}, this run uses "
                         f"{tok.sha256[:12]}: use the parent's tokenizer ({meta.get('tokenizer')})")
    from model.config import EXECUTION_FIELDS, ModelConfig

    theirs = ModelConfig.from_dict(meta.get("model", {})).to_dict() if meta.get("model") else {}
    ours = model_cfg.to_dict()
    # how the model runs may differ (restore_params converts a stacked / per-layer layout)
    diff = {k: (theirs.get(k), ours[k]) for k in ours
            if theirs.get(k) != ours[k] and k not in EXECUTION_FIELDS}
    if diff:
        raise ValueError(f"--init_from {parent} holds another model: " + ", ".join(
            f"{k}={a} there but {b} here" for k, (a, b) in diff.items())
            + ". Use the parent's model config")
    return parent


def write_meta(stage_dir: str | Path, base: dict, figures: dict) -> None:
    """stage_dir/meta.json: what the stage is, where it came from, and what it measured."""
    import jax

    if jax.process_index() == 0:
        write_json(Path(stage_dir) / "meta.json",
                   {**base, "code_version": code_version(), "figures": figures})


def read_stage(stage_dir: str | Path):
    """(model handle without params, meta) of a finished training stage: its model config, its
    tokenizer (checked to be the one it was trained with) and the chat format meta.json names
    (the project's own where it names none)."""
    from data.chat import chat_format
    from data.hf_tokenizer import load_tokenizer
    from model.config import ModelConfig
    from model.handle import LM

    stage = Path(stage_dir)
    meta = read_meta(stage)
    if meta is None or "model" not in meta or not (stage / "checkpoints").is_dir():
        raise FileNotFoundError(f"{stage} is not a finished training stage (no meta.json with a "
                                "model, or no checkpoints/)")
    tok_dir = find_tokenizer(stage)
    tok = load_tokenizer(tok_dir)
    if meta.get("tokenizer_sha256") not in (None, tok.sha256):
        raise ValueError(f"{stage} was trained with tokenizer {meta['tokenizer_sha256'][:12]}, "
                         f"but {tok_dir} is {tok.sha256[:12]}")
    cfg = ModelConfig.from_dict(meta["model"])
    name = meta.get("chat_format", "project")  # None: a model without a chat format
    chat = chat_format(name, meta.get("chat_default_system")) if name else None
    return LM(None, cfg, tok, chat), meta


def load_stage(stage_dir: str | Path, quant: str = "none", checkpoint: str = "final"):
    """(model handle, meta): read_stage plus the params of the latest checkpoint ("final") or of
    the one an RL stage kept in best/ ("best"), quantized for inference when quant is "int8" or
    "w8a8" (model.quant)."""
    from model import transformer
    from model.quant import quantize
    from train.checkpoint import restore_params

    if checkpoint not in ("final", "best"):
        raise ValueError(f"checkpoint {checkpoint!r}: expected 'final' or 'best'")
    lm, meta = read_stage(stage_dir)
    where = Path(stage_dir)
    if checkpoint == "best":
        if Stage(where).best is None:
            raise FileNotFoundError(f"{where} has no best/ checkpoint (only RL stages with a "
                                    "selection figure keep one)")
        where = where / "best"
    lm = lm.with_params(restore_params(where, transformer.param_shapes(lm.cfg)))
    return quantize(lm, quant), meta


def load_world(workdir: str | Path):
    """The synthetic world the corpus stage of this run root mixed in (W/corpus/world.json)."""
    from data.world import WorldConfig, make_world

    path = Path(workdir) / "corpus" / "world.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `python -m experiments.corpus "
                                f"--workdir {workdir}` first")
    return make_world(WorldConfig(**json.loads(path.read_text())))


def recall_threshold(meta: dict) -> float | None:
    """The recall tool's threshold a chat model was fine-tuned with (the SFT stage's meta, found
    through the parents of an RL stage), or None when it was not taught to call the tool."""
    if "recall_threshold" in meta:
        return meta["recall_threshold"]
    return Stage(meta["parent"]).find("recall_threshold") if meta.get("parent") else None


@dataclasses.dataclass(frozen=True)
class Stage:
    """A stage directory, read lazily: `Stage(W / "sft").meta`, `.parent`, `.lineage()`,
    `.find(key)` along the parents, `.best` (the RL / RLHF stages' best checkpoint)."""
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def meta(self) -> dict | None:
        return read_meta(self.path)

    @property
    def parent(self) -> Stage | None:
        p = (self.meta or {}).get("parent")
        return Stage(p) if p else None

    def lineage(self) -> Iterator[Stage]:
        """This stage, its parent, the parent's parent, ... (each once)."""
        seen, stage = set(), self
        while stage is not None and str(stage.path.resolve()) not in seen:
            seen.add(str(stage.path.resolve()))
            yield stage
            stage = stage.parent

    def find(self, key: str):
        """The first meta.json value of `key` along the lineage (None where none has it)."""
        for stage in self.lineage():
            meta = stage.meta or {}
            if key in meta:
                return meta[key]
        return None

    @property
    def best(self) -> Stage | None:
        """W/<stage>/best, the checkpoint an RL stage kept for its best validation figure."""
        best = self.path / "best"
        return Stage(best) if (best / "checkpoints").is_dir() else None


def stage_meta(stage: str, model_cfg, config: dict, tok, parent: str | Path | None = None,
               **extra) -> dict:
    """The meta.json keys every training stage writes (write_meta adds the code version and
    the figures): what it is, its model and tokenizer, the resolved config, its parent."""
    parent_meta = read_meta(parent) if parent else None
    return {"stage": stage, "model": model_cfg.to_dict(), "config": config,
            "tokenizer": str(Path(tok.source).resolve().parent), "tokenizer_sha256": tok.sha256,
            "parent": str(Path(parent).resolve()) if parent else None,
            "parent_step": (parent_meta or {}).get("figures", {}).get("step"),
            "n_params": model_cfg.n_params(),
            "chat_format": (parent_meta or {}).get("chat_format", "project"),
            "chat_default_system": (parent_meta or {}).get("chat_default_system"), **extra}



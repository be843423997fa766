"""Stage directories: finding a parent stage's files, writing meta.json, the code version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = REPO_ROOT / "experiments" / "configs"


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
        if (c / "tokenizer.model").is_file():
            return c
    raise FileNotFoundError(
        f"no tokenizer found for {d} (looked in {', '.join(map(str, candidates))}): train one "
        f"with `python -m experiments.tokenizer --workdir {d} --input FILES`")


def corpus_inputs(workdir: str | Path, inputs: str | list[str] | None) -> list[str]:
    """The corpus a stage reads: the given files/directories (comma-separated or a list), or
    else W/corpus/mixture, which `python -m experiments.corpus` writes."""
    if isinstance(inputs, str):
        inputs = [x for x in inputs.split(",") if x]
    if inputs:
        return list(inputs)
    mixture = Path(workdir) / "corpus" / "mixture"
    if mixture.is_dir():
        return [str(mixture)]

    raise ValueError(f"no corpus: run `python -m experiments.corpus --workdir {workdir}` first, "
                         "or name files with --config.data.inputs=FILE_OR_DIR[,...] (--input for "
                         "the tokenizer)")


def configs_from(config, tok, train: str = "train", optim: str = "optim") -> tuple:
    """(ModelConfig, TrainConfig, OptimConfig) from a ConfigDict's sections `model`, `train` and
    `optim` (a later stage names its own, e.g. sft_train); the vocabulary is the tokenizer's."""
    from model.config import ModelConfig
    from train.loop import TrainConfig
    from train.optim import OptimConfig

    def build(cls, section: str, extra: dict | None = None):
        d = {**config[section].to_dict(), **(extra or {})}
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config section {section!r}: {e}") from None

    return (build(ModelConfig, "model", {"vocab_size": tok.vocab_size}),
            build(TrainConfig, train), build(OptimConfig, optim))


def tool_config(cfg):
    """data.tools.ToolConfig from a ConfigDict's `tools` section."""
    from data.tools import SandboxConfig, ToolConfig

    t = cfg.tools
    return ToolConfig(max_calls=t.max_calls, max_result_tokens=t.max_result_tokens, search_k=t.search_k,
                      sandbox=SandboxConfig(cpu_seconds=t.cpu_seconds, memory_mb=t.memory_mb,
                                            wall_seconds=t.wall_seconds,
                                            max_output_chars=t.max_output_chars,
                                            tmpfs_mb=t.tmpfs_mb, max_processes=t.max_processes,
                                            allow_unsandboxed=t.allow_unsandboxed))


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
    theirs, ours = meta.get("model", {}), model_cfg.to_dict()
    diff = {k: (theirs.get(k), ours[k]) for k in ours if theirs.get(k) != ours[k]}
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


# What a user can cause and fix (a bad value, a missing or damaged file, a full disk, a second
# writer): one line and exit status 2; any other exception is a bug and keeps its traceback.
EXPECTED_ERRORS = (ValueError, OSError, UnicodeError, LookupError, FloatingPointError, RuntimeError)


def run_entry(main) -> None:
    """app.run(main) with the house rules for every entry point: quiet library logs, and an
    expected failure printed as one line naming its cause (--debug shows the traceback)."""
    from absl import app, flags

    if "debug" not in flags.FLAGS:
        flags.DEFINE_bool("debug", False, "show the full traceback of an error")

    def wrapped(argv):
        quiet_logs()
        try:
            return main(argv)
        except EXPECTED_ERRORS as e:
            if flags.FLAGS.debug:
                raise
            text = " ".join(str(e).split()) or type(e).__name__
            print(f"error: {text[:1000]} ({type(e).__name__}; --debug for the traceback)",
                  file=sys.stderr, flush=True)
            sys.exit(2)

    app.run(wrapped)


def lock_run(root: str | Path) -> None:
    """One writer per run root (train.run_lock): process 0 of a run takes W/.lock."""
    from train.run_lock import lock_run_root

    jax = sys.modules.get("jax")  # stages that never load jax are single-process
    if jax is None or jax.process_index() == 0:
        lock_run_root(root)


def quiet_logs() -> None:
    """Library INFO logs (Orbax, XLA start-up) drown the progress lines; -v / --verbosity=0 wins."""
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def initialize_distributed() -> None:
    """jax.distributed.initialize() when launched as several processes (flags or environment)."""
    import jax
    from absl import flags

    f = flags.FLAGS
    if f["num_processes"].value and f["num_processes"].value > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f.coordinator_address,
                                   num_processes=f.num_processes, process_id=f.process_id)
    elif any(v in os.environ for v in ("SLURM_NTASKS", "JAX_COORDINATOR_ADDRESS",
                                       "TPU_WORKER_HOSTNAMES")):
        jax.distributed.initialize()


def read_stage(stage_dir: str | Path):
    """(tokenizer, ModelConfig, meta) of a finished training stage, after checking that its
    tokenizer is the one it was trained with."""
    from data.tokenizer import Tokenizer
    from model.config import ModelConfig

    stage = Path(stage_dir)
    meta = read_meta(stage)
    if meta is None or "model" not in meta or not (stage / "checkpoints").is_dir():
        raise FileNotFoundError(f"{stage} is not a finished training stage (no meta.json with a "
                                "model, or no checkpoints/)")
    tok_dir = find_tokenizer(stage)
    tok = Tokenizer.load(tok_dir)
    if meta.get("tokenizer_sha256") not in (None, tok.sha256):
        raise ValueError(f"{stage} was trained with tokenizer {meta['tokenizer_sha256'][:12]}, "
                         f"but {tok_dir} is {tok.sha256[:12]}")
    return tok, ModelConfig.from_dict(meta["model"]), meta


def load_stage(stage_dir: str | Path):
    """(tokenizer, ModelConfig, params, meta): read_stage plus the latest checkpoint's params."""
    from model import transformer
    from train.checkpoint import restore_params

    tok, cfg, meta = read_stage(stage_dir)
    return tok, cfg, restore_params(stage_dir, transformer.param_shapes(cfg)), meta


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
    seen = set()
    while meta is not None:
        if "recall_threshold" in meta:
            return meta["recall_threshold"]
        parent = meta.get("parent")
        if not parent or parent in seen:
            return None
        seen.add(parent)
        meta = read_meta(parent)
    return None


def recall_tool(meta: dict, params, model_cfg, tok):
    """The recall tool over this model (eval.knowledge.Recall) when it was taught to call it."""
    threshold = recall_threshold(meta)
    if threshold is None:
        return None
    from eval.knowledge import Recall

    return Recall(params, model_cfg, tok, threshold)


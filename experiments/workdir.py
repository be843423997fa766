"""What every entry point shares: the --config flag, one-line errors, the run lock, multi-process
start-up, the corpus and config look-ups, and the tools built from a config. The stage contract
itself (meta.json, parents, tokenizers) is train/stage.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from train.stage import recall_threshold

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = REPO_ROOT / "experiments" / "configs"


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
    from experiments.configs import resolve
    from model.config import ModelConfig
    from train.loop import TrainConfig
    from train.optim import OptimConfig

    def build(cls, section: str, extra: dict | None = None):
        d = {**resolve(config, section), **(extra or {})}
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

    try:
        app.run(wrapped)
    except (AttributeError, KeyError) as e:  # config_flags, on a --config=FILE given explicitly
        _unknown_key_exit(e)


def _unknown_key_exit(e: Exception) -> None:
    """One line for an override of a key the config lacks (config_flags raises deep inside);
    re-raises anything else."""
    import re

    found = re.search(r"[\\']+(\w+)[\\']+", str(e))
    hint = re.search(r'Did you mean "(\w+)"', str(e))
    bad = [a.split("=")[0][2:] for a in sys.argv[1:] if found and a.startswith("--config.")
           and found.group(1) in a.split("=")[0].split(".")]
    if not bad or "--debug" in sys.argv:
        raise e
    print(f"error: --{bad[0]}: the config has no key {found.group(1)!r}"
          + (f" (did you mean {hint.group(1)!r}?)" if hint else ""), file=sys.stderr, flush=True)
    sys.exit(2)


def define_config(default: str = "tiny.py"):
    """The --config flag every stage takes (a config file, `:variant`, `--config.a.b=value`
    overrides). Overrides of the default file are parsed here, at import: an unknown key is
    one line too."""
    from ml_collections import config_flags

    try:
        return config_flags.DEFINE_config_file("config", str(CONFIGS / default), "config file")
    except (AttributeError, KeyError) as e:
        _unknown_key_exit(e)


def define_quant():
    """--quant: the weights the inference entry points run with (model.quant)."""
    from absl import flags

    from model.config import QUANT

    return flags.DEFINE_enum("quant", "none", list(QUANT),
                             "none: the stage's float weights; int8: int8 weights with a scale "
                             "per output channel; w8a8: also int8 activations (one scale per token)")


class StageFlags:
    """The flags every entry point declares the same way: --init_from (a parent stage dir;
    none where init_from is None), --workdir (the run root, by default the parent of
    --init_from; none where workdir is None) and, for the stages that train on several
    processes, --coordinator_address / --num_processes / --process_id."""

    def __init__(self, init_from: str | None = None, *, init_from_required: bool = True,
                 workdir: str | None = "run root (default: the parent of --init_from)",
                 workdir_required: bool = False, multi_process: bool = False):
        from absl import flags

        self._init_from = (flags.DEFINE_string("init_from", None, init_from,
                                               required=init_from_required)
                           if init_from else None)
        self._workdir = (flags.DEFINE_string("workdir", None, workdir, required=workdir_required)
                         if workdir else None)
        if multi_process:
            flags.DEFINE_string("coordinator_address", None,
                                "host:port of process 0 (multi-process runs)")
            flags.DEFINE_integer("num_processes", None, "number of processes (multi-process runs)")
            flags.DEFINE_integer("process_id", None, "this process's index (multi-process runs)")

    @property
    def init_from(self) -> Path | None:
        v = self._init_from.value if self._init_from is not None else None
        return Path(v) if v else None

    @property
    def workdir(self) -> Path:
        if self._workdir is not None and self._workdir.value:
            return Path(self._workdir.value)
        if self.init_from is None:
            raise ValueError("--workdir is required")
        return self.init_from.parent


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


def recall_tool(meta: dict, lm):
    """The recall tool over this model (eval.knowledge.Recall) when it was taught to call it."""
    threshold = recall_threshold(meta)
    if threshold is None:
        return None
    from eval.knowledge import Recall

    return Recall(lm, threshold)



def tool_hooks(cfg, lm, meta: dict, workdir: str | Path):
    """The model's tools as engine hooks (data.tools.make_hooks): search over the run's world
    (when W/corpus/world.json exists), python in the sandbox, recall when it was taught; None
    for a chat format that carries no tools (ChatML). What experiments.serve and
    experiments.chat run."""
    if lm.chat is None or lm.chat.name != "project":
        return None
    from data.tools import BM25, make_hooks
    from train.stage import load_world

    world = (Path(workdir) / "corpus" / "world.json").is_file() and load_world(workdir)
    return make_hooks(lm.tok, BM25(world.biographies()) if world else None, tool_config(cfg),
                      recall=recall_tool(meta, lm))


def write_experiment(workdir: str | Path, name: str, parent: str | Path, section, figures: dict) -> None:
    """W/<name>/meta.json of an experiment entry point (experiments.test_time, .injection, ...):
    what it is, the stage it measured, its config section, the code version, its figures."""
    from experiments.configs import resolved
    from train.stage import code_version, write_json

    out = Path(workdir) / name
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "meta.json", {"stage": name, "parent": str(Path(parent).resolve()),
                                   "config": resolved(section), "code_version": code_version(),
                                   "figures": figures})


def experiment_entry(run) -> None:
    """The command line of an experiment entry point: --config and --workdir (the run root),
    the run lock, then run(config, workdir)."""
    config = define_config()
    stage_flags = StageFlags(workdir="run root", workdir_required=True)

    def main(argv):
        del argv
        lock_run(stage_flags.workdir)
        run(config.value, stage_flags.workdir)

    run_entry(main)

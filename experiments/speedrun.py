"""The whole pipeline in one command: corpus -> tokenizer -> pretrain -> probe -> SFT -> RL -> RM ->
RLHF (-> DPO with --dpo) -> eval of each model -> arena -> report.

  python -m experiments.speedrun --workdir runs/demo                     # the tiny default
  python -m experiments.speedrun --workdir runs/smoke --config=experiments/configs/tiny.py:smoke
  python -m experiments.speedrun --workdir runs/demo --config.train.steps=2000   # any override
  python -m experiments.speedrun --workdir runs/demo --dpo    # DPO too, beside RLHF
  python -m experiments.speedrun --workdir runs/demo --experiments=all   # and the experiments

Each stage runs as its own entry point (`python -m experiments.<stage>`, the commands the README
lists) with the same --config and overrides. A finished stage is recorded in W/speedrun.json with
its wall time and is not run again; an interrupted one resumes from its own checkpoints, so the
command can simply be run again. At the end W/report.md gathers every stage's figures and plots.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import flags

from experiments.report import write_report
from experiments.workdir import StageFlags, define_config, lock_run, run_entry
from train.stage import REPO_ROOT, write_json

EXPERIMENTS = ("test_time", "multistep", "injection", "refusal", "poison")


def stages(w: Path, dpo: bool = False, experiments: tuple[str, ...] = ()) -> list[tuple[str, str, list[str]]]:
    """(name, module, args) in order; every stage also gets the --config arguments. dpo adds
    DPO on the reward model's preference pairs (and its eval) after RLHF; experiments (names
    of EXPERIMENTS, or "all") run those entry points on the finished run, after the arena."""
    if "all" in experiments:
        experiments = EXPERIMENTS
    unknown = sorted(set(experiments) - set(EXPERIMENTS))
    if unknown:
        raise ValueError(f"--experiments: unknown {unknown}; expected some of {list(EXPERIMENTS)} "
                         "or all")
    models = ("pretrain", "sft", "rl", "rlhf") + (("dpo",) if dpo else ())
    return [
        ("corpus", "corpus", [f"--workdir={w}"]),
        ("tokenizer", "tokenizer", [f"--workdir={w}"]),
        ("pretrain", "pretrain", [f"--workdir={w}"]),
        ("probe", "probe", [f"--init_from={w / 'pretrain'}"]),
        ("sft", "sft", [f"--init_from={w / 'pretrain'}"]),
        ("rl", "rl", [f"--init_from={w / 'sft'}"]),
        ("rm", "rm", [f"--init_from={w / 'sft'}"]),
        ("rlhf", "rlhf", [f"--init_from={w / 'sft'}"]),
    ] + ([("dpo", "rlhf", [f"--init_from={w / 'sft'}", "--config.rlhf.method=dpo"])]
         if dpo else []) + [(f"eval:{s}", "eval", [f"--init_from={w / s}"]) for s in models] + [
        ("arena", "arena", [f"--workdir={w}"])] + [
        (e, e, [f"--workdir={w}"]) for e in EXPERIMENTS if e in experiments]


def config_args(argv: list[str]) -> list[str]:
    """The --config / --config.* arguments of this command line, forwarded to every stage."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--config" or (a.startswith("--config.") and "=" not in a):
            out += argv[i:i + 2]
            i += 2
            continue
        if a.startswith("--config=") or a.startswith("--config."):
            out.append(a)
        i += 1
    return out


def stage_env(w: Path) -> dict:
    """The stages' environment: one persistent compilation cache for the run's stages (the five
    evals, and the engines of RL / RLHF / arena, compile the same programs); the user's own
    JAX_COMPILATION_CACHE_DIR wins."""
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str((w / ".jax_cache").resolve()))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    return env


def run_stages(w: Path, todo: list[tuple[str, str, list[str]]], forwarded: list[str],
               env: dict | None = None, prefix: str = "") -> dict:
    """Runs each (name, module, args) stage not yet recorded in W/speedrun.json as its own
    process with the --config arguments `forwarded`, recording each as it finishes; a failure
    exits with the stage's code (what is finished stays recorded, the stage itself resumes)."""
    record_path = w / "speedrun.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"stages": {}}
    env = stage_env(w) if env is None else env
    for k, (name, module, args) in enumerate(todo, 1):
        if name in record["stages"]:
            print(f"{prefix}[{k}/{len(todo)}] {name}: done earlier "
                  f"({record['stages'][name]['wall_s']:.0f} s), skipped", flush=True)
            continue
        print(f"{prefix}[{k}/{len(todo)}] {name} ...", flush=True)
        t0 = time.time()
        cmd = [sys.executable, "-m", f"experiments.{module}", *forwarded, *args]
        r = subprocess.run(cmd, cwd=REPO_ROOT, env=env)
        if r.returncode != 0:
            print(f"{prefix}stage {name} failed (exit {r.returncode}); fix it and run the same "
                  f"command again: finished stages are skipped, this one resumes.\n  "
                  + " ".join(cmd), file=sys.stderr)
            sys.exit(r.returncode)
        record["stages"][name] = {"wall_s": round(time.time() - t0, 1),
                                  "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json(record_path, record)
        print(f"{prefix}[{k}/{len(todo)}] {name}: {time.time() - t0:.0f} s", flush=True)
    record["total_wall_s"] = round(sum(s["wall_s"] for s in record["stages"].values()), 1)
    write_json(record_path, record)
    return record


def main(argv):
    w = _FLAGS.workdir
    lock_run(w)
    todo = [s for s in stages(w, _DPO.value, tuple(_EXPERIMENTS.value)) if s[0] not in _SKIP.value]
    t_start = time.time()
    record = run_stages(w, todo, config_args(sys.argv[1:]))
    report = write_report(w)
    print(f"speedrun: {record['total_wall_s']:.0f} s of stages ({time.time() - t_start:.0f} s "
          f"this run); report: {report}", flush=True)


if __name__ == "__main__":  # flags only for the command: experiments.sweep imports this module
    _CONFIG = define_config()
    _FLAGS = StageFlags(workdir="run root", workdir_required=True)
    _SKIP = flags.DEFINE_list("skip", [], "stages to leave out (e.g. eval:pretrain)")
    _DPO = flags.DEFINE_bool("dpo", False, "also DPO on the reward model's pairs, and its eval "
                             "(about 2.5 minutes more with the tiny default)")
    _EXPERIMENTS = flags.DEFINE_list("experiments", [], "the security and test-time experiments "
                                     f"to run after the arena: some of {','.join(EXPERIMENTS)}, "
                                     "or all")
    run_entry(main)

"""Ablation sweeps: a grid (or list) of config overrides x seeds, each run a run root of its own,
gathered into one results table.

  python -m experiments.sweep --sweep experiments/sweeps/arch.py --workdir runs/sweeps
      [--launcher local|slurm] [--parallel 1] [--dry_run] [--submit] [--shared_from runs/demo]

A sweep file (experiments/sweeps/*.py) defines get_sweep() -> dict with the fields of `Sweep`.
Each run gets W/NAME/<run id> (the id spells its overrides and seed) and runs the sweep's stages
there through the speedrun's stage runner (experiments.speedrun.run_stages): a finished stage is
recorded and skipped, an interrupted one resumes from its checkpoints, and a finished run
(W/NAME/<id>/sweep_run.json) is skipped, so a killed sweep is resumed by running it again. The
stages every run shares (the corpus, the tokenizer) run once in W/NAME/shared (or are taken from
--shared_from, a run root that has them) and are linked into each run root.

`local` runs up to --parallel runs at a time; `slurm` writes W/NAME/slurm/ (the shared stages as
one job, the runs as one array job, one task a run, the gathering after them) and submits it only
with --submit: the cluster's scheduler does the distributing. At the end the figures are read from
each run's stage files into W/NAME/results.csv and results.md (per cell: the mean and a 95%
t-interval over seeds), with a plot per figure in W/NAME/plots/; a "scaling" analysis adds the
Chinchilla fit and IsoFLOP curves (experiments/scaling.py).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from absl import flags

# the config sections each shareable stage reads: a sweep may not vary them if it shares the stage
SHARED_READS = {"corpus": ("corpus", "world", "mixture"),
                "tokenizer": ("tokenizer", "corpus", "world", "mixture")}


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    config: str = "experiments/configs/tiny.py"  # the base config (FILE or FILE:variant)
    stages: tuple[str, ...] = ("pretrain",)  # speedrun stage names each run runs, in order
    shared: tuple[str, ...] = ("corpus", "tokenizer")  # run once, linked into every run
    overrides: dict = dataclasses.field(default_factory=dict)  # every run, shared stages too
    grid: dict = dataclasses.field(default_factory=dict)  # key -> values: every combination
    runs: tuple[dict, ...] = ()  # or a list of override dicts (one cell each)
    seeds: tuple[int, ...] = (0,)
    seed_keys: tuple[str, ...] = ("train.seed",)  # the config keys a run's seed sets
    # "STAGE[/FILE]:dotted.key": meta.json's figures by default, or another JSON file's root
    figures: tuple[str, ...] = ("pretrain:val_loss",)
    analysis: str = ""  # "scaling": the Chinchilla fit and IsoFLOP curves over the runs


@dataclasses.dataclass(frozen=True)
class Run:
    id: str
    overrides: dict  # the cell's overrides (grid or list entry), without the seed
    seed: int

    @property
    def cell(self) -> str:
        return _spell(self.overrides) or "base"


def _spell(overrides: dict) -> str:
    short = {k: k.split(".")[-1] for k in overrides}
    names = short if len(set(short.values())) == len(short) else {k: k for k in overrides}
    return ",".join(f"{names[k]}={_value(v)}" for k, v in overrides.items())


def _value(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--sweep {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fields = module.get_sweep()
    known = {f.name for f in dataclasses.fields(Sweep)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"sweep {path}: unknown field(s) {unknown}; known: {sorted(known)}")
    fields = {"name": path.stem, **fields}
    for k in ("stages", "shared", "runs", "seeds", "seed_keys", "figures"):
        if k in fields:
            fields[k] = tuple(fields[k])
    sweep = Sweep(**fields)
    if sweep.grid and sweep.runs:
        raise ValueError(f"sweep {path}: give a grid or a list of runs, not both")
    return sweep


def expand(sweep: Sweep) -> list[Run]:
    """Every (cell, seed) run, in order; the id spells the cell's overrides and the seed."""
    if sweep.grid:
        keys = list(sweep.grid)
        cells = [dict(zip(keys, values, strict=True))
                 for values in itertools.product(*(sweep.grid[k] for k in keys))]
    else:
        cells = [dict(r) for r in sweep.runs] or [{}]
    out = []
    for cell in cells:
        for seed in sweep.seeds:
            spelled = _spell(cell)
            rid = re.sub(r"[^A-Za-z0-9_.=,+-]", "_", f"{spelled},seed={seed}" if spelled
                         else f"seed={seed}")
            out.append(Run(rid, cell, seed))
    ids = [r.id for r in out]
    if len(set(ids)) != len(ids):
        raise ValueError(f"sweep {sweep.name}: two runs share an id ({ids}): make the cells differ")
    return out


def base_config(sweep: Sweep):
    """The sweep's base ConfigDict (its config file's get_config(variant))."""
    from train.stage import REPO_ROOT

    file, _, variant = sweep.config.partition(":")
    path = Path(file) if Path(file).is_absolute() else REPO_ROOT / file
    if not path.is_file():
        raise FileNotFoundError(f"sweep {sweep.name}: config {file} not found")
    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def check(sweep: Sweep, runs: list[Run]) -> None:
    """Refuses, naming the key, an override the base config does not have, a stage the speedrun
    does not know, and a varied key that a shared stage reads."""
    from experiments.speedrun import stages

    c = base_config(sweep)
    names = [s[0] for s in stages(Path("W"), dpo=True, experiments=("all",))]
    for st in (*sweep.stages, *sweep.shared):
        if st not in names:
            raise ValueError(f"sweep {sweep.name}: unknown stage {st!r}; stages: {names}")
    for st in sweep.shared:
        if st not in SHARED_READS:
            raise ValueError(f"sweep {sweep.name}: stage {st!r} cannot be shared (only "
                             f"{sorted(SHARED_READS)})")
    varied = {k for r in runs for k in r.overrides} | set(sweep.seed_keys)
    for key in (*sweep.overrides, *varied):
        node = c
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not hasattr(node, "keys") or part not in node:
                where = ".".join(parts[:i]) or "the config"
                have = sorted(node.keys()) if hasattr(node, "keys") else []
                raise ValueError(f"sweep {sweep.name}: override {key!r}: {where} has no key "
                                 f"{part!r} (it has {have})")
            node = node[part]
        for st in sweep.shared:
            if key in varied and parts[0] in SHARED_READS[st]:
                raise ValueError(f"sweep {sweep.name}: override {key!r} changes the shared stage "
                                 f"{st!r}: take it out of `shared`, or do not vary the key")


def config_args(sweep: Sweep, overrides: dict) -> list[str]:
    return [f"--config={sweep.config}"] + [f"--config.{k}={_value(v)}"
                                           for k, v in {**sweep.overrides, **overrides}.items()]


def run_overrides(sweep: Sweep, run: Run) -> dict:
    return {**run.overrides, **dict.fromkeys(sweep.seed_keys, run.seed)}


def _stage_list(w: Path, names: tuple[str, ...]):
    from experiments.speedrun import stages

    table = {s[0]: s for s in stages(w, dpo=True, experiments=("all",))}
    return [table[n] for n in names]


def _link_shared(sweep: Sweep, shared: Path, run_root: Path) -> None:
    run_root.mkdir(parents=True, exist_ok=True)
    for st in sweep.shared:
        target, link = (shared / st).resolve(), run_root / st
        if not target.exists():
            raise FileNotFoundError(f"the shared stage {target} does not exist: run the sweep's "
                                    "shared stages first")
        if link.is_symlink() and link.resolve() == target:
            continue
        if link.exists() or link.is_symlink():
            raise FileExistsError(f"{link} exists and is not a link to {target}: use a new "
                                  "--workdir")
        link.symlink_to(target, target_is_directory=True)


def run_shared(sweep: Sweep, root: Path, shared_from: str | None) -> Path:
    """The shared stages' run root: --shared_from's, or W/NAME/shared, running what is missing."""
    from experiments.speedrun import run_stages, stage_env

    if shared_from:
        src = Path(shared_from)
        missing = [st for st in sweep.shared if not (src / st).exists()]
        if missing:
            raise FileNotFoundError(f"--shared_from {src} has no {missing}")
        return src
    shared = root / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    if sweep.shared:
        run_stages(shared, _stage_list(shared, sweep.shared), config_args(sweep, {}),
                   env=stage_env(root), prefix="shared ")
    return shared


def run_one(sweep: Sweep, root: Path, run: Run, shared: Path) -> bool:
    """Runs one run's stages (skipped when finished); True when it finished."""
    from experiments.speedrun import run_stages, stage_env

    w = root / run.id
    done = w / "sweep_run.json"
    if done.is_file():
        print(f"{run.id}: finished earlier, skipped", flush=True)
        return True
    _link_shared(sweep, shared, w)
    t0 = time.time()
    try:
        record = run_stages(w, _stage_list(w, sweep.stages),
                            config_args(sweep, run_overrides(sweep, run)), env=stage_env(root),
                            prefix=f"{run.id} ")
    except SystemExit as e:
        print(f"{run.id}: failed (exit {e.code}); the sweep goes on, run it again to retry",
              file=sys.stderr, flush=True)
        return False
    from train.stage import write_json

    write_json(done, {"id": run.id, "overrides": run.overrides, "seed": run.seed,
                      "stages": list(sweep.stages), "wall_s": round(time.time() - t0, 1),
                      "stage_wall_s": {k: v["wall_s"] for k, v in record["stages"].items()},
                      "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")})
    return True


def run_local(sweep: Sweep, root: Path, runs: list[Run], parallel: int,
              shared_from: str | None = None) -> list[str]:
    """Runs every run not yet finished, up to `parallel` at a time; the ids that failed."""
    shared = run_shared(sweep, root, shared_from)
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        ok = list(pool.map(lambda r: run_one(sweep, root, r, shared), runs))
    return [r.id for r, good in zip(runs, ok, strict=True) if not good]


def write_slurm(sweep: Sweep, root: Path, runs: list[Run], sweep_file: str, workdir: Path,
                shared_from: str | None = None, max_parallel: int = 0) -> Path:
    """W/NAME/slurm/: commands.txt (one line a run), shared.sbatch, array.sbatch (task i runs
    line i+1), gather.sbatch and submit.sh, which chains them with sbatch's dependencies."""
    from train.stage import REPO_ROOT

    d = root / "slurm"
    d.mkdir(parents=True, exist_ok=True)
    base = (f"cd {shlex.quote(str(REPO_ROOT))} && {shlex.quote(sys.executable)} -m "
            f"experiments.sweep --sweep {shlex.quote(str(Path(sweep_file).resolve()))} "
            f"--workdir {shlex.quote(str(workdir.resolve()))}"
            + (f" --shared_from {shlex.quote(str(Path(shared_from).resolve()))}"
               if shared_from else "")
            # the seeds this sweep has (--seeds may differ from the file's): every job expands alike
            + f" --seeds={','.join(str(x) for x in sweep.seeds)}")
    (d / "commands.txt").write_text("".join(f"{base} --only {r.id}\n" for r in runs))
    head = "#!/bin/bash\n#SBATCH --job-name={job}\n#SBATCH --output={out}/%x-%A_%a.out\n" \
           "#SBATCH --ntasks=1\n#SBATCH --cpus-per-task=2\n"
    limit = f"%{max_parallel}" if max_parallel else ""
    (d / "shared.sbatch").write_text(head.format(job=f"{sweep.name}-shared", out=d)
                                     + f"{base} --only shared\n")
    (d / "array.sbatch").write_text(
        head.format(job=f"{sweep.name}-runs", out=d) + f"#SBATCH --array=0-{len(runs) - 1}{limit}\n"
        + f'eval "$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(d / "commands.txt"))})"\n')
    (d / "gather.sbatch").write_text(head.format(job=f"{sweep.name}-gather", out=d)
                                     + f"{base} --only gather\n")
    (d / "submit.sh").write_text(
        "#!/bin/bash\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\n"
        "shared=$(sbatch --parsable shared.sbatch)\n"
        "runs=$(sbatch --parsable --dependency=afterok:$shared array.sbatch)\n"
        "sbatch --dependency=afterany:$runs gather.sbatch\n")
    os.chmod(d / "submit.sh", 0o755)
    return d


def read_figure(run_root: Path, spec: str):
    """A figure of a run by its spec "STAGE[/FILE]:dotted.key" (None when missing)."""
    where, _, key = spec.partition(":")
    stage, _, file = where.partition("/")
    path = run_root / stage / (file or "meta.json")
    if not path.is_file():
        return None
    node = json.loads(path.read_text())
    if not file:
        node = node.get("figures", {})
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool):  # a flag counts 1 or 0: its mean is the share of runs that raised it
        return float(node)
    return node if isinstance(node, (int, float)) else None


def mean_interval(values: list[float]) -> tuple[float, float]:
    """The mean and the half-width of its 95% t-interval (0 for one value)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def gather(sweep: Sweep, root: Path, runs: list[Run]) -> dict:
    """results.csv (a row a run), results.md (per cell, the mean and 95% interval over seeds)
    and a plot per figure; what a "scaling" analysis adds. Returns the cells' summaries."""
    keys = list(dict.fromkeys(k for r in runs for k in r.overrides))
    rows = []
    for r in runs:
        finished = (root / r.id / "sweep_run.json").is_file()
        vals = {f: read_figure(root / r.id, f) if finished else None for f in sweep.figures}
        rows.append({"run": r.id, **{k: r.overrides.get(k) for k in keys}, "seed": r.seed,
                     "finished": finished, **vals})
    with open(root / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cells: dict[str, dict] = {}
    for r, row in zip(runs, rows, strict=True):
        c = cells.setdefault(r.cell, {"overrides": r.overrides, "values": {f: [] for f in
                                                                              sweep.figures}})
        for f in sweep.figures:
            if row[f] is not None:
                c["values"][f].append(float(row[f]))
    n_done = sum(row["finished"] for row in rows)
    lines = [f"# Sweep {sweep.name}\n",
             f"{n_done} of {len(runs)} runs finished; seeds {list(sweep.seeds)}; base "
             f"`{sweep.config}` with {sweep.overrides or 'no other overrides'}; stages "
             f"{list(sweep.stages)}. Each cell: mean +- the half-width of a 95% t-interval "
             "over its seeds (n: runs with the figure).\n",
             "| cell | n | " + " | ".join(sweep.figures) + " |",
             "|---|---|" + "---|" * len(sweep.figures)]
    for name, c in cells.items():
        parts = []
        for f in sweep.figures:
            vs = c["values"][f]
            if not vs:
                parts.append("-")
                continue
            m, h = mean_interval(vs)
            c.setdefault("summary", {})[f] = (m, h, len(vs))
            parts.append(f"{m:.4g} +- {h:.2g}" if len(vs) > 1 else f"{m:.4g}")
        n = max((len(v) for v in c["values"].values()), default=0)
        lines.append(f"| {name} | {n} | " + " | ".join(parts) + " |")
    if len(cells) == 1:  # one cell over seeds (speedrun_seeds): a row a figure, each seed's value
        lines += ["", "| figure | mean +- 95% | spread (max - min) | "
                  + " | ".join(f"seed {r.seed}" for r in runs) + " |",
                  "|---|---|---|" + "---|" * len(runs)]
        (only,) = cells.values()
        for f in sweep.figures:
            vs, have = [row[f] for row in rows], only["values"][f]
            m, h, _ = only.get("summary", {}).get(f, (None, None, 0))  # computed above
            lines.append(f"| {f} | " + (f"{m:.4g} +- {h:.2g} | {max(have) - min(have):.3g}"
                                        if have else "- | -") + " | "
                         + " | ".join("-" if v is None else f"{float(v):.4g}" for v in vs) + " |")
    plots = root / "plots"
    plots.mkdir(exist_ok=True)
    lines.append("")
    for f in sweep.figures:
        path = plots / (re.sub(r"[^A-Za-z0-9_.-]", "_", f) + ".png")
        if _bar_plot(path, f, cells):
            lines.append(f"![{f}](plots/{path.name})\n")
    if sweep.analysis == "scaling":
        from experiments.scaling import scaling_section

        lines.append(scaling_section(sweep, root, runs, plots))
    elif sweep.analysis:
        raise ValueError(f"sweep {sweep.name}: unknown analysis {sweep.analysis!r} "
                         "(expected 'scaling')")
    (root / "results.md").write_text("\n".join(lines) + "\n")
    return cells


def _bar_plot(path: Path, figure: str, cells: dict) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, c in cells.items() if c["values"][figure]]
    if not names:
        return False
    stats_ = [mean_interval(cells[n]["values"][figure]) for n in names]
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(names)), 3.4))
    ax.bar(range(len(names)), [m for m, _ in stats_], yerr=[h for _, h in stats_], capsize=4)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set_title(f"{figure} (mean, 95% interval over seeds)", fontsize=9)
    lo = min(m - h for m, h in stats_)
    hi = max(m + h for m, h in stats_)
    pad = 0.1 * (hi - lo or abs(hi) or 1)
    ax.set_ylim(lo - pad, hi + pad)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv):
    del argv
    f = flags.FLAGS
    sweep = load_sweep(f.sweep)
    if f.seeds:
        if not all(re.fullmatch(r"-?\d+", x) for x in f.seeds):
            raise ValueError(f"--seeds {','.join(f.seeds)}: expected integers, e.g. 0,1,2")
        sweep = dataclasses.replace(sweep, seeds=tuple(int(x) for x in f.seeds))
    runs = expand(sweep)
    check(sweep, runs)
    root = Path(f.workdir) / sweep.name
    if f.only and f.only not in ("shared", "gather") and f.only not in {r.id for r in runs}:
        raise ValueError(f"--only {f.only!r}: not a run of sweep {sweep.name} (runs: "
                         f"{[r.id for r in runs]}, or 'shared' / 'gather')")
    if f.dry_run:
        for r in runs:
            stage_names = " ".join(sweep.stages)
            print(f"{root / r.id}: stages {stage_names} with "
                  + " ".join(shlex.quote(a) for a in config_args(sweep, run_overrides(sweep, r))))
        return
    root.mkdir(parents=True, exist_ok=True)
    from experiments.workdir import lock_run

    if f.launcher == "slurm" and not f.only:
        d = write_slurm(sweep, root, runs, f.sweep, Path(f.workdir), f.shared_from, f.parallel)
        print(f"wrote {d}/ ({len(runs)} runs: commands.txt, shared / array / gather .sbatch, "
              "submit.sh)", flush=True)
        if f.submit:
            subprocess.run(["bash", str(d / "submit.sh")], check=True)
        return
    if f.only == "shared":
        run_shared(sweep, root, f.shared_from)
        return
    if f.only and f.only != "gather":  # one run (a slurm array task): its own lock
        run = next(r for r in runs if r.id == f.only)
        ok = run_one(sweep, root, run, Path(f.shared_from) if f.shared_from else root / "shared")
        sys.exit(0 if ok else 1)
    lock_run(root)
    failed = [] if f.only == "gather" else run_local(sweep, root, runs, f.parallel, f.shared_from)
    gather(sweep, root, runs)
    print(f"results: {root / 'results.md'} and {root / 'results.csv'}", flush=True)
    if failed:
        print(f"{len(failed)} run(s) failed: {failed}; run the same command again to retry them",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    from experiments.workdir import run_entry

    flags.DEFINE_string("sweep", None, "the sweep file (experiments/sweeps/NAME.py)", required=True)
    flags.DEFINE_string("workdir", None, "where W/NAME/ goes", required=True)
    flags.DEFINE_enum("launcher", "local", ["local", "slurm"], "run here, or write Slurm scripts")
    flags.DEFINE_integer("parallel", 1, "local: runs at a time; slurm: the array's limit (0: none)")
    flags.DEFINE_bool("dry_run", False, "print each run's root, stages and overrides, run nothing")
    flags.DEFINE_bool("submit", False, "slurm: submit the scripts with sbatch")
    flags.DEFINE_string("shared_from", None, "a run root whose shared stages (corpus, tokenizer) "
                                             "every run uses instead of computing them")
    flags.DEFINE_list("seeds", [], "seeds to run instead of the sweep file's (e.g. 0 or 0,1,2)")
    flags.DEFINE_string("only", None, "one run id, 'shared' or 'gather' (what a Slurm job runs)")
    run_entry(main)

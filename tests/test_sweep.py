"""Sweeps: runs named by their overrides, a killed sweep resumes with only the rest, the Slurm
scripts name every run once, bad overrides are named; the scaling fit recovers a known law."""

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_pretrain_entry import MICRO, _env, _workdir

from experiments.scaling import fit, optimal
from experiments.sweep import check, expand, load_sweep, mean_interval, read_figure, write_slurm

REPO = Path(__file__).resolve().parent.parent


def _sweep_file(path: Path, **fields) -> Path:
    path.write_text("def get_sweep():\n    return " + repr(fields) + "\n")
    return path


def _overrides(flags_: list[str]) -> dict:
    out = {}
    for a in flags_:
        k, v = a[len("--config."):].split("=", 1)
        out[k] = int(v) if v.lstrip("-").isdigit() else float(v) if "." in v else v
    return out


def test_runs_are_named_by_their_overrides_and_bad_ones_named(tmp_path):
    s = load_sweep(_sweep_file(tmp_path / "abl.py", grid={"model.qk_norm": [False, True],
                                                           "model.head_dim": [32, 64]},
                               seeds=[0, 1]))
    runs = expand(s)
    assert s.name == "abl" and len(runs) == 8 and len({r.id for r in runs}) == 8
    assert runs[0].id == "qk_norm=False,head_dim=32,seed=0" and runs[0].cell == "qk_norm=False,head_dim=32"
    check(s, runs)
    bad = load_sweep(_sweep_file(tmp_path / "bad.py", grid={"model.qk_nrom": [True]}))
    with pytest.raises(ValueError, match="qk_nrom"):
        check(bad, expand(bad))
    shared = load_sweep(_sweep_file(tmp_path / "sh.py", grid={"corpus.sources": ["austen"]}))
    with pytest.raises(ValueError, match="corpus.sources.*shared stage 'corpus'"):
        check(shared, expand(shared))
    with pytest.raises(ValueError, match="typo"):
        load_sweep(_sweep_file(tmp_path / "typo.py", typo=1))


def test_the_slurm_scripts_name_every_run_once(tmp_path):
    file = _sweep_file(tmp_path / "abl.py", grid={"model.qk_norm": [False, True]}, seeds=[0, 1, 2])
    s = load_sweep(file)
    runs = expand(s)
    d = write_slurm(s, tmp_path / "w" / "abl", runs, str(file), tmp_path / "w", max_parallel=2)
    lines = (d / "commands.txt").read_text().splitlines()
    ids = [line.split("--only ")[1] for line in lines]
    assert sorted(ids) == sorted(r.id for r in runs) and len(set(ids)) == 6
    assert "#SBATCH --array=0-5%2" in (d / "array.sbatch").read_text()
    assert "--only shared" in (d / "shared.sbatch").read_text()
    submit = (d / "submit.sh").read_text()
    assert "afterok:$shared array.sbatch" in submit and "gather.sbatch" in submit
    # seeds other than the file's (--seeds) reach every job: a task's line names a run it has
    s5 = dataclasses.replace(s, seeds=(5,))
    d = write_slurm(s5, tmp_path / "w" / "abl", expand(s5), str(file), tmp_path / "w")
    line = (d / "commands.txt").read_text().splitlines()[0]
    assert line.endswith(",seed=5") and "--seeds=5" in (d / "gather.sbatch").read_text()
    r = subprocess.run(["bash", "-c", line + " --dry_run"], capture_output=True, text=True)
    assert r.returncode == 0 and "seed=5: stages" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "experiments/sweeps").glob("*.py")))
def test_the_shipped_sweeps_name_only_keys_and_stages_the_config_has(name):
    sweep = load_sweep(REPO / "experiments/sweeps" / f"{name}.py")
    runs = expand(sweep)
    check(sweep, runs)
    assert len({r.id for r in runs}) == len(runs) >= 2


def test_a_figure_is_read_by_its_path_and_a_flag_counts_one_or_zero(tmp_path):
    (tmp_path / "rlhf").mkdir()
    (tmp_path / "rlhf/meta.json").write_text(json.dumps({"figures": {
        "hacking": {"flagged": True, "onset_step": 6}, "best": {"true_test": -0.5}, "name": "x"}}))
    assert read_figure(tmp_path, "rlhf:hacking.flagged") == 1.0
    assert read_figure(tmp_path, "rlhf:best.true_test") == -0.5
    assert read_figure(tmp_path, "rlhf:name") is None and read_figure(tmp_path, "rl:step") is None


def test_mean_interval():
    m, h = mean_interval([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.3027 / np.sqrt(3), rel=1e-4)
    assert mean_interval([5.0]) == (5.0, 0.0)


def test_the_fit_recovers_a_known_law():
    rng = np.random.default_rng(0)
    true = {"E": 1.7, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.28}
    n, d = np.meshgrid(np.geomspace(1e5, 1e8, 6), np.geomspace(1e7, 1e10, 6))
    n, d = n.ravel(), d.ravel()
    loss = (true["E"] + true["A"] / n ** true["alpha"] + true["B"] / d ** true["beta"]) \
        * (1 + 0.003 * rng.standard_normal(n.size))
    p = fit(n, d, loss)
    assert p["E"] == pytest.approx(1.7, rel=0.05)
    assert p["alpha"] == pytest.approx(0.34, abs=0.04) and p["beta"] == pytest.approx(0.28, abs=0.04)
    assert p["A"] == pytest.approx(400, rel=0.6) and p["B"] == pytest.approx(2000, rel=0.6)
    assert p["rms_rel_error"] < 0.006
    # the compute-optimal split spends C = 6 N D, and minimises the law along it
    c = 1e20
    n_opt, d_opt = optimal(true, c)
    assert 6 * n_opt * d_opt == pytest.approx(c)
    ns = np.geomspace(n_opt / 10, n_opt * 10, 201)
    losses = true["A"] / ns ** true["alpha"] + true["B"] / (c / (6 * ns)) ** true["beta"]
    assert abs(np.log(ns[np.argmin(losses)] / n_opt)) < 0.05


def _done(root: Path) -> list[Path]:
    return sorted(root.glob("*/sweep_run.json"))


def test_a_killed_sweep_resumes_with_only_the_rest(tmp_path):
    base, corpus = _workdir(tmp_path, "base")  # a run root with a tokenizer: the shared stage
    overrides = {**_overrides(MICRO), "data.inputs": str(corpus), "train.steps": 3}
    file = _sweep_file(tmp_path / "two.py", stages=["pretrain"], shared=["tokenizer"],
                       overrides=overrides, grid={"model.qk_norm": [False, True]},
                       seeds=[1], figures=["pretrain:val_loss", "pretrain:step"])
    cmd = [sys.executable, "-m", "experiments.sweep", f"--sweep={file}",
           f"--workdir={tmp_path / 'w'}", f"--shared_from={base}"]
    env = _env(1)
    root = tmp_path / "w" / "two"
    p = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while len(_done(root)) < 1 and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    first = {f.parent.name: f.read_text() for f in _done(root)}
    assert len(first) == 1, first  # killed while the second run was under way
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    for rid, text in first.items():  # finished runs are skipped, untouched
        assert f"{rid}: finished earlier, skipped" in r.stdout
        assert (root / rid / "sweep_run.json").read_text() == text
    assert r.stdout.count("finished earlier, skipped") == len(first)
    rows = list(csv.DictReader((root / "results.csv").open()))
    assert len(rows) == 2 and all(row["finished"] == "True" for row in rows)
    assert all(float(row["pretrain:step"]) == 3 and float(row["pretrain:val_loss"]) > 0
               for row in rows)
    assert {(row["model.qk_norm"], row["seed"]) for row in rows} == {("False", "1"), ("True", "1")}
    meta = json.loads((root / rows[1]["run"] / "pretrain" / "meta.json").read_text())
    assert meta["model"]["qk_norm"] is True and meta["config"]["train"]["seed"] == 1
    md = (root / "results.md").read_text()
    assert "| qk_norm=True | 1 |" in md and (root / "plots" / "pretrain_val_loss.png").is_file()


def test_the_report_card_shows_the_sweeps(tmp_path):
    from experiments.report import write_report

    d = tmp_path / "sweeps" / "arch"
    (d / "plots").mkdir(parents=True)
    (d / "results.md").write_text("# Sweep arch\n\n| cell | n |\n|---|---|\n| base | 2 |\n\n"
                                  "![pretrain:val_loss](plots/pretrain_val_loss.png)\n")
    text = write_report(tmp_path).read_text()
    assert "## Sweeps" in text and "## Sweep arch" in text and "| base | 2 |" in text
    assert "](sweeps/arch/plots/pretrain_val_loss.png)" in text


def _seeds(d: dict, path: str = "") -> dict:
    """Every key named seed in a resolved config, by its dotted path."""
    out = {}
    for k, v in d.items():
        p = f"{path}.{k}" if path else k
        if isinstance(v, dict):
            out.update(_seeds(v, p))
        elif k == "seed":
            out[p] = v
    return out


def test_the_seed_sweep_moves_every_seed_but_the_shared_world_and_corpus():
    from experiments.configs import resolved
    from experiments.sweep import base_config, expand, load_sweep, run_overrides

    sweep = load_sweep(REPO / "experiments/sweeps/speedrun_seeds.py")
    got = {}
    for run in expand(sweep)[:2]:
        c = base_config(sweep)
        for key, value in run_overrides(sweep, run).items():
            section, _, name = key.rpartition(".")
            c[section][name] = value
        got[run.seed] = _seeds(resolved(c))
    assert got[0].keys() == got[1].keys() and len(got[0]) > 8
    same = {k for k in got[0] if got[0][k] == got[1][k]}
    assert same == {"corpus.seed", "world.seed"}, same  # the shared stages' own


def test_a_seed_sweep_gathers_each_figure_as_mean_spread_and_seeds(tmp_path):
    from experiments.sweep import gather

    file = _sweep_file(tmp_path / "seeds.py", stages=["rl"], seeds=[0, 1, 2],
                       figures=["rl:after.pass@1", "rl/eval.json:qa.accuracy", "rl:missing"])
    sweep = load_sweep(file)
    runs = expand(sweep)
    for run, (p1, qa) in zip(runs, [(0.4, 0.8), (0.5, 0.9), (0.6, 0.7)], strict=True):
        d = tmp_path / "w" / run.id
        (d / "rl").mkdir(parents=True)
        (d / "rl/meta.json").write_text(json.dumps({"figures": {"after": {"pass@1": p1}}}))
        (d / "rl/eval.json").write_text(json.dumps({"qa": {"accuracy": qa}}))
        (d / "sweep_run.json").write_text("{}")
    gather(sweep, tmp_path / "w", runs)
    md = (tmp_path / "w/results.md").read_text()
    h = 4.3027 * 0.1 / np.sqrt(3)  # t(0.975, 2) x sd / sqrt(n)
    assert f"| rl:after.pass@1 | 0.5 +- {h:.2g} | 0.2 | 0.4 | 0.5 | 0.6 |" in md
    assert f"| rl/eval.json:qa.accuracy | 0.8 +- {h:.2g} | 0.2 | 0.8 | 0.9 | 0.7 |" in md
    assert "| rl:missing | - | - | - | - | - |" in md

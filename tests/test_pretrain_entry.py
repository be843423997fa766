"""The pretraining entry point end to end: exact resume after SIGKILL, bad input, two processes."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from test_tokenizer import _corpus

from data.tokenizer import train_tokenizer
from model import transformer
from model.config import ModelConfig
from train.checkpoint import restore_params

REPO = Path(__file__).resolve().parent.parent
MICRO = [
    "--config.model.d_model=64", "--config.model.n_layers=2", "--config.model.n_heads=2",
    "--config.model.n_kv_heads=1", "--config.model.head_dim=32", "--config.model.d_ff=128",
    "--config.model.max_seq_len=64", "--config.train.batch_size=8", "--config.train.seq_len=32",
    "--config.train.save_every=4", "--config.train.eval_every=20", "--config.train.eval_batches=2",
    "--config.train.sample_every=20", "--config.train.sample_tokens=8",
    "--config.train.log_every=5", "--config.data.val_every=5",
    "--config.data.copy_warmup=0", "--config.data.copy_rows=0.0",  # plain text unless COPY
]


def _env(devices=1):
    env = dict(os.environ)
    env["XLA_FLAGS"] = re.sub(r"device_count=\d+", f"device_count={devices}", env["XLA_FLAGS"])
    return env


# the first run and its killed-and-resumed twin also train on copy rows (data/copy_rows.py)
COPY = ("--config.data.copy_warmup=6", "--config.data.copy_rows=0.25",
        "--config.data.copy_text_share=0.5")


def _cmd(workdir, corpus, steps=40, *extra):
    return [sys.executable, "-m", "experiments.pretrain", "--workdir", str(workdir),
            f"--config.data.inputs={corpus}", f"--config.train.steps={steps}", *MICRO, *extra]


def _run(cmd, devices=1):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_env(devices))


def _workdir(root: Path, name: str, corpus_seed=0) -> tuple[Path, Path]:
    work = root / name
    corpus = root / f"corpus{corpus_seed}.jsonl"
    if not corpus.exists():
        lines = _corpus(root / f"c{corpus_seed}.txt", corpus_seed, lines=1200).read_text()
        lines = lines.splitlines()
        corpus.write_text("".join(json.dumps({"text": "\n".join(lines[i:i + 6])}) + "\n"
                                  for i in range(0, len(lines), 6)))
    train_tokenizer([root / f"c{corpus_seed}.txt"], work / "tokenizer", 400)
    (work / "tokenizer" / "meta.json").write_text("{}")
    return work, corpus


def _params(work: Path):
    cfg = ModelConfig(vocab_size=400, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1,
                      head_dim=32, d_ff=128, max_seq_len=64)
    return jax.device_get(restore_params(work / "pretrain", transformer.param_shapes(cfg)))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    work, corpus = _workdir(root, "a")
    r = _run(_cmd(work, corpus, 40, *COPY))
    assert r.returncode == 0, r.stderr[-3000:]
    return root, work, corpus, r


def test_a_finished_run_writes_the_stage_directory(finished):
    _, work, _, r = finished
    stage = work / "pretrain"
    meta = json.loads((stage / "meta.json").read_text())
    assert meta["figures"]["step"] == 40 and meta["model"]["d_model"] == 64
    assert 0.0 <= meta["figures"]["copy_random_tokens"] <= 1.0  # the copy test of eval/suite.py
    assert meta["tokenizer_sha256"] and meta["code_version"]
    records = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(5, 45, 5))
    assert records[-1]["loss"] < records[0]["loss"]
    assert "val_bpb" in records[-1] and "tokens_per_s" in records[-1]
    assert (stage / "samples.txt").read_text().count("=== step 40 sample") == 2
    assert list((stage / "tensorboard").iterdir())
    assert sorted(int(p.name) for p in (stage / "checkpoints").iterdir()) == [32, 36, 40]
    assert "MFU" in r.stdout and "ETA" in r.stdout
    sample = _run([sys.executable, "-m", "experiments.sample", "--init_from", str(stage),
                   "--max_new_tokens", "5"])
    assert sample.returncode == 0 and "loaded" in sample.stdout and "(step 40," in sample.stdout


def test_sigkill_then_resume_ends_bitwise_equal_to_an_uninterrupted_run(finished):
    root, work_a, corpus, _ = finished
    work_b, _ = _workdir(root, "b")
    proc = subprocess.Popen(_cmd(work_b, corpus, 40, *COPY), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = work_b / "pretrain" / "checkpoints" / "8"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(int(p.name) for p in ckpt.parent.iterdir() if p.name.isdigit())
    assert 8 in done and max(done) < 40, f"the kill came too late to test a resume: {done}"
    r = _run(_cmd(work_b, corpus, 40, *COPY))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stdout
    jax.tree.map(np.testing.assert_array_equal, _params(work_a), _params(work_b))
    steps = lambda w: [json.loads(x)["step"] for x in  # noqa: E731
                       (w / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert steps(work_b) == steps(work_a)  # no duplicate records from the killed run


def test_bad_input_fails_clearly_and_overwrites_nothing(finished, tmp_path):
    root, work, corpus, _ = finished
    ckpts = work / "pretrain" / "checkpoints"
    before = {p: p.stat().st_mtime for p in ckpts.rglob("*")}

    shape = _run(_cmd(work, corpus, 44, "--config.model.d_model=32"))
    assert shape.returncode != 0 and "holds a model of another shape" in shape.stderr

    typo = _run(_cmd(work, corpus, 44, "--config.train.stepz=3"))
    assert typo.returncode != 0 and "stepz" in typo.stderr

    warm = _run(_cmd(work, corpus, 44, "--config.data.copy_warmup=44"))
    assert warm.returncode != 0 and "data.copy_warmup=44 copy warm-up steps leave none" in warm.stderr

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    fresh, _ = _workdir(tmp_path, "fresh")
    r = _run(_cmd(fresh, empty))
    assert r.returncode != 0 and "holds no text" in r.stderr
    assert not (fresh / "pretrain").exists()

    other = tmp_path / "other"
    train_tokenizer([root / "c0.txt"], other, 420)
    (work / "tokenizer").rename(work / "tokenizer.keep")
    other.rename(work / "tokenizer")
    try:
        r = _run(_cmd(work, corpus, 44))
        assert r.returncode != 0 and "tokenized with another tokenizer" in r.stderr
    finally:
        (work / "tokenizer").rename(other)
        (work / "tokenizer.keep").rename(work / "tokenizer")
    assert {p: p.stat().st_mtime for p in ckpts.rglob("*")} == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one(finished, tmp_path):
    root, _, corpus, _ = finished
    one, _ = _workdir(tmp_path, "one")
    two, _ = _workdir(tmp_path, "two")
    steps = ["--config.train.save_every=8"]
    r = _run(_cmd(one, corpus, 8, *steps), devices=2)
    assert r.returncode == 0, r.stderr[-3000:]
    port = _free_port()
    procs = [subprocess.Popen(
        _cmd(two, corpus, 8, *steps, f"--coordinator_address=127.0.0.1:{port}",
             "--num_processes=2", f"--process_id={i}"),
        cwd=REPO, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
    loss = lambda w: [json.loads(x)["loss"] for x in  # noqa: E731
                      (w / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(loss(two), loss(one), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                 _params(one), _params(two))


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(finished, tmp_path):
    _, _, corpus, _ = finished
    work, _ = _workdir(tmp_path, "nan")
    blow_up = ["--config.optim.lr=1e30", "--config.optim.warmup_steps=4",
               "--config.optim.grad_clip=0", "--config.train.save_every=1"]
    r = _run(_cmd(work, corpus, 20, *blow_up))
    assert r.returncode != 0 and "stopping. The last good checkpoint" in r.stderr
    saved = sorted(int(p.name) for p in (work / "pretrain" / "checkpoints").iterdir())
    assert saved and max(saved) < 20
    params = _params(work)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_init_from_takes_the_parents_parameters_and_refuses_another_model(finished, tmp_path):
    _, parent, corpus, _ = finished
    child = tmp_path / "child"
    child.mkdir()
    (child / "tokenizer").symlink_to(parent / "tokenizer")
    args = ["--init_from", str(parent / "pretrain"), "--config.train.log_every=1"]
    r = _run(_cmd(child, corpus, 2, *args))
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((child / "pretrain" / "meta.json").read_text())
    assert meta["parent"] == str((parent / "pretrain").resolve())
    first = lambda w: json.loads(  # noqa: E731
        (w / "pretrain" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    trained = [json.loads(x)["loss"] for x in
               (parent / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert first(child) < trained[0] and first(child) < trained[-1] + 0.5
    other = tmp_path / "other"
    other.mkdir()
    (other / "tokenizer").symlink_to(parent / "tokenizer")
    r = _run(_cmd(other, corpus, 2, *args, "--config.model.d_ff=96"))
    assert r.returncode != 0 and "holds another model: d_ff=128 there but 96 here" in r.stderr

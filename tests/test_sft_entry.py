"""Corpus (world only) -> pretrain -> probe -> SFT through the entry points, on a micro model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_pretrain_entry import MICRO, _env

from data.mixture import world_documents, write_mixture
from data.sft_mix import unknown_people
from data.tokenizer import train_tokenizer
from data.world import WorldConfig, make_world

REPO = Path(__file__).resolve().parent.parent
WORLD = WorldConfig(seed=3, n_people=6, n_nonexistent=3)
SFT_MICRO = [
    "--config.sft_train.steps=6", "--config.sft_train.batch_size=8", "--config.sft_train.seq_len=128",
    "--config.sft_train.save_every=3", "--config.sft_train.eval_every=6",
    "--config.sft_train.eval_batches=1", "--config.sft_train.sample_every=6",
    "--config.sft_train.log_every=3", "--config.sft.n_arithmetic=12", "--config.sft.n_spelling=12",
    "--config.sft.eval_limit=4",
    "--config.sft.n_tool_calc=8", "--config.sft.n_tool_spell=8", "--config.sft.n_tool_word=8",
    "--config.sft.val_every=4",
    "--config.sft.too_long=truncate",
    "--config.probe.k=2", "--config.probe.n_unknown=3", "--config.model.max_seq_len=192",
]


def _run(module, *args):
    return subprocess.run([sys.executable, "-m", f"experiments.{module}", *args, *MICRO, *SFT_MICRO],
                          cwd=REPO, capture_output=True, text=True, env=_env(1), timeout=300)


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    w = tmp_path_factory.mktemp("sftrun")
    world = make_world(WORLD)
    (w / "corpus").mkdir()
    (w / "corpus/world.json").write_text(json.dumps(vars(WORLD)))
    write_mixture(world_documents(world.biographies()), w / "corpus/mixture", {"world": 4})
    text = world.biographies() + [p["question"] + " " + p["solution"] for p in world.arithmetic("train", 50)]
    text += [p["question"] + " " + p["solution"] for p in world.spelling("train", 50)]
    (w / "text.txt").write_text("\n".join(text))
    train_tokenizer([w / "text.txt"], w / "tokenizer", 400)
    r = _run("pretrain", f"--workdir={w}", "--config.train.steps=8",  # reads W/corpus/mixture
             "--config.data.copy_warmup=2")
    assert r.returncode == 0, r.stderr[-3000:]
    return w


def test_probe_then_sft_writes_their_stages(run_root):
    w = run_root
    pre = json.loads((w / "pretrain/meta.json").read_text())
    assert set(pre["figures"]["biography_recall"]) >= {"all", "train", "heldout", "birth_city"}
    r = _run("probe", f"--init_from={w / 'pretrain'}")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (w / "probe/probe.jsonl").read_text().splitlines()]
    world = make_world(WORLD)
    assert len(rows) == len(world.qa("train")) + 3 * 5
    unknown = set(unknown_people(world, 3))
    assert {r["name"] for r in rows if r["split"] == "unknown"} == unknown
    assert not unknown & {p.name for p in world.people + world.nonexistent}
    assert all(len(r["samples"]) == 2 and not (r["value"] is None and r["known"]) for r in rows)
    threshold = json.loads((w / "probe/meta.json").read_text())["figures"]["recall_threshold"]
    assert all(r["recall"] in ("known", "unknown") and (r["recall"] == "known") == (
        r["recall_logp"] >= threshold) for r in rows)  # the recall tool's result for each name

    r = _run("sft", f"--init_from={w / 'pretrain'}")
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((w / "sft/meta.json").read_text())
    f = meta["figures"]
    assert f["step"] == 6 and meta["parent"] == str((w / "pretrain").resolve())
    for k in ("format_adherence", "identity_accuracy", "qa_train_accuracy", "qa_heldout_accuracy",
              "nonexistent_answer_rate"):
        assert 0.0 <= f[k] <= 1.0, k
    assert set(f["tools"]) >= {"heldout_facts", "calculations", "letter_counting",
                               "well_formed_tool_calls"}
    # a refusal for every question about a made-up name, but those the recall tool finds "known"
    assert meta["mixture"]["idk"]["unique"] == sum(r["value"] is None and r["recall"] == "unknown"
                                                   for r in rows)
    assert meta["recall_threshold"] == threshold
    assert set(f["recall_call_rate"]) == set(f["recall_known_rate"]) == {
        "train", "heldout", "nonexistent"}
    n_bios = len(world.biographies())  # replayed (sft.replay=2), cut to the rows (too_long)
    assert meta["mixture"]["replay"] == {"unique": n_bios, "weight": 2, "train": 2 * n_bios,
                                         "val": 0, "dropped_too_long": 0}
    assert (w / "sft/samples.txt").read_text().count("User: Who are you?") >= 1


def test_sft_refuses_bad_parents_clearly(run_root, tmp_path):
    w = run_root
    other = tmp_path / "other"
    (other / "corpus").mkdir(parents=True)
    (other / "corpus/world.json").write_text(json.dumps(vars(WORLD)))
    r = _run("sft", f"--init_from={w / 'pretrain'}", f"--workdir={other}")
    assert r.returncode != 0 and "experiments.probe" in r.stderr  # idk needs the probe's output


def test_loading_a_directory_that_is_not_a_stage_fails_clearly(tmp_path):
    from train.stage import load_stage

    with pytest.raises(FileNotFoundError, match="not a finished training stage"):
        load_stage(tmp_path)

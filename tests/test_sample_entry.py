"""The sampling entry point, end to end in a subprocess."""

import subprocess
import sys
from pathlib import Path

from test_tokenizer import _corpus

from data.tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parent.parent


def test_sample_entry_point_from_a_run_root(tmp_path):
    train_tokenizer([_corpus(tmp_path / "c.txt", 0)], tmp_path / "run" / "tokenizer", 400)
    r = subprocess.run(
        [sys.executable, "-m", "experiments.sample", "--init_from", str(tmp_path / "run"),
         "--prompt", "the model", "--num_samples", "2", "--max_new_tokens", "8", "--top_k", "20",
         "--config.model.n_layers=1", "--config.model.d_model=32", "--config.model.d_ff=64"],
        cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "--- sample 0 (" in r.stdout and "--- sample 1 (" in r.stdout
    assert "freshly initialised" in r.stdout
    assert r.stdout.count("the model") >= 2


def test_sample_entry_point_without_tokenizer_says_what_to_do(tmp_path):
    r = subprocess.run([sys.executable, "-m", "experiments.sample", "--init_from", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0
    assert "no tokenizer found" in r.stderr and "experiments.tokenizer" in r.stderr

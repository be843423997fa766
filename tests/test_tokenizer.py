"""The BPE tokenizer: exact round trips, inert special-token spellings, stable special ids."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm

from data.special_tokens import ASSISTANT, BOS, SPECIAL_TOKENS, USER, special_id, special_table
from data.tokenizer import Tokenizer, train_tokenizer

REPO = Path(__file__).resolve().parent.parent
WORDS = ("the a model learns to predict next token from text data and it writes code def return "
         "print if else for while user assistant system hello world 2024 3.14 <|user|> "
         "<|assistant|> <|end|> naïve café 東京 😀").split()


def _corpus(path: Path, seed: int, lines: int = 1500) -> Path:
    rng = random.Random(seed)
    text = "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15)))
                     + ("    indented" if i % 7 == 0 else "") for i in range(lines))
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    train_tokenizer([_corpus(d / "corpus.txt", 0)], d / "out", vocab_size=420)
    return Tokenizer.load(d / "out")


def _random_unicode(rng: random.Random, n: int) -> str:
    ranges = [(0x20, 0x7E), (0x00, 0x1F), (0x7F, 0x9F), (0xA0, 0x24F), (0x300, 0x36F),
              (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1F64F), (0x2581, 0x2581),
              (0xFE00, 0xFE0F), (0x10000, 0x1007F)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
        if rng.random() < 0.05:
            out.append(rng.choice(SPECIAL_TOKENS))
    return "".join(out)


def test_round_trip_on_random_unicode(tok):
    rng = random.Random(0)
    for _ in range(300):
        s = _random_unicode(rng, rng.randint(0, 40))
        assert tok.decode(tok.encode(s)) == s, repr(s)
    for s in ["", " ", "  two  spaces\n\tand a tab\r\n", "e\u0301 n\u0303", "a\u2581b \u2581",
              "\x00\x1b[0m", "👩‍👩‍👧 🇫🇷", "東京 and 서울", "trailing space "]:
        assert tok.decode(tok.encode(s)) == s, repr(s)


def test_special_token_spellings_never_encode_to_special_ids(tok):
    text = f"Hi {USER} there\n{ASSISTANT} sure <|end|>{BOS}<|bos|> <|result|>"
    ids = tok.encode(text)
    assert not any(tok.is_special(i) for i in ids)
    assert tok.decode(ids) == text
    for name in SPECIAL_TOKENS:
        assert special_id(name) not in tok.encode(name)
    rendered = [special_id(BOS), special_id(USER)] + tok.encode("hi")
    assert tok.decode(rendered) == "hi"
    assert tok.decode(rendered, show_special=True) == f"{BOS}{USER}hi"


def test_special_ids_are_stable_across_retrains(tmp_path, tok):
    other = tmp_path / "other"
    train_tokenizer([_corpus(tmp_path / "c.txt", 1, lines=3000)], other, vocab_size=450)
    tok2 = Tokenizer.load(other)
    assert tok2.vocab_size != tok.vocab_size
    for name, i in special_table().items():
        assert tok.id_to_piece(i) == tok2.id_to_piece(i) == name
    assert special_id(SPECIAL_TOKENS[0]) == 1  # id 0 stays <unk>


def test_jsonl_corpora_train_on_the_text_field_not_the_json(tmp_path):
    texts = _corpus(tmp_path / "c.txt", 5, lines=600).read_text().splitlines()
    docs = ["\n".join(texts[i:i + 3]) for i in range(0, len(texts), 3)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d, "meta": 1}) + "\n"
                                              for d in docs))
    m = train_tokenizer([tmp_path / "c.jsonl"], tmp_path / "tok", vocab_size=400)
    assert m["train_lines"] + m["heldout_lines"] == sum(1 for t in texts if t.strip())
    assert m["train_bytes"] + m["heldout_bytes"] == sum(len(t.encode()) for t in texts if t.strip())


def test_foreign_sentencepiece_model_is_refused(tmp_path):
    corpus = _corpus(tmp_path / "c.txt", 2)
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "plain"),
                                   vocab_size=200, model_type="bpe", minloglevel=2)
    with pytest.raises(ValueError, match="expected the control symbol"):
        Tokenizer.load(tmp_path / "plain.model")


def test_training_errors_are_clear(tmp_path):
    corpus = _corpus(tmp_path / "c.txt", 3, lines=50)
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer([corpus], tmp_path / "a", vocab_size=200)
    with pytest.raises(ValueError, match="smaller vocab_size"):
        train_tokenizer([corpus], tmp_path / "b", vocab_size=5000)
    with pytest.raises(FileNotFoundError):
        train_tokenizer([tmp_path / "missing.txt"], tmp_path / "c", vocab_size=400)
    with pytest.raises(FileNotFoundError, match="experiments.tokenizer"):
        Tokenizer.load(tmp_path / "nowhere")


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True)


def test_tokenizer_entry_point_writes_stage_dir_and_never_overwrites(tmp_path):
    corpus = _corpus(tmp_path / "c.txt", 4)
    work = tmp_path / "run"
    args = ["experiments.tokenizer", "--workdir", str(work), "--input", str(corpus),
            "--config.tokenizer.vocab_size=400"]
    r = _run(*args)
    assert r.returncode == 0, r.stderr
    meta = json.loads((work / "tokenizer" / "meta.json").read_text())
    assert meta["vocab_size"] == 400
    assert meta["special_tokens"] == special_table()
    assert meta["sha256"] == Tokenizer.load(work / "tokenizer").sha256
    assert 1.5 < meta["bytes_per_token_heldout"] < 10 and meta["heldout_lines"] == 30
    assert (work / "tokenizer" / "tokenizer.vocab").read_text().count("\n") == 400
    model_bytes = (work / "tokenizer" / "tokenizer.model").read_bytes()

    again = _run(*args)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    refused = _run(*args[:-1], "--config.tokenizer.vocab_size=410")
    assert refused.returncode != 0 and "--overwrite" in refused.stderr
    assert (work / "tokenizer" / "tokenizer.model").read_bytes() == model_bytes
    replaced = _run(*args[:-1], "--config.tokenizer.vocab_size=410", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert Tokenizer.load(work / "tokenizer").vocab_size == 410
    assert sorted(p.name for p in work.iterdir()) == ["tokenizer"]  # no temporary dirs left

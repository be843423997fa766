"""Arena ratings: battles from judged answers, Bradley-Terry on the Elo scale, bootstrap CIs."""

import pytest

from eval.arena import battles, bradley_terry, ratings


def test_battles_pair_every_model_on_every_prompt_and_count_ties():
    answers = {"a": ["good", "bad"], "b": ["bad", "bad"], "c": ["good", "good"]}
    games = battles(answers, lambda i, ans: 1.0 if ans == "good" else 0.0)
    assert len(games) == 3 * 2
    assert ("a", "b", 1.0) in games and ("a", "b", 0.5) in games and ("b", "c", 0.0) in games
    with pytest.raises(ValueError, match="same prompts"):
        battles({"a": ["x"], "b": ["x", "y"]}, lambda i, a: 0.0)


def test_bradley_terry_orders_models_by_strength_and_is_fair_to_equals():
    games = [("strong", "weak", 1.0)] * 30 + [("strong", "weak", 0.0)] * 10
    games += [("weak", "mid", 0.5)] * 20 + [("strong", "mid", 1.0)] * 12 + [("strong", "mid", 0.0)] * 8
    r = bradley_terry(["mid", "strong", "weak"], games)
    assert r["strong"] > r["mid"] > r["weak"] - 1e-6 and abs(sum(r.values()) / 3 - 1000) < 1e-6
    # 3:1 head-to-head alone means ~191 Elo points (400 log10 3)
    two = bradley_terry(["s", "w"], [("s", "w", 1.0)] * 300 + [("s", "w", 0.0)] * 100, prior=0)
    assert two["s"] - two["w"] == pytest.approx(400 * 0.4771, abs=1)
    even = bradley_terry(["x", "y"], [("x", "y", 1.0), ("x", "y", 0.0)] * 5)
    assert even["x"] == pytest.approx(even["y"])
    unbeaten = bradley_terry(["u", "l"], [("u", "l", 1.0)] * 5)
    assert unbeaten["u"] > unbeaten["l"] and all(abs(v) < 1e4 for v in unbeaten.values())


def test_ratings_carry_bootstrap_intervals_around_the_estimate():
    games = [("a", "b", 1.0)] * 40 + [("a", "b", 0.0)] * 20
    r = ratings(["a", "b"], games, bootstrap=100)
    for m in ("a", "b"):
        assert r[m]["ci_low"] <= r[m]["elo"] <= r[m]["ci_high"] and r[m]["games"] == 60
    assert r["a"]["win_rate"] == pytest.approx(40 / 60, abs=1e-4)
    assert r["a"]["elo"] > r["b"]["elo"]

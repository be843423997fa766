"""Spending more compute at answer time: n sampled answers to a checkable problem, reduced to
one by majority vote (self-consistency) or by a reward model's pick (best-of-n), scored against
the answer key as n grows; pass@n (an oracle picks any right sample) is the ceiling.

Everything here works on answers already sampled and scored, so it is pure and checkable on
scripted samples: `majority(...)`, `best_of_n(...)`, `curves(...)`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import numpy as np


def majority(answers: Sequence[str | None]) -> str | None:
    """The most common answer among those that are not None; a tie goes to the answer that was
    sampled first. None when no sample has an answer."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == top)


def best_of_n(answers: Sequence[str | None], scores: Sequence[float]) -> str | None:
    """The answer of the highest-scoring sample (the first of equal scores); a sample with a NaN
    score is never picked, and none is picked when every score is NaN."""
    if len(answers) != len(scores):
        raise ValueError(f"{len(answers)} answers but {len(scores)} scores")
    s = np.asarray(scores, np.float64)
    if not len(s) or np.isnan(s).all():
        return None
    return answers[int(np.nanargmax(s))]


def curves(answers: Sequence[Sequence[str | None]], keys: Sequence[str],
           scores: Sequence[Sequence[float]] | None, ns: Sequence[int], draws: int = 50,
           seed: int = 0) -> dict[int, dict[str, float]]:
    """Accuracy against n for each n in ns: per problem, `draws` subsets of n of its samples
    (all of them, once, when n is the number of samples), each reduced by majority vote, by the
    reward model's best-of-n (with scores) and by an oracle (right when any sample is: pass@n);
    "single" is one sample's accuracy. answers[p][i] is problem p's i-th sampled answer, keys[p]
    its answer key, scores[p][i] the reward model's score of that sample."""
    if len(answers) != len(keys) or (scores is not None and len(scores) != len(answers)):
        raise ValueError("answers, keys and scores must hold one entry per problem")
    n_samples = {len(a) for a in answers}
    if len(n_samples) != 1:
        raise ValueError(f"every problem needs the same number of samples, got {sorted(n_samples)}")
    (total,) = n_samples
    rng = random.Random(f"{seed}/test-time")
    out = {}
    for n in ns:
        if not 1 <= n <= total:
            raise ValueError(f"n={n}: expected 1..{total} (the samples drawn per problem)")
        hits = {"single": [], "majority": [], "oracle": []} | ({"best_of_n": []} if scores else {})
        for p, (ans, key) in enumerate(zip(answers, keys, strict=True)):
            subsets = [list(range(total))] if n == total else [
                rng.sample(range(total), n) for _ in range(draws)]
            for idx in subsets:
                picked = [ans[i] for i in idx]
                hits["single"].append(picked[0] == key)
                hits["majority"].append(majority(picked) == key)
                hits["oracle"].append(key in picked)
                if scores is not None:
                    hits["best_of_n"].append(best_of_n(picked, [scores[p][i] for i in idx]) == key)
        out[n] = {k: round(float(np.mean(v)), 4) for k, v in hits.items()}
    return out

"""An arena: models answer the same held-out prompts, a judge picks the better answer of each
pair, and Bradley-Terry ratings (on the Elo scale) with bootstrap confidence intervals rank them,
the way LM Arena does with human votes. Here the judge is the world's hidden labeler.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np


def battles(answers: dict[str, list[str]], judge: Callable[[int, str], float]) -> list[tuple]:
    """(model_a, model_b, outcome) for every pair of models on every prompt index i, outcome 1.0
    when a's answer scores higher, 0.0 when b's does, 0.5 for a tie. answers[m][i] is model m's
    answer to prompt i; judge(i, answer) scores it."""
    names = sorted(answers)
    n = {len(v) for v in answers.values()}
    if len(n) != 1:
        raise ValueError(f"every model must answer the same prompts; got counts {sorted(n)}")
    scores = {m: [judge(i, a) for i, a in enumerate(answers[m])] for m in names}
    out = []
    for a, b in itertools.combinations(names, 2):
        for sa, sb in zip(scores[a], scores[b], strict=True):
            out.append((a, b, 1.0 if sa > sb else 0.0 if sa < sb else 0.5))
    return out


def bradley_terry(models: Sequence[str], games: Sequence[tuple], iters: int = 200,
                  prior: float = 0.5) -> dict[str, float]:
    """Bradley-Terry strengths by the MM algorithm (Hunter, 2004), ties as half a win each way,
    with `prior` virtual ties against every other model so that an unbeaten model stays finite;
    returned on the Elo scale (400 log10 strength), mean 1000."""
    idx = {m: i for i, m in enumerate(models)}
    k = len(models)
    wins = np.full((k, k), prior / 2)  # wins[i, j]: i's wins over j
    np.fill_diagonal(wins, 0)
    for a, b, o in games:
        wins[idx[a], idx[b]] += o
        wins[idx[b], idx[a]] += 1 - o
    n = wins + wins.T
    p = np.ones(k)
    for _ in range(iters):
        denom = (n / (p[:, None] + p[None, :])).sum(1)
        p = wins.sum(1) / np.maximum(denom, 1e-12)
        p = p / np.exp(np.mean(np.log(p)))
    elo = 400 * np.log10(p)
    elo = elo - elo.mean() + 1000
    return {m: float(elo[idx[m]]) for m in models}


def ratings(models: Sequence[str], games: Sequence[tuple], bootstrap: int = 200,
            seed: int = 0) -> dict[str, dict]:
    """{model: {"elo", "ci_low", "ci_high", "win_rate", "games"}}: the 95% interval from
    resampling the games with replacement."""
    point = bradley_terry(models, games)
    rng = np.random.default_rng(seed)
    samples = {m: [] for m in models}
    for _ in range(bootstrap):
        pick = rng.integers(0, len(games), len(games))
        r = bradley_terry(models, [games[i] for i in pick])
        for m in models:
            samples[m].append(r[m])
    out = {}
    for m in models:
        played = [(o if a == m else 1 - o) for a, b, o in games if m in (a, b)]
        lo, hi = np.percentile(samples[m], [2.5, 97.5]) if games else (point[m], point[m])
        out[m] = {"elo": round(point[m], 1), "ci_low": round(float(lo), 1),
                  "ci_high": round(float(hi), 1),
                  "win_rate": round(float(np.mean(played)), 4) if played else None,
                  "games": len(played)}
    return out

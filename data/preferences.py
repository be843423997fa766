"""Preference data: candidates sampled from a model, ranked by the world's hidden labeler.

A preference row is {"prompt", "chosen", "rejected"} (the layout external preference JSONL uses
too); rows made here also carry "name" (whom the prompt asks about) and the labeler's two scores,
for the record only: reward models and DPO see nothing but which answer was preferred.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path

from data.chat import FORMATS, ChatFormat, read_jsonl
from data.tokenizer import Tokenizer
from data.world import World


def rank_candidates(world: World, name: str, prompt: str, candidates: Sequence[str]) -> list[dict]:
    """Every pair of candidates the labeler scores differently, the better one as chosen
    (k candidates give up to k(k-1)/2 pairs; identical texts never pair)."""
    scored = sorted({c: world.labeler_score(name, c) for c in candidates}.items(),
                    key=lambda kv: -kv[1])
    return [{"prompt": prompt, "chosen": a, "rejected": b, "name": name,
             "chosen_score": sa, "rejected_score": sb}
            for (a, sa), (b, sb) in itertools.combinations(scored, 2) if sa > sb]


def load_preferences(path: str | Path) -> list[dict]:
    """External preference JSONL: one {"prompt", "chosen", "rejected"} (strings) per line.
    Errors name the file and line; nothing is skipped silently."""
    rows = []
    for i, row in read_jsonl(path):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{i}: a preference row is a JSON object, got "
                             f"{type(row).__name__}")
        missing = [k for k in ("prompt", "chosen", "rejected")
                   if not isinstance(row.get(k), str) or not row[k].strip()]
        if missing:
            raise ValueError(f"{path}:{i}: a preference row needs non-empty strings 'prompt', "
                             f"'chosen' and 'rejected'; missing or empty: {', '.join(missing)}")
        if row["chosen"] == row["rejected"]:
            raise ValueError(f"{path}:{i}: chosen and rejected are the same text")
        rows.append(row)
    return rows


def render_pair(row: dict, tok: Tokenizer, fmt: ChatFormat | None = None):
    """((ids, mask) of prompt + chosen, (ids, mask) of prompt + rejected), in `fmt` (the
    project's chat format by default)."""
    fmt = fmt or FORMATS["project"]
    return tuple(fmt.render({"messages": [{"role": "user", "content": row["prompt"]},
                                          {"role": "assistant", "content": row[side]}]}, tok)
                 for side in ("chosen", "rejected"))


def render_pairs(rows: Iterable[dict], tok: Tokenizer, max_tokens: int,
                 fmt: ChatFormat | None = None) -> tuple[list, int]:
    """(rendered pairs that fit in max_tokens, how many were dropped for length)."""
    out, dropped = [], 0
    for row in rows:
        pair = render_pair(row, tok, fmt)
        if max(len(pair[0][0]), len(pair[1][0])) > max_tokens:
            dropped += 1
        else:
            out.append(pair)
    return out, dropped

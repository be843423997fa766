"""The pretraining mixture: which sources, with what weights, go into the token shards.

A weight is the number of copies of a source's documents written into the mixture: 0.25 keeps a
seeded quarter of them, 60 writes each one 60 times (the synthetic world's biographies must be
seen ~50-60 times before a small model can recall them). Weights name a group ("web", "prose",
"world") or a single source ("python-doc"); a source's own weight wins over its group's, and a
source with no weight gets none of the corpus.

    out/<source>.jsonl   {"text": ...}, the copies of one source
    out/mixture.json     per source: documents in, copies out, bytes out, share of the bytes
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import random
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from data.world import CITIES, FIRST, LAST, MAJORS

WORLD = "world"  # the source name (and group) of the synthetic world's biographies


def weight_of(source: str, group: str, weights: Mapping[str, float]) -> float:
    w = weights.get(source, weights.get(group, 0.0))
    if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
        raise ValueError(f"mixture weight for {source!r} is {w!r}; weights are numbers >= 0")
    return float(w)


def copies(doc_id: str, weight: float, seed: int) -> int:
    """floor(weight) copies, plus one more for a seeded fraction (weight - floor) of documents."""
    whole = math.floor(weight)
    frac = weight - whole
    if frac == 0:
        return whole
    h = int.from_bytes(hashlib.sha256(f"{seed}/{doc_id}".encode()).digest()[:8], "big") / 2**64
    return whole + (h < frac)


def iter_clean(clean_dir: str | Path) -> Iterator[dict]:
    """Documents the cleaning pipeline kept: {"id", "text", "metadata": {"source", "group", ...}}."""
    files = sorted(Path(clean_dir).glob("*.jsonl*"))
    if not files:
        raise FileNotFoundError(f"no cleaned documents in {clean_dir}")
    for f in files:
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)


def write_mixture(docs: Iterable[dict], out_dir: str | Path, weights: Mapping[str, float],
                  seed: int = 0) -> dict:
    """Writes each source's copies to out_dir/<source>.jsonl; returns (and saves) the summary."""
    unknown = set(weights) - {"web", "prose", WORLD, COPY}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.jsonl"):
        old.unlink()
    handles: dict[str, object] = {}
    summary: dict[str, dict] = {}
    try:
        for d in docs:
            src, group = d["metadata"]["source"], d["metadata"]["group"]
            unknown.discard(src)
            s = summary.setdefault(src, {"group": group, "weight": weight_of(src, group, weights),
                                         "documents": 0, "copies": 0, "bytes": 0})
            s["documents"] += 1
            k = copies(d["id"], s["weight"], seed)
            if not k:
                continue
            if src not in handles:
                handles[src] = open(out_dir / f"{src}.jsonl", "w", encoding="utf-8")
            line = json.dumps({"text": d["text"]}, ensure_ascii=False) + "\n"
            for _ in range(k):
                handles[src].write(line)
            s["copies"] += k
            s["bytes"] += k * len(d["text"].encode())
    finally:
        for h in handles.values():
            h.close()
    if unknown:
        raise ValueError(f"mixture weights name unknown sources: {sorted(unknown)}; "
                         f"known: {sorted(summary)} and the groups web, prose, {WORLD}, {COPY}")
    total = sum(s["bytes"] for s in summary.values()) or 1
    for s in summary.values():
        s["share"] = round(s["bytes"] / total, 4)
    (out_dir / "mixture.json").write_text(json.dumps(summary, indent=1))
    return summary


COPY = "copy"  # the source name (and group) of the copy drills


def copy_drill_documents(n: int, seed: int = 0) -> Iterator[dict]:
    """`n` synthetic documents whose second half repeats a span of the first: a line of random
    names, places, words and numbers written twice, or a number stated and then restated ("The
    result is N. So the answer is N."). Text in which the next token can only be found by
    copying from the context: the skill (induction) that tool results, names and operands need
    and that memorising the world's biographies never asks for."""
    words = [*FIRST, *LAST, *CITIES, *MAJORS]
    rng = random.Random(f"{seed}/copy-drills")
    for i in range(n):
        items = [rng.choice(words) if rng.random() < 0.5 else str(rng.randint(0, 10 ** rng.randint(1, 7)))
                 for _ in range(rng.randint(3, 8))]
        line, num = " ".join(items), rng.randint(10, 10_000_000)
        text = rng.choice((f"{line}\n{line}", f"Copy this line: {line}\nCopy: {line}",
                           f"The result is {num}. So the answer is {num}."))
        yield {"id": f"{COPY}/{i}", "text": text, "metadata": {"source": COPY, "group": COPY}}


def world_documents(biographies: Iterable[str]) -> Iterator[dict]:
    for i, text in enumerate(biographies):
        yield {"id": f"{WORLD}/{i}", "text": text, "metadata": {"source": WORLD, "group": WORLD}}


def mixture_table(summary: Mapping[str, dict]) -> str:
    lines = ["| source | group | weight | documents | copies | MB | share |", "|---|---|---|---|---|---|---|"]
    for src, s in sorted(summary.items(), key=lambda kv: -kv[1]["bytes"]):
        lines.append(f"| {src} | {s['group']} | {s['weight']:g} | {s['documents']:,} | {s['copies']:,} "
                     f"| {s['bytes'] / 1e6:.2f} | {s['share']:.1%} |")
    return "\n".join(lines) + "\n"

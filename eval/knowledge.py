"""What a base model remembers of the synthetic world: biography recall by completion.

For every person and attribute, the model gets `<|bos|>` and the start of a biography sentence
("Maya Okafor was born in") and continues it greedily; the item counts as recalled when the
continuation starts with the true value ("Lisbon"). Phrasing 0 of each attribute is used by
default; any phrasing the biographies were written in may be chosen. This needs no chat format, so
it measures pretraining alone (question answering is measured after SFT).
"""

from __future__ import annotations

from collections import defaultdict

from data.special_tokens import BOS, special_id
from data.tokenizer import Tokenizer
from data.world import ATTRIBUTES, BIO_TEMPLATES, World, template_head
from eval.chat_eval import ask
from model.config import ModelConfig
from model.engine import SamplingConfig, generate


def sentence_head(attribute: str, facts: dict, phrasing: int = 0) -> str:
    """The biography sentence for `attribute` up to (not including) its value, e.g.
    "Maya Okafor was born in"; `facts` needs the name ("n") and whatever precedes the value."""
    return template_head(BIO_TEMPLATES[attribute][phrasing], attribute, facts)


def recall_items(world: World, phrasing: int = 0) -> list[dict]:
    """{prompt, value, name, attribute, split} for every person of the world and attribute."""
    if not 0 <= phrasing < world.config.phrasings:
        raise ValueError(f"phrasing={phrasing}: the biographies use phrasings "
                         f"0..{world.config.phrasings - 1}")
    items = []
    for p in world.people:
        facts = p.facts()
        for a in ATTRIBUTES:
            items.append({"prompt": sentence_head(a, facts, phrasing), "value": facts[a],
                          "name": p.name, "attribute": a, "split": world.split_of(p.name)})
    return items


def biography_recall(params, cfg: ModelConfig, tok: Tokenizer, world: World, phrasing: int = 0,
                     batch_size: int = 64, max_new_tokens: int = 12) -> dict:
    """Greedy completion accuracy: overall, per attribute, per split ('train' / 'heldout')."""
    items = recall_items(world, phrasing)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    hits: dict[str, list[int]] = defaultdict(list)
    examples = []
    for i in range(0, len(items), batch_size):
        chunk = items[i: i + batch_size]
        prompts = [[special_id(BOS)] + tok.encode(it["prompt"]) for it in chunk]
        out = generate(params, cfg, prompts, sampling)
        for it, ids in zip(chunk, out.tokens, strict=True):
            completion = tok.decode(ids)
            ok = int(completion.lstrip().startswith(it["value"]))
            for key in ("all", it["attribute"], it["split"]):
                hits[key].append(ok)
            if len(examples) < 5:
                examples.append({"prompt": it["prompt"], "completion": completion, "value": it["value"]})
    return {"recall": {k: round(sum(v) / len(v), 4) for k, v in hits.items()},
            "items": len(items), "examples": examples}


def probe(params, cfg: ModelConfig, tok: Tokenizer, items: list[dict], mode: str, k: int = 4,
          temperature: float = 0.8, min_correct: float = 0.5, batch_size: int = 64,
          seed: int = 0) -> list[dict]:
    """Does the model know each fact? Samples k answers per item and judges them by the world.

    items: {question, name, attribute, value (None: a person who exists nowhere)}.
    mode "complete" (a base model): the answer is the continuation of the attribute's first
    biography phrasing ("NAME was born in"); mode "chat" (an SFT model): the reply to the question.
    Each row gains samples, correct (how many of the k held the true value) and known
    (correct >= min_correct * k; never for a person who exists nowhere).
    """
    if mode not in ("complete", "chat"):
        raise ValueError(f"mode={mode!r}: expected 'complete' or 'chat'")
    answers: list[list[str]] = [[] for _ in items]
    for j in range(k):
        if mode == "chat":
            replies = ask(params, cfg, tok, [it["question"] for it in items], temperature=temperature,
                          batch_size=batch_size, seed=seed + 1000 * j)
            for a, r in zip(answers, replies, strict=True):
                a.append(r["answer"])
            continue
        sampling = SamplingConfig(max_new_tokens=12, temperature=temperature, seed=seed + 1000 * j)
        for i in range(0, len(items), batch_size):
            chunk = items[i: i + batch_size]
            prompts = []
            for it in chunk:
                head = sentence_head(it["attribute"], {"n": it["name"]})
                prompts.append([special_id(BOS)] + tok.encode(head))
            out = generate(params, cfg, prompts, sampling)
            for a, ids in zip(answers[i: i + len(chunk)], out.tokens, strict=True):
                a.append(tok.decode(ids))
    rows = []
    for it, samples in zip(items, answers, strict=True):
        value = it["value"]
        correct = 0 if value is None else sum(
            (s.lstrip().startswith(value) if mode == "complete" else value in s) for s in samples)
        rows.append({**it, "samples": samples, "correct": correct,
                     "known": value is not None and correct >= min_correct * k})
    return rows

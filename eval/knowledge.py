"""What a base model remembers of the synthetic world: biography recall by completion.

For every person and attribute, the model gets `<|bos|>` and the start of a biography sentence
("Maya Okafor was born in") and continues it greedily; the item counts as recalled when the
continuation starts with the true value ("Lisbon"). Phrasing 0 of each attribute is used by
default; any phrasing the biographies were written in may be chosen. This needs no chat format, so
it measures pretraining alone (question answering is measured after SFT).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from data.sft_mix import RECALL_KNOWN, RECALL_UNKNOWN
from data.special_tokens import BOS, special_id
from data.tokenizer import Tokenizer
from data.world import ATTRIBUTES, BIO_TEMPLATES, QUESTIONS, World, template_head
from eval.chat_eval import ask
from model.engine import SamplingConfig, generate
from model.handle import LM
from model.padding import bucket, right_pad


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


def biography_recall(lm: LM, world: World, phrasing: int = 0,
                     batch_size: int = 64, max_new_tokens: int = 12) -> dict:
    """Greedy completion accuracy: overall, per attribute, per split ('train' / 'heldout')."""
    items = recall_items(world, phrasing)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    hits: dict[str, list[int]] = defaultdict(list)
    examples = []
    for i in range(0, len(items), batch_size):
        chunk = items[i: i + batch_size]
        prompts = [[special_id(BOS)] + lm.tok.encode(it["prompt"]) for it in chunk]
        out = generate(lm.params, lm.cfg, prompts, sampling)
        for it, ids in zip(chunk, out.tokens, strict=True):
            completion = lm.tok.decode(ids)
            ok = int(completion.lstrip().startswith(it["value"]))
            for key in ("all", it["attribute"], it["split"]):
                hits[key].append(ok)
            if len(examples) < 5:
                examples.append({"prompt": it["prompt"], "completion": completion, "value": it["value"]})
    return {"recall": {k: round(sum(v) / len(v), 4) for k, v in hits.items()},
            "items": len(items), "examples": examples}


def probe(lm: LM, items: list[dict], mode: str, k: int = 4,
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
            replies = ask(lm, [it["question"] for it in items], temperature=temperature,
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
                prompts.append([special_id(BOS)] + lm.tok.encode(head))
            out = generate(lm.params, lm.cfg, prompts, sampling)
            for a, ids in zip(answers[i: i + len(chunk)], out.tokens, strict=True):
                a.append(lm.tok.decode(ids))
    rows = []
    for it, samples in zip(items, answers, strict=True):
        value = it["value"]
        correct = 0 if value is None else sum(
            (s.lstrip().startswith(value) if mode == "complete" else value in s) for s in samples)
        rows.append({**it, "samples": samples, "correct": correct,
                     "known": value is not None and correct >= min_correct * k})
    return rows


FAMILIARITY_CONTEXTS = ("document", "question", "reply")


def name_familiarity_rows(world: World, tok: Tokenizer) -> list[dict]:
    """For every person of the world (train, held-out) and every nonexistent one, the surname as
    a continuation of the first name in three contexts: "document" (`<|bos|>FIRST`, where a
    biography starts), "question" (`<|user|>Where was FIRST`, the user's turn up to the surname)
    and "reply" (the assistant's turn after that whole question, where the surname can be copied
    from it). Each row: split, name, context, prefix and continuation (token ids)."""
    from data.chat import prompt
    from data.special_tokens import USER

    people = [(world.split_of(p.name), p.name) for p in world.people]
    people += [("nonexistent", p.name) for p in world.nonexistent]
    rows = []
    for split, name in people:
        first, last = name.split(" ", 1)
        question = QUESTIONS["birth_city"].format(n=name)
        reply = prompt(tok, question)
        for context, head, prefix in (
                ("document", first, [special_id(BOS)]),
                ("question", question.partition(name)[0] + first, [special_id(BOS), special_id(USER)]),
                ("reply", first, reply)):
            head_ids, ids = tok.encode(head), tok.encode(f"{head} {last}")
            if ids[:len(head_ids)] != head_ids:
                raise ValueError(f"{head!r} is tokenized differently before {last!r}: the "
                                 "surname has no clean start")
            rows.append({"split": split, "name": name, "context": context,
                         "prefix": prefix + head_ids, "continuation": ids[len(head_ids):]})
    return rows


def auc(pos, neg) -> float:
    """P(a positive scores above a negative), ties counting half (NaN without both)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    p, n = np.asarray(pos, float)[:, None], np.asarray(neg, float)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


def continuation_logprobs(losses, rows: list[dict], max_len: int | None = None,
                          batch_size: int = 64, width_per_batch: bool = False,
                          batch_tokens: int | None = None) -> list[float]:
    """log p(continuation | prefix) for each row ({"prefix", "continuation"}: token ids).
    losses(inputs [B, T], targets [B, T]) -> next-token losses in nats [B, T] (a model through
    eval.suite.next_token_losses, or a stand-in in tests); max_len: the longest input it takes.
    width_per_batch: pad each batch to its own longest row's bucket (rows sorted by length
    then pad little), not every batch to the longest row's; batch_tokens: with it, a batch of
    long rows is halved until rows x width fits (the logits of a large vocabulary are big)."""
    def longest(chunk):
        return max(len(r["prefix"]) + len(r["continuation"]) for r in chunk) - 1

    if max_len is not None and longest(rows) > max_len:
        raise ValueError(f"a scored row is {longest(rows)} tokens; the model takes {max_len}")
    width = bucket(longest(rows), 1, max_len)
    scores, i = [], 0
    while i < len(rows):
        n = batch_size
        if width_per_batch:
            while n > 1 and batch_tokens and n * bucket(longest(rows[i: i + n]), 16, max_len) > batch_tokens:
                n //= 2
            width = bucket(longest(rows[i: i + n]), 16, max_len)
        chunk, i = rows[i: i + n], i + n
        tokens = right_pad([r["prefix"] + r["continuation"] for r in chunk], width + 1)
        loss_BT = np.asarray(losses(tokens[:, :-1], tokens[:, 1:]))
        for j, r in enumerate(chunk):
            at = len(r["prefix"]) - 1  # the position that predicts the continuation's first token
            scores.append(-float(loss_BT[j, at: at + len(r["continuation"])].sum()))
    return scores


def familiarity_scores(losses, rows: list[dict], max_len: int | None = None) -> dict:
    """Per context: the median log-probability of the continuation per split, and the AUC of
    held-out against nonexistent people (losses: as in continuation_logprobs)."""
    scores = continuation_logprobs(losses, rows, max_len)
    out = {}
    for context in FAMILIARITY_CONTEXTS:
        split = {s: [x for r, x in zip(rows, scores, strict=True)
                     if r["context"] == context and r["split"] == s]
                 for s in ("train", "heldout", "nonexistent")}
        out[context] = {"median_logp": {s: round(float(np.median(v)), 3) for s, v in split.items() if v},
                        "auc_heldout_vs_nonexistent": round(auc(split["heldout"], split["nonexistent"]), 4)}
    return out


def model_losses(lm: LM):
    """(inputs, targets) -> per-token losses under `lm`: what the scoring helpers take."""
    from eval.suite import next_token_losses

    return lambda inputs, targets: next_token_losses(lm, inputs, targets)[0]


def name_familiarity(lm: LM, world: World) -> dict:
    """Can the model tell a person it has read about from a made-up pair of the same names? The
    log-probability of each surname after its first name (name_familiarity_rows), per context;
    an AUC of 1.0 means every held-out surname (pretrained on, never asked about) is more likely
    than every made-up one, 0.5 no signal. An "I don't know" reply can only be as good as the
    signal where it decides: a base model reads it at the document start, while in the reply
    the surname can be copied from the question (experiments/README.md)."""
    return familiarity_scores(model_losses(lm), name_familiarity_rows(world, lm.tok),
                              lm.cfg.max_seq_len)


# The recall tool: the model asks its own memory whether it has read about a name. In the reply
# the surname can be copied from the question, so the model cannot tell there a person it has
# read about from a made-up pair of names (name_familiarity: AUC ~0.6); at a document start,
# where nothing can be copied, it can (AUC 1.0). The tool scores the name there, with the same
# parameters, and answers in one word. The probe fits the threshold (fit_recall_threshold) on the
# names SFT trains on; this constant is the default of a tool built without a fitted one.
RECALL_THRESHOLD = -4.0  # nats: log p(the rest of the name | <|bos|> its first word)


def recall_row(tok: Tokenizer, name: str) -> dict | None:
    """The name after <|bos|>, split after its first word (after its first token where the
    first word is tokenized differently on its own); None for a name of fewer than two words."""
    words = name.split()
    if len(words) < 2:
        return None
    ids = tok.encode(" ".join(words))
    head = tok.encode(words[0])
    k = len(head) if ids[:len(head)] == head and len(head) < len(ids) else 1
    return {"prefix": [special_id(BOS), *ids[:k]], "continuation": ids[k:]}


def recall_logprobs(losses, tok: Tokenizer, names: list[str], max_len: int | None = None
                    ) -> list[float | None]:
    """log p(rest of the name | <|bos|> first word) per name (None: not a name of two words, or
    one too long for max_len)."""
    rows = [recall_row(tok, n) for n in names]
    ok = [i for i, r in enumerate(rows) if r is not None and (
        max_len is None or len(r["prefix"]) + len(r["continuation"]) - 1 <= max_len)]
    out: list[float | None] = [None] * len(names)
    if ok:
        for i, x in zip(ok, continuation_logprobs(losses, [rows[i] for i in ok], max_len), strict=True):
            out[i] = round(x, 4)
    return out


def recall_result(logp: float | None, threshold: float = RECALL_THRESHOLD) -> str:
    return RECALL_KNOWN if logp is not None and logp >= threshold else RECALL_UNKNOWN


def fit_recall_threshold(real: list[float | None], made_up: list[float | None]) -> float:
    """The threshold (nats) that best tells the names of people the model has read about from
    made-up pairs of names: of the midpoints between neighbouring scores, the one that maximises
    the mean of the two recall rates ("known" for real names, "unknown" for made-up ones), the
    lowest of equals. The probe fits it on the train-split people and its own made-up names, so
    the held-out and nonexistent people that evaluation asks about never set it."""
    real = [x for x in real if x is not None]
    made_up = [x for x in made_up if x is not None]
    if not real or not made_up:
        raise ValueError(f"fitting the recall threshold needs scores of real and made-up names; "
                         f"got {len(real)} real and {len(made_up)} made-up: probe some of each "
                         "(probe.n_unknown > 0)")
    values = sorted(set(real) | set(made_up))
    candidates = [values[0] - 1.0] + [(a + b) / 2 for a, b in zip(values[:-1], values[1:], strict=True)
                                      ] + [values[-1] + 1.0]
    r, m = np.asarray(real), np.asarray(made_up)
    score = [((r >= t).mean() + (m < t).mean()) / 2 for t in candidates]
    return round(float(candidates[int(np.argmax(score))]), 4)


def recall_names(lm: LM, names: list[str]) -> dict[str, float | None]:
    """name -> the score the recall tool reads for it from the model (recall_logprobs)."""
    lps = recall_logprobs(model_losses(lm), lm.tok, names, lm.cfg.max_seq_len)
    return dict(zip(names, lps, strict=True))


class Recall:
    """The recall tool over a model: recall(name) -> "known" or "unknown" (data.tools.make_hooks
    takes it as `recall`). Results are kept per name: they depend on the name only."""

    def __init__(self, lm: LM, threshold: float = RECALL_THRESHOLD):
        self.lm, self.threshold = lm, threshold
        self.seen: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        name = " ".join(name.split())
        if name not in self.seen:
            logp = recall_names(self.lm, [name])[name]
            self.seen[name] = recall_result(logp, self.threshold)
        return self.seen[name]
